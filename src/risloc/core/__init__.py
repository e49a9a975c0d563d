"""The inference core every estimator shares: the source-parameter layout and result type,
the measurement operator, and the input checks (with the missing-SNR rule).

Imports only :mod:`risloc.config` and :mod:`risloc.physics`.
"""

from risloc.core.checks import (
    InputError,
    InputTypeError,
    SceneCheck,
    as_system,
    check_measurements,
    check_positions,
    check_shapes,
    check_source_counts,
    normalise_scale,
    scene_problems,
    snr_per_scene,
)
from risloc.core.operator import apply_operator, operators
from risloc.core.params import Estimates, concat_estimates, pack, steering_at, unpack

__all__ = [
    "Estimates", "InputError", "InputTypeError", "SceneCheck", "apply_operator", "as_system",
    "check_measurements", "check_positions", "check_shapes", "check_source_counts",
    "concat_estimates",
    "normalise_scale", "operators", "pack",
    "scene_problems", "snr_per_scene", "steering_at", "unpack",
]
