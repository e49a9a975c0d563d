"""Covariance tools shared by training and inference."""

from risloc.covariance.tools import (
    abs2,
    abs2_,
    back_projection,
    blend,
    hermitise,
    load_diagonal,
    normalize_trace,
    orthonormal_basis,
    sample_covariance,
    shrink,
    subspace_overlap,
    trace,
)

__all__ = [
    "abs2", "abs2_", "back_projection", "blend", "hermitise", "load_diagonal", "normalize_trace",
    "orthonormal_basis", "sample_covariance", "shrink", "subspace_overlap", "trace",
]
