"""Loss terms of the learned covariance (see total.py for the list and their weights)."""

from risloc.losses.total import TERMS, LossConfig, LossTerms, compute_losses, truth_of

__all__ = ["TERMS", "LossConfig", "LossTerms", "compute_losses", "truth_of"]
