"""Base-station <- RIS channel (docs/conventions.md, "Default system", Channel).

H = sqrt(kappa/(kappa+1)) H_los + sqrt(1/(kappa+1)) H_nlos,
H_los = b(psi) a_ff(phi_b, theta_b)^H   (unit-modulus entries),
H_nlos iid CN(0, 1).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.physics.rng import complex_normal, uniform
from risloc.physics.steering import far_field_response, ula_response


class ChannelDraws(NamedTuple):
    """The random part of :func:`draw_channel`, each [B] real but ``nlos`` [B, M, N]
    complex (the iid CN(0, 1) H_nlos): the arguments of :func:`rician_channel`."""

    kappa: torch.Tensor
    bs_angle: torch.Tensor
    ris_azimuth: torch.Tensor
    ris_elevation: torch.Tensor
    nlos: torch.Tensor

    def to(self, device: torch.device | str) -> ChannelDraws:
        return ChannelDraws(*(t.to(device) for t in self))


def rician_channel(kappa: torch.Tensor, bs_angle: torch.Tensor, ris_azimuth: torch.Tensor,
                   ris_elevation: torch.Tensor, system: SystemConfig,
                   generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.complex64,
                   nlos: torch.Tensor | None = None) -> torch.Tensor:
    """Rician BS <- RIS channel.

    Parameters
    ----------
    kappa : [B], real — Rician factor (linear)
    bs_angle : [B], real — [rad] angle psi of the RIS seen from the BS ULA
    ris_azimuth, ris_elevation : [B], real — [rad] direction of the BS seen from the RIS
    nlos : [B, M, N], complex — H_nlos, drawn already (None: drawn here from ``generator``)

    Returns
    -------
    H : [B, M, N], complex
    """
    b = ula_response(bs_angle, system.M, dtype)  # (B, M)
    a_ff = far_field_response(ris_azimuth, ris_elevation, system, dtype)  # (B, N)
    h_los = b.unsqueeze(-1) * a_ff.conj().unsqueeze(-2)  # (B, M, N)
    if nlos is None:
        nlos = complex_normal((kappa.shape[0], system.M, system.N), generator, dtype,
                              kappa.device)
    k = kappa.to(h_los.real.dtype).view(-1, 1, 1)
    # sqrt(k / (k + 1)) h_los + sqrt(1 / (k + 1)) h_nlos, in h_los's buffer
    return h_los.mul_(torch.sqrt(k / (k + 1))).add_(nlos * torch.sqrt(1 / (k + 1)))


def draw_channel(batch: int, system: SystemConfig, scene: SceneConfig,
                 generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.complex64,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Draw ``batch`` Rician channels with the scene config's random parameters: [B, M, N]."""
    p = draw_channel_params(batch, system, scene, generator, dtype, device)
    return rician_channel(p.kappa, p.bs_angle, p.ris_azimuth, p.ris_elevation, system,
                          dtype=dtype, nlos=p.nlos)


def draw_channel_params(batch: int, system: SystemConfig, scene: SceneConfig,
                        generator: torch.Generator | None = None,
                        dtype: torch.dtype = torch.complex64,
                        device: torch.device | str | None = None) -> ChannelDraws:
    """The random part of :func:`draw_channel` (its draws, in its order)."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    kappa = uniform(batch, *scene.rician_kappa, generator, real, device)
    psi = uniform(batch, *map(math.radians, scene.bs_angle_deg), generator, real, device)
    phi_b = uniform(batch, *map(math.radians, scene.azimuth_deg), generator, real, device)
    theta_b = uniform(batch, *map(math.radians, scene.elevation_deg), generator, real, device)
    nlos = complex_normal((batch, system.M, system.N), generator, dtype, device)
    return ChannelDraws(kappa, psi, phi_b, theta_b, nlos)
