import math

import pytest
import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.physics import draw_channel, draw_codes, quantize_phase, rician_channel


def test_rician_limits_and_power(system):
    g = torch.Generator().manual_seed(0)
    B = 4
    z = torch.zeros(B)
    H_los = rician_channel(torch.full((B,), 1e9), z + 0.2, z + 0.1, z - 0.05, system, g)
    assert torch.allclose(H_los.abs(), torch.ones_like(H_los.abs()), atol=1e-4)
    # LoS is rank one
    sv = torch.linalg.svdvals(H_los.to(torch.complex128))
    assert float((sv[:, 1] / sv[:, 0]).max()) < 1e-3
    H = draw_channel(256, system, SceneConfig(), g)
    assert H.shape == (256, 16, 144)
    # unit average entry power for any kappa (both parts have unit-power entries)
    assert abs(float(H.abs().square().mean()) - 1.0) < 0.02


def test_random_codes_levels(system):
    g = torch.Generator().manual_seed(1)
    c = draw_codes(8, system, "random", 3, g)
    assert c.shape == (8, 16, 144)
    assert torch.allclose(c.abs(), torch.ones_like(c.abs()), atol=1e-6)
    steps = torch.angle(c) / (2 * math.pi / 8)
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert len(torch.unique(steps.round() % 8)) == 8


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_random_codes_are_each_entrys_phase_bit_for_bit(system, bits, dtype):
    """The looked-up phases equal exp(i 2 pi q / 2^bits) computed entry by entry from the
    same draws q (the scenes of a seed do not change with the lookup)."""
    c = draw_codes(37, system, "random", bits, torch.Generator().manual_seed(bits), dtype)
    q = torch.randint(0, 2**bits, c.shape, generator=torch.Generator().manual_seed(bits))
    q = q.to(torch.float64 if dtype == torch.complex128 else torch.float32)
    assert torch.equal(c, torch.polar(torch.ones_like(q), q * (2 * math.pi / 2**bits)))


def test_dft_and_hadamard_codes(system):
    g = torch.Generator().manual_seed(2)
    c = draw_codes(3, system, "dft", 8, g, torch.complex128)
    gram = c @ c.mH / system.N
    assert torch.allclose(gram, torch.eye(16, dtype=gram.dtype).expand_as(gram), atol=0.05)
    h = draw_codes(3, SystemConfig(N_H=16, N_V=16), "hadamard", 1, g, torch.complex128)
    assert torch.allclose(h.abs(), torch.ones_like(h.abs()))
    gram = h @ h.mH / 256
    assert torch.allclose(gram, torch.eye(16, dtype=gram.dtype).expand_as(gram), atol=1e-12)
    with pytest.raises(ValueError, match="codebook"):
        draw_codes(1, system, "gold")


def test_quantize_phase():
    c = torch.polar(torch.ones(5), torch.tensor([0.1, 0.8, 1.6, -3.0, 3.1]))
    q = quantize_phase(c, 2)
    assert torch.allclose(torch.angle(q) % (2 * math.pi),
                          torch.tensor([0.0, math.pi / 2, math.pi / 2, math.pi, math.pi]) %
                          (2 * math.pi), atol=1e-6)


def test_the_line_of_sight_channel_is_the_conventions_entry_by_entry():
    """H_los[m, n] = b_m(psi) conj(a_ff_n(phi_b, theta_b)) written out from
    docs/conventions.md, element by element, on a non-square RIS with a spacing other than
    lambda/2 (a review: only a regression snapshot pinned these phases; a wrong sign or
    factor 2 in either response passed every other test)."""
    from risloc.physics.codebooks import codes_at

    system = SystemConfig(N_H=5, N_V=3, M=4, L=4, wavelength=0.3, spacing=0.12, K_max=3)
    psi, phi, theta = 0.41, -0.73, 0.29
    H = rician_channel(torch.tensor([1.0]), torch.tensor([psi]), torch.tensor([phi]),
                       torch.tensor([theta]), system, dtype=torch.complex128,
                       nlos=torch.zeros(1, 4, 15, dtype=torch.complex128))[0]
    k0, d = 2 * math.pi / 0.3, 0.12
    want = torch.zeros(4, 15, dtype=torch.complex128)
    for m in range(4):
        b = complex(math.cos(math.pi * (m - 1.5) * math.sin(psi)),
                    math.sin(math.pi * (m - 1.5) * math.sin(psi)))
        for v in range(3):
            for h in range(5):
                x, y = (h - 2) * d, (v - 1) * d
                a = k0 * (x * math.sin(phi) * math.cos(theta) + y * math.sin(theta))
                want[m, v * 5 + h] = b * complex(math.cos(a), -math.sin(a))
    # kappa = 1: the line-of-sight part weighs sqrt(1/2)
    assert torch.allclose(H, want * math.sqrt(0.5), atol=1e-12)
    # the DFT codebook on the same non-square grid: beam w * N_H + u has entries
    # exp(j 2 pi (h u / N_H + v w / N_V)) at element v * N_H + h (16-bit phases)
    book = codes_at(torch.arange(15).view(1, 15), system, "dft", 16, torch.complex128)[0]
    for w in range(3):
        for u in range(5):
            for v in range(3):
                for h in range(5):
                    p = 2 * math.pi * (h * u / 5 + v * w / 3)
                    got = complex(book[w * 5 + u, v * 5 + h])
                    assert abs(got - complex(math.cos(p), math.sin(p))) < 1e-4
