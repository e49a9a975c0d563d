"""Search grids and peak picking shared by the grid-search estimators (MUSIC, Ramezani).

The coarse near-field grid is uniform in sin(azimuth), in elevation and in 1/range
(inverse range is the natural coordinate of the near-field phase term
k0 |e_n|^2 / (2 r), so the spectrum has roughly constant width in it). Its steering
vectors are computed once per (system, grid, dtype, device) and cached.

Peak picking is greedy non-maximum suppression: repeatedly take the strongest remaining
candidate and discard candidates closer than a minimum great-circle angle to it,
vectorised over the batch (the only loop is over the <= a handful of picks).

The beamformer power sum_l |z_l^H a(g)|^2 on a whole grid (:func:`grid_power`: the
network's beamformer bank, the shortlist of the ML fit's repair) can run in bfloat16 where
only a ranking or a spectrum is needed: on hardware that runs bfloat16 products natively
(CPUs with AVX-512 BF16 or AMX, recent GPUs) that is about 2x faster than complex64, at a
relative error of a few 1e-3.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from risloc.config import SystemConfig
from risloc.covariance.tools import abs2_
from risloc.physics.geometry import angular_separation
from risloc.physics.steering import steering


class SearchGrid(NamedTuple):
    """A 3-D near-field search grid, flattened in (azimuth, elevation, range) C order.

    azimuth, elevation : [G] float64 — [rad]
    range_m : [G] float64 — [m]
    shape : (n_azimuth, n_elevation, n_range)
    """

    azimuth: torch.Tensor
    elevation: torch.Tensor
    range_m: torch.Tensor
    shape: tuple[int, int, int]


def near_field_grid(azimuth_deg: tuple[float, float], elevation_deg: tuple[float, float],
                    range_m: tuple[float, float], n_azimuth: int, n_elevation: int,
                    n_range: int) -> SearchGrid:
    """Grid uniform in sin(azimuth), elevation and 1/range over the field of view.

    azimuth_deg, elevation_deg : (low, high) — [deg]; range_m : (low, high) — [m]
    Returns a SearchGrid of G = n_azimuth * n_elevation * n_range points (float64).
    """
    s_lo, s_hi = (math.sin(math.radians(v)) for v in azimuth_deg)
    az = torch.asin(torch.linspace(s_lo, s_hi, n_azimuth, dtype=torch.float64))
    el = torch.deg2rad(torch.linspace(*elevation_deg, n_elevation, dtype=torch.float64))
    inv = torch.linspace(1.0 / range_m[1], 1.0 / range_m[0], n_range, dtype=torch.float64)
    A, E, U = torch.meshgrid(az, el, inv, indexing="ij")  # (Na, Ne, Nr)
    return SearchGrid(A.reshape(-1), E.reshape(-1), 1.0 / U.reshape(-1),
                      (n_azimuth, n_elevation, n_range))


@functools.cache  # never evicted: CUDA graphs read it by address
def grid_steering(system: SystemConfig, grid_key: tuple, dtype: torch.dtype,
                  device: str) -> tuple[SearchGrid, torch.Tensor]:
    """Cached grid and its steering matrix.

    grid_key : the positional arguments of :func:`near_field_grid`
    Returns (grid, A) with A : [N, G] complex ``dtype`` (column g = a(grid point g)),
    laid out for the product U^H A of a signal subspace with the whole grid.
    """
    grid = near_field_grid(*grid_key)
    A = steering(grid.azimuth.to(device), grid.elevation.to(device), grid.range_m.to(device),
                 system, dtype)  # (G, N)
    return grid, A.T.contiguous()


@functools.cache  # never evicted: CUDA graphs read it by address
def grid_positions(grid_key: tuple, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Cached [G, 3] (azimuth [rad], elevation [rad], 1/range [1/m]) of the grid of
    ``grid_key`` (:func:`grid_steering`) as real ``dtype`` on ``device``: built once, so a
    call copies nothing from the host (a copy that makes a GPU's host wait)."""
    grid = near_field_grid(*grid_key)
    pos = torch.stack([grid.azimuth, grid.elevation, 1.0 / grid.range_m], -1)
    return pos.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=8)
def native_bf16(device: str | torch.device) -> bool:
    """Whether bfloat16 matrix products run natively on ``device`` (elsewhere they are
    emulated and slower than complex64)."""
    device = torch.device(device)
    if device.type == "cuda":  # Ampere (8.0) and later; is_bf16_supported() also counts
        return torch.cuda.get_device_capability(device) >= (8, 0)  # emulation (V100, T4)
    return device.type == "cpu" and torch.backends.mkldnn.is_available() \
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def conj_bf16(A: torch.Tensor) -> torch.Tensor:
    """[2N, 2G] bfloat16 real form of A^* for A [N, G] complex: [Re z, Im z] @ it =
    [Re(z A^*), Im(z A^*)] for rows z [N] (the operand of :func:`grid_power`)."""
    return torch.cat([torch.cat([A.real, -A.imag], 1),
                      torch.cat([A.imag, A.real], 1)]).to(torch.bfloat16)


@functools.cache  # never evicted: CUDA graphs read it by address
def conj_steering_bf16(system: SystemConfig, grid_key: tuple, device: str) -> torch.Tensor:
    """:func:`conj_bf16` of the grid steering of :func:`grid_steering` (cached)."""
    return conj_bf16(grid_steering(system, grid_key, torch.complex64, device)[1])


def grid_power(Z: torch.Tensor, A: torch.Tensor, A_bf16: torch.Tensor | None = None,
               per_row: bool = False) -> torch.Tensor:
    """sum_l |z_l^T a(g)^*|^2 over the rows z_l of Z [..., L, N] (complex), for every grid
    column a(g) of A [N, G]: [..., G] real; ``per_row`` keeps the terms apart: [..., L, G].
    With A_bf16 (:func:`conj_bf16` of A) the product runs in bfloat16: relative error a few
    1e-3, for rankings and spectra, not for fits."""
    if A_bf16 is None:
        P = abs2_(Z @ A.conj())
        return P if per_row else P.sum(-2)
    out = torch.cat([Z.real, Z.imag], -1).to(torch.bfloat16) @ A_bf16  # (..., L, 2G)
    P = out.to(Z.real.dtype).square_().unflatten(-1, (2, -1))  # (..., L, 2, G)
    return P.sum(-2) if per_row else P.sum((-3, -2))


def _max3(P: torch.Tensor, dim: int) -> torch.Tensor:
    """Running maximum over index i-1, i, i+1 along ``dim`` (edges: 2 neighbours)."""
    n = P.shape[dim]
    out = P.clone()
    lo, hi = P.narrow(dim, 0, n - 1), P.narrow(dim, 1, n - 1)
    out.narrow(dim, 1, n - 1).copy_(torch.maximum(out.narrow(dim, 1, n - 1), lo))
    out.narrow(dim, 0, n - 1).copy_(torch.maximum(out.narrow(dim, 0, n - 1), hi))
    return out


def local_maxima_3d(P: torch.Tensor) -> torch.Tensor:
    """Points not exceeded by any of their 26 neighbours (grid edges: fewer neighbours).

    The 3x3x3 box maximum is computed separably (three 1-D running maxima), which is
    exact for a max filter and several times faster than max_pool3d on CPU.
    P : [B, Na, Ne, Nr] float  ->  [B, Na, Ne, Nr] bool
    """
    return P >= _max3(_max3(_max3(P, 1), 2), 3)


def local_maxima_2d_periodic(P: torch.Tensor) -> torch.Tensor:
    """Local maxima over the 3x3 neighbourhood of a grid that wraps around in both axes.

    P : [B, N1, N2] float  ->  [B, N1, N2] bool
    """
    padded = F.pad(P.unsqueeze(1), (1, 1, 1, 1), mode="circular")
    pooled = F.max_pool2d(padded, kernel_size=3, stride=1).squeeze(1)
    return P >= pooled


class Picks(NamedTuple):
    """Greedy picks: index [B, n] int64 into the candidate axis, valid [B, n] bool."""

    index: torch.Tensor
    valid: torch.Tensor


def greedy_pick(values: torch.Tensor, distance: torch.Tensor, n: int,
                min_distance: float) -> Picks:
    """Greedy non-maximum suppression over a candidate set.

    Repeatedly pick the largest remaining value and remove every candidate whose distance
    to the pick is below ``min_distance``. Candidates with value -inf or NaN are never
    picked (torch's max would return each NaN first, an invalid pick taking one of the n slots).

    values : [B, T] float — candidate strengths (-inf = not a candidate)
    distance : [B, T, T] float — pairwise distances between candidates
    n : number of picks; min_distance : same unit as ``distance``
    """
    vals = values.masked_fill(values.isnan(), -math.inf)
    index, valid = [], []
    for _ in range(n):
        best, idx = vals.max(dim=-1)  # (B,)
        ok = torch.isfinite(best)
        index.append(idx)
        valid.append(ok)
        near = distance.gather(1, idx.view(-1, 1, 1).expand(-1, 1, vals.shape[-1])).squeeze(1)
        vals = vals.masked_fill((near < min_distance) & ok.unsqueeze(-1), -math.inf)
        vals = vals.scatter(1, idx.unsqueeze(-1), -math.inf)
    return Picks(torch.stack(index, -1), torch.stack(valid, -1))


def angular_distance_matrix(azimuth: torch.Tensor, elevation: torch.Tensor) -> torch.Tensor:
    """Pairwise great-circle angles between candidates.

    azimuth, elevation : [B, T] — [rad]  ->  [B, T, T] — [rad]
    """
    return angular_separation(azimuth.unsqueeze(-1), elevation.unsqueeze(-1),
                              azimuth.unsqueeze(-2), elevation.unsqueeze(-2))
