"""Hyper-parameter search of the training recipe with Optuna (``risloc tune``)."""

from risloc.hpo.search import TuneSettings, open_study, tune
from risloc.hpo.space import Dimension, load_space

__all__ = ["Dimension", "TuneSettings", "load_space", "open_study", "tune"]
