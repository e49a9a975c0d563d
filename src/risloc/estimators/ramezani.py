"""Modified (decoupled) near-field MUSIC after Ramezani, Kosasih and Bjornson (2024).

Reference: P. Ramezani, A. Kosasih, E. Bjornson, "An Efficient Modified MUSIC Algorithm
for RIS-Assisted Near-Field Localization", arXiv:2409.14152 (2024).

Idea. For a centred UPA, element n and its mirror n' = N-1-n (row-major order) sit at
e_n' = -e_n. In the Fresnel phase d_n - r = -e_n.s + |e_n|^2 / (2r), with
s = (sin(phi) cos(theta), sin(theta)), the range term is even in e_n and cancels in
a_n conj(a_n'), leaving a far-field-like phase with doubled aperture:

    z_n = [R]_{n, n'} = sum_k p_k exp(j 2 k0 e_n.s_k) / N.

What is implemented here (our reading; the paper's exact formulation of the smoothing
and of the aliasing is not reproduced verbatim):
1. z = anti-diagonal of the Hermitised R, arranged on the N_V x N_H grid. For an even
   N it never touches the main diagonal, so white noise does not enter it.
2. z is a single "snapshot", so its covariance has rank 1: sub-RIS smoothing averages
   z_p z_p^H over all overlapping m_v x m_h sub-arrays p (2-D spatial smoothing),
   restoring rank K when there are at least K sub-arrays.
3. 2-D MUSIC on the smoothed covariance with the virtual steering
   b_i(f) = exp(j 2 pi (h_i f_x + v_i f_y)), f = 2 d s / lambda: a periodic grid over
   f in [-1/2, 1/2)^2, local maxima, greedy picks, Gauss-Newton refinement in f.
4. Aliasing (our addition): the mirrored pairs form a virtual array of spacing 2d, which
   for d = lambda/2 is a full wavelength, so f determines s only modulo lambda/(2d)
   (s_x and s_x +- 1 for the default system). Every alias inside the field of view is
   kept as a candidate and decided by step 5.
5. Range: for each candidate direction, 1-D near-field MUSIC over a grid uniform in
   1/range on the full covariance (top-K subspace of R), then Gauss-Newton in 1/range
   with the angles held fixed. The alias with the highest pseudo-spectrum wins.

Limits: with the exact spherical wavefront the cancellation in step 1 is only
approximate (the odd cubic term of d_n - d_n' remains), so angles are biased at short
range and the range inherits that bias. The sub-array aperture (8 of 12 elements by
default) resolves sources only about 1/m_h in f apart (~7 deg at broadside), coarser
than the 5 deg scene separation. This is a baseline, not the project's estimator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from risloc.config import FieldOfView, SystemConfig
from risloc.core.params import Estimates
from risloc.covariance.tools import hermitise
from risloc.estimators.grids import greedy_pick, local_maxima_2d_periodic
from risloc.estimators.music import (
    NULL_FLOOR,
    assemble_estimates,
    check_inputs,
    signal_subspace,
)
from risloc.estimators.refine import NearFieldModel, null_spectrum, refine_peaks
from risloc.physics import angles_from_direction


@dataclass(frozen=True)
class RamezaniConfig:
    """Settings of the modified MUSIC baseline.

    subarray : (rows m_v, columns m_h) of each overlapping sub-RIS used for smoothing.
    n_frequency : grid points per axis of the periodic virtual-frequency grid.
    n_range : points of the 1-D range grid (uniform in 1/range).
    fov : the field of view searched.
    min_separation : greedy suppression radius in virtual frequency (cycles/element).
    refine_iterations : Gauss-Newton steps for f and for 1/range.
    """

    subarray: tuple[int, int] = (8, 8)
    n_frequency: int = 64
    n_range: int = 32
    fov: FieldOfView = FieldOfView()
    min_separation: float = 0.02
    refine_iterations: int = 6

    def __post_init__(self) -> None:
        if min(self.subarray) < 2 or self.n_frequency < 4 or self.n_range < 2:
            raise ValueError("RamezaniConfig: subarray >= 2 per axis, n_frequency >= 4 and "
                             "n_range >= 2 are required")

    def for_system(self, system: SystemConfig) -> RamezaniConfig:
        """This configuration with sub-RISs of two thirds of each side of ``system``'s RIS
        (at least 2), as the default 8 x 8 is of the default 12 x 12 one (unchanged there):
        the smoothing needs sub-RISs that fit, and as many of them as sources."""
        sub = tuple(max(2, round(2 * n / 3)) for n in (system.N_V, system.N_H))
        return self if sub == self.subarray else replace(self, subarray=sub)


class VirtualArrayModel:
    """Virtual far-field steering of an m_v x m_h sub-array in theta = (f_x, f_y).

    b_i(f) = exp(j 2 pi (h_i f_x + v_i f_y)) / sqrt(m), i = v_i m_h + h_i.
    """

    def __init__(self, m_v: int, m_h: int, device=None):
        v, h = torch.meshgrid(torch.arange(m_v, dtype=torch.float64, device=device),
                              torch.arange(m_h, dtype=torch.float64, device=device),
                              indexing="ij")
        self.h, self.v = h.reshape(-1), v.reshape(-1)
        self.norm = 1.0 / math.sqrt(m_v * m_h)

    def steer(self, theta: torch.Tensor) -> torch.Tensor:
        phase = 2 * math.pi * (theta[..., :1] * self.h + theta[..., 1:] * self.v)
        return torch.polar(torch.full_like(phase, self.norm), phase)

    def jacobian(self, theta: torch.Tensor) -> torch.Tensor:
        b = self.steer(theta)
        j2pi = 2j * math.pi
        return torch.stack([b, j2pi * self.h * b, j2pi * self.v * b], dim=-2)


def antidiagonal(R: torch.Tensor, system: SystemConfig) -> torch.Tensor:
    """z_n = [R]_{n, N-1-n} (element n paired with its mirror image): [B, N_V, N_H]."""
    N = system.N
    n = torch.arange(N, device=R.device)
    return hermitise(R)[:, n, N - 1 - n].reshape(-1, system.N_V, system.N_H)


def smoothed_covariance(z: torch.Tensor, subarray: tuple[int, int]) -> torch.Tensor:
    """Sub-RIS smoothing (1/P) sum_p z_p z_p^H over all overlapping m_v x m_h windows.

    z : [B, N_V, N_H] complex  ->  [B, m_v m_h, m_v m_h] complex
    """
    m_v, m_h = subarray
    if m_v > z.shape[1] or m_h > z.shape[2]:
        raise ValueError(f"subarray {subarray} exceeds the {tuple(z.shape[1:])} RIS")
    patches = z.unfold(1, m_v, 1).unfold(2, m_h, 1)  # (B, P_v, P_h, m_v, m_h)
    Z = patches.reshape(z.shape[0], -1, m_v * m_h)  # (B, P, m)
    return Z.mT @ Z.conj() / Z.shape[1]


def _frequency_peaks(Rss: torch.Tensor, K: torch.Tensor, config: RamezaniConfig,
                     model: VirtualArrayModel):
    """Refined virtual-frequency peaks of the smoothed covariance (steps 3).

    Rss : [B, m, m]; returns f [B, Kc, 2] in [-1/2, 1/2) and valid [B, Kc] bool.
    """
    B, Kc = Rss.shape[0], int(K.max())
    U = signal_subspace(Rss, K).to(torch.complex128)  # (B, m, Kc)
    axis = torch.arange(config.n_frequency, dtype=torch.float64, device=Rss.device)
    axis = axis / config.n_frequency - 0.5
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)  # (G, 2)
    c = model.steer(grid) @ U.conj()  # (B, G, Kc)
    P = 1.0 / (1.0 - c.abs().square().sum(-1)).clamp_min(NULL_FLOOR)
    peak = local_maxima_2d_periodic(P.view(B, config.n_frequency, -1)).view(B, -1)
    top, idx = torch.where(peak, P, -math.inf).topk(min(4 * Kc, P.shape[-1]), dim=-1)
    f = grid[idx]  # (B, T, 2)
    diff = torch.remainder(f.unsqueeze(-2) - f.unsqueeze(-3) + 0.5, 1.0) - 0.5
    picks = greedy_pick(top, diff.norm(dim=-1), Kc, config.min_separation)
    f0 = f.gather(1, picks.index.unsqueeze(-1).expand(-1, -1, 2))
    inf = torch.full((2,), math.inf, dtype=torch.float64)
    ref = refine_peaks(U, f0, model, -inf, inf, config.refine_iterations)
    return torch.remainder(ref.theta + 0.5, 1.0) - 0.5, picks.valid


def _alias_directions(f: torch.Tensor, system: SystemConfig, config: RamezaniConfig):
    """Every direction whose virtual frequency is f modulo 1, inside the field of view.

    f : [B, C, 2] -> azimuth, elevation [B, C, A] [rad] and ok [B, C, A] bool (step 4).
    """
    scale = system.wavelength / (2 * system.spacing)  # s per unit of f
    s_x_max = math.sin(math.radians(max(abs(a) for a in config.fov.azimuth_deg)))
    s_y_max = math.sin(math.radians(max(abs(e) for e in config.fov.elevation_deg)))
    n_x, n_y = math.ceil(s_x_max / scale + 0.5), math.ceil(s_y_max / scale + 0.5)
    ix = torch.arange(-n_x, n_x + 1, dtype=f.dtype, device=f.device)
    iy = torch.arange(-n_y, n_y + 1, dtype=f.dtype, device=f.device)
    off = torch.stack(torch.meshgrid(ix, iy, indexing="ij"), -1).reshape(-1, 2)  # (A, 2)
    s = (f.unsqueeze(-2) + off) * scale  # (B, C, A, 2)
    az, el, ok = angles_from_direction(s[..., 0], s[..., 1])
    az_lo, az_hi = (math.radians(a) for a in config.fov.azimuth_deg)
    el_lo, el_hi = (math.radians(e) for e in config.fov.elevation_deg)
    ok = ok & (az >= az_lo) & (az <= az_hi) & (el >= el_lo) & (el <= el_hi)
    # Keep only as many alias slots as any candidate has valid aliases (<= 2 by default).
    n_keep = max(int(ok.sum(-1).max()), 1)
    _, keep = ok.to(torch.int8).topk(n_keep, dim=-1)
    return az.gather(-1, keep), el.gather(-1, keep), ok.gather(-1, keep)


def _range_search(U: torch.Tensor, az: torch.Tensor, el: torch.Tensor, ok: torch.Tensor,
                  system: SystemConfig, config: RamezaniConfig):
    """1-D range MUSIC on the full covariance at every candidate direction (step 5).

    U : [B, N, Kc] — top-K subspace of R; az, el, ok : [B, C, A] alias candidates.
    Returns theta [B, C, 3] (az, el, 1/range) of the best alias, refined in 1/range,
    and its null spectrum [B, C] (+inf where no alias is valid).
    """
    scan = NearFieldModel(system, torch.complex64)  # the grid scan needs no float64
    U64 = U.to(torch.complex64)
    inv = torch.linspace(1.0 / config.fov.range_m[1], 1.0 / config.fov.range_m[0], config.n_range,
                         dtype=torch.float64, device=U.device)
    best_u, best_f = [], []
    for a in range(az.shape[-1]):  # <= 2 alias slots by default; each batched over scenes
        ang = torch.stack([az[..., a], el[..., a]], -1)  # (B, C, 2)
        theta = torch.cat([ang.unsqueeze(-2).expand(-1, -1, config.n_range, -1),
                           inv.expand(*ang.shape[:2], -1).unsqueeze(-1)], -1)
        f, i = null_spectrum(theta, U64, scan).min(-1)  # (B, C)
        best_u.append(inv[i])
        best_f.append(torch.where(ok[..., a], f, math.inf))
    f_all = torch.stack(best_f, -1)  # (B, C, A)
    pick = f_all.argmin(-1, keepdim=True)
    theta0 = torch.stack([az.gather(-1, pick), el.gather(-1, pick),
                          torch.stack(best_u, -1).gather(-1, pick)], -1).squeeze(-2)
    lo = torch.tensor([-math.inf, -math.inf, inv[0]], dtype=torch.float64)
    hi = torch.tensor([math.inf, math.inf, inv[-1]], dtype=torch.float64)
    ref = refine_peaks(U, theta0, NearFieldModel(system), lo, hi, config.refine_iterations,
                       free=(False, False, True))
    null = torch.where(f_all.gather(-1, pick).squeeze(-1).isfinite(), ref.null, math.inf)
    return ref.theta, null


@torch.no_grad()
def ramezani_music(R: torch.Tensor, K: torch.Tensor | int, system: SystemConfig,
                   config: RamezaniConfig = RamezaniConfig()) -> Estimates:
    """Decoupled near-field MUSIC: anti-diagonal + sub-RIS smoothing for angles, then
    1-D range MUSIC (see the module docstring for exactly what is implemented).

    R : [B, N, N] complex — RIS-domain covariance; K : [B] int64 (or int)
    Returns Estimates with max(K_max, max K) slots sorted by decreasing score (the full
    near-field MUSIC pseudo-spectrum at the estimate); NaN beyond each scene's K.
    """
    K = check_inputs(R, K, system.N, system.M)
    m_v, m_h = config.subarray
    if m_v > system.N_V or m_h > system.N_H:
        raise ValueError(f"subarray {config.subarray} exceeds the ({system.N_V}, "
                         f"{system.N_H}) RIS (RamezaniConfig.for_system sizes it)")
    windows = (system.N_V - m_v + 1) * (system.N_H - m_h + 1)
    if int(K.max()) >= m_v * m_h or int(K.max()) > windows:
        raise ValueError(f"K={int(K.max())} needs a sub-RIS of more than K elements and at "
                         f"least K sub-RISs; subarray {config.subarray} gives "
                         f"{m_v * m_h} elements and {windows} sub-RISs")
    Rss = smoothed_covariance(antidiagonal(R, system), config.subarray)
    f, valid = _frequency_peaks(Rss, K, config, VirtualArrayModel(m_v, m_h, R.device))
    az, el, ok = _alias_directions(f, system, config)
    theta, null = _range_search(signal_subspace(R, K), az, el, ok & valid.unsqueeze(-1),
                                system, config)
    score = torch.where(null.isfinite(), 1.0 / null.clamp_min(NULL_FLOOR), -math.inf)
    n_slots = max(system.K_max, int(K.max()))
    return assemble_estimates(theta, score, K, n_slots, 0.0, R.real.dtype)
