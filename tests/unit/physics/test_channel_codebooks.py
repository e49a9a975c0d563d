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


def test_codebook_rows_are_distinct_random_per_scene_and_too_many_are_refused():
    """"dft" / "hadamard": each scene draws L distinct rows of the codebook, at random per
    scene from the generator given (a mutation review: always taking rows 0..L-1, or
    unseeded rows, passed every other test), and
    asking for more codes than the codebook holds is refused rather than silently giving
    fewer than L."""
    from risloc.physics.codebooks import draw_code_indices

    s = SystemConfig(N_H=4, N_V=4, M=4, L=6, K_max=3)
    g = torch.Generator().manual_seed(3)
    for book in ("dft", "hadamard"):
        idx = draw_code_indices(200, s, book, 3, g)
        assert idx.shape == (200, 6)
        assert all(len(set(row)) == 6 for row in idx.tolist())
        assert 0 <= int(idx.min()) and int(idx.max()) < 16
        assert len({tuple(row) for row in idx.tolist()}) > 150  # random per scene
        assert len(torch.unique(idx)) == 16  # every row can be drawn
        # drawn from the generator given: the same seed gives the same rows
        again = [draw_code_indices(5, s, book, 3, torch.Generator().manual_seed(9))
                 for _ in range(2)]
        assert torch.equal(*again)
    # 16 distinct codes: L = 17 cannot be drawn
    for book in ("dft", "hadamard"):
        with pytest.raises(ValueError, match="cannot draw L=17"):
            draw_codes(1, SystemConfig(N_H=4, N_V=4, M=4, L=17, K_max=3), book, 3, g)


def test_hadamard_codes_are_the_sylvester_matrix_truncated():
    """Row i of the Sylvester Hadamard matrix has entries (-1)^popcount(i & j); N = 12
    entries of order 16 (a mutation review: another Hadamard matrix, rows equally
    orthogonal, passed every other test)."""
    from risloc.physics.codebooks import codes_at

    s = SystemConfig(N_H=4, N_V=3, M=4, L=4, K_max=3)
    book = codes_at(torch.arange(16).view(1, 16), s, "hadamard", 1, torch.complex128)[0]
    assert book.shape == (16, 12)
    want = torch.tensor([[(-1.0) ** bin(i & j).count("1") for j in range(12)]
                         for i in range(16)], dtype=torch.complex128)
    assert torch.equal(book, want)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_normal_keeps_the_precision_asked_for(dtype):
    """CN(0, 1) draws of complex128 come from float64 normals (not float32 ones widened:
    a mutation review), and have unit variance split evenly over real and imaginary parts."""
    from risloc.physics.rng import complex_normal

    z = complex_normal((200_000,), torch.Generator().manual_seed(0), dtype)
    assert z.dtype == dtype
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    x = torch.randn((200_000, 2), generator=torch.Generator().manual_seed(0), dtype=real)
    torch.testing.assert_close(torch.view_as_real(z), x / math.sqrt(2.0), rtol=0,
                               atol=4 * torch.finfo(real).eps)
    assert abs(float(z.real.var()) - 0.5) < 0.01 and abs(float(z.imag.var()) - 0.5) < 0.01


def test_quantize_phase_outputs_unit_modulus_whatever_the_input_modulus():
    """"unit modulus out": the modulus of the input is dropped (a mutation review: keeping
    it passed every other test, the DFT beams being unit modulus already)."""
    c = torch.polar(torch.tensor([0.2, 3.0, 1.0]), torch.tensor([0.7, -2.0, 2.5]))
    q = quantize_phase(c, 3)
    torch.testing.assert_close(q.abs(), torch.ones(3), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.angle(q), torch.tensor([1.0, -3.0, 3.0]) * math.pi / 4,
                               rtol=0, atol=1e-6)


def test_the_nlos_part_enters_unchanged_with_weight_sqrt_one_over_kappa_plus_one(system):
    """H = sqrt(kappa/(kappa+1)) H_los + sqrt(1/(kappa+1)) H_nlos with the H_nlos given,
    not conjugated or otherwise transformed (equal in distribution, but other scenes for a
    seed: a mutation review)."""
    g = torch.Generator().manual_seed(4)
    nlos = torch.randn(2, 16, 144, generator=g, dtype=torch.complex128)
    z = torch.zeros(2, dtype=torch.float64)
    H0 = rician_channel(z, z + 0.3, z - 0.2, z + 0.1, system, dtype=torch.complex128,
                        nlos=nlos)
    torch.testing.assert_close(H0, nlos, rtol=0, atol=1e-15)
    H3 = rician_channel(z + 3.0, z + 0.3, z - 0.2, z + 0.1, system, dtype=torch.complex128,
                        nlos=nlos)
    los = rician_channel(z + 3.0, z + 0.3, z - 0.2, z + 0.1, system, dtype=torch.complex128,
                         nlos=torch.zeros_like(nlos))
    torch.testing.assert_close(H3 - los, nlos * 0.5, rtol=0, atol=1e-14)


def test_draw_channel_is_the_seeded_draws_then_the_channel_in_the_precision_asked_for(system):
    """draw_channel = rician_channel of draw_channel_params' draws from the same seed, its
    H_nlos included (not redrawn unseeded), and complex128 draws its angles and kappa as
    float64 (a mutation review: both passed every other test)."""
    from risloc.physics.channel import draw_channel_params
    from risloc.physics.rng import uniform

    sc = SceneConfig()
    H = draw_channel(3, system, sc, torch.Generator().manual_seed(6), torch.complex128)
    p = draw_channel_params(3, system, sc, torch.Generator().manual_seed(6), torch.complex128)
    want = rician_channel(p.kappa, p.bs_angle, p.ris_azimuth, p.ris_elevation, system,
                          dtype=torch.complex128, nlos=p.nlos)
    assert torch.equal(H, want)
    assert p.kappa.dtype == torch.float64
    kappa = uniform(3, *sc.rician_kappa, torch.Generator().manual_seed(6), torch.float64)
    assert torch.equal(p.kappa, kappa)


def test_the_codebook_rows_of_a_seed_stay_what_they_were():
    """"dft" / "hadamard" scenes of a seed keep their rows (a mutation review: taking the
    last L of the random permutation instead of the first, equal in distribution, changed
    every such scene of a seed and passed every other test)."""
    from risloc.physics.codebooks import draw_code_indices

    s = SystemConfig(N_H=4, N_V=4, M=4, L=6, K_max=3)
    for book in ("dft", "hadamard"):
        idx = draw_code_indices(2, s, book, 3, torch.Generator().manual_seed(5))
        assert idx.tolist() == [[8, 12, 5, 1, 6, 11], [6, 2, 9, 14, 5, 15]]


def test_each_channel_draw_is_uniform_in_its_own_interval(system):
    """kappa, psi, phi_b and theta_b each come from their own scene interval (phi_b from the
    azimuth field of view, theta_b from the elevation one; a mutation review: drawing
    phi_b from the elevation interval passed every other test)."""
    from risloc.physics.channel import draw_channel_params

    sc = SceneConfig(azimuth_deg=(40.0, 50.0), elevation_deg=(-20.0, -10.0),
                     rician_kappa=(2.0, 3.0), bs_angle_deg=(-5.0, 5.0))
    p = draw_channel_params(200, system, sc, torch.Generator().manual_seed(3),
                            torch.complex128)
    for t, (lo, hi) in ((p.kappa, (2.0, 3.0)),
                        (p.bs_angle, (math.radians(-5.0), math.radians(5.0))),
                        (p.ris_azimuth, (math.radians(40.0), math.radians(50.0))),
                        (p.ris_elevation, (math.radians(-20.0), math.radians(-10.0)))):
        assert t.shape == (200,)
        assert lo <= float(t.min()) and float(t.max()) <= hi
        assert float(t.max() - t.min()) > 0.8 * (hi - lo)  # spread over the interval
