import math

import pytest
import torch

from risloc.config import SystemConfig
from risloc.physics import angular_separation, element_positions, source_position


def test_element_indexing_and_centring_by_hand(system):
    pos = element_positions(system)
    d = system.spacing
    assert pos.shape == (144, 3)
    # n = v * N_H + h ; x = (h - 5.5) d ; y = (v - 5.5) d
    assert torch.allclose(pos[0], torch.tensor([-5.5 * d, -5.5 * d, 0.0], dtype=pos.dtype))
    assert torch.allclose(pos[1], torch.tensor([-4.5 * d, -5.5 * d, 0.0], dtype=pos.dtype))
    assert torch.allclose(pos[12], torch.tensor([-5.5 * d, -4.5 * d, 0.0], dtype=pos.dtype))
    assert torch.allclose(pos[143], torch.tensor([5.5 * d, 5.5 * d, 0.0], dtype=pos.dtype))
    assert torch.allclose(pos[5 * 12 + 7], torch.tensor([1.5 * d, -0.5 * d, 0.0],
                                                         dtype=pos.dtype))
    assert torch.allclose(pos.mean(0), torch.zeros(3, dtype=pos.dtype), atol=1e-15)
    # spacing is in metres, not multiplied by the wavelength again (LESSONS)
    assert math.isclose(float(pos[1, 0] - pos[0, 0]), 0.15)


def test_rectangular_array_indexing():
    s = SystemConfig(N_H=4, N_V=2, spacing=1.0)
    pos = element_positions(s)
    assert pos[:, 0].tolist() == [-1.5, -0.5, 0.5, 1.5] * 2
    assert pos[:, 1].tolist() == [-0.5] * 4 + [0.5] * 4


def test_source_position_convention():
    p = source_position(torch.tensor(math.radians(30.0)), torch.tensor(math.radians(10.0)),
                        torch.tensor(2.0))
    ce = math.cos(math.radians(10))
    expect = [2 * ce * 0.5, 2 * math.sin(math.radians(10)), 2 * ce * math.cos(math.radians(30))]
    assert torch.allclose(p, torch.tensor(expect), atol=1e-6)
    assert math.isclose(float(p.norm()), 2.0, rel_tol=1e-6)


def test_angular_separation_matches_arccos():
    g = torch.Generator().manual_seed(0)
    az = (torch.rand(2, 100, generator=g, dtype=torch.float64) - 0.5) * 2
    el = (torch.rand(2, 100, generator=g, dtype=torch.float64) - 0.5)
    sep = angular_separation(az[0], el[0], az[1], el[1])
    cos = (torch.sin(el[0]) * torch.sin(el[1])
           + torch.cos(el[0]) * torch.cos(el[1]) * torch.cos(az[0] - az[1]))
    assert torch.allclose(sep, torch.arccos(cos.clamp(-1, 1)), atol=1e-10)


def test_angles_from_direction_inverts_direction_on_the_front_half_space():
    from risloc.physics import angles_from_direction, direction

    g = torch.Generator().manual_seed(0)
    az = (torch.rand(200, generator=g, dtype=torch.float64) - 0.5) * math.pi * 0.999
    el = (torch.rand(200, generator=g, dtype=torch.float64) - 0.5) * math.pi * 0.999
    u = direction(az, el)
    got_az, got_el, ok = angles_from_direction(u[:, 0], u[:, 1])
    assert ok.all()
    torch.testing.assert_close(got_az, az, rtol=0, atol=1e-9)
    torch.testing.assert_close(got_el, el, rtol=0, atol=1e-9)
    # no direction has these components (|u_x| > cos(el), or |u_y| > 1): flagged
    _, _, ok = angles_from_direction(torch.tensor([0.9, 0.0]), torch.tensor([0.6, 1.2]))
    assert ok.tolist() == [False, False]


def test_angular_separation_of_tiny_angles_and_the_boundary_of_angles_from_direction():
    """Tiny separations stay accurate (the atan2 of |u1 x u2| and u1.u2; arccos of the dot
    product loses them: arccos(1 - 5e-19) = 0), and a direction on the edge of the front
    half-space (azimuth +-90 deg, |u_x| = cos(elevation)) exists (mutation review)."""
    from risloc.physics import angles_from_direction

    el = torch.tensor([0.0, 0.3, -0.5], dtype=torch.float64)
    az = torch.tensor([0.2, -0.4, 1.0], dtype=torch.float64)
    eps = 1e-9
    sep = angular_separation(az, el, az + eps, el)
    torch.testing.assert_close(sep, eps * torch.cos(el), rtol=1e-6, atol=0)
    sep = angular_separation(az, el, az, el + eps)
    torch.testing.assert_close(sep, torch.full_like(el, eps), rtol=1e-6, atol=0)
    az_b, el_b, ok = angles_from_direction(
        torch.tensor([1.0, -1.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    assert ok.tolist() == [True, True]
    assert az_b.tolist() == [math.pi / 2, -math.pi / 2] and el_b.tolist() == [0.0, 0.0]


def test_angles_from_direction_clamps_components_without_a_direction():
    """Where no direction exists the angles are those of the clamped components (finite):
    u_y = 1.2 -> elevation pi/2; u_x = 0.9 > cos(asin(0.6)) = 0.8 -> azimuth pi/2."""
    from risloc.physics import angles_from_direction

    az, el, ok = angles_from_direction(torch.tensor([0.9, 0.0, -0.9], dtype=torch.float64),
                                       torch.tensor([0.6, 1.2, -0.6], dtype=torch.float64))
    assert ok.tolist() == [False, False, False]
    torch.testing.assert_close(az, torch.tensor([math.pi / 2, 0.0, -math.pi / 2],
                                                dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(el, torch.tensor([math.asin(0.6), math.pi / 2, -math.asin(0.6)],
                                                dtype=torch.float64), rtol=0, atol=1e-12)


def test_angular_separation_promotes_mixed_precision():
    """A float32 estimate against float64 truth is compared in float64 (the metrics'
    case): not rounded to the first argument's float32 (a mutation review)."""
    az1 = torch.tensor([0.3], dtype=torch.float32)
    el1 = torch.tensor([0.1], dtype=torch.float64)
    az2 = torch.tensor([0.3 + 1e-7], dtype=torch.float64)
    sep = angular_separation(az1, el1, az2, el1)
    assert sep.dtype == torch.float64
    want = angular_separation(az1.double(), el1, az2, el1)
    torch.testing.assert_close(sep, want, rtol=1e-12, atol=0)


def test_the_fraunhofer_distance_is_where_the_wavefront_bends_by_pi_over_8():
    """The classic far-field limit: at r = 2 D^2 / lambda a broadside source's spherical
    wavefront lags the plane one by pi / 8 at the RIS's corners (path D^2 / (8 r) = lambda /
    16), whatever the system; D, the largest distance between two elements, by hand."""
    from risloc.physics.geometry import aperture, fraunhofer_distance
    from risloc.physics.steering import path_difference

    for s in (SystemConfig(), SystemConfig(N_H=8, N_V=8, M=8, wavelength=0.0107),
              SystemConfig(N_H=16, N_V=1, spacing=0.1)):
        assert aperture(s) == math.hypot(s.N_H - 1, s.N_V - 1) * s.spacing
        F = fraunhofer_distance(s)
        zero = torch.zeros((), dtype=torch.float64)
        lag = path_difference(zero, zero, torch.tensor(F, dtype=torch.float64), s)
        assert float(lag.max()) * 2 * math.pi / s.wavelength == \
            pytest.approx(math.pi / 8, rel=1e-3)


def test_alias_free_spacing_by_hand(system):
    """d <= lambda / (span of u_x) along x and lambda / (span of u_y) along y, spans by hand
    (u_x = cos(el) sin(az) is widest at el = 0, u_y = sin(el)); an asymmetric box keeps x
    and y apart (a mutation review: swapping them passed every other test)."""
    from risloc.config import FieldOfView
    from risloc.physics.geometry import alias_free_spacing

    s = math.sin
    for fov, span_x, span_y in (
            (FieldOfView(), 2 * s(math.radians(60)), 2 * s(math.radians(30))),
            (FieldOfView(azimuth_deg=(-20.0, 50.0), elevation_deg=(-10.0, 40.0)),
             s(math.radians(50)) + s(math.radians(20)), s(math.radians(40)) + s(math.radians(10)))):
        dx, dy = alias_free_spacing(system, fov)
        assert dx == pytest.approx(system.wavelength / span_x, rel=1e-12)
        assert dy == pytest.approx(system.wavelength / span_y, rel=1e-12)
