"""The common result of every estimator."""

from __future__ import annotations

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

    def to(self, device) -> Estimates:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})
