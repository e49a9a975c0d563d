"""Experiments: the estimators `risloc evaluate` runs by name, the evaluation harness (SNR
sweeps and scene files, metrics beside the CRB, CSV/JSON reports) and its plots.

Top of the package below the CLI: it runs the learned pipeline and the classical
estimators and measures them with :mod:`risloc.evaluation`.
"""
