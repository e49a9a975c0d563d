"""The trained network at inference: its recipe, checkpoint reading, and the forward pass
with the blended covariance that training, validation and inference share.

Sits above :mod:`risloc.model` and below :mod:`risloc.pipeline` and :mod:`risloc.training`.
"""

from risloc.inference.checkpoint import (
    FORMAT_VERSION,
    averaged_weights,
    load_checkpoint,
    load_model,
    model_from_state,
)
from risloc.inference.forward import Forward, forward_blend
from risloc.inference.recipe import BlendConfig, InferenceRecipe, migrate_recipe

__all__ = [
    "FORMAT_VERSION", "BlendConfig", "Forward", "InferenceRecipe", "averaged_weights",
    "forward_blend", "load_checkpoint", "load_model", "migrate_recipe", "model_from_state",
]
