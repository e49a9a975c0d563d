"""Classical localizer: greedy measurement-domain matched-field detection + NF-MLE.

For k = 1..K_max (or the known K) the next source is the grid point g that explains most
of the residual energy given the sources found so far (orthogonal least squares, the
greedy form of the deterministic ML of :mod:`risloc.estimators.nfmle`):

    T(g) = sum_l |b_l(g)^H r_l|^2 / ||P_perp_l b_l(g)||^2,   b_l(g) = H diag(c_l) a(g),

with r_l = P_perp_l y_l the residual of y_l after projecting out the found columns of
B_l (P_perp_l the projector onto their orthogonal complement); T(g) is the cost drop of
adding g. The plain normalised matched field (||b_l(g)||^2 in the denominator) was
measured worse (K accuracy 0.69 instead of 1.00 for K = 3 at 10 dB).

After each addition all found sources are refined jointly (a few NF-MLE iterations),
then one RELAX sweep (Li & Stoica, IEEE TSP 44(2), 1996) re-searches each source with
the others fixed, refines jointly and keeps the change where the joint cost falls. Without
it, a first pick between several sources (a "ghost" that explains more energy than any
single source) stays: 7 of 32 scenes with K = 3 at 30 dB missed a source. With it, at
known K the final fit has a cost below the cost at the true positions in 94-100 % of the
scenes (K = 3 and 5, 0-10 dB, 16 scenes each): the remaining errors are those of the ML
estimate itself, not of the search. A re-search that finds the same source again (its
grid point's steering vector overlaps the current estimate's by >= 0.9) is not refined:
51-56 % of the re-searches on validation scenes at 0-20 dB, whose refinement mostly
moves the estimate a little within its lobe. That makes the classical localizer 1.19x
faster with its outputs within the speed issue's tolerance
(``benchmarks/bench_equivalence.py``); an overlap of 0.5 skips 94-98 % of them but
changed K in 1.1 % of the scenes.

The model order is then chosen from the nested residual costs C_0 >= C_1 >= ...
(:func:`risloc.estimators.order.residual_order`) and the chosen fit is polished by
NF-MLE to convergence; a pair of sources that cancel (two nearly collinear columns fitting
noise with amplitudes far above the scene's) then loses one member to a fresh search
(:func:`separate_cancelling`). The grid is uniform in sin(azimuth), elevation and 1/range over
the NF-MLE field of view; its steering vectors are cached (:mod:`risloc.estimators.grids`)
and the grid columns b_l(g) are formed once per chunk of scenes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch

from risloc.config import FieldOfView, SystemConfig
from risloc.core.checks import check_measurements, check_source_counts
from risloc.core.operator import apply_operator
from risloc.core.params import Estimates, steering_at
from risloc.covariance.tools import abs2, abs2_, leading_eigenpair, orthonormal_basis
from risloc.estimators import nfmle
from risloc.estimators.grids import (
    conj_steering_bf16,
    grid_positions,
    grid_power,
    grid_steering,
    native_bf16,
)
from risloc.estimators.nfmle import (
    Fit,
    NFMLEConfig,
    Refinement,
    amplitude_fit,
    lm_solve,
    nfmle_fit,
    source_energy,
    working_dtypes,
)
from risloc.estimators.order import (
    default_penalty,
    noise_var_from_snr,
    residual_order,
    snr_disagreement,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassicalConfig:
    """Settings of :func:`classical_localize`.

    grid_azimuth, grid_elevation, grid_inv_range : grid points along sin(az), el and 1/r
        (default 24 x 13 x 10 = 3120: every field-of-view point has a grid point with
        |a(g)^H a(p)|^2 >= 0.66 in 99.9 % of draws).
    step : joint NF-MLE run after each greedy addition (few iterations, float32).
    final : NF-MLE polish of the selected sources (to convergence, float64); its field of
        view is also the grid's (:meth:`with_fov` sets it).
    penalty : order-selection penalty per source in units of sigma^2 (see order.py).
    floor : lower clamp of ||P_perp b||^2 / ||b||^2 in T_k (guards the ratio near found
        sources, where numerator and denominator both vanish).
    same_source : a RELAX re-search whose grid point g has |a(g)^H a(theta_j)|^2 >= this with
        the current estimate theta_j (unit-norm steering vectors) found the same source,
        and its joint refinement is skipped; None refines every re-search.
    chunk : scenes per pass (bounds memory: the grid columns take ~6.4 MB per scene, 204 MB
        for 32). 32 rather than 16 since the buffers are reused: the LM loops, bound by the
        count of small operations, then serve twice the scenes per operation (1.216x in
        ``benchmarks/bench_ab.py``; positions within 4e-5 deg, K identical on 512 scenes of
        ``benchmarks/bench_equivalence.py``).
    """

    grid_azimuth: int = 24
    grid_elevation: int = 13
    grid_inv_range: int = 10
    step: NFMLEConfig = field(default_factory=lambda: NFMLEConfig(iterations=4, double=False,
                                                                  tikhonov=1e-5))
    final: NFMLEConfig = field(default_factory=lambda: NFMLEConfig(iterations=None,
                                                                   max_iterations=30))
    relax_sweeps: int = 1
    penalty: float | None = None
    floor: float = 0.05
    same_source: float | None = 0.9
    chunk: int = 32

    @property
    def fov(self) -> FieldOfView:
        return self.final.fov

    def with_fov(self, fov: FieldOfView) -> ClassicalConfig:
        """This configuration searching ``fov`` (grid, joint steps and final polish)."""
        return replace(self, step=replace(self.step, fov=fov), final=replace(self.final, fov=fov))

    def for_system(self, system: SystemConfig) -> ClassicalConfig:
        """This configuration with its grid as dense for ``system`` and its field of view as
        the defaults are for the default system (12 x 12 elements at lambda / 2: an aperture
        of 6 wavelengths a side) and field of view: a beam narrows with the aperture in
        wavelengths, so the points along sin(az), el and 1/r grow with it (1/r with the wider
        side) and with the span searched; never fewer. The passes hold fewer scenes where a
        scene's grid columns grow (N x grid points). The order penalty (None:
        :func:`default_penalty`) grows with the cells a spurious source is the best of:
        L + 6 sqrt(L) counts ~10^3, and more add sqrt(2 ln cells) sqrt(L) (24 x 24 elements:
        42.1 nats, not 40: at 30 dB it over-counts 0 and 2 of two sets of 40 validation
        scenes, 40 did 3 and 4; at 10 dB about the same; still not the default system's
        1.0 K accuracy, so not calibrated for other systems).
        The default system and field of view: this configuration, unchanged. (A 24 x 24 RIS
        with the default grid found 29 % of the field of view within the grid's coverage,
        and missed sources at 30 dB.)"""
        def spans(f: FieldOfView) -> tuple[float, float, float]:  # along sin(az), el, 1/r
            (a0, a1), (e0, e1), (r0, r1) = f.azimuth_deg, f.elevation_deg, f.range_m
            return (math.sin(math.radians(a1)) - math.sin(math.radians(a0)), e1 - e0,
                    1 / r0 - 1 / r1)

        wide = (system.N_H * system.spacing / system.wavelength / 6.0,
                system.N_V * system.spacing / system.wavelength / 6.0)
        (sa, se, sr), (ra, re, rr) = spans(self.fov), spans(FieldOfView())
        grow = (max(1.0, wide[0] * sa / ra), max(1.0, wide[1] * se / re),
                max(1.0, max(wide) * sr / rr))
        sizes = (math.ceil(self.grid_azimuth * grow[0] - 1e-9),
                 math.ceil(self.grid_elevation * grow[1] - 1e-9),
                 math.ceil(self.grid_inv_range * grow[2] - 1e-9))
        if sizes == (self.grid_azimuth, self.grid_elevation, self.grid_inv_range):
            return self
        cells = math.prod(sizes) / (self.grid_azimuth * self.grid_elevation
                                    * self.grid_inv_range)
        penalty = self.penalty
        if penalty is None:  # a spurious source is the best of ~10^3 x cells noise energies
            penalty = default_penalty(system.L) + math.sqrt(system.L) * (
                math.sqrt(2 * math.log(1e3 * cells)) - math.sqrt(2 * math.log(1e3)))
        return replace(self, grid_azimuth=sizes[0], grid_elevation=sizes[1],
                       grid_inv_range=sizes[2], penalty=penalty,
                       chunk=max(1, int(self.chunk / max(1.0, cells * system.N / 144))))

    def __post_init__(self) -> None:
        if min(self.grid_azimuth, self.grid_elevation, self.grid_inv_range) < 1:
            raise ValueError("grid sizes must be >= 1")
        if not 0 < self.floor <= 1 or self.chunk < 1 or self.relax_sweeps < 0:
            raise ValueError("floor must lie in (0, 1], chunk >= 1, relax_sweeps >= 0")
        if self.same_source is not None and not 0 < self.same_source <= 1:
            raise ValueError(f"same_source must lie in (0, 1] or be None, got "
                             f"{self.same_source}")


class GreedyGrid(NamedTuple):
    """Search grid in working precision.

    pos : [G, 3] real — (azimuth [rad], elevation [rad], 1/range [1/m])
    A : [N, G] complex — column g = a(g)
    A_bf16 : [2N, 2G] bfloat16 real form of A^* for the shortlist's ranking
        (:func:`risloc.estimators.grids.grid_power`), or None (complex products)
    """

    pos: torch.Tensor
    A: torch.Tensor
    A_bf16: torch.Tensor | None = None


def search_grid(system: SystemConfig, config: ClassicalConfig = ClassicalConfig(),
                dtype: torch.dtype = torch.complex64, device: str = "cpu",
                bf16: bool = False) -> GreedyGrid:
    """The search grid of ``config`` (steering cached by :mod:`risloc.estimators.grids`);
    ``bf16`` adds the bfloat16 form of its steering for shortlist rankings where ``device``
    runs bfloat16 products natively."""
    f = config.final
    key = (f.fov.azimuth_deg, f.fov.elevation_deg, f.fov.range_m, config.grid_azimuth,
           config.grid_elevation, config.grid_inv_range)
    _, A = grid_steering(system, key, dtype, str(device))
    A_bf16 = conj_steering_bf16(system, key, str(device)) \
        if bf16 and native_bf16(device) else None
    return GreedyGrid(grid_positions(key, A.real.dtype, str(device)), A, A_bf16)


class _Buffers:
    """Storage that every chunk of one :func:`greedy_search` reuses: the grid columns (6.4 MB
    per scene, 204 MB per chunk of 32) and the OLS products (0.4 MB per scene and row of the
    statistic, up to 64 MB per chunk of 32 with 5 sources found). Freed buffers above glibc's
    32 MB limit are unmapped, so each new one is mapped afresh and every 4 kB page of it
    costs a fault on first touch; in the VMs this was measured on that made the products
    take 4x their time in isolation (``benchmarks/bench_profile.py``)."""

    def __init__(self) -> None:
        self._store: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A contiguous [shape] tensor of ``like``'s dtype and device (contents undefined),
        the leading part of the buffer ``name`` (grown when too small)."""
        n = math.prod(shape)
        buf = self._store.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype \
                or buf.device != like.device:
            buf = self._store[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)


def _grid_columns(H: torch.Tensor, codes: torch.Tensor, grid: GreedyGrid,
                  buffers: _Buffers | None = None) -> torch.Tensor:
    """b_l(g) = Phi_l a(g) for the whole grid: [B, L, M, G].

    Stored once per chunk of scenes (L M G complex numbers, 6.4 MB per scene in complex64)
    so that every later search works in C^M instead of C^N (N / M = 9 times fewer flops);
    in ``buffers``' storage where given.
    """
    B_, L, _ = codes.shape
    out = None if buffers is None else buffers.take(
        "columns", (B_, L * H.shape[-2], grid.A.shape[-1]), H)
    return apply_operator(H, codes, grid.A.T, out=out)


def _column_gains(Bg: torch.Tensor, buffers: _Buffers, block: int = 256) -> torch.Tensor:
    """gains [B, L, G] = ||b_l(g)||^2 of grid columns Bg [B, L, M, G] (:func:`abs2` summed
    over M), ``block`` grid points at a time through two reused buffers (instead of abs2's
    three temporaries of half Bg's size, freshly mapped). The same values bit for bit where
    ``block`` is a multiple of 64 (the sum's vector lanes then fall where they fall over the
    whole grid; a block of 100 moved some by an ulp, measured)."""
    B_, L, M, G = Bg.shape
    gains = Bg.new_empty((B_, L, G), dtype=Bg.real.dtype)
    for g in range(0, G, block):
        z = torch.view_as_real(Bg[..., g:g + block])  # (B, L, M, b, 2)
        sq = torch.mul(z, z, out=buffers.take("squares", z.shape, z))
        s = torch.add(sq[..., 0], sq[..., 1], out=buffers.take("moduli", sq.shape[:-1], sq))
        gains[..., g:g + block] = s.sum(2)
    return gains


def ols_statistic(fit: Fit, Bg: torch.Tensor, gains: torch.Tensor, floor: float,
                  mask: torch.Tensor | None = None, buffers: _Buffers | None = None
                  ) -> torch.Tensor:
    """OLS statistic T(g): [B, G] (module docstring); ``fit`` holds the found sources.

    Bg : [B, L, M, G] grid columns b_l(g);  gains : [B, L, G] = ||b_l(g)||^2
    mask : [B, k] bool or None — the found columns of fit.Bm (the rest zero, and last)
    buffers : storage for the products [B, L, 1+k, G], or None
    """
    W = fit.r.unsqueeze(-1)  # (B, L, M, 1)
    k = fit.Bm.shape[-1] if floor < 1 else 0
    if k > 0:
        Q = orthonormal_basis(fit.Bm)  # (B, L, M, k) orthonormal basis of found columns
        if mask is not None:  # masked columns: zero (so already zero in Q) and last
            Q = Q * mask.to(Q.real.dtype).view(mask.shape[0], 1, 1, -1)
        W = torch.cat([W, Q], -1)
    def take(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
        return None if buffers is None else buffers.take(name, shape, like)

    shape = Bg.shape[:2] + (W.shape[-1], Bg.shape[-1])  # (B, L, 1+k, G)
    P = abs2_(torch.matmul(W.mH, Bg, out=take("products", shape, Bg)),
              out=take("moduli", shape, gains))  # one pass over the grid columns
    # T = sum_l |r_l^H b_l|^2 / max(gains - sum_j |q_j^H b_l|^2, floor gains), in place
    if k == 0:
        den = torch.clamp_min(gains, 1e-30, out=take("den", gains.shape, gains))
    else:
        den = torch.sum(P[:, :, 1:], 2, out=take("den", gains.shape, gains))
        torch.sub(gains, den, out=den)
        torch.maximum(den, torch.mul(gains, floor, out=take("floor", gains.shape, gains)),
                      out=den)
        den.clamp_min_(1e-30)
    return torch.div(P[:, :, 0], den, out=den).sum(1)


def _search(y, H, codes, theta, grid: GreedyGrid, Bg, gains, system, cfg: ClassicalConfig,
            buffers: _Buffers):
    """Best grid point given the sources theta [B, k, 3]: positions [B, 3]."""
    if theta.shape[1] == 0:
        fit = _empty_fit(y)
    else:
        mask = torch.ones(theta.shape[:2], dtype=torch.bool, device=y.device)
        fit = amplitude_fit(y, H, codes, steering_at(theta, system, y.dtype), mask,
                            cfg.step.tikhonov)
    return grid.pos[ols_statistic(fit, Bg, gains, cfg.floor, buffers=buffers).argmax(-1)]


def _relax(y, H, codes, theta, fit, grid, Bg, gains, system, cfg: ClassicalConfig,
           buffers: _Buffers):
    """One RELAX sweep (Li & Stoica 1996): re-search each source given the others, refine
    jointly, keep the change where the cost falls; a re-search that finds the same source
    (``cfg.same_source``) is not refined. theta [B, k, 3] -> (theta, fit)."""
    k = theta.shape[1]
    theta, fit = theta.clone(), Fit(*(t.clone() for t in fit))
    mask = torch.ones(theta.shape[0], k, dtype=torch.bool, device=y.device)
    for j in range(k):
        others = torch.cat([theta[:, :j], theta[:, j + 1:]], 1)
        new = _search(y, H, codes, others, grid, Bg, gains, system, cfg, buffers)  # (B, 3)
        idx = None  # the scenes whose re-search is refined (None: all, without a copy)
        if cfg.same_source is not None:
            a = steering_at(torch.stack([new, theta[:, j]], 1), system, y.dtype)  # (B, 2, N)
            moved = abs2((a[:, 0].conj() * a[:, 1]).sum(-1)) < cfg.same_source
            if not bool(moved.any()):
                continue
            idx = None if bool(moved.all()) else moved.nonzero().flatten()
        sub = (lambda t: t) if idx is None else (lambda t, idx=idx: t[idx])  # noqa: E731
        cand = sub(theta).clone()
        cand[:, j] = sub(new)
        cand, cfit, _ = lm_solve(sub(y), sub(H), sub(codes), cand, sub(mask), system, cfg.step)
        better = cfit.cost < sub(fit.cost)
        acc = better if idx is None else idx[better]
        theta[acc] = cand[better]
        for old, new_ in zip(fit, cfit, strict=True):
            old[acc] = new_[better]
    return theta, fit


def _greedy(y, H, codes, system, cfg: ClassicalConfig, k_max: int, buffers: _Buffers):
    """Greedy search + joint refinement; thetas[k] [B, k+1, 3], costs [B, k_max+1]."""
    _, cplx = working_dtypes(cfg.step)
    y, H, codes = y.to(cplx), H.to(cplx), codes.to(cplx)
    grid = search_grid(system, cfg, cplx, str(y.device))
    Bg = _grid_columns(H, codes, grid, buffers)  # (B, L, M, G)
    gains = _column_gains(Bg, buffers)  # (B, L, G)
    B_ = y.shape[0]
    costs = [abs2(y).sum((-1, -2))]
    theta = torch.zeros(B_, 0, 3, dtype=y.real.dtype, device=y.device)
    thetas = []
    for k in range(k_max):
        new = _search(y, H, codes, theta, grid, Bg, gains, system, cfg, buffers)
        theta = torch.cat([theta, new.unsqueeze(1)], 1)  # (B, k+1, 3)
        mask = torch.ones(B_, k + 1, dtype=torch.bool, device=y.device)
        theta, fit, _ = lm_solve(y, H, codes, theta, mask, system, cfg.step)
        for _ in range(cfg.relax_sweeps if k > 0 else 0):
            theta, fit = _relax(y, H, codes, theta, fit, grid, Bg, gains, system, cfg,
                                buffers)
        thetas.append(theta)
        costs.append(fit.cost)
    return thetas, torch.stack(costs, -1)


def _empty_fit(y):
    """The fit with no sources: residual y, empty B."""
    B_, L, M = y.shape
    return Fit(y.abs().square().sum((-1, -2)), y, y.new_zeros(B_, L, 0),
               y.new_zeros(B_, L, M, 0), y.new_zeros(B_, L, 0, 0))


class Greedy(NamedTuple):
    """Nested greedy fits of a batch.

    thetas : list of k_max tensors [B, k, 3] — (az [rad], el [rad], 1/r [1/m]) of k sources
    costs : [B, k_max + 1] float — residual cost C_k with k sources (C_0 = sum_l ||y_l||^2)
    """

    thetas: list[torch.Tensor]
    costs: torch.Tensor


def greedy_search(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, system: SystemConfig,
                  k_max: int, config: ClassicalConfig = ClassicalConfig()) -> Greedy:
    """Greedy detection of k_max sources per scene (module docstring); no input checks.

    y : [B, L, M] complex, H : [B, M, N] complex, codes : [B, L, N] complex
    """
    buffers = _Buffers()  # shared by the chunks
    parts = [_greedy(y[i:i + config.chunk], H[i:i + config.chunk],
                     codes[i:i + config.chunk], system, config, k_max, buffers)
             for i in range(0, y.shape[0], config.chunk)]
    thetas = [torch.cat([p[0][k] for p in parts]) for k in range(k_max)]
    return Greedy(thetas, torch.cat([p[1] for p in parts]).to(torch.float64))


class Proposal(NamedTuple):
    """theta : [B, 3] (azimuth [rad], elevation [rad], 1/range [1/m]) — the best grid point;
    gain : [B] — its statistic T, the residual cost it removes (before any refinement)."""

    theta: torch.Tensor
    gain: torch.Tensor


def residual_proposal(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, fit: Fit,
                      mask: torch.Tensor, grid: GreedyGrid, floor: float,
                      shortlist: int | None, gains: torch.Tensor | None = None,
                      found: torch.Tensor | None = None) -> Proposal:
    """The grid point maximising T(g) (module docstring) given a fit of the found sources;
    no input checks, the working dtype throughout.

    fit : the amplitude fit of the found sources (fit.Bm: their columns, leading);
    mask : [B, k] bool, the found columns of fit.Bm (the rest zero, and last)
    shortlist : None (or the grid's size and more) evaluates T on the whole grid. An int
        evaluates it only at that many grid points, which needs no grid columns b_l(g): half
        of them of largest sum_l n_l(g) / g_l(g), the other half of largest sum_l n_l(g),
        with the numerators n_l(g) = |b_l(g)^H r_l|^2 = |a(g)^H z_l|^2, z_l = diag(c_l)^*
        H^H r_l (M = 16 times fewer flops than forming the columns), and g_l(g) the gains
        ||b_l(g)||^2 approximated from H's dominant singular direction
        (:func:`snapshot_gains`); in bfloat16 where ``grid`` carries its bfloat16 form (a
        ranking only: T is then evaluated exactly on the shortlist). Each half covers the
        other's failure (``benchmarks/bench_corners.py``): with DFT or Hadamard codes, whose
        snapshots are beams, the numerator alone ranks where the gains are large, not where
        a source is; in a near line-of-sight channel (Rician factor 10-100) the columns are
        nearly parallel and the gain-weighted ranking is flat. A point in both halves is
        evaluated twice (the first is kept on a tie).
    gains : :func:`snapshot_gains` of (H, codes, grid) when the caller has them (they do
        not depend on the fit: rounds on the same scenes compute them once), else None.
    found : steering rows [B, k, N] of the found sources (zero rows where ``mask`` is
        False; those slots last), or None. Given, the gain-weighted half ranks by
        sum_l n_l(g) / g_l(g) / max(1 - ||Q^H a(g)||^2, floor), Q an orthonormal basis of
        the found steering vectors: T's projected denominator ||P_perp_l b_l(g)||^2 with
        Phi_l^H Phi_l taken as a multiple of I (one more grid product of k rows). The
        projection shrinks the numerator of a point beside a found source as much as its
        denominator; without it such a point (a source 2-3 deg from a found one) falls
        out of the shortlist, and the fit stage missed dense sources and sources at the
        azimuth edge that the whole grid finds (``benchmarks/bench_fit_variants.py``,
        docs/results.md).
    """
    if shortlist is None or shortlist >= grid.pos.shape[0]:
        Bg, idx = _grid_columns(H, codes, grid), None
    else:
        Z = codes.conj() * (fit.r @ H.conj())  # (B, L, N): diag(c_l)^* H^H r_l
        num = grid_power(Z, grid.A, grid.A_bf16, per_row=True)  # (B, L, G)
        if gains is None:
            gains = snapshot_gains(H, codes, grid)
        weighted = (num / gains).sum(1)
        if found is not None:  # the share of a(g) outside the found steering vectors' span
            Q = orthonormal_basis(found.mT)  # (B, N, k); masked rows: zero (zero in Q), last
            Q = Q * mask.to(Q.real.dtype).unsqueeze(1)
            weighted = weighted / (1 - grid_power(Q.mT.contiguous(), grid.A, grid.A_bf16)
                                   ).clamp_min(floor)
        idx = torch.cat([weighted.topk((shortlist + 1) // 2, -1).indices,
                         num.sum(1).topk(shortlist // 2, -1).indices], -1)  # (B, P)
        Bg = apply_operator(H, codes, grid.A.T[idx])  # (B, L, M, P)
    gain, best = ols_statistic(fit, Bg, abs2(Bg).sum(2), floor, mask).max(-1)
    return Proposal(grid.pos[best if idx is None else idx.gather(-1, best[:, None])[:, 0]],
                    gain)


def snapshot_gains(H: torch.Tensor, codes: torch.Tensor, grid: GreedyGrid) -> torch.Tensor:
    """Approximate gains ||Phi_l a(g)||^2 of every grid point and snapshot: [B, L, G] > 0.

    With H = sum_i s_i u_i v_i^H, ||H diag(c_l) a||^2 = sum_i s_i^2 |v_i^H diag(c_l) a|^2.
    The dominant term (the line-of-sight part of the channel) is kept exactly and the
    others by their mean over directions, |v_i^H x|^2 ~ ||x||^2 / N:

        g_l(g) = s_1^2 |v_1^H diag(c_l) a(g)|^2 + (||H||_F^2 - s_1^2) ||c_l||^2 / N^2

    (unit-norm a with equal moduli). Half of the residual proposals' shortlist ranks the grid
    by the OLS numerator over these gains (:func:`residual_proposal`). One grid product per
    scene, in bfloat16 where ``grid`` carries its bfloat16 form.
    """
    N = H.shape[-1]
    s2, u = leading_eigenpair(H @ H.mH)  # s_1^2 (B,) and u_1 (B, M)
    s2 = s2.clamp_min(0)
    v = (u.conj().unsqueeze(1) @ H).squeeze(1) / s2.sqrt().clamp_min(1e-30).unsqueeze(-1)  # v_1^H
    # v_1^H diag(c_l) a = w_l^T a with w_l = v_1^* (.) c_l; grid_power(conj(w_l)) = |w_l^T a|^2
    lead = grid_power((v.unsqueeze(1) * codes).conj(), grid.A, grid.A_bf16, per_row=True)
    rest = (abs2(H).sum((-2, -1)) - s2).clamp_min(0)  # (B,)
    iso = rest.unsqueeze(-1) * abs2(codes).sum(-1) / N**2  # (B, L)
    return (s2[:, None, None] * lead + iso.unsqueeze(-1)).clamp_min(1e-30)


@torch.no_grad()
def next_source(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, found: Estimates,
                system: SystemConfig, config: ClassicalConfig = ClassicalConfig(),
                shortlist: int | None = None) -> torch.Tensor:
    """One greedy step after given sources: the grid point maximising T(g) (module
    docstring) given ``found``'s sources, per scene (:func:`residual_proposal`).

    y : [B, L, M] complex, H : [B, M, N] complex, codes : [B, L, N] complex
    found : Estimates whose valid slots (``found.mask``, leading) are the sources so far
    Returns [B, 3] (azimuth [rad], elevation [rad], 1/range [1/m]) in the working real dtype.
    """
    check_measurements(y, H, codes, system)
    if len(found) != y.shape[0]:
        raise ValueError(f"found holds {len(found)} scenes for {y.shape[0]} measurements")
    if shortlist is not None and shortlist < 1:
        raise ValueError(f"shortlist must be >= 1 or None, got {shortlist}")
    _, cplx = working_dtypes(config.step)
    grid = search_grid(system, config, cplx, str(y.device))
    out = []
    for i in range(0, y.shape[0], config.chunk):
        sl = slice(i, i + config.chunk)
        yc, Hc, cc, f = y[sl].to(cplx), H[sl].to(cplx), codes[sl].to(cplx), found[sl]
        A = steering_at(f.theta.to(yc.real.dtype), system, cplx, f.mask)
        fit = amplitude_fit(yc, Hc, cc, A, f.mask, config.step.tikhonov)
        out.append(residual_proposal(yc, Hc, cc, fit, f.mask, grid, config.floor,
                                     shortlist).theta)
    return torch.cat(out)


def _resolve_K(K, B_: int, system: SystemConfig, device) -> torch.Tensor | None:
    """Known K as [B] int64 on ``device`` (:func:`check_source_counts`), or None."""
    if K is None:
        return None
    return check_source_counts("K", K, B_, system.K_max).to(device)


def _select(thetas: list[torch.Tensor], K: torch.Tensor, k_slots: int) -> torch.Tensor:
    """theta [B, k_slots, 3]: scene b takes the greedy fit with K_b sources (rest padded)."""
    B_ = K.shape[0]
    out = thetas[0].new_full((B_, k_slots, 3), float("nan"))
    for k, th in enumerate(thetas, start=1):
        sel = K == k
        out[sel, :k] = th[sel].to(out.dtype)
    return out


class ClassicalResult(NamedTuple):
    """Full result of :func:`classical_fit`.

    estimates : Estimates with K_max slots (see :func:`classical_localize`)
    costs : [B, k_max + 1] float64 — nested greedy residual costs C_0..C_k_max
    noise_var : [B] float64 or None — sigma^2 from snr_db (None when it was not given)
    """

    estimates: Estimates
    costs: torch.Tensor
    noise_var: torch.Tensor | None


_SNR_WARNED: list = []  # the systems _check_snr has warned of in this process


def _check_snr(costs: torch.Tensor, y: torch.Tensor, sigma2: torch.Tensor, snr_db,
               system: SystemConfig | None = None) -> None:
    """Warn where a given SNR disagrees with the data by more than 10 dB (25 dB with one
    snapshot): the K decision trusts it (a linear SNR passed as snr_db gives K_max
    sources)."""
    # one snapshot: the K_max-source fit takes part of the noise along, its level reads
    # -19..+19 dB off a right SNR (12-24 of 32 scenes beyond 10 dB at -10..30 dB); two:
    # -19..+8 dB (3 of 32 beyond 10 dB at 30 dB: left at 10). 25 dB still names a
    # linear SNR passed as snr_db beyond ~20 dB (100 for 20 dB)
    margin = 10.0 if y.shape[1] > 1 else 25.0
    off, implied = snr_disagreement(costs, y.shape[1], y.shape[2],
                                    sigma2.expand(costs.shape[0]), margin)
    if bool(off.any()):
        i = int(torch.nonzero(off)[0])
        given = torch.as_tensor(snr_db, dtype=torch.float64).expand(costs.shape[0])[i]
        warned = system in _SNR_WARNED  # once per system (a file's chunks would each say it
        _SNR_WARNED.extend([] if warned else [system])  # again; a notebook's next system not)
        level = logging.DEBUG if warned else logging.WARNING
        crowded = costs.shape[1] - 1 >= y.shape[2] - 2  # K_max within 2 of M: see the guide
        log.log(level, "the SNR given for %d of %d scenes disagrees with their data by more "
                    "than %g dB (e.g. %.1f dB given where the residual implies about %.1f "
                    "dB); K is decided with the SNR given: a linear SNR passed as snr_db%s? "
                    "(docs/conventions.md defines the SNR; leave it out and the classical "
                    "localizer estimates the noise)", int(off.sum()), costs.shape[0], margin,
                    float(given), float(implied[i]),
                    ", or (with K within 2 of M antennas) sources the search missed"
                    if crowded else "")


def classical_fit(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, system: SystemConfig,
                  K: int | torch.Tensor | None = None,
                  snr_db: float | torch.Tensor | None = None,
                  config: ClassicalConfig = ClassicalConfig()) -> ClassicalResult:
    """:func:`classical_localize` with its diagnostics (nested costs, noise level)."""
    check_measurements(y, H, codes, system)
    if system.K_max >= y.shape[-1]:
        raise ValueError(f"K_max={system.K_max} must be smaller than M={y.shape[-1]}")
    K_known = _resolve_K(K, y.shape[0], system, y.device)
    k_max = system.K_max if K_known is None else int(K_known.max())
    greedy = greedy_search(y, H, codes, system, k_max, config)
    sigma2 = None if snr_db is None else noise_var_from_snr(y, snr_db)
    if K_known is None:
        if sigma2 is not None:
            _check_snr(greedy.costs, y, sigma2, snr_db, system)
        K_known = residual_order(greedy.costs, y.shape[1], y.shape[2], sigma2, config.penalty)
    theta = _select(greedy.thetas, K_known, system.K_max)
    init = Estimates.from_theta(K_known, theta)
    log.debug("classical: K histogram %s", torch.bincount(K_known).tolist())
    refined = nfmle_fit(y, H, codes, init, system, config.final)
    est = separate_cancelling(y, H, codes, refined, system, config.final, config, host=True)
    est = Estimates(est.K, *(t.to(torch.float32) for t in
                             (est.azimuth, est.elevation, est.range_m, est.score)))
    return ClassicalResult(est, greedy.costs, sigma2)


def classical_localize(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                       system: SystemConfig, K: int | torch.Tensor | None = None,
                       snr_db: float | torch.Tensor | None = None,
                       config: ClassicalConfig = ClassicalConfig()) -> Estimates:
    """Localize the sources of each scene (module docstring).

    y : [B, L, M] complex, H : [B, M, N] complex, codes : [B, L, N] complex
    K : None (estimate by the residual test), an int or [B] int64 (known counts)
    snr_db : None, a float or [B] — realised per-antenna SNR [dB] (NaN = unknown in that
        scene); where given it fixes the
        noise level of the order test, otherwise sigma^2 is estimated from the residuals.
    Returns Estimates with K_max slots: positions (rad, rad, m) as float32, score =
    estimated source power mean_l |s_lk|^2.
    """
    return classical_fit(y, H, codes, system, K, snr_db, config).estimates


CANCELLING_RATIO = 2.0
"""A source whose fitted energy sum_l |s_lk|^2 ||b_lk||^2 exceeds this many times the
scene's received energy sum_l ||y_l||^2 is one of a cancelling pair
(:func:`separate_cancelling`)."""

DEVICE_SHARE = 32
"""On the route that never waits for the device, :func:`separate_cancelling` treats one
scene in this many of a batch (the largest excesses), in one pass (its grid columns take
6.4 MB per treated scene: 410 MB at 2,048 scenes)."""


def cancelling_sources(energy: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                       ratio: float = CANCELLING_RATIO) -> torch.Tensor:
    """[B, K] bool: the sources whose fitted energy (energy [B, K]:
    :func:`risloc.estimators.nfmle.source_energy`) exceeds ``ratio`` times the received
    energy of their scene (y [B, L, M]; mask [B, K] the real slots). One source can explain
    at most about all of it; more needs another that cancels the excess."""
    return mask & (energy > ratio * abs2(y).sum((-1, -2)).to(energy.dtype).unsqueeze(-1))


@torch.no_grad()
def separate_cancelling(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                        refined: Refinement, system: SystemConfig, polish: NFMLEConfig,
                        config: ClassicalConfig = ClassicalConfig(),
                        ratio: float = CANCELLING_RATIO, host: bool | None = None) -> Estimates:
    """Replace one member of each cancelling pair of sources by a fresh one; no input checks.

    Two nearly collinear steering vectors can fit noise as a pair of large amplitudes that
    cancel: two estimates a fraction of a degree apart whose powers (``score``) are
    hundreds of times the scene's, mostly where K is given at low SNR and the last sources
    are lost in the noise (``benchmarks/bench_twin_sources.py``). Such a pair is the
    deterministic ML fit of those K sources, but not a source the data show. In the scenes
    with a source flagged by :func:`cancelling_sources` (most have none, and keep their
    estimates bit for bit) the pair's member most collinear with the strongest flagged
    source is dropped, the other K - 1 are polished by NF-MLE (``polish``), a new source is
    taken where the matched field of their residual, sum_l |b_l(g)^H r_l|^2 / ||b_l(g)||^2,
    peaks on the search grid of ``config`` (a residual is orthogonal to the found columns,
    so the pair's lobe does not draw it back), and all K are polished. Where that polish
    forms a cancelling pair again, the K - 1 polished sources and the grid point are kept.
    K is unchanged.

    host : count the flagged scenes on the host (the classical localizer, which waits for
        the device anyway) or not: None counts them unless the LM loop takes the route that
        never waits for the device (:func:`risloc.estimators.nfmle.masked_route`, a GPU's
        default: the learned call is captured as a CUDA graph there). Without counting, the
        one scene in :data:`DEVICE_SHARE` of the batch (at least one) with the largest
        excess is treated in one pass, and kept where flagged; a batch with more flagged
        scenes keeps the rest as they are (measured: at most 7 scenes in 512 flagged, K given
        at -5..5 dB; docs/results.md, "Reliability"). A scene equal to the one before it (the
        padding of a graph's last pass) is not treated twice.

    refined : the final NF-MLE (:func:`risloc.estimators.nfmle.nfmle_fit` with ``polish``)
    Returns its Estimates, the replaced scenes' sources in a new order.
    """
    est, mask = refined.estimates, refined.estimates.mask
    if len(est) == 0:
        return est
    flagged = cancelling_sources(refined.energy, y, mask, ratio).any(-1)  # (B,)
    if host is False or (host is None and nfmle.masked_route(polish, y.device)):
        # a fixed share, chosen without reading the device; a repeated scene ranks last
        received = abs2(y).sum((-1, -2)).to(refined.energy.dtype).unsqueeze(-1)
        excess = torch.where(mask, refined.energy / received, 0.0).amax(-1).nan_to_num(0.0)
        repeat = torch.cat([torch.zeros_like(flagged[:1]),
                            (y[1:] == y[:-1]).flatten(1).all(-1)])
        excess = torch.where(repeat, -1.0, excess)
        idx = excess.topk(min(len(est), -(-len(est) // DEVICE_SHARE))).indices
        take, chunk = flagged[idx], len(est)
    else:
        idx, take, chunk = flagged.nonzero().flatten(), None, config.chunk
        if idx.numel() == 0:
            return est
        log.debug("%d of %d scenes hold a cancelling pair of sources", idx.numel(), len(est))
    real, cplx = working_dtypes(polish)
    theta, m, K = est.theta.to(real)[idx], mask[idx], est.K[idx]
    yc, Hc, cc = y[idx].to(cplx), H[idx].to(cplx), codes[idx].to(cplx)
    energy, cfg = refined.energy[idx].to(real), config.with_fov(polish.fov)
    parts = torch.arange(idx.numel(), device=idx.device).split(chunk)  # bounds memory
    theta_out = torch.cat([_separate(yc[i], Hc[i], cc[i], theta[i], m[i], K[i], energy[i],
                                     system, polish, cfg, ratio) for i in parts])
    final = amplitude_fit(yc, Hc, cc, steering_at(theta_out, system, cplx, m), m,
                          polish.tikhonov)
    part = Estimates.from_theta(K, theta_out, abs2(final.s).mean(1), dtype=est.azimuth.dtype)
    out = []
    for name in ("azimuth", "elevation", "range_m", "score"):
        old, new = getattr(est, name), getattr(part, name)
        old = old.clone()
        old[idx] = new if take is None else torch.where(take.unsqueeze(-1), new, old[idx])
        out.append(old)
    return Estimates(est.K, *out)


def _separate(y, H, codes, theta, mask, K, energy, system, polish: NFMLEConfig,
              config: ClassicalConfig, ratio: float) -> torch.Tensor:
    """:func:`separate_cancelling` on scenes that each hold a cancelling pair, in the working
    dtype: theta [b, S, 3] -> [b, S, 3] (the K [b] sources leading, padding at the box's
    centre); energy [b, S] the sources' fitted energies."""
    real, cplx = theta.dtype, y.dtype
    slots = torch.arange(theta.shape[1], device=theta.device)
    first = torch.where(mask, energy, -1.0).argmax(-1)  # the strongest flagged source
    A = steering_at(theta, system, cplx, mask)  # (b, S, N), unit norm
    lead = A.gather(1, first.view(-1, 1, 1).expand(-1, 1, A.shape[-1]))
    overlap = abs2((A.conj() * lead).sum(-1))  # (b, S)
    overlap = torch.where(mask & (slots != first.unsqueeze(-1)), overlap, -1.0)
    drop = overlap.argmax(-1)  # its partner: the most collinear other source
    # the K - 1 kept sources first, then the dropped slot (the new source's place), padding
    key = (slots == drop.unsqueeze(-1)).to(torch.int8) + 2 * (~mask).to(torch.int8)
    order = torch.argsort(key, stable=True, dim=-1)
    theta = theta.gather(1, order.unsqueeze(-1).expand(-1, -1, 3))
    kept, full = slots < (K - 1).unsqueeze(-1), slots < K.unsqueeze(-1)
    lo, hi = polish.fov.bounds(real, theta.device)
    theta = torch.where(kept.unsqueeze(-1), theta, 0.5 * (lo + hi))
    theta, _, _ = lm_solve(y, H, codes, theta, kept, system, polish)
    # the residual's matched field (floor 1: no 1 / ||P_perp b||^2 boost) in complex64 on
    # the greedy search's grid: an argmax, in half the memory of complex128's grid columns
    y32, H32, c32 = (t.to(torch.complex64) for t in (y, H, codes))
    kfit = amplitude_fit(y32, H32, c32, steering_at(theta.float(), system, torch.complex64),
                         kept, polish.tikhonov)
    grid = search_grid(system, config, torch.complex64, str(y.device))
    new = residual_proposal(y32, H32, c32, kfit, kept, grid, 1.0, None).theta
    theta = theta.clone()
    theta[torch.arange(theta.shape[0], device=theta.device), (K - 1).clamp_min(0)] = new.to(real)
    both, bfit, _ = lm_solve(y, H, codes, theta, full, system, polish)
    again = cancelling_sources(source_energy(bfit), y, full, ratio).any(-1)
    return torch.where(again.view(-1, 1, 1), theta, both)
