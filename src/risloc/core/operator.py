"""The measurement operator Phi_l = H diag(c_l) (docs/conventions.md, "Measurement model").

y_l = Phi_l A s_l + n_l. Every estimator, the network, the losses and the CRB apply the
operator through these two functions.
"""

from __future__ import annotations

import torch


def operators(H: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Per-snapshot operators Phi_l = H diag(c_l): H [B, M, N], codes [B, L, N] ->
    Phi [B, L, M, N] (formed explicitly: only where the N-dimensional rows are needed,
    as in the back-projection; to apply it, :func:`apply_operator` is cheaper)."""
    if H.ndim != 3 or codes.ndim != 3 or H.shape[0] != codes.shape[0] \
            or H.shape[-1] != codes.shape[-1]:
        raise ValueError(f"H must be [B, M, N] and codes [B, L, N]; got {tuple(H.shape)} "
                         f"and {tuple(codes.shape)}")
    return H.unsqueeze(1) * codes.unsqueeze(2)


def apply_operator(H: torch.Tensor, codes: torch.Tensor, V: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Phi_l v_p = H diag(c_l) v_p for every snapshot l and row v_p of V.

    H : [B, M, N], codes : [B, L, N] complex
    V : [B, P, N] complex, per scene — or [P, N], shared by the batch (a search grid)
    Returns [B, L, M, P] complex.

    Per-scene rows go through whichever intermediate is smaller: for P <= M the products
    c_l (.) v_p [B, L*P, N] times H^T in one batched GEMM (reading H once per scene is 3-5x
    faster than multiplying the stacked operators at P = 5: memory bound, measured); for
    P > M the stacked operators [B, L*M, N] times V^T (2.4-2.7x faster at P = 32, M = 16:
    the L P N products no longer fit the caches; ``benchmarks/bench_roofline.py``).
    Shared rows (many of them) always go the second way; ``out`` ([B, L * M, P] contiguous,
    shared rows only) then receives the product: a caller that applies the operator to a
    large grid chunk after chunk reuses one buffer instead of mapping a fresh one each time.
    """
    B, L, N = codes.shape
    M = H.shape[-2]
    if V.ndim == 2:
        P = V.shape[0]
        prod = torch.matmul(operators(H, codes).flatten(1, 2), V.T, out=out)
        return prod.view(B, L, -1, P)  # (B, L, M, P)
    if out is not None:
        raise ValueError("apply_operator: out is supported for shared rows V [P, N] only")
    P = V.shape[1]
    if P > M:
        return (operators(H, codes).flatten(1, 2) @ V.mT).view(B, L, M, P)
    X = (codes.unsqueeze(2) * V.unsqueeze(1)).reshape(B, -1, N)  # (B, L*P, N)
    return (X @ H.mT).view(B, L, P, -1).mT  # (B, L, M, P)
