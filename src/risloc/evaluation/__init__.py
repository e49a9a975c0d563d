"""Yardsticks: Cramer-Rao bounds, metrics, the evaluation harness and its plots."""

from risloc.evaluation.crb import (
    CRBResult,
    SingularFIMError,
    crb,
    crb_deterministic,
    crb_for_scenes,
    crb_stochastic,
    noise_and_powers_at,
)
from risloc.evaluation.metrics import (
    Matching,
    MetricSummary,
    common_median_ratios,
    concat_matchings,
    match_sources,
    paired_bootstrap_se,
    snr_groups,
    summarize,
    summarize_by_K,
    summarize_by_snr,
    summarize_groups,
)

__all__ = [
    "CRBResult", "Matching", "MetricSummary", "SingularFIMError", "common_median_ratios",
    "concat_matchings", "crb",
    "crb_deterministic", "crb_for_scenes", "crb_stochastic", "match_sources",
    "noise_and_powers_at", "paired_bootstrap_se", "summarize",
    "snr_groups", "summarize_by_K", "summarize_by_snr", "summarize_groups",
]
