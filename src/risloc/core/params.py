"""Source parameters: the one layout, and the result type every estimator returns.

Inside the estimators a set of K source slots per scene is ``theta : [..., K, 3]`` float,
the last axis (azimuth [rad], elevation [rad], inverse range u = 1/r [1/m]): 1/r is the
natural coordinate of the near-field phase (the spectrum has about constant width in it)
and the one NF-MLE iterates on. :func:`pack` / :func:`unpack` convert, :func:`steering_at`
gives the steering rows of a theta. At the edges (users, files, metrics) sources are an
:class:`Estimates`: K per scene and NaN-padded [B, K_slots] azimuth, elevation, range in
(rad, rad, m), degrees only where they are printed or written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

from risloc.config import SystemConfig
from risloc.physics.steering import steering


def pack(azimuth: torch.Tensor, elevation: torch.Tensor, range_m: torch.Tensor) -> torch.Tensor:
    """(azimuth [rad], elevation [rad], range [m]) [...] -> theta [..., 3] (az, el, 1/r)."""
    return torch.stack([azimuth, elevation, 1.0 / range_m], -1)


def unpack(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """theta [..., 3] -> (azimuth [rad], elevation [rad], range [m]), each [...]."""
    return theta[..., 0], theta[..., 1], 1.0 / theta[..., 2]


def steering_at(theta: torch.Tensor, system: SystemConfig, dtype: torch.dtype,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Steering rows a(theta_k): theta [..., K, 3] -> [..., K, N] complex ``dtype``.

    mask : [..., K] bool or None — slots where it is False (padding, NaN allowed there) get
    a zero row, so they add no column to any operator.
    """
    if mask is None:
        return steering(theta[..., 0], theta[..., 1], 1.0 / theta[..., 2], system, dtype)
    m = mask.unsqueeze(-1)  # padded slots at (0, 0, 1/r = 1): no tensor from host data
    safe = torch.cat([torch.where(m, theta[..., :2], 0.0), torch.where(m, theta[..., 2:], 1.0)],
                     -1)
    A = steering(safe[..., 0], safe[..., 1], 1.0 / safe[..., 2], system, dtype)
    return A * mask.unsqueeze(-1).to(A.dtype)


@dataclass(frozen=True)
class Estimates:
    """Estimated sources of a batch of scenes; slots beyond K are NaN-padded.

    K : [B] int64 — estimated number of sources
    azimuth, elevation : [B, K_slots] float — [rad]
    range_m : [B, K_slots] float — [m]
    score : [B, K_slots] float — estimator-specific confidence (higher = stronger)
    """

    K: torch.Tensor
    azimuth: torch.Tensor
    elevation: torch.Tensor
    range_m: torch.Tensor
    score: torch.Tensor

    def __len__(self) -> int:
        return self.K.shape[0]

    @property
    def mask(self) -> torch.Tensor:
        """[B, K_slots] bool — True for estimated sources."""
        slots = torch.arange(self.azimuth.shape[-1], device=self.K.device)
        return slots < self.K.unsqueeze(-1)

    @property
    def theta(self) -> torch.Tensor:
        """[B, K_slots, 3] — (azimuth [rad], elevation [rad], 1/range [1/m]), NaN-padded."""
        return pack(self.azimuth, self.elevation, self.range_m)

    @classmethod
    def from_theta(cls, K: torch.Tensor, theta: torch.Tensor, score: torch.Tensor | None = None,
                   dtype: torch.dtype | None = None) -> Estimates:
        """Estimates of the first K [B] slots of theta [B, S, 3] (the rest NaN); score
        [B, S] or None (zeros); fields cast to ``dtype`` (default: theta's)."""
        keep = torch.arange(theta.shape[1], device=theta.device) < K.unsqueeze(-1)
        dtype = dtype or theta.dtype
        score = torch.zeros_like(theta[..., 0]) if score is None else score
        az, el, r = unpack(theta)
        return cls(K.to(torch.int64), *(torch.where(keep, t.to(dtype), math.nan)
                                         for t in (az, el, r, score)))

    def __getitem__(self, idx) -> Estimates:
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def truncate(self, K: torch.Tensor) -> Estimates:
        """The min(K, self.K) first slots of each scene (the strongest, for estimators that
        sort by score); the rest NaN. K : [B] int64."""
        K = torch.minimum(K.to(self.K), self.K)
        slots = torch.arange(self.azimuth.shape[-1], device=self.K.device)
        keep = slots < K.unsqueeze(-1)
        return Estimates(K, *(torch.where(keep, getattr(self, n), math.nan)
                              for n in ("azimuth", "elevation", "range_m", "score")))

    def to(self, device) -> Estimates:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def float(self) -> Estimates:
        """The same estimates with float32 positions and scores."""
        return replace(self, **{f.name: getattr(self, f.name).to(torch.float32)
                                for f in fields(self) if f.name != "K"})


def concat_estimates(parts: list[Estimates]) -> Estimates:
    """Concatenate the scenes of several Estimates (float32), NaN-padding the slots to the
    widest part."""
    if not parts:
        raise ValueError("concat_estimates needs at least one part")
    width = max(p.azimuth.shape[-1] for p in parts)

    def pad(t: torch.Tensor) -> torch.Tensor:
        extra = width - t.shape[-1]
        t = t.float()
        return torch.nn.functional.pad(t, (0, extra), value=math.nan) if extra else t

    return Estimates(K=torch.cat([p.K for p in parts]),
                     **{n: torch.cat([pad(getattr(p, n)) for p in parts])
                        for n in ("azimuth", "elevation", "range_m", "score")})
