"""Measurement-domain ML fit from candidate positions: polish, repair, nested sets.

The learned pipeline's candidates (the network's slots, MUSIC peaks on its covariance)
are good starting points but not a fit: they miss sources that a stronger source masks
(with powers spread over 12 dB, about a third of the weakest sources at 20 dB) and they
carry spurious ones. This stage turns S candidates into nested maximum-likelihood fits,
judged by the concentrated likelihood of :mod:`risloc.estimators.nfmle`:

1. **polish** — the S candidates are refined jointly by NF-MLE (a few LM iterations).
2. **repair** — RELAX-style (Li & Stoica 1996) rounds on the S-source fit: the source
   whose removal costs least leaves, the classical greedy step
   (:func:`risloc.estimators.classical.residual_proposal`: the OLS statistic T on a
   shortlisted grid) proposes a replacement from the residual of the others, the swapped
   set is polished, and it is kept where its cost is lower. A source masked by a stronger
   one stands out in the residual once the stronger one is fitted. :func:`repair_chosen`
   runs the same rounds on the K sources finally chosen (the pipeline's polish stage, with
   K given).
3. **nested sets** — forward selection with refinement among the S fitted positions: the
   k-th source is the one that removes most residual energy given the first k - 1 (the
   OLS statistic), and the k chosen are polished jointly before the next pick. A K_max
   fit's positions are not those of its subsets (a spurious neighbour of a strong source
   absorbs part of its error and looks like a source on its own: backward elimination
   from the S-source fit kept such a neighbour instead of a weak true source).
   theta[:, :k] is the k-source set (positions of the last polished set), C_k its cost.
   Each set of 2 or more is then repaired as in 2 (``MLFitConfig.nested_repairs``): the
   S-source fit can miss a source that no subset of it holds.

The removal cost of source j from a fit with amplitudes s_l and Gram G_l = B_l^H B_l is
the least-squares downdate sum_l |s_lj|^2 / [G_l^-1]_jj: all S of them from one fit.

Who decides K is not this module's business: it returns the nested costs; the pipeline's
order stage reads them (:mod:`risloc.pipeline.order`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch

from risloc.config import SystemConfig
from risloc.core.params import steering_at
from risloc.covariance.tools import abs2
from risloc.estimators.classical import (
    ClassicalConfig,
    ols_statistic,
    residual_proposal,
    search_grid,
    snapshot_gains,
)
from risloc.estimators.nfmle import Fit, NFMLEConfig, amplitude_fit, lm_solve


@dataclass(frozen=True)
class MLFitConfig:
    """Settings of :func:`ml_fit`.

    polish : the joint NF-MLE of the candidates and of every repaired set (few LM
        iterations, float32 is enough: the pipeline polishes the chosen sources last; 2
        iterations, as accurate as 3 on the validation split and 13 % faster:
        ``benchmarks/bench_fit_settings.py --variants cheaper``).
    repairs : repair rounds on the S-source fit (0 = none; 1 since the nested sets are
        repaired too, below: 2 with them cost 13 % more time for 1 more corner cell).
    next_on_failure : after a round that did not lower a scene's cost, its next round tries
        the next-weakest source (the same source would fail again); False repeats it.
    shortlist : grid points at which the repair's statistic T is evaluated exactly (half
        ranked by the OLS numerator over the approximate gains, half by the numerator:
        :func:`risloc.estimators.classical.residual_proposal`).
    shortlist_bf16 : rank the grid for the shortlist with bfloat16 products where the
        hardware runs them natively (2x faster there; the shortlist is a ranking, T on it
        stays exact).
    shortlist_projection : the gain-weighted half of the shortlist divides by the share of
        a(g) outside the other sources' steering span (``found`` of
        :func:`risloc.estimators.classical.residual_proposal`), so a source beside a fitted
        one is not ranked out. Chosen on the validation split
        (``benchmarks/bench_fit_variants.py``, heads refitted): 29 of 36 corner cells with
        F1 and K accuracy >= classical - 0.01 instead of 26 (dense 10 dB, edge 5 and 10 dB,
        DFT 20 dB newly met; near 10 dB newly missed); projecting the numerator half too:
        28. The learned localizer's time: 0.978x in ``benchmarks/bench_ab.py`` (noise).
    greedy_nested : (off; the default from 117c700 until the nested repairs, which find
        more of what it found at the same cost) the nested selection's greedy step
        (:func:`_nested`): from the second
        pick on, the repair grid's residual proposal is taken where it removes more energy
        than the best remaining fitted position plus ``greedy_margin`` L sigma^2 (sigma^2
        estimated from the S-source fit's residual; L sigma^2 is the energy noise alone
        leaves in a grid cell on average). Margins 0 / 0.5 / 1 / 2 on the validation split
        (``benchmarks/results/greedy_margin.txt``): 0 loses F1 at 5 dB where the fitted
        positions hold weak true sources that a noise peak on the grid outbids; 1 keeps
        those and narrows the F1 gap to the classical localizer on dense sources (5 and
        10 dB) and at the azimuth edge (10 dB) by about a third, little elsewhere.
    nested_repairs : repair rounds on each nested set of 2 or more sources after its polish
        (0 = none). The S-source fit's positions can miss a source that no subset then
        holds (at 10-20 dB in dense scenes, with DFT codes, in near line-of-sight
        channels); a round on the k-set itself finds it on the residual of the others.
        Chosen on the validation split (``benchmarks/bench_nested_sets.py``,
        ``benchmarks/bench_fit_variants.py``, docs/results.md): with ``repairs`` 1 and no
        greedy step about the time of the fit stage before (1.01-1.06x the learned
        localizer's), 26 instead of 23 of the 36 corner cells; with 2 repairs 27 at
        1.15x, with the greedy step kept too 27 at 1.33-1.37x.
    repair_margin : a repair's swap is kept where it lowers the cost C by more than this
        many times L sigma^2, the energy one more source removes from noise alone on
        average, sigma^2 estimated from the current fit of K sources (C / (L (M - K))); 0
        keeps every swap that lowers the cost. Where sources are weak a noise peak on the
        grid lowers the cost a little too, and the swap loses a true source the network
        proposed. The pipeline sets it where the caller gives K
        (``LearnedPipeline.known_K_margin``) and, where its order head decides K, to the
        margin the head was fitted on (``risloc fit-order --margin``; 0 for the shipped
        head).
    search : the grid of the repair proposals (and its field of view, which should be the
        polish's): the classical localizer's.
    """

    polish: NFMLEConfig = field(default_factory=lambda: NFMLEConfig(
        iterations=2, double=False, tikhonov=1e-5))
    repairs: int = 1
    next_on_failure: bool = False
    shortlist: int = 32
    shortlist_bf16: bool = True
    shortlist_projection: bool = True
    select_iterations: int = 2
    greedy_nested: bool = False
    greedy_margin: float = 1.0
    nested_repairs: int = 1
    repair_margin: float = 0.0
    search: ClassicalConfig = field(default_factory=ClassicalConfig)

    def __post_init__(self) -> None:
        if self.repairs < 0 or self.nested_repairs < 0 or self.shortlist < 1:
            raise ValueError(f"repairs and nested_repairs must be >= 0 and shortlist >= 1, got "
                             f"{self.repairs}, {self.nested_repairs}, {self.shortlist}")
        if not self.repair_margin >= 0:
            raise ValueError(f"repair_margin must be >= 0, got {self.repair_margin}")
        if self.polish.fov != self.search.fov:
            raise ValueError("the polish and the repair grid must share one field of view")


class MLFit(NamedTuple):
    """Nested ML fits of a batch (S = number of candidates).

    theta : [B, S, 3] — (azimuth [rad], elevation [rad], 1/range [1/m]) in nested order:
        theta[:, :k] is the k-source set
    costs : [B, S + 1] float64 — C_0 = sum_l ||y_l||^2, C_k the residual of the k-source set
        (non-increasing)
    received : [B, S] float — power each source contributes per antenna in the S-source
        fit, mean_l |s_lj|^2 ||Phi_l a_j||^2 / M (units of |y|^2), nested order
    repaired : [B] int64 — repair rounds that lowered the cost
    """

    theta: torch.Tensor
    costs: torch.Tensor
    received: torch.Tensor
    repaired: torch.Tensor


def removal_gains(fit: Fit, mask: torch.Tensor) -> torch.Tensor:
    """Residual cost each source's removal adds, sum_l |s_lj|^2 / [G_l^-1]_jj: [B, S]
    (+inf where mask is False)."""
    Ginv = torch.linalg.inv_ex(fit.G)[0]  # (B, L, S, S), small, loaded: no singularity check
    d = torch.diagonal(Ginv, dim1=-2, dim2=-1).real.clamp_min(1e-30)  # (B, L, S)
    gain = (abs2(fit.s) / d).sum(1)
    return torch.where(mask, gain, torch.full_like(gain, float("inf")))


def _fit(y, H, codes, theta, mask, system, cfg: NFMLEConfig) -> Fit:
    return amplitude_fit(y, H, codes, steering_at(theta, system, y.dtype), mask, cfg.tikhonov)


def _swap(theta: torch.Tensor, j: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """theta with slots j [B] and k [B] exchanged (an involution)."""
    B, S, _ = theta.shape
    perm = torch.arange(S, device=theta.device).expand(B, S).clone()
    rows = torch.arange(B, device=theta.device)
    perm[rows, j] = k
    perm[rows, k] = j
    return theta.gather(1, perm.unsqueeze(-1).expand(-1, -1, 3))


def _take(new: tuple, old: tuple, where: torch.Tensor) -> tuple:
    return tuple(torch.where(where.view((-1,) + (1,) * (n.ndim - 1)), n, o)
                 for n, o in zip(new, old, strict=True))


def _repair(y, H, codes, theta, fit, K, system, config: MLFitConfig, grid, rank=None,
            gains=None):
    """One repair round (module docstring) on each scene's first K [B] sources (fit: their
    amplitude fit); gains: :func:`snapshot_gains` of the scenes (the shortlist's ranking;
    None computes them); returns (theta, fit, improved [B] bool). The source of rank ``rank``
    [B] modulo K (0 = the weakest; None: the weakest everywhere) by removal gain moves to slot
    K - 1, so the others stay leading as the OLS statistic needs."""
    B, S, _ = theta.shape
    slots = torch.arange(S, device=y.device)
    mask = slots < K[:, None]
    last = K - 1
    removal = removal_gains(fit, mask)
    if rank is None:
        pick = removal.argmin(-1)
    else:
        pick = removal.argsort(-1).gather(1, (rank % K)[:, None])[:, 0]
    theta = _swap(theta, pick, last)
    A = steering_at(theta, system, y.dtype)  # in theta's new order
    fit = amplitude_fit(y, H, codes, A, mask, config.polish.tikhonov)
    others = mask & (slots != last[:, None])
    rest = amplitude_fit(y, H, codes, A, others, config.polish.tikhonov)
    found = torch.where(others.unsqueeze(-1), A, 0) if config.shortlist_projection else None
    prop = residual_proposal(y, H, codes, rest, others, grid, config.search.floor,
                             config.shortlist, gains, found)
    cand = theta.clone()
    cand[torch.arange(B, device=y.device), last] = prop.theta.to(cand.dtype)
    # every swap is refined: keeping only those that lower the cost before refinement
    # lost weak sources (validation split, powers spread over 12 dB)
    cand, cfit, _ = lm_solve(y, H, codes, cand, mask, system, config.polish)
    threshold = fit.cost
    if config.repair_margin:  # C - margin L sigma^2, sigma^2 = C / (L (M - K))
        threshold = fit.cost * (1 - config.repair_margin / (y.shape[2] - K).clamp_min(1))
    better = cfit.cost < threshold
    # slots beyond K as given (lm_solve projects every slot onto the box)
    theta = torch.where(better.view(-1, 1, 1) & mask.unsqueeze(-1), cand, theta)
    fit = Fit(*_take(tuple(cfit), tuple(fit), better))
    return theta, fit, better


@torch.no_grad()
def repair_chosen(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, theta: torch.Tensor,
                  K: torch.Tensor, system: SystemConfig, config: MLFitConfig = MLFitConfig(),
                  rounds: int = 1) -> torch.Tensor:
    """Repair rounds (module docstring) on the sources finally chosen: each scene's first
    K [B] of theta [B, S, 3]. The rounds of :func:`ml_fit` work on all S candidates, where
    spurious ones can absorb a weak source's energy; on the chosen set the residual of the
    others shows it. Returns theta [B, S, 3] (the first K of each scene possibly changed,
    their order too; the rest as given)."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if K.shape != theta.shape[:1]:
        raise ValueError(f"K must be [B]={theta.shape[0]} counts, got shape {tuple(K.shape)}")
    _check_host_counts(K, theta.shape[1])
    K = K.to(device=y.device, dtype=torch.int64)
    theta = theta.to(y.real.dtype).clone()
    mask = torch.arange(theta.shape[1], device=y.device) < K[:, None]
    fit = _fit(y, H, codes, theta, mask, system, config.polish)
    grid = search_grid(system, config.search, y.dtype, str(y.device), config.shortlist_bf16)
    gains = snapshot_gains(H, codes, grid) if rounds > 0 else None
    for _ in range(rounds):
        theta, fit, _ = _repair(y, H, codes, theta, fit, K, system, config, grid, gains=gains)
    return theta


def _check_host_counts(K: torch.Tensor, slots: int) -> None:
    """K's values in 1..slots, checked where K is on the host. On a GPU the check would wait
    for it, and a call captured as a CUDA graph cannot: the Localizer checks a caller's K on
    the host (resolve_K), and the pipeline's own decisions lie in range. (Tagged a CPU
    route in risloc.core.syncs.)"""
    if K.device.type == "cpu" and bool(((K < 1) | (K > slots)).any()):
        raise ValueError(f"K must be counts in 1..{slots} (the slots of theta), got values "
                         f"{K.unique().tolist()}")


def _repair_set(y, H, codes, theta, fit, system, config: MLFitConfig, grid, gains):
    """``config.nested_repairs`` repair rounds on the set theta [B, k, 3] (all k real) with
    its Fit (None: computed here): (theta, its Fit), theta in the Fit's column order."""
    B, k, _ = theta.shape
    theta = theta.clone()
    if fit is None:
        fit = _fit(y, H, codes, theta, torch.ones(B, k, dtype=torch.bool, device=y.device),
                   system, config.polish)
    full = torch.full((B,), k, dtype=torch.int64, device=y.device)
    for _ in range(config.nested_repairs):
        theta, fit, _ = _repair(y, H, codes, theta, fit, full, system, config, grid,
                                gains=gains)
    return theta, fit


def _nested(y, H, codes, theta, fit, system, config: MLFitConfig, grid=None, grid_gains=None):
    """Forward selection with refinement: the k-th source is the one of the S fitted
    positions that removes most residual energy given the first k - 1 (OLS), and the k
    chosen are polished jointly before the next pick, so each nested set is refined as a
    set of k (a K_max fit's positions are not those of its subsets: a spurious neighbour
    of a strong source absorbs part of its error and looks like a source on its own).
    With ``config.greedy_nested`` (and the repair ``grid`` and its ``grid_gains``) the
    classical greedy step competes from the second pick on: the residual proposal on the
    grid is taken where it removes more energy than the best remaining fitted position by
    ``config.greedy_margin`` L sigma^2 (the S-source fit can miss a source that dense
    neighbours or a 25 dB stronger source hide, and then no subset of it holds it)."""
    B, S, _ = theta.shape
    dev = y.device
    pool = theta.clone()
    cols = fit.Bm  # (B, L, M, S)
    gains = abs2(cols).sum(2)  # (B, L, S)
    rows = torch.arange(B, device=dev)
    taken = torch.zeros(B, S, dtype=torch.bool, device=dev)
    nested = torch.empty_like(theta)
    costs = torch.empty(B, S + 1, dtype=torch.float64, device=dev)
    costs[:, 0] = abs2(y).sum((-1, -2)).double()
    cur = None
    greedy = config.greedy_nested and grid is not None
    proposed = torch.zeros(B, dtype=torch.bool, device=dev)  # a proposal was taken
    # L sigma^2 = C_S / (M - S), sigma^2 = C_S / (L (M - S)) estimated from the S-source fit
    margin = config.greedy_margin * fit.cost / max(y.shape[2] - S, 1)
    for k in range(S):
        found = torch.ones(B, k, dtype=torch.bool, device=dev)
        if k == 0:
            T = (abs2(cols.mH @ y.unsqueeze(-1)).squeeze(-1) / gains.clamp_min(1e-30)).sum(1)
        else:
            T = ols_statistic(cur, cols, gains, config.search.floor, found)
        T_best, j = torch.where(taken, torch.full_like(T, -float("inf")), T).max(-1)
        pick = pool[rows, j]
        if greedy and k > 0:
            prop = residual_proposal(y, H, codes, cur, found, grid, config.search.floor,
                                     config.shortlist, grid_gains)
            grid_wins = prop.gain > T_best + margin
            pick = torch.where(grid_wins[:, None], prop.theta.to(pick.dtype), pick)
            proposed |= grid_wins
            j = torch.where(grid_wins, -1, j)
        taken |= torch.arange(S, device=dev) == j.unsqueeze(-1)  # j = -1: nothing taken
        nested[:, k] = pick
        mask = torch.ones(B, k + 1, dtype=torch.bool, device=dev)
        if k == S - 1 and not (greedy and bool(proposed.any())):  # the S-source fit itself
            cur = fit
        else:
            th, cur, _ = lm_solve(y, H, codes, nested[:, :k + 1].clone(), mask, system,
                                  replace(config.polish, iterations=config.select_iterations))
            nested[:, :k + 1] = th
        if k > 0 and config.nested_repairs and grid is not None:
            in_order = cur is not fit  # the S-source fit's columns are in the pool's order
            nested[:, :k + 1], cur = _repair_set(y, H, codes, nested[:, :k + 1],
                                                 cur if in_order else None, system, config,
                                                 grid, grid_gains)
        costs[:, k + 1] = cur.cost.double()
    return nested, torch.cummin(costs, 1).values


@torch.no_grad()
def ml_fit(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, start: torch.Tensor,
           system: SystemConfig, config: MLFitConfig = MLFitConfig()) -> MLFit:
    """Nested ML fits from S candidate positions per scene (module docstring).

    y : [B, L, M], H : [B, M, N], codes : [B, L, N] complex (of the working dtype of
        ``config.polish``; no input checks: the pipeline checks its inputs once)
    start : [B, S, 3] — finite candidate positions (azimuth, elevation, 1/range), S >= 1
    """
    theta, fit, grid, repaired, gains = polish_and_repair(y, H, codes, start, system, config)
    return nested_fit(y, H, codes, theta, fit, repaired, system, config, grid, gains)


def polish_and_repair(y, H, codes, start, system: SystemConfig, config: MLFitConfig):
    """Steps 1-2 of :func:`ml_fit`: (theta [B, S, 3], its Fit, the repair grid, repaired
    [B] rounds that lowered the cost, the grid's :func:`snapshot_gains` or None). The gains
    are formed once for all rounds (and the nested selection's greedy steps)."""
    B, S, _ = start.shape
    full = torch.ones(B, S, dtype=torch.bool, device=y.device)
    theta, fit, _ = lm_solve(y, H, codes, start.to(y.real.dtype).clone(), full, system,
                             config.polish)
    grid = search_grid(system, config.search, y.dtype, str(y.device), config.shortlist_bf16)
    repaired = torch.zeros(B, dtype=torch.int64, device=y.device)
    all_S = torch.full((B,), S, dtype=torch.int64, device=y.device)
    rank = torch.zeros(B, dtype=torch.int64, device=y.device) \
        if config.next_on_failure else None
    rounds = config.repairs if S > 1 else 0
    gains = snapshot_gains(H, codes, grid) \
        if rounds > 0 or ((config.greedy_nested or config.nested_repairs) and S > 1) else None
    for _ in range(rounds):
        theta, fit, improved = _repair(y, H, codes, theta, fit, all_S, system, config, grid,
                                       rank, gains)
        repaired += improved
        if rank is not None:
            rank = torch.where(improved, 0, rank + 1)
    return theta, fit, grid, repaired, gains


def nested_fit(y, H, codes, theta, fit, repaired, system: SystemConfig,
               config: MLFitConfig, grid=None, gains=None) -> MLFit:
    """Step 3 of :func:`ml_fit` on the S-source fit (theta, fit): the nested sets, their
    costs and the power each source contributes (the greedy steps of the selection need
    the repair grid and its gains, :func:`polish_and_repair`)."""
    B, S, _ = theta.shape
    nested, costs = _nested(y, H, codes, theta, fit, system, config, grid, gains)
    nf = _fit(y, H, codes, nested, torch.ones(B, S, dtype=torch.bool, device=y.device),
              system, config.polish)
    received = (abs2(nf.s) * abs2(nf.Bm).sum(-2)).mean(1) / y.shape[-1]
    return MLFit(nested, costs, received, repaired)
