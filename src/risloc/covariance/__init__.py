"""Covariance tools shared by training and inference."""

from risloc.covariance.tools import (
    LowRank,
    abs2,
    abs2_,
    back_projection,
    blend,
    blend_factor,
    hermitise,
    load_diagonal,
    normalize_trace,
    orthonormal_basis,
    sample_covariance,
    shrink,
    snapshot_covariance,
    subspace_overlap,
    trace,
    unit_snapshots,
)

__all__ = [
    "LowRank", "abs2", "abs2_", "back_projection", "blend", "blend_factor", "hermitise",
    "load_diagonal", "normalize_trace", "orthonormal_basis", "sample_covariance", "shrink",
    "snapshot_covariance", "subspace_overlap", "trace", "unit_snapshots",
]
