"""The common result of every estimator."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch


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

    def __getitem__(self, idx) -> Estimates:
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def truncate(self, K: torch.Tensor) -> Estimates:
        """The min(K, self.K) first slots of each scene (the strongest, for estimators that
        sort by score); the rest NaN. K : [B] int64."""
        K = torch.minimum(K.to(self.K), self.K)
        slots = torch.arange(self.azimuth.shape[-1], device=self.K.device)
        keep = slots < K.unsqueeze(-1)
        nan = torch.tensor(math.nan, dtype=self.azimuth.dtype, device=self.K.device)
        return Estimates(K, *(torch.where(keep, getattr(self, n), nan)
                              for n in ("azimuth", "elevation", "range_m", "score")))

    def to(self, device) -> Estimates:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


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
