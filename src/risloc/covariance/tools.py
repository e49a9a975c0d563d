"""Covariance tools: the one implementation that training and inference both call.

All functions are batched over leading dimensions; matrices are [..., N, N] complex.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from risloc.core.operator import operators


def _check_square(R: torch.Tensor, name: str = "R") -> None:
    if R.ndim < 2 or R.shape[-1] != R.shape[-2]:
        raise ValueError(f"{name} must be [..., N, N], got shape {tuple(R.shape)}")


def hermitise(R: torch.Tensor) -> torch.Tensor:
    """(R + R^H) / 2."""
    _check_square(R)
    return 0.5 * (R + R.mH)


def trace(R: torch.Tensor) -> torch.Tensor:
    """Real part of the trace: [...]."""
    return torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1)


def normalize_trace(R: torch.Tensor, N: int | None = None, eps: float = 1e-12) -> torch.Tensor:
    """Scale R to trace N (default: its own size). eps guards an all-zero matrix."""
    _check_square(R)
    N = R.shape[-1] if N is None else N
    tr = trace(R).clamp_min(eps)
    return R * (N / tr).unsqueeze(-1).unsqueeze(-1).to(R.dtype)


def _eye_like(R: torch.Tensor) -> torch.Tensor:
    return torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)


def shrink(R: torch.Tensor, a: float) -> torch.Tensor:
    """Ledoit-Wolf-style shrinkage (1 - a) R + a tr(R)/N I."""
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"shrinkage a must lie in [0, 1], got {a}")
    N = R.shape[-1]
    mu = (trace(R) / N).unsqueeze(-1).unsqueeze(-1).to(R.dtype)
    return (1 - a) * R + a * mu * _eye_like(R)


def load_diagonal(R: torch.Tensor, eps: float) -> torch.Tensor:
    """Diagonal loading R + eps tr(R)/N I (eps relative to the mean eigenvalue)."""
    if eps < 0:
        raise ValueError(f"diagonal loading must be >= 0, got {eps}")
    N = R.shape[-1]
    mu = (trace(R) / N).unsqueeze(-1).unsqueeze(-1).to(R.dtype)
    return R + eps * mu * _eye_like(R)


def blend(R_pred: torch.Tensor, R_samp: torch.Tensor, beta: float | torch.Tensor,
          N: int | None = None) -> torch.Tensor:
    """R_blend = (1 - beta) R_pred + beta R_samp, Hermitised, trace N.

    Both inputs are normalised to trace N first so that beta means what it says
    (the previous attempt blended a trace-20,711 target with a trace-288 blend).
    R_samp is detached: the network must not learn through the sample covariance.
    """
    if R_pred.shape != R_samp.shape:
        raise ValueError(f"R_pred {tuple(R_pred.shape)} and R_samp {tuple(R_samp.shape)} differ")
    beta = torch.as_tensor(beta, dtype=R_pred.real.dtype, device=R_pred.device)
    if beta.ndim == 1:
        beta = beta.view(-1, 1, 1)
    Rp = normalize_trace(hermitise(R_pred), N)
    Rs = normalize_trace(hermitise(R_samp.detach()), N)
    return normalize_trace(hermitise((1 - beta) * Rp + beta * Rs), N)


def solve_loaded(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A^-1 B for loaded (positive definite) systems: the LU solve of torch.linalg.solve
    without its check for singular matrices, which on a GPU waits for the device (a host
    synchronisation per call: 173 per learned call of 256 scenes on an H200)."""
    return torch.linalg.solve_ex(A, B)[0]


def abs2(z: torch.Tensor) -> torch.Tensor:
    """|z|^2 elementwise as re^2 + im^2: no square root (2.7x faster than abs().square() on
    CPU, measured), and a well-defined gradient at z = 0."""
    return z.real.square() + z.imag.square() if z.is_complex() else z.square()


def abs2_(z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`abs2` of a complex temporary, squared in its own storage (z is overwritten):
    the same values bit for bit, without abs2's two buffers of strided squares. For the
    large [..., G] products of grid statistics (a fresh buffer of tens of MB is page-faulted
    in on every call: 2.2x faster on [256, 6, 3120], product included, measured); ``out``
    (real, z's shape) receives the result where given. Falls back to abs2 where z needs a
    gradient, is a lazy conjugate or is real (then ``out`` is not used)."""
    if not z.is_complex() or z.requires_grad or z.is_conj():
        return abs2(z)
    r = torch.view_as_real(z)
    r.mul_(r)
    return torch.add(r[..., 0], r[..., 1], out=out)


def orthonormal_basis(A: torch.Tensor) -> torch.Tensor:
    """Q [..., n, k] with orthonormal columns, column j spanning what A's column j [..., n, k]
    adds to the columns before it (a thin QR's Q up to a unit phase per column); a column
    that adds nothing (zero, or dependent on the earlier ones to within 10 ulp of its norm)
    gives a zero column, so zero-padded columns drop out of any projection.

    On the CPU, LAPACK's QR (4x faster than the steps below on [512, 8, 5]), with its
    columns of zero R_jj zeroed; where such a column is followed by one that is kept, the
    QR would have given the later one's share along an arbitrary direction, so that batch
    goes the other way. Elsewhere :func:`_gram_schmidt`, because torch.linalg.qr on CUDA
    factors a batch one matrix at a time (the fit stage made 38,144 cuSOLVER calls per 256
    scenes on an H200: 86 % of a profiled call's host time). The two agree to rounding
    (tests/unit/covariance).
    """
    tol = 10 * torch.finfo(A.real.dtype).eps
    if A.device.type != "cpu":
        return _gram_schmidt(A, tol)
    Q, R = torch.linalg.qr(A)
    keep = torch.diagonal(R, dim1=-2, dim2=-1).abs() > tol * torch.linalg.vector_norm(A, dim=-2)
    if bool((keep[..., 1:] & ~keep[..., :-1]).any()):  # a dropped column before a kept one
        return _gram_schmidt(A, tol)
    return Q * keep.unsqueeze(-2)


def _gram_schmidt(A: torch.Tensor, tol: float) -> torch.Tensor:
    """:func:`orthonormal_basis` by classical Gram-Schmidt with one reorthogonalisation
    (CGS2: orthonormal to working precision, Giraud et al., Numer. Math. 2005), batched over
    the leading dimensions in k steps (up to a unit phase per column, the QR's Q)."""
    cols: list[torch.Tensor] = []
    for j in range(A.shape[-1]):
        a = A[..., j:j + 1]
        v = a
        if cols:
            Q = torch.cat(cols, -1)
            for _ in range(2):
                v = v - Q @ (Q.mH @ v)
        norm = torch.linalg.vector_norm(v, dim=-2, keepdim=True)
        keep = norm > tol * torch.linalg.vector_norm(a, dim=-2, keepdim=True)
        cols.append(torch.where(keep, v / norm.clamp_min(torch.finfo(norm.dtype).tiny),
                                v.new_zeros(())))
    return torch.cat(cols, -1) if cols else A


def leading_eigenpair(G: torch.Tensor, squarings: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest eigenvalue [...] and a unit eigenvector [..., n] of Hermitian PSD G
    [..., n, n] (the eigenvector up to a unit phase).

    On the CPU, torch.linalg.eigh. Elsewhere by repeated squaring, because eigh there reads
    its LAPACK info on the host (a GPU's host waits for it): P = G / tr G squared
    ``squarings`` times, renormalised to unit trace each time, tends to the projector u u^H
    onto the leading eigenvector (its error shrinks as (lambda_2 / lambda_1)^(2^squarings));
    u is P's column of largest diagonal, normalised, and the eigenvalue u^H G u. Where the
    two largest eigenvalues (nearly) coincide, u is a unit vector of their eigenspace and the
    value lies between them; the two routes then differ by more than rounding.
    """
    _check_square(G, "G")
    if G.device.type == "cpu":
        lam, U = torch.linalg.eigh(G)
        return lam[..., -1], U[..., -1]
    return _eigenpair_by_squaring(G, squarings)


def _eigenpair_by_squaring(G: torch.Tensor, squarings: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`leading_eigenpair` off the CPU (its docstring): no host synchronisation."""
    tiny = torch.finfo(G.real.dtype).tiny
    P = G / trace(G).clamp_min(tiny)[..., None, None]
    for _ in range(squarings):
        P = P @ P
        P = P / trace(P).clamp_min(tiny)[..., None, None]
    j = torch.diagonal(P, dim1=-2, dim2=-1).real.argmax(-1, keepdim=True)  # [..., 1]
    u = P.gather(-1, j.unsqueeze(-2).expand(*P.shape[:-1], 1)).squeeze(-1)
    u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(tiny)
    lam = (u.conj().unsqueeze(-2) @ G @ u.unsqueeze(-1)).real[..., 0, 0]
    return lam, u


def back_projection(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                    alpha: float = 1e-3) -> torch.Tensor:
    """Per-snapshot Tikhonov least squares a_l = (Phi_l^H Phi_l + alpha' I)^-1 Phi_l^H y_l.

    alpha' = alpha tr(Phi_l^H Phi_l)/N. Since M < N this is evaluated in the M-dimensional
    form a_l = Phi_l^H (Phi_l Phi_l^H + alpha' I_M)^-1 y_l (push-through identity).

    y : [B, L, M], H : [B, M, N], codes : [B, L, N]  ->  a : [B, L, N]
    """
    if y.ndim != 3 or y.shape[0] != H.shape[0] or y.shape[-1] != H.shape[-2] \
            or y.shape[1] != codes.shape[1]:
        raise ValueError(f"y must be [B, L, M] matching H [B, M, N] and codes [B, L, N]; got "
                         f"{tuple(y.shape)}, {tuple(H.shape)}, {tuple(codes.shape)}")
    phi = operators(H, codes)  # (B, L, M, N)
    N = phi.shape[-1]
    gram = phi @ phi.mH  # (B, L, M, M)
    alpha_abs = alpha * trace(gram) / N  # tr(Phi^H Phi) = tr(Phi Phi^H)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    gram = gram + alpha_abs.unsqueeze(-1).unsqueeze(-1).to(gram.dtype) * eye
    solve = solve_loaded if alpha > 0 else torch.linalg.solve  # loaded: positive definite
    z = solve(gram, y.unsqueeze(-1))  # (B, L, M, 1)
    return (phi.mH @ z).squeeze(-1)


def unit_snapshots(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                   alpha: float = 1e-3) -> torch.Tensor:
    """The back-projected snapshots a_l (:func:`back_projection`) at unit RMS per scene,
    so that the trace normalisation's eps never binds whatever the units: [B, L, N]."""
    a = back_projection(y, H, codes, alpha)  # (B, L, N)
    return a / abs2(a).mean((-2, -1), keepdim=True).sqrt().clamp_min(1e-30)


def snapshot_covariance(a: torch.Tensor, N: int | None = None) -> torch.Tensor:
    """(1/L) sum_l a_l a_l^H of snapshots a [B, L, N], Hermitised, trace N: [B, N, N]."""
    R = a.mT @ a.conj() / a.shape[1]  # sum_l a_l a_l^H: (B, N, L) @ (B, L, N)
    return normalize_trace(hermitise(R), N)


def sample_covariance(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                      alpha: float = 1e-3, N: int | None = None) -> torch.Tensor:
    """R_samp = (1/L) sum_l a_l a_l^H of the back-projected snapshots, trace N.

    Never mean-centred. Its rank is at most L (and each a_l lies in the M-dim row space of
    Phi_l), so it is a weak estimate of R_true when M < N.

    y : [B, L, M], H : [B, M, N], codes : [B, L, N]  ->  R_samp : [B, N, N]
    """
    return snapshot_covariance(unit_snapshots(y, H, codes, alpha), N)


class LowRank(NamedTuple):
    """R = c I + W W^H, a covariance of rank r < N plus a multiple of the identity, kept
    as its factor: c : [B] real, W : [B, N, r] complex. R_blend is one (R_pred = F F^H
    with S columns, R_samp of rank L, shrinkage and loading add multiples of I), so its
    eigenvalues are c + those of the r x r matrix W^H W and c (N - r times), its top
    eigenvectors W v / |W v| for the top eigenvectors v of W^H W, and R^-1 a follows from
    an r x r Cholesky (Woodbury): 21 x 21 factorisations instead of 144 x 144 ones."""

    c: torch.Tensor
    W: torch.Tensor

    @classmethod
    def of(cls, W: torch.Tensor) -> LowRank:
        """W W^H (c = 0): R_pred = F F^H, R_true from its factor."""
        return cls(W.real.new_zeros(W.shape[0]), W)

    def first(self, n: int) -> LowRank:
        """The first n scenes."""
        return LowRank(self.c[:n], self.W[:n])

    def trace(self) -> torch.Tensor:
        """[B]: N c + ||W||_F^2."""
        return self.W.shape[-2] * self.c + abs2(self.W).sum((-2, -1))

    def dense(self) -> torch.Tensor:
        """[B, N, N] (for tests and checks)."""
        eye = torch.eye(self.W.shape[-2], dtype=self.W.dtype, device=self.W.device)
        return self.c.view(-1, 1, 1).to(self.W.dtype) * eye + self.W @ self.W.mH

    def scaled_to_trace(self, N: int | None = None, eps: float = 1e-12) -> LowRank:
        """:func:`normalize_trace` of R."""
        N = self.W.shape[-2] if N is None else N
        s = N / self.trace().clamp_min(eps)
        return LowRank(self.c * s, self.W * s.sqrt().view(-1, 1, 1).to(self.W.dtype))

    def shrunk(self, a: float) -> LowRank:
        """:func:`shrink`: (1 - a) R + a tr(R)/N I."""
        mu = self.trace() / self.W.shape[-2]
        return LowRank((1 - a) * self.c + a * mu, self.W * math.sqrt(1 - a))

    def loaded(self, eps: float) -> LowRank:
        """:func:`load_diagonal`: R + eps tr(R)/N I."""
        return LowRank(self.c + eps * self.trace() / self.W.shape[-2], self.W)

    def frob2(self) -> torch.Tensor:
        """[B] real: ||R||_F^2 = N c^2 + 2 c |W|^2 + |W^H W|^2 (an r x r product)."""
        N = self.W.shape[-2]
        return (N * self.c.square() + 2 * self.c * abs2(self.W).sum((-2, -1))
                + abs2(self.W.mH @ self.W).sum((-2, -1)))

    def matmul(self, A: torch.Tensor) -> torch.Tensor:
        """R A = c A + W (W^H A) for A [B, N, k]."""
        return self.c.view(-1, 1, 1).to(A.dtype) * A + self.W @ (self.W.mH @ A)


def blend_factor(F: torch.Tensor, a: torch.Tensor, beta: float | torch.Tensor,
                 N: int | None = None) -> LowRank | None:
    """:func:`blend` of R_pred = F F^H and R_samp = :func:`snapshot_covariance` (a), as
    the factor W = [sqrt(1 - beta) F / |F|, sqrt(beta) a^T / |a|] sqrt(N) (c = 0), scaled
    to trace N as blend's last step does, a detached as in :func:`blend`.
    F : [B, N, S], a : [B, L, N] -> W : [B, N, S + L]; None where S + L >= N (a small
    RIS: the factor would be no smaller than R, whose dense terms then apply)."""
    N = F.shape[-2] if N is None else N
    if F.shape[-1] + a.shape[-2] >= F.shape[-2]:
        return None
    a = a.detach().mT
    unit = lambda X: X * (N / abs2(X).sum((-2, -1), keepdim=True).clamp_min(1e-12)).sqrt()  # noqa: E731
    if isinstance(beta, torch.Tensor):  # per scene [B] (or a scalar tensor)
        beta = beta.to(F.real.dtype).reshape(-1, 1, 1)
        wp, ws = (1 - beta).sqrt().to(F.dtype), beta.sqrt().to(F.dtype)
    else:  # a number: no tensor from host data
        wp, ws = math.sqrt(1 - beta), math.sqrt(beta)
    W = torch.cat([unit(F) * wp, unit(a) * ws], -1)
    return LowRank(W.new_zeros(W.shape[0], dtype=W.real.dtype), W).scaled_to_trace(N)


def top_eigenvectors(R: torch.Tensor | LowRank, K: torch.Tensor) -> torch.Tensor:
    """Top-K eigenvectors of the Hermitised R, without gradient, zero columns beyond K.
    Given R as c I + W W^H (:class:`LowRank`): W v / |W v| for the top eigenvectors v of
    the r x r W^H W (a column of a zero eigenvalue, which has no direction, is 0).

    R : [B, N, N] complex or LowRank; K : [B] int64  ->  U : [B, N, max K] complex
    """
    with torch.no_grad():
        Kc = int(K.max())
        if isinstance(R, LowRank):
            W = R.W.detach()
            _, V = torch.linalg.eigh(hermitise(W.mH @ W))  # ascending
            U = W @ V[..., -Kc:].flip(-1)
            U = U / torch.linalg.vector_norm(U, dim=-2, keepdim=True).clamp_min(1e-12)
        else:
            _, V = torch.linalg.eigh(hermitise(R.detach()))  # ascending
            U = V[..., -Kc:].flip(-1)
        keep = torch.arange(Kc, device=K.device) < K.unsqueeze(-1)
        return U * keep.unsqueeze(-2).to(U.dtype)


def subspace_overlap(R_est: torch.Tensor | LowRank, R_ref: torch.Tensor | LowRank,
                     K: torch.Tensor) -> torch.Tensor:
    """Top-K subspace overlap ||U_ref^H U_est||_F^2 / K in [0, 1] (evaluation only).

    K : [B] int. Either matrix may come as its :class:`LowRank` factor (the eigenvectors
    of an r x r matrix instead of an N x N one: :func:`top_eigenvectors`).
    """
    G = top_eigenvectors(R_ref, K).mH @ top_eigenvectors(R_est, K)
    return G.abs().square().sum((-1, -2)) / K.to(G.real.dtype)


