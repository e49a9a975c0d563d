"""RIS geometry: element positions and source positions (docs/conventions.md, "Geometry").

Element n = v * N_H + h; x_n = (h - (N_H-1)/2) d, y_n = (v - (N_V-1)/2) d, z_n = 0.
A source at azimuth phi, elevation theta, range r sits at
p = r (cos(theta) sin(phi), sin(theta), cos(theta) cos(phi)).
"""

from __future__ import annotations

import math

import torch

from risloc.config import FieldOfView, SystemConfig


def element_positions(system: SystemConfig, dtype: torch.dtype = torch.float64,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Positions of the RIS elements.

    Returns
    -------
    pos : [N, 3], real — [m]; row n = v * N_H + h.
    """
    h = torch.arange(system.N_H, dtype=dtype, device=device) - (system.N_H - 1) / 2
    v = torch.arange(system.N_V, dtype=dtype, device=device) - (system.N_V - 1) / 2
    vv, hh = torch.meshgrid(v, h, indexing="ij")  # (N_V, N_H): row-major gives n = v*N_H + h
    x = (hh * system.spacing).reshape(-1)
    y = (vv * system.spacing).reshape(-1)
    return torch.stack([x, y, torch.zeros_like(x)], dim=-1)


def direction(azimuth: torch.Tensor, elevation: torch.Tensor) -> torch.Tensor:
    """Unit direction vector u(phi, theta): [..., 3]."""
    ce = torch.cos(elevation)
    return torch.stack([ce * torch.sin(azimuth), torch.sin(elevation), ce * torch.cos(azimuth)],
                       dim=-1)


def angles_from_direction(u_x: torch.Tensor, u_y: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of :func:`direction` on the front half-space (u_z >= 0): azimuth and
    elevation [rad] of the direction with components u_x, u_y, and a bool mask where such a
    direction exists (|u_y| <= 1 and |u_x| <= cos(elevation)); elsewhere the angles are
    those of the clamped components."""
    elevation = torch.asin(u_y.clamp(-1, 1))
    cx = u_x / torch.cos(elevation)  # sin(azimuth)
    azimuth = torch.asin(cx.clamp(-1, 1))
    return azimuth, elevation, (u_y.abs() <= 1) & (cx.abs() <= 1)


def source_position(azimuth: torch.Tensor, elevation: torch.Tensor,
                    range_m: torch.Tensor) -> torch.Tensor:
    """Cartesian position of sources: [..., 3] — [m]. Angles in radians."""
    return range_m.unsqueeze(-1) * direction(azimuth, elevation)


def angular_separation(az1: torch.Tensor, el1: torch.Tensor,
                       az2: torch.Tensor, el2: torch.Tensor) -> torch.Tensor:
    """Great-circle angle between two directions [rad] (broadcasting)."""
    dtype = torch.promote_types(torch.promote_types(az1.dtype, el1.dtype),
                                torch.promote_types(az2.dtype, el2.dtype))
    az1, el1, az2, el2 = (t.to(dtype) for t in torch.broadcast_tensors(az1, el1, az2, el2))
    u1 = direction(az1, el1)
    u2 = direction(az2, el2)
    cos = (u1 * u2).sum(-1)
    # atan2 of |cross| and dot is accurate for tiny and near-pi angles alike.
    sin = torch.linalg.vector_norm(torch.cross(u1, u2, dim=-1), dim=-1)
    return torch.atan2(sin, cos)


def alias_free_spacing(system: SystemConfig, fov: FieldOfView) -> tuple[float, float]:
    """The largest element spacings [m] along x and y at which no two far-field directions
    of ``fov`` look alike: the array's phase x_n u_x + y_n u_y repeats when u_x moves by
    lambda / d (u_y likewise), so a grating lobe stays out of the field of view while d <=
    lambda / (the span of u_x over it). In the near field the alias is only approximate."""
    az = torch.deg2rad(torch.linspace(*fov.azimuth_deg, 721, dtype=torch.float64))
    el = torch.deg2rad(torch.linspace(*fov.elevation_deg, 361, dtype=torch.float64))
    u = direction(*torch.meshgrid(az, el, indexing="ij"))
    span_x = float(u[..., 0].max() - u[..., 0].min())
    span_y = float(u[..., 1].max() - u[..., 1].min())
    return (system.wavelength / span_x if span_x > 0 else math.inf,
            system.wavelength / span_y if span_y > 0 else math.inf)


def aperture(system: SystemConfig) -> float:
    """D [m]: the largest distance between two RIS elements (the array's diagonal)."""
    return system.spacing * math.hypot(system.N_H - 1, system.N_V - 1)


def fraunhofer_distance(system: SystemConfig) -> float:
    """2 D^2 / lambda [m] (D: :func:`aperture`): beyond it a source's wavefront across the
    RIS is nearly plane, its range barely changes the measurements and is told poorly (the
    CRB says how poorly); the near field, where range is measured, lies inside it."""
    return 2 * aperture(system) ** 2 / system.wavelength
