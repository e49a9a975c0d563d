"""Sub-grid refinement of MUSIC peaks by damped Gauss-Newton on the null spectrum.

The MUSIC null spectrum of a unit-norm steering model a(xi) is a sum of squares,

    f(xi) = 1 - ||U_s^H a(xi)||^2 = ||r(xi)||^2,   r(xi) = (I - U_s U_s^H) a(xi),

so Gauss-Newton applies with the residual Jacobian J = (I - U_s U_s^H) da/dxi:

    step = -(Re J^H J + lambda diag(Re J^H J))^{-1} Re J^H r      (lambda = 1e-6).

On an exact covariance the residual vanishes at a source and the iteration converges
quadratically. Each step is damped by a vectorised line search (the best of a few step
fractions, including "stay"), so f never increases, and every iterate is clamped to a
box. The steering model is pluggable: ``NearFieldModel`` (xi = azimuth, elevation,
u = 1/range; the MUSIC parametrisation) or any object with ``steer`` / ``jacobian``.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from risloc.config import SystemConfig
from risloc.physics.steering import steering, steering_derivatives

_FRACTIONS = (1.0, 0.5, 0.2)
_MARQUARDT = 1e-6


class SteeringModel(Protocol):
    """A unit-norm steering model with P parameters."""

    def steer(self, theta: torch.Tensor) -> torch.Tensor:
        """theta [..., P] float64 -> a [..., N] complex128."""

    def jacobian(self, theta: torch.Tensor) -> torch.Tensor:
        """theta [..., P] -> [..., 1 + P, N] complex128: a, then da/dtheta_p."""


class NearFieldModel:
    """Near-field steering of ``system`` in theta = (azimuth [rad], elevation [rad], 1/r [1/m]).

    ``dtype`` (complex64 for cheap grid scans, complex128 for refinement) sets ``steer``'s
    precision; ``jacobian`` is always complex128.
    """

    def __init__(self, system: SystemConfig, dtype: torch.dtype = torch.complex128):
        self.system = system
        self.dtype = dtype

    def steer(self, theta: torch.Tensor) -> torch.Tensor:
        az, el, u = theta.unbind(-1)
        return steering(az, el, 1.0 / u, self.system, self.dtype)

    def jacobian(self, theta: torch.Tensor) -> torch.Tensor:
        az, el, u = theta.unbind(-1)
        a, D = steering_derivatives(az, el, 1.0 / u, self.system, torch.complex128,
                                    inverse_range=True)
        return torch.cat([a.unsqueeze(-2), D], dim=-2)


class Refined(NamedTuple):
    """Refined parameters and their null spectrum.

    theta : [B, C, P] float64 — model parameters
    null : [B, C] float64 — 1 - ||U_s^H a||^2 at theta
    """

    theta: torch.Tensor
    null: torch.Tensor


def _project_out(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """(I - U U^H) x for rows x of X: X [B, ..., N], U [B, N, Kc] -> [B, ..., N]."""
    Xf = X.reshape(X.shape[0], -1, X.shape[-1])  # (B, rows, N): one bmm, no broadcasting
    return (Xf - (Xf @ U.conj()) @ U.mT).reshape(X.shape)


def null_spectrum(theta: torch.Tensor, U: torch.Tensor, model: SteeringModel) -> torch.Tensor:
    """||(I - U U^H) a(theta)||^2 : theta [B, ..., P] float64, U [B, N, Kc] -> [B, ...]."""
    res = _project_out(model.steer(theta), U)
    return res.real.square().sum(-1) + res.imag.square().sum(-1)


def normal_equations(theta: torch.Tensor, U: torch.Tensor, model: SteeringModel):
    """Gauss-Newton gradient and normal matrix at theta [B, C, P].

    Returns g : [B, C, P] = Re J^H r and H : [B, C, P, P] = Re J^H J (float64).
    """
    X = _project_out(model.jacobian(theta), U)  # (B, C, 1 + P, N)
    res, J = X[..., 0, :], X[..., 1:, :]
    g = (J.conj() @ res.unsqueeze(-1)).real.squeeze(-1)
    H = (J.conj() @ J.mT).real
    return g, H


def _gauss_newton_step(theta: torch.Tensor, U: torch.Tensor, model: SteeringModel,
                       free: torch.Tensor) -> torch.Tensor:
    """One Marquardt-regularised Gauss-Newton direction: theta [B, C, P] -> [B, C, P]."""
    g, H = normal_equations(theta, U, model)
    fm = free.to(H.dtype)
    H = H * fm.unsqueeze(-1) * fm + torch.diag_embed(1.0 - fm)  # frozen axes: identity
    scale = torch.diagonal(H, dim1=-2, dim2=-1)
    H = H + torch.diag_embed(_MARQUARDT * scale + 1e-30)
    return -torch.linalg.solve(H, (g * fm).unsqueeze(-1)).squeeze(-1)


def refine_peaks(U: torch.Tensor, theta: torch.Tensor, model: SteeringModel,
                 lower: torch.Tensor, upper: torch.Tensor, iterations: int,
                 free: tuple[bool, ...] | None = None) -> Refined:
    """Damped Gauss-Newton descent of the MUSIC null spectrum from each start point.

    U : [B, N, Kc] complex — signal subspace (columns beyond K zeroed)
    theta : [B, C, P] float — start points in the model's parameters
    lower, upper : [P] float — box of the parameters (+-inf for none)
    free : which parameters move (default all; e.g. range only: (False, False, True))
    """
    U = U.to(torch.complex128)
    theta = theta.to(torch.float64)
    lo, hi = lower.to(theta), upper.to(theta)
    free_t = torch.tensor(free if free is not None else (True,) * theta.shape[-1],
                          device=theta.device)
    fr = torch.tensor((0.0, *_FRACTIONS), dtype=theta.dtype, device=theta.device)
    theta = torch.minimum(torch.maximum(theta, lo), hi)
    f = null_spectrum(theta, U, model)  # (B, C)
    for _ in range(iterations):
        step = _gauss_newton_step(theta, U, model, free_t)
        trial = theta.unsqueeze(-2) + fr.view(-1, 1) * step.unsqueeze(-2)  # (B, C, S, P)
        trial = torch.minimum(torch.maximum(trial, lo), hi)
        f_all = torch.cat([f.unsqueeze(-1), null_spectrum(trial[..., 1:, :], U, model)], -1)
        f, best = f_all.min(-1)
        idx = best.view(*best.shape, 1, 1).expand(*best.shape, 1, theta.shape[-1])
        theta = trial.gather(-2, idx).squeeze(-2)
    return Refined(theta, f)


def valley_directions(theta: torch.Tensor, U: torch.Tensor, system: SystemConfig
                      ) -> torch.Tensor:
    """Direction of slowest rise of the near-field null spectrum in angle, range re-optimised.

    Two sources closer than a beamwidth share one elongated valley of the null spectrum
    (the derivative of a along their join nearly lies in the signal subspace), so a
    coarse grid may show one peak for both; starting refinement a few degrees along this
    direction recovers the second. The angular block of the normal matrix with 1/range
    eliminated (Schur complement) is diagonalised in local tangent coordinates
    (cos(el) d_az, d_el); its weakest eigenvector is returned as a parameter step.

    theta : [B, C, 3] — (az, el, 1/range). Returns [B, C, 3]: a step of unit great-circle
    length [rad] in angle with the matching 1/range change.
    """
    _, H = normal_equations(theta, U.to(torch.complex128), NearFieldModel(system))
    H_uu = H[..., 2, 2].clamp_min(1e-30)
    H_au = H[..., :2, 2]  # (B, C, 2)
    S = H[..., :2, :2] - H_au.unsqueeze(-1) * H_au.unsqueeze(-2) / H_uu[..., None, None]
    ce = torch.cos(theta[..., 1]).clamp_min(1e-6)
    D = torch.stack([1.0 / ce, torch.ones_like(ce)], -1)  # tangent -> parameter scale
    _, V = torch.linalg.eigh(S * D.unsqueeze(-1) * D.unsqueeze(-2))
    d_ang = V[..., :, 0] * D  # (B, C, 2) weakest direction in (az, el)
    d_u = -(H_au * d_ang).sum(-1) / H_uu
    return torch.cat([d_ang, d_u.unsqueeze(-1)], -1)
