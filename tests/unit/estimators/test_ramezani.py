"""Ramezani et al. (2024) modified MUSIC: structure of the anti-diagonal, smoothing rank,
single-source recovery on the exact covariance, aliasing, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from risloc.config import FieldOfView, SceneConfig, SystemConfig
from risloc.estimators.ramezani import (
    RamezaniConfig,
    antidiagonal,
    ramezani_music,
    smoothed_covariance,
)
from risloc.physics import angular_separation, element_positions
from risloc.simulation import scene_true_covariance, simulate_batch, true_covariance


def one_source(az_deg, el_deg, r, system):
    f64 = torch.float64
    az = torch.tensor([[math.radians(az_deg)]], dtype=f64)
    el = torch.tensor([[math.radians(el_deg)]], dtype=f64)
    rng = torch.tensor([[r]], dtype=f64)
    return az, el, rng, true_covariance(az, el, rng, torch.ones(1, 1, dtype=f64), system,
                                        torch.complex128)


def test_antidiagonal_is_far_field_like_under_fresnel():
    """z_n = [R]_{n, N-1-n} = exp(j 2 k0 e_n.s) for one unit source (R = N a a^H)."""
    system = SystemConfig(wavefront="fresnel")
    az, el, _, R = one_source(35.0, -12.0, 0.9, system)
    z = antidiagonal(R, system).reshape(-1)
    pos = element_positions(system)
    s_x = math.sin(az) * math.cos(el)
    s_y = math.sin(el)
    expected = torch.polar(torch.ones(system.N, dtype=torch.float64),
                           2 * system.k0 * (pos[:, 0] * s_x + pos[:, 1] * s_y))
    torch.testing.assert_close(z, expected, atol=1e-9, rtol=0)


def test_smoothing_restores_rank():
    system = SystemConfig(wavefront="fresnel")
    gen = torch.Generator().manual_seed(4)
    scenes = simulate_batch(2, system, SceneConfig(), gen, snr_db=20.0, K=3)
    z = antidiagonal(scene_true_covariance(scenes, system, torch.complex128), system)
    ev = torch.linalg.eigvalsh(smoothed_covariance(z, (8, 8))).flip(-1)  # descending
    assert (ev[:, 2] > 1e-3 * ev[:, 0]).all()  # three sources: rank 3 ...
    assert (ev[:, 3:].abs() < 1e-9 * ev[:, :1]).all()  # ... and no more
    full = torch.linalg.eigvalsh(smoothed_covariance(z, (12, 12))).flip(-1)
    assert (full[:, 1:].abs() < 1e-9 * full[:, :1]).all()  # one window: rank 1


def test_smoothing_is_the_mean_over_every_window_and_reads_the_hermitian_part():
    """smoothed_covariance = (1/P) sum_p z_p z_p^H over all P overlapping windows, written
    out; antidiagonal ignores an anti-Hermitian part of R (a mutation review: windows of
    stride 2 and the anti-diagonal of the un-Hermitised R passed)."""
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2, 4, 5, dtype=torch.complex128, generator=g)
    want = torch.zeros(2, 6, 6, dtype=torch.complex128)
    for i in range(3):
        for j in range(3):
            w = z[:, i:i + 2, j:j + 3].reshape(2, 6, 1)
            want += w @ w.mH / 9
    torch.testing.assert_close(smoothed_covariance(z, (2, 3)), want, atol=1e-12, rtol=0)
    system = SystemConfig(wavefront="fresnel")
    R = one_source(35.0, -12.0, 0.9, system)[-1]
    X = torch.randn(R.shape, dtype=R.dtype, generator=g)
    torch.testing.assert_close(antidiagonal(R + X - X.mH, system), antidiagonal(R, system),
                               atol=1e-12, rtol=0)


def test_grid_estimate_is_exact_for_a_source_on_the_grids():
    """Without refinement the estimate is the best grid point: a source at virtual frequency
    (i/n_frequency - 1/2) per axis and at a 1/range grid point is recovered exactly (a
    mutation review: a frequency step of 1/(n-1) and a range grid uniform in range passed).
    """
    system = SystemConfig(wavefront="fresnel")
    config = RamezaniConfig(refine_iterations=0)
    f_x, f_y = 40 / 64 - 0.5, 28 / 64 - 0.5  # d = lambda / 2: s = f
    inv = 1 / 10.0 + 16 * (1 / 0.5 - 1 / 10.0) / 31  # 1/range grid point 16 of 32
    el = math.asin(f_y)
    az = math.asin(f_x / math.cos(el))
    _, _, _, R = one_source(math.degrees(az), math.degrees(el), 1 / inv, system)
    est = ramezani_music(R, 1, system, config)
    assert abs(float(est.azimuth[0, 0]) - az) < 1e-9
    assert abs(float(est.elevation[0, 0]) - el) < 1e-9
    assert abs(float(est.range_m[0, 0]) - 1 / inv) < 1e-9


@pytest.mark.parametrize("source", [(20.0, 10.0, 1.2), (-45.0, -25.0, 6.0), (50.0, 5.0, 3.0),
                                    (-10.0, 15.0, 0.55)])
def test_single_source_exact_under_fresnel(source):
    """Under the Fresnel model the cancellation is exact: recovery to numerical precision,
    including azimuth 50 deg whose virtual frequency aliases (s_x = 0.77 ~ -0.23) and a
    range of 0.55 m near the field of view's 0.5 m edge (a mutation review: a range grid
    and box that stopped at 1 m passed)."""
    system = SystemConfig(wavefront="fresnel")
    az, el, rng, R = one_source(*source, system)
    est = ramezani_music(R, 1, system)
    assert int(est.K[0]) == 1
    err = angular_separation(est.azimuth[:, 0], est.elevation[:, 0], az[:, 0], el[:, 0])
    assert math.degrees(float(err)) < 1e-4
    assert abs(float(est.range_m[0, 0]) - float(rng[0, 0])) < 1e-4
    assert torch.isnan(est.azimuth[0, 1:]).all()


def test_single_source_spherical_within_bias_tolerance():
    """Exact spherical wavefront: the odd cubic term survives the anti-diagonal, so the
    estimate is biased; at 5-10 m we require 0.5 deg and 0.15 m (measured max over 128
    scenes: 0.34 deg, 0.11 m; below 2 m the angle bias reaches several degrees)."""
    system = SystemConfig()
    gen = torch.Generator().manual_seed(9)
    scenes = simulate_batch(16, system, SceneConfig(range_m=(5.0, 10.0)), gen, snr_db=20.0,
                            K=1)
    est = ramezani_music(scene_true_covariance(scenes, system), scenes.K, system)
    err = angular_separation(est.azimuth[:, 0], est.elevation[:, 0], scenes.azimuth[:, 0],
                             scenes.elevation[:, 0])
    assert torch.rad2deg(err).max() < 0.5
    assert (est.range_m[:, 0] - scenes.range_m[:, 0]).abs().max() < 0.15


def test_well_separated_sources_under_fresnel():
    system = SystemConfig(wavefront="fresnel")
    az = torch.deg2rad(torch.tensor([[-40.0, 0.0, 35.0]], dtype=torch.float64))
    el = torch.deg2rad(torch.tensor([[10.0, -20.0, 5.0]], dtype=torch.float64))
    rng = torch.tensor([[1.5, 4.0, 8.0]], dtype=torch.float64)
    R = true_covariance(az, el, rng, torch.ones_like(rng), system, torch.complex128)
    est = ramezani_music(R, 3, system)
    order = est.azimuth[0, :3].argsort()
    torch.testing.assert_close(est.azimuth[0, order], az[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(est.elevation[0, order], el[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(est.range_m[0, order], rng[0], atol=1e-4, rtol=0)


def test_bad_input_raises():
    system = SystemConfig()
    R = torch.eye(system.N, dtype=torch.complex64).expand(2, -1, -1).clone()
    with pytest.raises(ValueError):
        ramezani_music(R[:, :, :-1], 1, system)
    R_nan = R.clone()
    R_nan[0, 3, 4] = float("nan")
    with pytest.raises(ValueError):
        ramezani_music(R_nan, 1, system)
    with pytest.raises(ValueError, match="K"):
        ramezani_music(R, torch.tensor([1, 16]), system)
    with pytest.raises(ValueError, match="sub-RIS"):
        ramezani_music(R, 4, system, RamezaniConfig(subarray=(2, 2)))
    with pytest.raises(ValueError):
        RamezaniConfig(fov=FieldOfView(range_m=(2.0, 1.0)))


def test_the_sub_ris_is_sized_for_the_system():
    """A review: the 8 x 8 sub-RIS, fixed, refused every RIS narrower than 8 (with a negative
    count of sub-RISs in the message), and evaluate lost its other estimators' results."""
    base = RamezaniConfig()
    assert base.for_system(SystemConfig()) is base  # 8 x 8 of 12 x 12, as before
    small = SystemConfig(N_H=8, N_V=6, M=8, L=24, K_max=3)
    assert base.for_system(small).subarray == (4, 5)
    R = torch.eye(small.N, dtype=torch.complex64).expand(2, -1, -1)
    with pytest.raises(ValueError, match=r"subarray \(8, 8\) exceeds the \(6, 8\) RIS"):
        ramezani_music(R, 2, small)
    est = ramezani_music(R, 2, small, base.for_system(small))
    assert est.K.tolist() == [2, 2]


@pytest.mark.parametrize("source,alias", [((50.0, 5.0, 3.0), "azimuth"),
                                          ((10.0, 45.0, 3.0), "elevation")])
def test_estimates_stay_in_the_field_of_view_searched(source, alias):
    """A source outside the searched field of view has an alias inside it with the same
    anti-diagonal (s shifted by lambda / (2 d) = 1): the estimate is that alias, never the
    out-of-view direction (a mutation review: dropping the alias' field-of-view test, in
    elevation or in the range search, passed)."""
    system = SystemConfig(wavefront="fresnel")
    az, el, _, R = one_source(*source, system)
    fov = FieldOfView(azimuth_deg=(-30.0, 30.0)) if alias == "azimuth" else FieldOfView()
    est = ramezani_music(R, 1, system, RamezaniConfig(fov=fov))
    s_x = math.sin(float(az)) * math.cos(float(el))
    s_y = math.sin(float(el))
    if alias == "azimuth":
        s_x -= 1.0
    else:
        s_y -= 1.0
    want_el = math.asin(s_y)
    want_az = math.asin(s_x / math.cos(want_el))
    assert int(est.K[0]) == 1
    assert fov.azimuth_deg[0] <= math.degrees(float(est.azimuth[0, 0])) <= fov.azimuth_deg[1]
    assert fov.elevation_deg[0] <= math.degrees(float(est.elevation[0, 0])) <= \
        fov.elevation_deg[1]
    assert abs(float(est.azimuth[0, 0]) - want_az) < 1e-6
    assert abs(float(est.elevation[0, 0]) - want_el) < 1e-6


def test_a_source_without_an_alias_in_view_gives_no_estimate():
    """Azimuth 35 deg (s_x = 0.57) and its alias s_x - 1 (-25 deg) both lie outside a
    [-20, 20] deg view: no direction in view explains it, so nothing is reported rather than
    a direction outside the view (a mutation review: scoring such candidates passed)."""
    system = SystemConfig(wavefront="fresnel")
    *_, R = one_source(35.0, 5.0, 3.0, system)
    est = ramezani_music(R, 1, system, RamezaniConfig(fov=FieldOfView(azimuth_deg=(-20.0,
                                                                                   20.0))))
    assert int(est.K[0]) == 0 and torch.isnan(est.azimuth[0]).all()


def test_as_many_sources_as_sub_ris_windows_are_accepted():
    """Smoothing over P windows restores rank up to P: K = P is allowed, K = P + 1 is not
    (a mutation review: refusing K = P passed)."""
    small = SystemConfig(N_H=8, N_V=6, M=8, L=24, K_max=5)
    cfg = RamezaniConfig(subarray=(5, 7))  # (6 - 5 + 1) * (8 - 7 + 1) = 4 windows
    R = torch.eye(small.N, dtype=torch.complex64).expand(2, -1, -1)
    assert ramezani_music(R, 4, small, cfg).K.tolist() == [4, 4]
    with pytest.raises(ValueError, match="sub-RIS"):
        ramezani_music(R, 5, small, cfg)


def test_an_out_of_view_alias_loses_even_beside_a_source_with_two_valid_ones():
    """Source 1 at azimuth 50 deg has two aliases in view (50 and -13.5 deg), so every
    candidate carries two alias slots; source 2 at 70 deg (out of view) has one, -3.4 deg.
    The out-of-view slot must not compete in the range search, though it fits the
    covariance best (a mutation review: ignoring its validity there passed)."""
    system = SystemConfig(wavefront="fresnel")
    az = torch.deg2rad(torch.tensor([[50.0, 70.0]], dtype=torch.float64))
    el = torch.deg2rad(torch.tensor([[5.0, 0.0]], dtype=torch.float64))
    rng = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    R = true_covariance(az, el, rng, torch.ones_like(rng), system, torch.complex128)
    est = ramezani_music(R, 2, system)
    assert int(est.K[0]) == 2
    got = sorted(math.degrees(float(a)) for a in est.azimuth[0, :2])
    alias = math.degrees(math.asin(math.sin(math.radians(70.0)) - 1.0))
    assert abs(got[0] - alias) < 1e-4 and abs(got[1] - 50.0) < 1e-4


def test_score_is_the_music_pseudo_spectrum_in_decreasing_order():
    """The score of each estimate is the near-field MUSIC pseudo-spectrum 1 / (1 - ||U^H a||^2)
    of the full covariance at it, slots by decreasing score (a mutation review: a score of
    1 - ||U^H a||^2, which reversed the order, passed)."""
    from risloc.estimators.music import music_spectrum

    system = SystemConfig()
    gen = torch.Generator().manual_seed(5)
    scenes = simulate_batch(2, system, SceneConfig(range_m=(3.0, 10.0)), gen, snr_db=10.0,
                            K=2)
    R = scene_true_covariance(scenes, system, torch.complex128)
    R = R + 0.05 * torch.eye(system.N, dtype=R.dtype)  # keep the null spectrum off its floor
    noise = torch.randn(2, system.N, 40, dtype=torch.complex128, generator=gen)
    R = R + 0.02 * noise @ noise.mH / 40  # a sample-like perturbation: nonzero nulls
    est = ramezani_music(R, 2, system)
    assert est.K.tolist() == [2, 2]
    want = music_spectrum(R, 2, system, est.azimuth.to(torch.float64)[:, :2],
                          est.elevation.to(torch.float64)[:, :2],
                          est.range_m.to(torch.float64)[:, :2])
    torch.testing.assert_close(est.score[:, :2].to(torch.float64), want, rtol=1e-4, atol=0)
    assert (est.score[:, 0] >= est.score[:, 1]).all()
    assert (want[:, 0] > want[:, 1]).all()


def test_config_limits_are_exact():
    """The smallest accepted settings are accepted and one less is refused; a 2 x 3 RIS still
    gets sub-RISs of 2 per axis (a mutation review: limits lowered by one, and no floor of 2
    in for_system, passed)."""
    RamezaniConfig(subarray=(2, 2), n_frequency=4, n_range=2)
    for bad in ({"subarray": (1, 8)}, {"subarray": (8, 1)}, {"n_frequency": 3},
                {"n_range": 1}):
        with pytest.raises(ValueError, match="RamezaniConfig"):
            RamezaniConfig(**bad)
    tiny = SystemConfig(N_H=3, N_V=2, M=4, L=8, K_max=1)
    assert RamezaniConfig().for_system(tiny).subarray == (2, 2)


@pytest.mark.parametrize("subarray", [(5, 2), (2, 6)])
def test_smoothing_refuses_a_window_larger_than_the_ris(subarray):
    """Either side too large is refused (a mutation review: checking rows only passed)."""
    z = torch.zeros(1, 4, 5, dtype=torch.complex128)
    with pytest.raises(ValueError, match="exceeds"):
        smoothed_covariance(z, subarray)


def test_a_sub_ris_too_wide_for_the_ris_is_refused_with_the_hint():
    """Columns are checked as rows are, with the hint to for_system (a mutation review:
    checking rows only passed, caught later without the hint)."""
    small = SystemConfig(N_H=8, N_V=6, M=8, L=24, K_max=3)
    R = torch.eye(small.N, dtype=torch.complex64).expand(2, -1, -1)
    with pytest.raises(ValueError, match=r"\(4, 10\) exceeds the \(6, 8\) RIS \(RamezaniConfig"):
        ramezani_music(R, 1, small, RamezaniConfig(subarray=(4, 10)))


def test_no_estimate_for_a_pick_suppressed_by_the_separation():
    """With min_separation above any periodic distance in f (at most sqrt(1/2)), one
    frequency peak survives for K = 2: the second slot stays empty (a mutation review:
    ignoring the greedy pick's validity passed)."""
    system = SystemConfig(wavefront="fresnel")
    *_, R = one_source(20.0, 10.0, 3.0, system)
    est = ramezani_music(R, 2, system, RamezaniConfig(min_separation=1.0))
    assert int(est.K[0]) == 1
    assert abs(math.degrees(float(est.azimuth[0, 0])) - 20.0) < 1e-4
    assert torch.isnan(est.azimuth[0, 1:]).all()


def test_separation_in_frequency_wraps_around():
    """Sources at s_x = +-0.47 (d = lambda / 2: f = s) lie 0.06 apart across f = +-1/2, so
    min_separation 0.1 suppresses one of them, while 0.02 keeps both (a mutation review: a
    non-periodic distance in the greedy pick passed)."""
    system = SystemConfig(wavefront="fresnel")
    a = math.asin(0.47)
    az = torch.tensor([[a, -a]], dtype=torch.float64)
    el = torch.zeros_like(az)
    rng = torch.tensor([[3.0, 3.0]], dtype=torch.float64)
    R = true_covariance(az, el, rng, torch.ones_like(rng), system, torch.complex128)

    def found(sep):
        est = ramezani_music(R, 2, system, RamezaniConfig(min_separation=sep))
        got = est.azimuth[0, :2]
        return sum(bool((got - t).abs().min() < 1e-6) for t in (a, -a))

    assert found(0.02) == 2
    assert found(0.1) == 1


@pytest.mark.parametrize("r,edge", [(8.0, 4.0), (0.8, 1.0)])
def test_range_estimate_stays_in_the_field_of_view(r, edge):
    """A source beyond (or short of) the searched range gets a range inside the field of
    view: the edge nearest to it (a mutation review: dropping either bound on
    1/range in the range refinement passed)."""
    system = SystemConfig(wavefront="fresnel")
    *_, R = one_source(20.0, 10.0, r, system)
    fov = FieldOfView(range_m=(1.0, 4.0))
    est = ramezani_music(R, 1, system, RamezaniConfig(fov=fov))
    got = float(est.range_m[0, 0])
    assert 1.0 - 1e-9 <= got <= 4.0 + 1e-9
    assert abs(got - edge) < 1e-9


def test_more_sources_than_k_max_get_a_slot_each():
    """Estimates have max(K_max, max K) slots (a mutation review: K_max slots passed)."""
    small = SystemConfig(N_H=8, N_V=6, M=8, L=24, K_max=1)
    R = torch.eye(small.N, dtype=torch.complex64).expand(1, -1, -1)
    est = ramezani_music(R, 2, small, RamezaniConfig().for_system(small))
    assert est.azimuth.shape == (1, 2) and int(est.K[0]) == 2
