"""The learned covariance network."""

from risloc.model.network import (
    CandidateGrid,
    CovarianceNet,
    ModelConfig,
    ModelOutput,
    candidate_grid,
)

__all__ = ["CandidateGrid", "CovarianceNet", "ModelConfig", "ModelOutput", "candidate_grid"]
