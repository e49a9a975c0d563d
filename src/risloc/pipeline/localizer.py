"""The localizer users run: scenes in, sources out.

``Localizer(system, method="classical")`` or ``Localizer.from_checkpoint(path)`` (the
learned pipeline: network -> R_blend -> near-field MUSIC -> NF-MLE polish -> K decision).
``.localize(y, H, codes, snr_db=None, K=None)`` is batched; a scene with non-finite
inputs is reported by index in ``LocalizationResult.bad`` and the others are still
localized.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from risloc.config import SystemConfig
from risloc.core.params import Estimates, concat_estimates
from risloc.parallel import run_in_chunks

log = logging.getLogger(__name__)

METHODS = ("learned", "classical")


@dataclass(frozen=True)
class LocalizationResult:
    """Estimates of a batch plus the indices of scenes that could not be localized.

    estimates : Estimates with [B] scenes (bad scenes: K = 0, all slots NaN)
    bad : tuple of (scene index, reason)
    """

    estimates: Estimates
    bad: tuple[tuple[int, str], ...] = ()


def finite_scene_mask(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """[B] bool — scenes whose y, H and codes are all finite and whose channel is non-zero."""
    ok = torch.isfinite(torch.view_as_real(y)).flatten(1).all(1)
    ok &= torch.isfinite(torch.view_as_real(H)).flatten(1).all(1)
    ok &= torch.isfinite(torch.view_as_real(codes)).flatten(1).all(1)
    ok &= H.abs().flatten(1).amax(1) > 0
    return ok


def _bad_reasons(y, H, codes, ok: torch.Tensor) -> tuple[tuple[int, str], ...]:
    out = []
    for i in torch.nonzero(~ok).flatten().tolist():
        parts = [name for name, t in (("y", y[i]), ("H", H[i]), ("codes", codes[i]))
                 if not bool(torch.isfinite(torch.view_as_real(t)).all())]
        reason = (f"non-finite values in {', '.join(parts)}" if parts
                  else "all-zero channel H")
        out.append((i, reason))
    return tuple(out)


def _scatter(est: Estimates, ok: torch.Tensor) -> Estimates:
    """Place estimates of the good scenes back into a full batch (bad: K=0, NaN)."""
    B, S = ok.shape[0], est.azimuth.shape[-1]
    K = torch.zeros(B, dtype=torch.int64, device=ok.device)
    K[ok] = est.K
    fields = {}
    for name in ("azimuth", "elevation", "range_m", "score"):
        full = torch.full((B, S), math.nan, dtype=torch.float32, device=ok.device)
        full[ok] = getattr(est, name).to(torch.float32)
        fields[name] = full
    return Estimates(K=K, **fields)


class Localizer:
    """Localize sources from scene measurements (see module docstring)."""

    def __init__(self, system: SystemConfig, method: str = "classical", model=None,
                 workers: int | None = None):
        """workers: CPU threads a batch is split over (None: one per core; 1: no
        splitting); see :mod:`risloc.parallel`."""
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method == "learned" and model is None:
            raise ValueError("the learned method needs a model: use Localizer.from_checkpoint")
        self.system, self.method, self.model, self.workers = system, method, model, workers

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, method: str = "learned",
                        workers: int | None = None) -> Localizer:
        """Load a trained pipeline (None = the shipped default model)."""
        from risloc.pipeline.learned import load_learned_pipeline

        pipeline = load_learned_pipeline(path)
        return cls(pipeline.system, method, pipeline, workers)

    def _check(self, y, H, codes) -> None:
        s = self.system
        for name, t, shape in (("y", y, (s.L, s.M)), ("H", H, (s.M, s.N)),
                               ("codes", codes, (s.L, s.N))):
            if t.ndim != 3 or tuple(t.shape[1:]) != shape:
                raise ValueError(f"{name} must be [B, {shape[0]}, {shape[1]}] for this "
                                 f"system, got {tuple(t.shape)}")
            if not t.is_complex():
                raise ValueError(f"{name} must be complex, got {t.dtype}")
        if not y.shape[0] == H.shape[0] == codes.shape[0]:
            raise ValueError("y, H and codes must hold the same number of scenes")

    def localize(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                 snr_db: torch.Tensor | float | None = None,
                 K: torch.Tensor | int | None = None) -> LocalizationResult:
        """Localize a batch. y [B,L,M], H [B,M,N], codes [B,L,N] complex; snr_db [B] dB
        or None (estimated); K None (estimated), int or [B] (known)."""
        self._check(y, H, codes)
        B = y.shape[0]
        ok = finite_scene_mask(y, H, codes)
        bad = _bad_reasons(y, H, codes, ok)
        for i, reason in bad:
            log.warning("scene %d skipped: %s", i, reason)
        snr = None if snr_db is None else torch.as_tensor(snr_db, dtype=torch.float32
                                                          ).expand(B).clone()
        if snr is not None and not bool(torch.isfinite(snr).all()):
            snr = None  # a file with partial SNRs: estimate for all
        Kt = None if K is None else torch.as_tensor(K, dtype=torch.int64).expand(B).clone()
        if not bool(ok.any()):
            S = self.system.K_max
            nan = torch.full((B, S), math.nan)
            return LocalizationResult(Estimates(torch.zeros(B, dtype=torch.int64), nan, nan,
                                                nan, nan), bad)
        args = (y[ok].to(torch.complex64), H[ok].to(torch.complex64),
                codes[ok].to(torch.complex64), None if snr is None else snr[ok],
                None if Kt is None else Kt[ok])
        parts = run_in_chunks(
            lambda lo, hi: self._run(*(None if t is None else t[lo:hi] for t in args)),
            args[0].shape[0], self.workers, y.device)
        return LocalizationResult(_scatter(concat_estimates(parts), ok), bad)

    def _run(self, y, H, codes, snr, K) -> Estimates:
        if self.method == "classical":
            from risloc.estimators.classical import classical_localize

            return classical_localize(y, H, codes, self.system, K=K, snr_db=snr)
        return self.model.localize(y, H, codes, snr, K)
