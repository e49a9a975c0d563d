"""Training of the learned covariance: recipe, schedules, checkpoints, loop, evaluation."""

from risloc.training.checkpoint import load_checkpoint, load_model, save_checkpoint
from risloc.training.config import TrainConfig, load_train_config, validate_train_config
from risloc.training.evaluate import EvalResult, Forward, evaluate, forward_blend
from risloc.training.loop import Trainer, train

__all__ = [
    "EvalResult", "Forward", "TrainConfig", "Trainer", "evaluate", "forward_blend",
    "load_checkpoint", "load_model", "load_train_config", "save_checkpoint", "train",
    "validate_train_config",
]
