"""Seeded random draws. Randomness always flows from an explicit torch.Generator."""

from __future__ import annotations

import math

import torch


def uniform(shape: int | tuple[int, ...], low: float, high: float,
            generator: torch.Generator | None, dtype: torch.dtype = torch.float32,
            device: torch.device | str | None = None) -> torch.Tensor:
    """U(low, high) samples of the given shape."""
    shape = (shape,) if isinstance(shape, int) else shape
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    return low + (high - low) * u


def complex_normal(shape: tuple[int, ...], generator: torch.Generator | None,
                   dtype: torch.dtype = torch.complex64,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Circularly-symmetric CN(0, 1) samples (unit variance: E|z|^2 = 1)."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    z = torch.randn((*shape, 2), generator=generator, dtype=real, device=device)
    return torch.view_as_complex(z.mul_(1.0 / math.sqrt(2.0)))  # in place: no second buffer
