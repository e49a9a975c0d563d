"""The estimators `risloc evaluate` can run, under stable names.

Each entry maps (scenes, system, K_known) -> Estimates, where K_known is the true K [B]
when the order is given to the estimator, else None (the estimator decides K).

| name | covariance / data | K when unknown |
| classical | measurements: greedy matched field + NF-MLE | ML-residual order test |
| music-samp | MUSIC on R_samp (back-projected sample covariance) | MDL on R_samp |
| music-samp+nfmle | the same, polished by NF-MLE | MDL on R_samp |
| ramezani-samp | Ramezani et al. 2024 modified MUSIC on R_samp | MDL on R_samp |
| music-oracle | MUSIC on R_true (evaluation-only ceiling) | the true K (MUSIC: at most N - 1) |
| learned | the learned pipeline (a checkpoint; default: the shipped model) | its order head |
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import replace

import torch

from risloc.config import FieldOfView, SystemConfig
from risloc.core.params import Estimates
from risloc.covariance import sample_covariance
from risloc.simulation import SceneBatch, scene_true_covariance

Estimator = Callable[[SceneBatch, SystemConfig, "torch.Tensor | None"], Estimates]
log = logging.getLogger(__name__)


def _music_K(K: torch.Tensor, system: SystemConfig, name: str) -> torch.Tensor:
    """K capped at min(M, N) - 1 for MUSIC on the N x N covariance: a RIS of N <= K_max
    elements (2 x 2 with the default K_max = 5) holds scenes of more sources than MUSIC can
    resolve; the sources beyond are scored as missed, where MUSIC stopped the evaluation."""
    cap = min(system.M, system.N) - 1
    if cap < 1:
        raise ValueError(f"{name}: MUSIC needs a RIS of at least 2 elements, the system has "
                         f"N={system.N} ({system.N_H} x {system.N_V}): leave {name} out of "
                         "--estimators")
    K = torch.as_tensor(K)
    if bool((K > cap).any()):
        log.warning("%s: MUSIC on the %d x %d covariance of a %d x %d RIS resolves at most "
                    "%d source(s); it looks for %d in the scenes with more (the others "
                    "count as missed)", name, system.N, system.N, system.N_H, system.N_V,
                    cap, cap)
    return K.clamp_max(cap)


def _samp_order(R: torch.Tensor, system: SystemConfig) -> torch.Tensor:
    from risloc.estimators.order import mdl_order

    # MDL compares orders below the p = min(N, L) eigenvalues of a covariance of L
    # snapshots, and MUSIC resolves fewer than min(M, N) sources (:func:`_music_K`): where
    # those are <= K_max it tests fewer than K_max sources (mdl_order refuses K_max >= p),
    # and with L = 1 (or N = 1) none.
    K_max = min(system.K_max, min(system.N, system.L, system.M) - 1)
    if K_max < 1:
        return torch.ones(R.shape[0], dtype=torch.int64, device=R.device)
    # MUSIC needs K >= 1; MDL may say 0 on a weak covariance.
    return mdl_order(R, system.L, K_max).clamp_min(1)


def _classical(scenes: SceneBatch, system: SystemConfig, K: torch.Tensor | None,
               fov: FieldOfView | None = None) -> Estimates:
    from risloc.pipeline.localizer import Localizer

    loc = Localizer(system, "classical", workers=1, fov=fov)
    return loc.localize(scenes.y, scenes.H, scenes.codes, scenes.snr_db, K).estimates


def _searching(config, fov: FieldOfView | None):
    """An estimator's default ``config`` searching ``fov`` (None: its own default box)."""
    return config if fov is None else replace(config, fov=fov)


def _music_samp(scenes: SceneBatch, system: SystemConfig, K: torch.Tensor | None,
                name: str = "music-samp", fov: FieldOfView | None = None) -> Estimates:
    from risloc.estimators.music import MusicConfig, music

    R = sample_covariance(scenes.y, scenes.H, scenes.codes)
    return music(R, _music_K(K if K is not None else _samp_order(R, system), system, name),
                 system, _searching(MusicConfig(), fov))


def _music_samp_nfmle(scenes: SceneBatch, system: SystemConfig,
                      K: torch.Tensor | None, fov: FieldOfView | None = None) -> Estimates:
    from risloc.estimators.nfmle import NFMLEConfig, nfmle_refine

    init = _music_samp(scenes, system, K, "music-samp+nfmle", fov)  # (its warnings name it)
    return nfmle_refine(scenes.y, scenes.H, scenes.codes, init, system,
                        _searching(NFMLEConfig(), fov))


def _ramezani_samp(scenes: SceneBatch, system: SystemConfig,
                   K: torch.Tensor | None, fov: FieldOfView | None = None) -> Estimates:
    from risloc.estimators.ramezani import RamezaniConfig, ramezani_music

    R = sample_covariance(scenes.y, scenes.H, scenes.codes)
    config = _searching(RamezaniConfig(), fov)
    return ramezani_music(R, K if K is not None else _samp_order(R, system), system,
                          config.for_system(system))


def _music_oracle(scenes: SceneBatch, system: SystemConfig, K: torch.Tensor | None,
                  fov: FieldOfView | None = None) -> Estimates:
    from risloc.estimators.music import MusicConfig, music

    if not scenes.has_truth:
        raise ValueError("music-oracle needs the truth (it runs on R_true)")
    R = scene_true_covariance(scenes, system)
    return music(R, _music_K(scenes.K if K is None else K, system, "music-oracle"), system,
                 _searching(MusicConfig(), fov))


NEEDS_TRUTH = ("music-oracle",)  # estimators that read the true scene, not only y, H, codes

ESTIMATORS: dict[str, Estimator] = {
    "classical": _classical,
    "music-samp": _music_samp,
    "music-samp+nfmle": _music_samp_nfmle,
    "ramezani-samp": _ramezani_samp,
    "music-oracle": _music_oracle,
}


def _learned(checkpoint: str | None) -> Estimator:
    from risloc.pipeline.localizer import Localizer

    loc = Localizer.from_checkpoint(checkpoint, workers=1)

    def run(scenes: SceneBatch, system: SystemConfig, K: torch.Tensor | None) -> Estimates:
        return loc.localize(scenes.y, scenes.H, scenes.codes, scenes.snr_db, K,
                            system=system).estimates

    return run


NAMES = (*ESTIMATORS, "learned")


def get_estimator(name: str, checkpoint: str | None = None,
                  fov: FieldOfView | None = None) -> Estimator:
    """The estimator called ``name``; ``checkpoint`` is used by "learned" (None: shipped),
    ``fov`` (the field of view searched; None: the default) by the others (a learned model
    searches its training scenes')."""
    if name == "learned":
        return _learned(checkpoint)
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose from {sorted(NAMES)}")
    return ESTIMATORS[name] if fov is None else functools.partial(ESTIMATORS[name], fov=fov)
