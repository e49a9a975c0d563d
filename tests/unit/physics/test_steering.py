import cmath
import math

import pytest
import torch

from risloc.config import SystemConfig
from risloc.physics import (
    element_positions,
    steering,
    steering_derivatives,
    steering_jacobian,
)


def _params(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    az = (torch.rand(n, generator=g, dtype=dtype) - 0.5) * math.radians(120)
    el = (torch.rand(n, generator=g, dtype=dtype) - 0.5) * math.radians(60)
    r = 0.5 + 9.5 * torch.rand(n, generator=g, dtype=dtype)
    return az, el, r


@pytest.mark.parametrize("wavefront", ["spherical", "fresnel"])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_unit_norm_and_batching(system, wavefront, dtype):
    az, el, r = _params(24)
    a = steering(az.view(2, 3, 4), el.view(2, 3, 4), r.view(2, 3, 4), system, dtype, wavefront)
    assert a.shape == (2, 3, 4, 144) and a.dtype == dtype
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    assert torch.allclose(a.abs().square().sum(-1), torch.ones(2, 3, 4, dtype=a.real.dtype),
                          atol=tol)
    flat = steering(az, el, r, system, dtype, wavefront)
    assert torch.equal(flat.view(2, 3, 4, 144), a)


def test_hand_computed_spherical_entries(system):
    az, el, r = math.radians(20.0), math.radians(-10.0), 1.3
    a = steering(torch.tensor(az, dtype=torch.float64), torch.tensor(el, dtype=torch.float64),
                 torch.tensor(r, dtype=torch.float64), system, torch.complex128)
    p = (r * math.cos(el) * math.sin(az), r * math.sin(el), r * math.cos(el) * math.cos(az))
    k0 = 2 * math.pi / 0.3
    for n in (0, 13, 77, 143):
        h, v = n % 12, n // 12
        x, y = (h - 5.5) * 0.15, (v - 5.5) * 0.15
        d = math.sqrt((p[0] - x) ** 2 + (p[1] - y) ** 2 + p[2] ** 2)
        expect = cmath.exp(-1j * k0 * (d - r)) / 12.0
        assert abs(complex(a[n]) - expect) < 1e-12


def test_hand_computed_fresnel_entry(system):
    az, el, r = 0.3, 0.1, 2.0
    a = steering(*(torch.tensor(v, dtype=torch.float64) for v in (az, el, r)), system,
                 torch.complex128, "fresnel")
    x, y = element_positions(system)[40, :2].tolist()
    delta = -x * math.sin(az) * math.cos(el) - y * math.sin(el) + (x * x + y * y) / (2 * r)
    assert abs(complex(a[40]) - cmath.exp(-1j * 2 * math.pi / 0.3 * delta) / 12) < 1e-12


def test_fresnel_approaches_spherical_with_range(system):
    """Quantified convergence of the CONVENTIONS "fresnel" formula to the exact model.

    Its quadratic term (x^2 + y^2)/(2r) omits the -(u.e)^2/(2r) part of the true
    second-order expansion, so off boresight the error decays only like 1/r; at
    boresight (u.e = 0) the remainder is |e|^4/(8 r^3).
    """
    az, el, _ = _params(200, seed=1)
    errs = []
    for r in (2.0, 8.0, 32.0, 128.0):
        rr = torch.full_like(az, r)
        a_s = steering(az, el, rr, system, torch.complex128, "spherical")
        a_f = steering(az, el, rr, system, torch.complex128, "fresnel")
        errs.append(float((a_s - a_f).norm(dim=-1).median()))
    assert errs[0] > 0.5  # badly wrong in the near field (LESSONS: below ~2.4 m)
    for e1, e2 in zip(errs, errs[1:], strict=False):
        assert 3.5 < e1 / e2 < 4.5  # 1/r decay: 4x per 4x in range
    assert errs[-1] < 0.01
    zero = torch.zeros(1, dtype=torch.float64)
    bore = []
    for r in (2.0, 8.0):
        a_s = steering(zero, zero, zero + r, system, torch.complex128, "spherical")
        a_f = steering(zero, zero, zero + r, system, torch.complex128, "fresnel")
        bore.append(float((a_s - a_f).norm()))
    assert bore[0] / bore[1] > 50  # ~1/r^3 at boresight (64x per 4x)


@pytest.mark.parametrize("wavefront", ["spherical", "fresnel"])
def test_jacobian_matches_finite_differences(system, wavefront):
    az, el, r = _params(16, seed=2)
    jac = steering_jacobian(az, el, r, system, torch.complex128, wavefront)
    h = 1e-6
    for i, name in enumerate(("d_azimuth", "d_elevation", "d_range")):
        params_p = [az, el, r]
        params_m = [az, el, r]
        params_p[i] = params_p[i] + h
        params_m[i] = params_m[i] - h
        fd = (steering(*params_p, system, torch.complex128, wavefront)
              - steering(*params_m, system, torch.complex128, wavefront)) / (2 * h)
        analytic = getattr(jac, name)
        rel = (fd - analytic).norm(dim=-1) / analytic.norm(dim=-1)
        assert float(rel.max()) < 1e-6, name


@pytest.mark.parametrize("wavefront", ["spherical", "fresnel"])
def test_derivatives_per_inverse_range(system, wavefront):
    """steering_derivatives(inverse_range=True): the steering vectors of ``steering`` bit
    for bit (complex64 and complex128), and rows d/dphi, d/dtheta, d/du with u = 1/range
    against central finite differences in u (the estimators' parameter)."""
    az, el, r = _params(16, seed=5)
    for dtype in (torch.complex64, torch.complex128):
        a, _ = steering_derivatives(az, el, r, system, dtype, wavefront, inverse_range=True)
        assert torch.equal(a, steering(az, el, r, system, dtype, wavefront))
    a, D = steering_derivatives(az, el, r, system, torch.complex128, wavefront,
                                inverse_range=True)
    assert D.shape == (16, 3, 144)
    u, h = 1.0 / r, 1e-7
    pairs = [((az + h, el, r), (az - h, el, r)), ((az, el + h, r), (az, el - h, r)),
             ((az, el, 1 / (u + h)), (az, el, 1 / (u - h)))]
    for i, (plus, minus) in enumerate(pairs):
        fd = (steering(*plus, system, torch.complex128, wavefront)
              - steering(*minus, system, torch.complex128, wavefront)) / (2 * h)
        rel = (fd - D[:, i]).norm(dim=-1) / D[:, i].norm(dim=-1)
        assert float(rel.max()) < 1e-6, i


def test_jacobian_matches_autograd(system):
    az, el, r = (t.requires_grad_() for t in _params(1, seed=3))
    a = steering(az, el, r, system, torch.complex128)
    jac = steering_jacobian(az.detach(), el.detach(), r.detach(), system, torch.complex128)
    # d Re(a_n)/d az for one element
    n = 50
    g = torch.autograd.grad(a[0, n].real, (az, el, r))
    assert abs(float(g[0][0]) - float(jac.d_azimuth[0, n].real)) < 1e-9
    assert abs(float(g[2][0]) - float(jac.d_range[0, n].real)) < 1e-9


def test_cached_elements_first_made_in_inference_mode_still_carry_gradients():
    s = SystemConfig(spacing=0.0625)  # a system no other test caches
    az, el, r = _params(3, seed=4)
    with torch.inference_mode():
        first = steering(az, el, r, s, torch.complex128)
    az.requires_grad_()
    a = steering(az, el, r, s, torch.complex128)
    assert torch.equal(a.detach(), first)
    (g,) = torch.autograd.grad(a.real.sum(), az)  # inference tensors here would raise
    assert bool(torch.isfinite(g).all())


def test_bad_dtype_and_wavefront(system):
    z = torch.zeros(1)
    with pytest.raises(TypeError):
        steering(z, z, z + 1, system, torch.float32)
    with pytest.raises(ValueError, match="wavefront"):
        steering(z, z, z + 1, system, wavefront="planar")


def test_spacing_follows_config():
    s = SystemConfig(spacing=0.075)
    pos = element_positions(s)
    assert math.isclose(float(pos[1, 0] - pos[0, 0]), 0.075)


def test_far_field_limit_and_single_precision_at_long_range(system):
    """CONVENTIONS: a_n = exp(-j k0 (d_n - r)) / sqrt(N) with d_n - r -> -u.e_n as r grows,
    so sqrt(N) a tends to the far-field response, the gap shrinking like 1/r (the
    (|e|^2 - (u.e)^2)/(2r) term). And complex64 keeps the path difference free of the
    cancellation of d_n - r (r up to 1e4 m): a mutation-testing review, where forming
    d_n - r directly passed every other test."""
    from risloc.physics import far_field_response

    g = torch.Generator().manual_seed(7)
    az = (torch.rand(64, generator=g, dtype=torch.float64) - 0.5) * math.radians(120)
    el = (torch.rand(64, generator=g, dtype=torch.float64) - 0.5) * math.radians(60)
    ff = far_field_response(az, el, system, torch.complex128) / math.sqrt(system.N)
    gaps = []
    for r in (100.0, 1e3, 1e4):
        rr = torch.full_like(az, r)
        a64 = steering(az, el, rr, system, torch.complex128)
        a32 = steering(az, el, rr, system, torch.complex64)
        gaps.append(float((a64 - ff).norm(dim=-1).max()))
        # float32 phases: errors of a few ulps of the phase, not of r (orig. ~5e-6)
        assert float((a32.to(torch.complex128) - a64).abs().max()) * 12 < 2e-5, r
        assert float((a32.to(torch.complex128) - ff).norm(dim=-1).max()) < 1.2 * gaps[-1] + 1e-5
    for g1, g2 in zip(gaps, gaps[1:], strict=False):
        assert 9.0 < g1 / g2 < 11.0  # 1/r
    assert gaps[-1] < 1e-3


def test_the_configured_wavefront_and_dtype_are_the_defaults():
    """CONVENTIONS: simulation and estimation use the same configured model; a call that
    names no wavefront takes the system's (a mutation review: forcing "spherical" there
    passed every other test). Default dtype complex64."""
    from risloc.physics.steering import path_difference

    s = SystemConfig(wavefront="fresnel")
    az, el, r = _params(5, seed=8)
    assert torch.equal(path_difference(az, el, r, s), path_difference(az, el, r, s, "fresnel"))
    assert not torch.allclose(path_difference(az, el, r, s),
                              path_difference(az, el, r, s, "spherical"))
    a = steering(az, el, r, s)
    assert a.dtype == torch.complex64
    assert torch.equal(a, steering(az, el, r, s, torch.complex64, "fresnel"))
    a2, D = steering_derivatives(az, el, r, s)
    a3, D3 = steering_derivatives(az, el, r, s, torch.complex64, "fresnel")
    assert a2.dtype == torch.complex64 and torch.equal(a2, a3) and torch.equal(D, D3)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_ula_response_by_hand_in_the_precision_asked_for(dtype):
    """b_m(psi) = exp(j pi (m - (M-1)/2) sin(psi)), half-wavelength ULA centred on the
    array; a float32 angle gives a complex128 response when asked (a mutation review)."""
    from risloc.physics import ula_response

    psi = 0.41
    b = ula_response(torch.tensor([psi], dtype=torch.float32), 5, dtype)[0]
    assert b.dtype == dtype
    psi32 = float(torch.tensor(psi, dtype=torch.float32))
    want = [cmath.exp(1j * math.pi * (m - 2) * math.sin(psi32)) for m in range(5)]
    tol = 1e-6 if dtype == torch.complex64 else 1e-14
    assert max(abs(complex(b[m]) - want[m]) for m in range(5)) < tol


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_a_source_on_an_element_gives_a_finite_steering_vector(system, dtype):
    """A source exactly on element n (azimuth +-90 deg, in the RIS plane) has d_n = 0, so
    a_n = exp(j k0 r) / sqrt(N); |p - e_n|^2 = q + r^2 then rounds to a tiny negative
    number for many elements, which the distance must clamp, not turn into NaN (a mutation
    review: dropping the clamp passed every other test)."""
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    pos = element_positions(system, dtype=real)
    x, y = pos[:, 0], pos[:, 1]
    r = torch.sqrt(x * x + y * y)
    el = torch.asin(y / r)
    az = torch.sign(x) * (math.pi / 2)
    a = steering(az, el, r, system, dtype)
    assert bool(torch.isfinite(torch.view_as_real(a)).all())
    want = torch.polar(torch.ones_like(r), system.k0 * r) / math.sqrt(system.N)
    # complex64: d_n = sqrt(a rounding error of r^2) ~ 3e-4 m, a phase error ~ k0 d_n
    tol = 2e-2 if dtype == torch.complex64 else 1e-6
    assert float((a.diagonal() - want.to(dtype)).abs().max()) * math.sqrt(system.N) < tol
