"""Input validation shared by the measurement-domain estimators (NF-MLE, classical).

Bad input raises ValueError naming the problem; nothing returns NaN silently.
"""

from __future__ import annotations

import torch

from risloc.config import SystemConfig


def check_measurements(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                       system: SystemConfig) -> None:
    """Raise ValueError unless y [B, L, M], H [B, M, N], codes [B, L, N] are consistent,
    finite and every scene has a non-zero channel."""
    if y.ndim != 3 or H.ndim != 3 or codes.ndim != 3:
        raise ValueError(f"y, H, codes must be [B, L, M], [B, M, N], [B, L, N]; got "
                         f"{tuple(y.shape)}, {tuple(H.shape)}, {tuple(codes.shape)}")
    (B_, L, M), N = y.shape, system.N
    if y.shape[0] == 0:
        raise ValueError("empty batch: y has no scenes")
    if tuple(H.shape) != (B_, M, N) or tuple(codes.shape) != (B_, L, N):
        raise ValueError(f"shape mismatch: y {tuple(y.shape)} needs H ({B_}, {M}, {N}) and "
                         f"codes ({B_}, {L}, {N}); got {tuple(H.shape)}, {tuple(codes.shape)}")
    for name, t in (("y", y), ("H", H), ("codes", codes)):
        if not bool(torch.isfinite(torch.view_as_real(t.to(torch.complex128))).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    zero = (H.abs().amax((-1, -2)) == 0).nonzero().flatten()
    if zero.numel():
        raise ValueError(f"all-zero channel H in scenes {zero[:10].tolist()}")


def check_positions(az: torch.Tensor, el: torch.Tensor, r: torch.Tensor, mask: torch.Tensor,
                    M: int) -> None:
    """Raise ValueError on bad start positions [B, K] / too many sources (K >= M)."""
    if not (az.shape == el.shape == r.shape == mask.shape) or az.ndim != 2:
        raise ValueError(f"positions and mask must share one [B, K] shape; got "
                         f"{tuple(az.shape)}, {tuple(el.shape)}, {tuple(r.shape)}, "
                         f"{tuple(mask.shape)}")
    K = mask.sum(-1)
    if bool((K >= M).any()):
        raise ValueError(f"K >= M={M} sources cannot be resolved (got K up to {int(K.max())})")
    vals = torch.stack([az, el, r])[:, mask]
    if not bool(torch.isfinite(vals).all()):
        raise ValueError("start positions of real source slots must be finite")
    if bool((r[mask] <= 0).any()):
        raise ValueError("ranges must be positive")
