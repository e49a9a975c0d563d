"""Hyper-parameter search of the training recipe with Optuna (``risloc tune``)."""

from risloc.hpo.search import SEARCH_SPACE, TuneSettings, suggest_overrides, tune

__all__ = ["SEARCH_SPACE", "TuneSettings", "suggest_overrides", "tune"]
