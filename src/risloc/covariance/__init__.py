"""Covariance tools shared by training and inference."""

from risloc.covariance.tools import (
    back_projection,
    blend,
    hermitise,
    load_diagonal,
    normalize_trace,
    operators,
    sample_covariance,
    shrink,
    subspace_overlap,
    trace,
)

__all__ = [
    "back_projection", "blend", "hermitise", "load_diagonal", "normalize_trace", "operators",
    "sample_covariance", "shrink", "subspace_overlap", "trace",
]
