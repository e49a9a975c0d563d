"""ML check of the order head's K on the polished fit: one greedy step up, then a swap.

The order head decides K from MUSIC candidates on R_blend. When a true source is missing
from those candidates, the head can only under-count, or count right with a spurious
source in its place. After NF-MLE has polished the K_hat sources, the check:

1. **add** - one greedy step of the classical localizer given the K_hat sources
   (:func:`risloc.estimators.classical.next_source`, the OLS statistic T(g) on a
   shortlist of grid points) proposes source K_hat + 1, and NF-MLE polishes all of them.
   The source stays when it lowers the ML residual by more than ``add_nats`` sigma^2.
2. **swap** - where a source was added, each source of the K_hat + 1 is removed in turn
   (the rest polished again), and the cheapest one leaves when its removal costs less
   than ``drop_nats`` sigma^2: K stays K_hat, and a spurious source is replaced by the
   one that was missing.

It runs only on scenes whose order-head probability of K_hat is below ``gate`` (where the
head's errors are: at 10 dB on the validation split, 24 of its 27 errors in 400 scenes,
in 23 % of the scenes) and whose SNR, when given, is at least ``min_snr_db``
(:func:`check_selection`). sigma^2 comes from the SNR when it is given and from the residual
of the K_hat + 1 fit otherwise (C / (L (M - K_hat - 1))).

Defaults chosen on the validation split (shipped model, 1,200 scenes at 10 dB and 400
at 0, 5 and 20 dB; six (add, drop) pairs from 40/30 to 80/40 tried;
``benchmarks/bench_order_refit.py``): at 10 dB the K accuracy of the order head rises
from 0.932 to 0.943 (scenes 0-399) and from 0.924 to 0.944 (scenes 400-1199); 0, 5 and
20 dB change by at most 0.002. The test split, never used for the choice, is in
``benchmarks/bench_pipeline.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from risloc.config import SystemConfig
from risloc.core.params import Estimates
from risloc.estimators.classical import ClassicalConfig, next_source
from risloc.estimators.nfmle import NFMLEConfig, nfmle_fit
from risloc.estimators.order import noise_var_from_snr


@dataclass(frozen=True)
class OrderCheckConfig:
    """add_nats / drop_nats : thresholds in units of sigma^2 (module docstring);
    gate : check the scenes whose order-head probability of K_hat is below it (1.0 = all);
    min_snr_db : and whose given SNR is at least this (scenes without an SNR are checked;
        None = any SNR). Below 5 dB the check changed no decision on the validation split
        (0 and 5 dB, 400 scenes each) but it is where the head is most often unsure;
    shortlist : grid points at which T(g) is evaluated (None = the whole grid)."""

    add_nats: float = 50.0
    drop_nats: float = 40.0
    gate: float = 0.95
    min_snr_db: float | None = 5.0
    shortlist: int | None = 64

    def __post_init__(self) -> None:
        if not 0 <= self.drop_nats <= self.add_nats:
            raise ValueError(f"need 0 <= drop_nats <= add_nats, got {self.drop_nats}, "
                             f"{self.add_nats}")
        if not 0 < self.gate <= 1:
            raise ValueError(f"gate must lie in (0, 1], got {self.gate}")


def check_selection(probabilities: torch.Tensor, snr_db: torch.Tensor | None,
                    config: OrderCheckConfig) -> torch.Tensor:
    """[B] bool: the scenes to check, from the order head's probabilities [B, K_max] and
    the SNR [B] (NaN = unknown) or None (``config.gate`` and ``config.min_snr_db``)."""
    top = probabilities.amax(-1)
    # gate 1.0 means every scene (a float32 softmax can round a sure head to exactly 1.0)
    select = top < config.gate if config.gate < 1 else torch.ones_like(top, dtype=torch.bool)
    if snr_db is not None and config.min_snr_db is not None:
        snr = snr_db.to(select.device)
        select &= ~torch.isfinite(snr) | (snr >= config.min_snr_db)
    return select


def _place(est: Estimates, slot: torch.Tensor, pos: torch.Tensor) -> Estimates:
    """est with one more source, at slot [B] (= its K) from pos [B, 3] (az, el, 1/r)."""
    rows = torch.arange(len(est), device=slot.device)
    out = Estimates(est.K + 1, est.azimuth.clone(), est.elevation.clone(),
                    est.range_m.clone(), est.score.clone())
    for t, v in ((out.azimuth, pos[:, 0]), (out.elevation, pos[:, 1]),
                 (out.range_m, 1.0 / pos[:, 2]), (out.score, torch.zeros_like(pos[:, 0]))):
        t[rows, slot] = v.to(t.dtype)
    return out


def _without(est: Estimates, j: int) -> Estimates:
    """est with slot j removed (later slots move up; one NaN slot appended)."""
    keep = torch.arange(est.azimuth.shape[1], device=est.K.device) != j
    return Estimates(est.K - 1, *(torch.cat([t[:, keep], torch.full_like(t[:, :1], math.nan)],
                                            1)
                                  for t in (est.azimuth, est.elevation, est.range_m,
                                            est.score)))


def _where(cond: torch.Tensor, a: Estimates, b: Estimates) -> Estimates:
    c = cond.view(-1, 1)
    return Estimates(torch.where(cond, a.K, b.K), *(torch.where(c, x, y) for x, y in zip(
        (a.azimuth, a.elevation, a.range_m, a.score),
        (b.azimuth, b.elevation, b.range_m, b.score), strict=True)))


def _set_rows(est: Estimates, idx: torch.Tensor, new: Estimates) -> Estimates:
    """A copy of est with rows idx replaced by new."""
    out = Estimates(est.K.clone(), est.azimuth.clone(), est.elevation.clone(),
                    est.range_m.clone(), est.score.clone())
    out.K[idx] = new.K
    for t, v in ((out.azimuth, new.azimuth), (out.elevation, new.elevation),
                 (out.range_m, new.range_m), (out.score, new.score)):
        t[idx] = v.to(t.dtype)
    return out


def add_source(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, est: Estimates,
               system: SystemConfig, nfmle: NFMLEConfig, shortlist: int | None):
    """Step 1 (*add*): the greedy OLS proposal joins est's sources (every scene must have
    K < its slot count) and NF-MLE polishes all of them; the ``nfmle_fit`` Refinement.
    The proposals come from a grid over NF-MLE's field-of-view box."""
    search = ClassicalConfig().with_fov(nfmle.fov)
    pos = next_source(y, H, codes, est, system, search, shortlist=shortlist)
    return nfmle_fit(y, H, codes, _place(est, est.K, pos), system, nfmle)


def cheapest_removal(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, est: Estimates,
                     cost: torch.Tensor, sigma2: torch.Tensor, system: SystemConfig,
                     nfmle: NFMLEConfig) -> tuple[Estimates, torch.Tensor]:
    """Step 2 (*swap*): each of est's sources (K >= 2 per scene) removed in turn and the
    rest polished again; (the polished fit without the cheapest one, what removing it
    costs [B] in units of sigma^2 over ``cost``)."""
    best, best_loss = est, torch.full_like(sigma2, math.inf)
    for j in range(int(est.K.max())):
        fit = nfmle_fit(y, H, codes, _without(est, j), system, nfmle)
        loss = torch.where(j < est.K, (fit.cost.double() - cost.double()) / sigma2, math.inf)
        better = loss < best_loss
        best, best_loss = _where(better, fit.estimates, best), torch.where(better, loss,
                                                                            best_loss)
    return best, best_loss


@torch.no_grad()
def check_order(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, est: Estimates,
                cost: torch.Tensor, snr_db: torch.Tensor | None, system: SystemConfig,
                nfmle: NFMLEConfig, config: OrderCheckConfig = OrderCheckConfig(),
                select: torch.Tensor | None = None) -> Estimates:
    """Add-then-swap check (module docstring) of the selected scenes.

    y [B, L, M], H [B, M, N], codes [B, L, N] complex; est: the polished K_hat sources
    (leading slots, at least K_max slots); cost [B]: their ML residual; snr_db [B] (NaN =
    unknown) or None; select [B] bool or None (all; the caller applies ``config.gate``).
    Returns Estimates with est's slots; unselected scenes unchanged.
    """
    B, L, M = y.shape
    if est.azimuth.shape[1] < system.K_max or len(est) != B or cost.shape != (B,):
        raise ValueError(f"need est with >= K_max={system.K_max} slots and cost [B={B}], got "
                         f"{tuple(est.azimuth.shape)} and {tuple(cost.shape)}")
    can = est.K < system.K_max  # scenes that can take a source
    idx = (can if select is None else can & select).nonzero().squeeze(-1)
    if idx.numel() == 0:
        return est
    y_, H_, c_, e = y[idx], H[idx], codes[idx], est[idx]
    added = add_source(y_, H_, c_, e, system, nfmle, config.shortlist)
    sigma2 = added.cost.double() / (L * (M - added.estimates.K).clamp_min(1))
    if snr_db is not None:
        snr = snr_db.to(idx.device)[idx].to(torch.float64)
        known = torch.isfinite(snr)
        sigma2 = torch.where(known, noise_var_from_snr(y_, torch.where(known, snr, 0.0)),
                             sigma2)
    keep = (cost[idx].double() - added.cost.double()) / sigma2 > config.add_nats
    if not bool(keep.any()):
        return est
    k = keep.nonzero().squeeze(-1)
    grown = added.estimates[k]
    fewer, loss = cheapest_removal(y_[k], H_[k], c_[k], grown, added.cost[k], sigma2[k],
                                   system, nfmle)
    return _set_rows(est, idx[k], _where(loss < config.drop_nats, fewer, grown))
