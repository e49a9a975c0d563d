"""RIS phase codebooks and phase quantisation.

Each scene uses L unit-modulus codes c_l in C^N (docs/conventions.md, "Codes"):
* "random": iid phases uniform on the 2^b levels 2 pi q / 2^b (default, b = 3);
* "dft": L distinct beams of the 2-D DFT of the N_V x N_H grid,
  c_n = exp(j 2 pi (h u / N_H + v w / N_V)), quantised to b bits;
* "hadamard": L distinct rows of the Sylvester Hadamard matrix of order 2^ceil(log2 N),
  truncated to N entries (+-1 codes; rows are exactly orthogonal only when N is a power
  of two).
"""

from __future__ import annotations

import math

import torch

from risloc.config import SystemConfig


def quantize_phase(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Round the phase of each entry to the nearest of 2^bits levels; unit modulus out."""
    levels = 2**bits
    step = 2 * math.pi / levels
    q = torch.round(torch.angle(codes) / step)
    return torch.polar(torch.ones_like(q), q * step)


def _distinct_rows(batch: int, L: int, n_rows: int, generator: torch.Generator | None,
                   device) -> torch.Tensor:
    """[B, L] indices of L distinct rows out of n_rows per scene (random permutation)."""
    if L > n_rows:
        raise ValueError(f"codebook has {n_rows} distinct codes, cannot draw L={L}")
    keys = torch.rand((batch, n_rows), generator=generator, device=device)
    return keys.argsort(dim=-1)[:, :L]


def _dft_codebook(system: SystemConfig, dtype: torch.dtype, device) -> torch.Tensor:
    """All N_H*N_V 2-D DFT beams: [N, N] complex (row = beam)."""
    h = torch.arange(system.N_H, device=device, dtype=torch.float64)
    v = torch.arange(system.N_V, device=device, dtype=torch.float64)
    fh = torch.outer(h, h) / system.N_H  # (u, h)
    fv = torch.outer(v, v) / system.N_V  # (w, v)
    phase = 2 * math.pi * (fv[:, None, :, None] + fh[None, :, None, :])  # (w, u, v, h)
    beams = torch.polar(torch.ones_like(phase), phase).reshape(system.N, system.N)
    return beams.to(dtype)


def _hadamard_order(N: int) -> int:
    """The order 2^ceil(log2 N) of the Sylvester Hadamard matrix of N-entry codes."""
    return 1 << max(0, math.ceil(math.log2(N)))


def _hadamard_codebook(N: int, dtype: torch.dtype, device) -> torch.Tensor:
    order = _hadamard_order(N)
    Hm = torch.ones((1, 1), dtype=torch.float64, device=device)
    while Hm.shape[0] < order:
        Hm = torch.cat([torch.cat([Hm, Hm], 1), torch.cat([Hm, -Hm], 1)], 0)
    return Hm[:, :N].to(dtype)


def draw_codes(batch: int, system: SystemConfig, codebook: str = "random", bits: int = 3,
               generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.complex64,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Draw the L codes of each of ``batch`` scenes.

    Returns
    -------
    codes : [B, L, N], complex, unit modulus
    """
    index = draw_code_indices(batch, system, codebook, bits, generator, device)
    return codes_at(index, system, codebook, bits, dtype)


def draw_code_indices(batch: int, system: SystemConfig, codebook: str = "random",
                      bits: int = 3, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """The random part of :func:`draw_codes`: the phase levels q [B, L, N] of "random"
    codes, or the codebook's rows [B, L] of "dft" and "hadamard" ones (int64)."""
    if codebook == "random":
        return torch.randint(0, 2**bits, (batch, system.L, system.N), generator=generator,
                             device=device)
    return _distinct_rows(batch, system.L, _codebook_rows(system, codebook), generator, device)


def codes_at(index: torch.Tensor, system: SystemConfig, codebook: str = "random",
             bits: int = 3, dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """The codes [B, L, N] of :func:`draw_code_indices`' ``index``, on its device. The
    phases / codebook are computed on the CPU (a few entries; the same values whatever
    the device) and looked up."""
    if codebook == "random":
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        # the 2^bits phases exp(i 2 pi q / 2^bits) computed once and looked up (the same
        # values as computing each entry's, 8x faster on the CPU: tests/unit/physics)
        phase = torch.arange(2**bits).to(real) * (2 * math.pi / 2**bits)
        return torch.polar(torch.ones_like(phase), phase).to(index.device)[index]
    if codebook == "dft":
        book = quantize_phase(_dft_codebook(system, dtype, "cpu"), bits)
    elif codebook == "hadamard":
        book = _hadamard_codebook(system.N, dtype, "cpu")
    else:
        raise ValueError(f"unknown codebook {codebook!r}; expected random, dft or hadamard")
    return book.to(index.device)[index]


def _codebook_rows(system: SystemConfig, codebook: str) -> int:
    """Distinct codes of a codebook ("dft" or "hadamard")."""
    if codebook == "dft":
        return system.N
    if codebook == "hadamard":
        return _hadamard_order(system.N)
    raise ValueError(f"unknown codebook {codebook!r}; expected random, dft or hadamard")
