"""Training of the learned covariance: recipe, schedules, checkpoints, loop, evaluation."""

from risloc.training.config import TrainConfig, load_train_config, validate_train_config
from risloc.training.evaluate import EvalResult, evaluate
from risloc.training.loop import Trainer, train

__all__ = [
    "EvalResult", "TrainConfig", "Trainer", "evaluate", "load_train_config", "train",
    "validate_train_config",
]
