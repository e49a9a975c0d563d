"""Near-field MUSIC on an N x N RIS-domain covariance, batched over scenes.

Pseudo-spectrum (Schmidt 1986, "Multiple emitter location and signal parameter
estimation", IEEE TAP 34(3)), with unit-norm near-field steering a(phi, theta, r):

    P(phi, theta, r) = 1 / (1 - ||U_s^H a(phi, theta, r)||^2),

U_s : [N, K] the eigenvectors of the K largest eigenvalues of the Hermitised R.
``1 - ||U_s^H a||^2 = ||(I - U_s U_s^H) a||^2`` is the null spectrum (squared distance
of a to the signal subspace); on the exact covariance it is 0 exactly at the sources.

``music`` = coarse grid (uniform in sin(azimuth), elevation, 1/range; see grids.py)
-> 3-D local maxima -> greedy angular non-maximum suppression -> damped Gauss-Newton
refinement of every candidate on the null spectrum in (azimuth, elevation, 1/range)
-> the K strongest refined, mutually separated peaks. Ranking candidates *after*
refinement (rather than by their grid value) keeps an off-grid source from losing
against a grid point that merely sits closer to a weaker or spurious peak.

The number of sources K varies per scene: the subspace has max(K) columns and the
columns beyond each scene's K are zeroed (a column mask, no loop over scenes).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from risloc.config import FieldOfView, SystemConfig
from risloc.core.params import Estimates
from risloc.covariance.tools import LowRank, hermitise, load_diagonal, top_eigenvectors, trace
from risloc.estimators.grids import (
    angular_distance_matrix,
    greedy_pick,
    grid_steering,
    local_maxima_3d,
)
from risloc.estimators.refine import NearFieldModel, refine_peaks, valley_directions
from risloc.parallel import torch_threads
from risloc.physics.steering import steering

logger = logging.getLogger(__name__)

NULL_FLOOR = 1e-12  # floor of the null spectrum: the pseudo-spectrum is at most 1e12


@dataclass(frozen=True)
class MusicConfig:
    """Grid, peak-picking and refinement settings of near-field MUSIC.

    n_azimuth, n_elevation, n_range : coarse grid sizes (uniform in sin(azimuth),
        elevation and 1/range). With refinement every grid recovers almost every source
        to ~1e-6 deg on R_true; the grid only sets the rate of sources missed because
        two close sources merged into one grid peak. Share of sources off by > 0.02 deg,
        4096 default-system scenes (R_true, K ~ U{1..5}, min_separation_deg 2), and
        single-thread ms/scene (shared CPU, min of repeats): 41x21x16 0.11 % / ~9.7;
        61x31x8 0.11 %; 61x31x16 without valley starts 0.11 % / ~10; 61x31x16 0.01 % /
        ~9-13; 61x31x24 0.00 % / ~15; 81x41x16 0.01 % / ~16. With the final
        min_separation_deg 3 the default missed none of 2048 (spherical) + 1024
        (fresnel) scenes. Default 61x31x16; benchmarks/bench_music.py has the table.
    fov : the field of view searched (grid and refinement box)
    min_separation_deg : greedy non-maximum suppression radius (great-circle) — [deg],
        for grid peaks and for the final picks. Below the 5 deg scene separation; 3 deg
        also suppresses spurious flank peaks next to a strong source on noisy
        covariances (R_samp at 20 dB: 88.6 % of sources detected within 5 deg with 3 deg
        vs 83.3 % with 2 deg), and the valley starts recover close pairs whose grid
        peaks it suppresses.
    n_candidates : grid peaks refined per scene (>= the largest K used).
    refine_iterations : damped Gauss-Newton steps (0 = grid estimates).
    valley_step_deg : second-round starts this far [deg] either side of each of the best
        max(K) refined peaks along its null-spectrum valley (refine.valley_directions),
        which recovers a source merged into a neighbour's grid peak; 0 disables.
    loading : relative diagonal loading R + loading tr(R)/N I before eigh. It shifts
        eigenvalues only (eigenvectors, hence MUSIC, are unchanged in exact arithmetic).
    chunk : grid points per spectrum matmul (bounds memory to B * K * chunk).
    """

    n_azimuth: int = 61
    n_elevation: int = 31
    n_range: int = 16
    fov: FieldOfView = FieldOfView()
    min_separation_deg: float = 3.0
    n_candidates: int = 10
    refine_iterations: int = 6
    valley_step_deg: float = 4.0
    loading: float = 0.0
    chunk: int = 8192

    def __post_init__(self) -> None:
        for name in ("n_azimuth", "n_elevation", "n_range"):
            if getattr(self, name) < 2:
                raise ValueError(f"MusicConfig.{name} must be >= 2, got {getattr(self, name)}")
        if self.n_candidates < 1 or self.refine_iterations < 0 or self.chunk < 1:
            raise ValueError("MusicConfig: n_candidates >= 1, refine_iterations >= 0 and "
                             "chunk >= 1 are required")
        if min(self.loading, self.min_separation_deg, self.valley_step_deg) < 0:
            raise ValueError("MusicConfig: loading, min_separation_deg and valley_step_deg "
                             "must be >= 0")

    @property
    def grid_key(self) -> tuple:
        """Arguments of grids.near_field_grid."""
        return (self.fov.azimuth_deg, self.fov.elevation_deg, self.fov.range_m,
                self.n_azimuth, self.n_elevation, self.n_range)


def check_inputs(R: torch.Tensor | LowRank, K: torch.Tensor | int, N: int,
                 M: int | None = None) -> torch.Tensor:
    """Validate a covariance batch and its source counts; return K as [B] int64.

    R : [B, N, N] complex, or its :class:`LowRank` factor (W [B, N, r]); K : [B] int or
    an int. Raises ValueError on a wrong shape, non-finite or all-zero R, or K outside
    1 <= K < min(M, N).
    """
    low_rank = isinstance(R, LowRank)
    X = R.W if low_rank else R
    if low_rank and X.ndim != 3:
        raise ValueError(f"the factor W must be [B, N, r], got shape {tuple(X.shape)}")
    if not low_rank and (R.ndim != 3 or R.shape[-1] != R.shape[-2]):
        raise ValueError(f"R must be [B, N, N], got shape {tuple(R.shape)}")
    if X.shape[-2] != N:
        raise ValueError(f"R is {X.shape[-2]} x {X.shape[-2]} but the system has N={N}")
    if not torch.is_complex(X):
        raise ValueError(f"R must be complex, got {X.dtype}")
    finite = torch.isfinite(torch.view_as_real(X)).all()
    if low_rank:
        finite = finite & torch.isfinite(R.c).all()
    if not bool(finite):
        raise ValueError("R contains non-finite values (NaN or inf)")
    if bool(((R.trace() if low_rank else trace(R)) <= 0).any()):
        raise ValueError("R has a non-positive trace (all-zero covariance?)")
    B = X.shape[0]
    K = torch.as_tensor(K, device=X.device)
    if K.is_floating_point() or K.is_complex():
        raise ValueError(f"K must be integer, got {K.dtype}")
    K = K.to(torch.int64).expand(B) if K.ndim == 0 else K.to(torch.int64)
    if K.shape != (B,):
        raise ValueError(f"K must be [B]={B} or a scalar, got shape {tuple(K.shape)}")
    limit = min(M, N) if M is not None else N
    if bool(((K < 1) | (K >= limit)).any()):
        raise ValueError(f"every K must satisfy 1 <= K < {limit} (M={M}, N={N}); "
                         f"got K in [{int(K.min())}, {int(K.max())}]")
    return K


def signal_subspace(R: torch.Tensor | LowRank, K: torch.Tensor,
                    loading: float = 0.0) -> torch.Tensor:
    """Top-K eigenvectors of the Hermitised covariance, column-masked per scene.

    R : [B, N, N] complex, or its :class:`LowRank` factor (then from the r x r
    eigenproblem, :func:`top_eigenvectors`; loading adds a multiple of I, which moves no
    eigenvector); K : [B] int64
    Returns U_s : [B, N, max(K)] complex, columns by decreasing eigenvalue, column k
    zeroed where k >= K (so U_s U_s^H is each scene's own rank-K projector).
    """
    if isinstance(R, LowRank):
        return top_eigenvectors(R, K)
    Rh = hermitise(R)
    if loading > 0:
        Rh = load_diagonal(Rh, loading)
    if Rh.device.type == "cpu":
        # batched eigh of N = 144 matrices gains nothing from MKL's threaded zheevd, and
        # on a loaded CPU the threaded one was measured 4-15x slower than one thread
        with torch_threads(1):
            _, V = torch.linalg.eigh(Rh)  # ascending eigenvalues
    else:
        _, V = torch.linalg.eigh(Rh)
    Kc = int(K.max())
    U = V[..., -Kc:].flip(-1)  # (B, N, Kc) strongest first
    keep = torch.arange(Kc, device=R.device) < K.unsqueeze(-1)  # (B, Kc)
    return U * keep.unsqueeze(-2).to(U.dtype)


def _null(A: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """1 - ||U^H a||^2 for rows a of A: A [B, P, N], U [B, N, Kc] -> [B, P] real."""
    c = A @ U.conj()  # (B, P, Kc)   (U^H a)^T
    return (1.0 - c.real.square().sum(-1) - c.imag.square().sum(-1)).clamp_min(NULL_FLOOR)


def music_spectrum(R: torch.Tensor | LowRank, K: torch.Tensor | int, system: SystemConfig,
                   azimuth: torch.Tensor, elevation: torch.Tensor, range_m: torch.Tensor,
                   loading: float = 0.0) -> torch.Tensor:
    """MUSIC pseudo-spectrum 1 / (1 - ||U_s^H a||^2) at given points.

    R : [B, N, N] complex, or its :class:`LowRank` factor; K : [B] int64 (or int)
    azimuth, elevation : [P] or [B, P] — [rad]; range_m : [P] or [B, P] — [m]
    Returns P : [B, P] float (>= 1, at most 1 / NULL_FLOOR).
    """
    K = check_inputs(R, K, system.N, system.M)
    U = signal_subspace(R, K, loading)
    A = steering(azimuth, elevation, range_m, system, U.dtype)  # (P, N) or (B, P, N)
    A = A.expand(U.shape[0], *A.shape[-2:])
    return 1.0 / _null(A, U)


def _grid_spectrum_fixed_k(U: torch.Tensor, A_grid: torch.Tensor, chunk: int) -> torch.Tensor:
    """Pseudo-spectrum on the grid for scenes sharing one K: U [b, N, k] -> [b, G]."""
    b, N, k = U.shape
    Uh = U.mH.reshape(b * k, N).to(A_grid.dtype)  # one GEMM for the whole group
    out = []
    for start in range(0, A_grid.shape[1], chunk):
        c = Uh @ A_grid[:, start:start + chunk]  # (b*k, chunk)
        p = (c.real.square() + c.imag.square()).view(b, k, -1).sum(1)
        out.append(1.0 / (1.0 - p).clamp_min(NULL_FLOOR))
    return torch.cat(out, -1)


def grid_spectrum(U: torch.Tensor, K: torch.Tensor, A_grid: torch.Tensor,
                  chunk: int = 8192) -> torch.Tensor:
    """Pseudo-spectrum on a whole grid by chunked matmuls U_s^H A_grid.

    Scenes are grouped by K (a loop over the <= K_max distinct values) so the GEMM
    never multiplies zeroed subspace columns: cost sum_b K_b instead of B max(K).
    U : [B, N, Kc] complex (columns >= K zeroed); K : [B] int64; A_grid : [N, G] complex
    Returns P : [B, G] float.
    """
    P = torch.empty((U.shape[0], A_grid.shape[1]), dtype=A_grid.real.dtype, device=U.device)
    for k in torch.unique(K).tolist():
        idx = (K == k).nonzero().squeeze(-1)
        P[idx] = _grid_spectrum_fixed_k(U[idx, :, :k], A_grid, chunk)
    return P


def _grid_candidates(P: torch.Tensor, grid, config: MusicConfig, n: int):
    """Start points for refinement: the n strongest, mutually separated 3-D local maxima.

    P : [B, G] float — grid pseudo-spectrum
    Returns theta0 [B, n, 3] float64 (azimuth, elevation, 1/range) and valid [B, n] bool.
    """
    B = P.shape[0]
    peak = local_maxima_3d(P.view(B, *grid.shape)).view(B, -1)
    vals = torch.where(peak, P, torch.full_like(P, -math.inf))
    top, idx = vals.topk(min(4 * n, vals.shape[-1]), dim=-1)  # (B, T)
    az, el = grid.azimuth.to(P.device)[idx], grid.elevation.to(P.device)[idx]
    inv = 1.0 / grid.range_m.to(P.device)[idx]
    picks = greedy_pick(top, angular_distance_matrix(az, el), n,
                        math.radians(config.min_separation_deg))
    theta0 = torch.stack([az, el, inv], -1).gather(1, picks.index.unsqueeze(-1).expand(-1, -1, 3))
    return theta0, picks.valid


def assemble_estimates(theta: torch.Tensor, score: torch.Tensor, K: torch.Tensor,
                       n_slots: int, min_sep: float, real: torch.dtype) -> Estimates:
    """The K strongest mutually separated candidates, by decreasing score, NaN-padded.

    theta : [B, C, 3] (azimuth [rad], elevation [rad], 1/range [1/m]); score : [B, C]
    (-inf = invalid); K : [B]; min_sep [rad]; the Estimates fields are cast to ``real``.
    """
    az, el = theta[..., 0], theta[..., 1]
    picks = greedy_pick(score, angular_distance_matrix(az, el), n_slots, min_sep)
    slot = torch.arange(n_slots, device=K.device)
    keep = picks.valid & (slot < K.unsqueeze(-1))  # (B, n_slots)
    sel = theta.gather(1, picks.index.unsqueeze(-1).expand(-1, -1, 3))
    nan = torch.full_like(sel[..., 0], math.nan)
    return Estimates(
        K=keep.sum(-1).to(torch.int64),
        azimuth=torch.where(keep, sel[..., 0], nan).to(real),
        elevation=torch.where(keep, sel[..., 1], nan).to(real),
        range_m=torch.where(keep, 1.0 / sel[..., 2], nan).to(real),
        score=torch.where(keep, score.gather(1, picks.index), nan).to(real),
    )


def _valley_starts(theta: torch.Tensor, score: torch.Tensor, U: torch.Tensor,
                   system: SystemConfig, n: int, config: MusicConfig):
    """Second-round start points +- valley_step_deg along the valley of the n best peaks.

    theta : [B, C, 3], score : [B, C] (-inf = invalid). Returns [B, 2n, 3], [B, 2n] bool.
    """
    picks = greedy_pick(score, angular_distance_matrix(theta[..., 0], theta[..., 1]), n,
                        math.radians(config.min_separation_deg))
    top = theta.gather(1, picks.index.unsqueeze(-1).expand(-1, -1, 3))  # (B, n, 3)
    step = math.radians(config.valley_step_deg) * valley_directions(top, U, system)
    return torch.cat([top + step, top - step], 1), picks.valid.repeat(1, 2)


def _refine_candidates(U: torch.Tensor, K: torch.Tensor, P: torch.Tensor, grid,
                       system: SystemConfig, config: MusicConfig):
    """Grid peaks (+ valley starts) refined: theta [B, C, 3] float64, score [B, C]."""
    n = max(config.n_candidates, int(K.max()))
    theta0, valid = _grid_candidates(P, grid, config, n)
    lo, hi = config.fov.bounds()
    model = NearFieldModel(system)
    ref = refine_peaks(U, theta0, model, lo, hi, config.refine_iterations)
    theta = ref.theta
    score = torch.where(valid, 1.0 / ref.null.clamp_min(NULL_FLOOR), -math.inf)
    if config.valley_step_deg > 0:
        start, ok = _valley_starts(theta, score, U, system, int(K.max()), config)
        ref2 = refine_peaks(U, start, model, lo, hi, config.refine_iterations)
        score2 = torch.where(ok, 1.0 / ref2.null.clamp_min(NULL_FLOOR), -math.inf)
        theta, score = torch.cat([theta, ref2.theta], 1), torch.cat([score, score2], 1)
    return theta, score


@torch.no_grad()
def music(R: torch.Tensor | LowRank, K: torch.Tensor | int, system: SystemConfig,
          config: MusicConfig = MusicConfig()) -> Estimates:
    """Near-field MUSIC with grid search and Gauss-Newton refinement.

    R : [B, N, N] complex — RIS-domain covariance (any scale; Hermitised here), or its
        :class:`LowRank` factor (the same subspace from an r x r eigenproblem)
    K : [B] int64 (or int) — number of sources per scene, 1 <= K < min(M, N)
    Returns Estimates with max(K_max, max K) slots, sorted by decreasing score; azimuth,
    elevation [rad] and range_m [m] in R's real dtype, score = pseudo-spectrum
    1/(1 - ||U_s^H a||^2) at the refined peak. Slots beyond each scene's K are NaN.
    Estimates.K is K unless fewer separated peaks exist (then the number found).
    """
    K = check_inputs(R, K, system.N, system.M)
    U = signal_subspace(R, K, config.loading)  # (B, N, Kc)
    grid, A = grid_steering(system, config.grid_key, torch.complex64, str(U.device))
    P = grid_spectrum(U, K, A, config.chunk)  # (B, G)
    theta, score = _refine_candidates(U, K, P, grid, system, config)
    n_slots = max(system.K_max, int(K.max()))
    est = assemble_estimates(theta, score, K, n_slots,
                             math.radians(config.min_separation_deg), U.real.dtype)
    if bool((est.K < K).any()):
        logger.warning("MUSIC found fewer separated peaks than K in %d scene(s)",
                       int((est.K < K).sum()))
    return est
