"""Schedules of the training loop: learning rate, blend weight beta, loss weights, SNR.

Pure functions of the step / epoch (no state), so a resumed run reproduces them exactly.
"""

from __future__ import annotations

import math

import torch


def get_lr(step: int, total_steps: int, warmup_steps: int, lr: float,
           min_lr_ratio: float = 0.05) -> float:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then cosine decay to
    ``min_lr_ratio * lr`` at ``total_steps``; constant afterwards."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0) / span, 1.0)
    min_lr = min_lr_ratio * lr
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))


def beta_at(progress: float, beta_final: float, warmup_frac: float) -> float:
    """Blend weight annealed linearly 0 -> beta_final over the first ``warmup_frac`` of
    training (progress in [0, 1]), then constant."""
    if warmup_frac <= 0:
        return beta_final
    return beta_final * min(max(progress, 0.0) / warmup_frac, 1.0)


def jittered_beta(beta: float, jitter: float, seed: int, step: int) -> float:
    """beta + U(-jitter, jitter), clamped to [0, 1]; the draw depends only on (seed, step)."""
    if jitter <= 0:
        return beta
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    u = float(torch.rand((), generator=gen))
    return min(max(beta + jitter * (2.0 * u - 1.0), 0.0), 1.0)


def final_start(final_frac: float, epochs: int) -> int:
    """The first epoch (0-based) of the last ``final_frac`` of ``epochs``: ceil((1 - f) E),
    the product rounded first (0.7 of 10 epochs is 3.0000000000000004 in floating point,
    whose ceiling, 4, would leave 6 final epochs, not 7)."""
    return math.ceil(round((1.0 - final_frac) * epochs, 9))


def phase_of(epoch: int, epochs: int, warmup_epochs: int, final_frac: float) -> int:
    """0 = warm-up (epoch < warmup_epochs), 2 = final (last final_frac of the epochs),
    1 = main."""
    if epoch < warmup_epochs:
        return 0
    if final_frac > 0 and epoch >= final_start(final_frac, epochs):
        return 2
    return 1


def loss_weights_at(epoch: int, epochs: int, schedule: dict[str, tuple[float, float, float]],
                    warmup_epochs: int, final_frac: float) -> dict[str, float]:
    """The scheduled loss weights of an epoch: {weight name: value of its phase}."""
    phase = phase_of(epoch, epochs, warmup_epochs, final_frac)
    return {name: float(values[phase]) for name, values in schedule.items()}


def snr_range_at(epoch: int, epochs: int, full: tuple[float, float],
                 start: tuple[float, float], curriculum_frac: float) -> tuple[float, float]:
    """SNR curriculum: the training SNR range moves linearly from ``start`` to ``full``
    over the first ``curriculum_frac`` of the epochs."""
    if curriculum_frac <= 0:
        return full
    t = min(epoch / max(curriculum_frac * epochs, 1e-9), 1.0)
    return (start[0] + t * (full[0] - start[0]), start[1] + t * (full[1] - start[1]))
