"""Subspace and spectrum loss terms, all tied to the physical steering model.

* ``gt_subspace_alignment`` : ||P_perp R P_perp||_F^2 / ||R||_F^2, P the projector onto the
  *true steering vectors* built by a K x K solve (never from R_true's eigenvectors).
* ``predicted_subspace_alignment`` : 1 - ||U_K^H a(slot)||^2, the distance of each predicted
  slot's steering vector to the top-K subspace of R. U_K comes from eigh of the detached R
  (eigenvector gradients are unstable on near-degenerate spectra, LESSONS.md); the term
  ties the auxiliary positions to the covariance MUSIC will see.
* ``peak_contrast`` : Capon (MVDR) pseudo-spectrum P(p) = 1 / (a^H R_l^-1 a) at each true
  source against its neighbourhood, R_l the trace-N, loaded covariance (full rank, so
  the Cholesky solve has a stable gradient). Capon, J. (1969), "High-resolution
  frequency-wavenumber spectrum analysis", Proc. IEEE 57(8).

Steering vectors come from ``risloc.physics.steering`` (the one implementation).
Every function returns a per-scene loss [B].
"""

from __future__ import annotations

import math

import torch

from risloc.config import SystemConfig
from risloc.core.params import pack, steering_at
from risloc.covariance.tools import (
    LowRank,
    hermitise,
    load_diagonal,
    normalize_trace,
    top_eigenvectors,
)
from risloc.losses.covariance import EPS, frob2, gram_solver
from risloc.physics.steering import steering


def steering_columns(azimuth: torch.Tensor, elevation: torch.Tensor, range_m: torch.Tensor,
                     mask: torch.Tensor, system: SystemConfig) -> torch.Tensor:
    """Steering matrix with one column per slot, zero columns where ``mask`` is False.

    azimuth, elevation : [B, S] — [rad]; range_m : [B, S] — [m] (NaN allowed where masked)
    mask : [B, S] bool  ->  A : [B, N, S] complex64
    """
    return steering_at(pack(azimuth, elevation, range_m), system, torch.complex64, mask).mT


def gt_subspace_alignment(R: torch.Tensor | LowRank, A_true: torch.Tensor,
                          ridge: float = 1e-4) -> torch.Tensor:
    """||P_perp R P_perp||_F^2 / ||R||_F^2 with P = A (A^H A)^-1 A^H from the true steering.

    0 exactly when the range of R lies in span(A_true) (e.g. R = R_true). For Hermitian R,
    with G = A^H A, C = R A and M = A^H R A (all K-column, K x K solves only):
        ||P_perp R P_perp||^2 = ||R||^2 - 2 tr(G^-1 C^H C) + tr((G^-1 M)^2).
    R : [B, N, N] complex, or its :class:`LowRank` factor (then C and ||R||^2 from r-column
    products); A_true : [B, N, K_max] complex (zero columns for absent sources) -> [B] float
    """
    if isinstance(R, LowRank):
        C, r2 = R.matmul(A_true), R.frob2()
    else:
        Rh = hermitise(R)
        C, r2 = Rh @ A_true, frob2(Rh)  # (B, N, K), (B,)
    solve = gram_solver(A_true, ridge)
    GM = solve(A_true.mH @ C)  # (B, K, K)  G^-1 M
    t1 = torch.diagonal(solve(C.mH @ C), dim1=-2, dim2=-1).real.sum(-1)
    t2 = torch.diagonal(GM @ GM, dim1=-2, dim2=-1).real.sum(-1)
    return (r2 - 2 * t1 + t2).clamp_min(0.0) / (r2 + EPS)


def predicted_subspace_alignment(R: torch.Tensor, K: torch.Tensor, A_slots: torch.Tensor,
                                 weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean over slots of 1 - ||U_K^H a_s||^2 (a_s unit norm): predicted steering
    against the top-K subspace of R. Gradient reaches the slot positions through a_s.

    R : [B, N, N]; K : [B] int64; A_slots : [B, N, S] complex unit columns;
    weight : [B, S] float >= 0 (e.g. 1 for slots matched to a true source)  ->  [B] float
    """
    U = top_eigenvectors(R, K)  # (B, N, Kc)
    c = U.mH @ A_slots  # (B, Kc, S)
    inside = (c.real.square() + c.imag.square()).sum(-2)  # (B, S)
    dist = (1.0 - inside).clamp_min(0.0)
    return (weight * dist).sum(-1) / weight.sum(-1).clamp_min(EPS)


def capon_spectrum(R: torch.Tensor | LowRank, A: torch.Tensor,
                   loading: float = 1e-2) -> torch.Tensor:
    """Capon pseudo-spectrum 1 / (a^H R_l^-1 a) at given steering vectors.

    R_l = trace-N Hermitised R + loading I (full rank), solved by Cholesky. Given R as
    c I + W W^H (:class:`LowRank`), by Woodbury with the r x r Cholesky of
    G = c I + W^H W: a^H R_l^-1 a = (|a|^2 - |L^-1 W^H a|^2) / c, in double precision
    (the difference cancels where a lies in the signal subspace).
    R : [B, N, N] complex or LowRank; A : [B, N, P] complex  ->  [B, P] float
    """
    if loading <= 0:
        raise ValueError("capon_spectrum needs a positive loading (R may be rank-deficient)")
    if isinstance(R, LowRank):
        lr = R.scaled_to_trace().loaded(loading)
        W, A2 = lr.W.to(torch.complex128), A.to(torch.complex128)
        c = lr.c.to(torch.float64)
        G = W.mH @ W + torch.diag_embed(c.unsqueeze(-1).expand(-1, W.shape[-1])).to(W.dtype)
        X = torch.linalg.solve_triangular(torch.linalg.cholesky(G), W.mH @ A2, upper=False)
        q = ((A2.real.square() + A2.imag.square()).sum(-2)
             - (X.real.square() + X.imag.square()).sum(-2)) / c.unsqueeze(-1)
        return (1.0 / q.clamp_min(EPS)).to(A.real.dtype)
    Rl = load_diagonal(normalize_trace(hermitise(R)), loading)
    L = torch.linalg.cholesky(Rl)
    X = torch.linalg.solve_triangular(L, A, upper=False)  # L^-1 a: a^H R^-1 a = ||L^-1 a||^2
    q = (X.real.square() + X.imag.square()).sum(-2)  # (B, P)
    return 1.0 / q.clamp_min(EPS)


def neighbour_offsets(delta_angle: float, delta_inv_range: float) -> torch.Tensor:
    """Six neighbours of a point: +-delta in azimuth, elevation [rad] and 1/range [1/m].

    Returns [6, 3] float (d_azimuth, d_elevation, d_inverse_range).
    """
    d = torch.tensor([delta_angle, delta_angle, delta_inv_range])
    eye = torch.eye(3) * d
    return torch.cat([eye, -eye])


def peak_contrast(R: torch.Tensor, azimuth: torch.Tensor, elevation: torch.Tensor,
                  range_m: torch.Tensor, mask: torch.Tensor, system: SystemConfig,
                  delta_angle_deg: float = 3.0, delta_inv_range: float = 0.2,
                  loading: float = 1e-2) -> torch.Tensor:
    """Mean over true sources of mean_j P(neighbour_j) / P(source), P the Capon spectrum.

    A sharp peak at every source gives a value near 0; a flat spectrum (R = I) gives 1.
    Neighbours lie delta_angle_deg away in azimuth and elevation and delta_inv_range away in
    1/range (clamped to stay positive).
    R : [B, N, N]; azimuth, elevation [rad], range_m [m], mask : [B, K_max]  ->  [B] float
    """
    offs = neighbour_offsets(math.radians(delta_angle_deg), delta_inv_range).to(azimuth)
    one = torch.ones_like(range_m)
    inv = 1.0 / torch.where(mask, range_m, one)  # (B, K)
    base = torch.stack([torch.where(mask, azimuth, 0 * one),
                        torch.where(mask, elevation, 0 * one), inv], -1)  # (B, K, 3)
    pts = torch.cat([base.unsqueeze(-2), base.unsqueeze(-2) + offs], -2)  # (B, K, 7, 3)
    inv_r = pts[..., 2].clamp_min(0.02)
    A = steering(pts[..., 0], pts[..., 1], 1.0 / inv_r, system, torch.complex64)  # (B,K,7,N)
    B, K = mask.shape
    P = capon_spectrum(R, A.reshape(B, K * 7, -1).mT, loading).view(B, K, 7)
    ratio = P[..., 1:].mean(-1) / P[..., 0].clamp_min(EPS)  # (B, K)
    m = mask.to(ratio.dtype)
    return (ratio * m).sum(-1) / m.sum(-1).clamp_min(1.0)
