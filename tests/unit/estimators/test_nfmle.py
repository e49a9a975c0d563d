"""NF-MLE: exact recovery on exact data, monotone cost, Jacobian vs finite differences and
autograd, padded-slot invariance, input validation."""

from __future__ import annotations

import math

import pytest
import torch

from risloc.config import FieldOfView, SceneConfig, SystemConfig
from risloc.core.params import Estimates, pack, steering_at
from risloc.estimators import nfmle
from risloc.estimators.nfmle import NFMLEConfig, ml_residual, nfmle_fit, nfmle_refine
from risloc.physics import steering
from risloc.simulation import simulate_range

SYSTEM = SystemConfig()
SCENE = SceneConfig()



def exact_scenes(n: int, K: int, seed: int = 7):
    """Scenes and their noiseless measurements y = H diag(c_l) A s_l in complex128."""
    b = simulate_range(0, n, SYSTEM, SCENE, seed=seed, split="test", K=K, snr_db=20.0)
    m = b.mask
    A = steering(torch.where(m, b.azimuth, 0.0).double(), torch.where(m, b.elevation, 0.0).double(),
                 torch.where(m, b.range_m, 1.0).double(), SYSTEM, torch.complex128)
    x = b.codes.to(torch.complex128) * (b.symbols.to(torch.complex128) @ A)  # (B, L, N)
    y = x @ b.H.to(torch.complex128).mT  # (B, L, M)
    return b, y, b.H.to(torch.complex128), b.codes.to(torch.complex128)


def perturbed_start(b, deg: float = 2.0, rel: float = 0.2, seed: int = 0) -> Estimates:
    """Truth moved by up to +-deg in both angles and +-rel in range (uniform)."""
    g = torch.Generator().manual_seed(seed)
    u = lambda: 2 * torch.rand(b.azimuth.shape, generator=g, dtype=torch.float64) - 1  # noqa: E731
    return Estimates(b.K, b.azimuth.double() + math.radians(deg) * u(),
                     b.elevation.double() + math.radians(deg) * u(),
                     b.range_m.double() * (1 + rel * u()), torch.zeros_like(b.azimuth.double()))


@pytest.mark.parametrize("K", [1, 3, 5])
def test_converges_to_truth_on_exact_data(K):
    b, y, H, codes = exact_scenes(6, K)
    ref = nfmle_fit(y, H, codes, perturbed_start(b), SYSTEM, NFMLEConfig(iterations=None))
    est, m = ref.estimates, b.mask
    err_az = (est.azimuth - b.azimuth.double())[m].abs().rad2deg()
    err_el = (est.elevation - b.elevation.double())[m].abs().rad2deg()
    err_r = ((est.range_m - b.range_m.double()) / b.range_m.double())[m].abs()
    # truth is float32: the float64 optimum of the exact data lies within its rounding
    assert err_az.max() < 1e-4 and err_el.max() < 1e-4, (err_az.max(), err_el.max())
    assert err_r.max() < 1e-5, err_r.max()
    assert (ref.cost / y.abs().square().sum((1, 2))).max() < 1e-12
    # score = estimated source power = realised symbol power on exact data
    power = b.symbols.abs().square().mean(1).double()
    torch.testing.assert_close(est.score[m], power[m], rtol=1e-5, atol=0)


def test_cost_history_is_monotone_and_decreases():
    b = simulate_range(0, 8, SYSTEM, SCENE, seed=3, split="test", K=3, snr_db=5.0)
    ref = nfmle_fit(b.y, b.H, b.codes, perturbed_start(b, 3.0, 0.3), SYSTEM,
                    NFMLEConfig(iterations=8))
    h = ref.history
    assert h.shape == (9, 8)
    assert bool((h[1:] <= h[:-1]).all())
    assert bool((h[-1] < h[0]).all())


def test_convergence_does_not_depend_on_the_units_of_y():
    """Run to convergence, y scaled by 1e3 or 1e-3 stops after the same iterations at the
    same positions: the stopping test is relative to the cost (a mutation review: an
    absolute tolerance passed every test, all at unit scale)."""
    b = simulate_range(0, 4, SYSTEM, SCENE, seed=3, split="test", K=2, snr_db=15.0)
    start = perturbed_start(b, 2.0, 0.2)
    cfg = NFMLEConfig(iterations=None)
    fits = [nfmle_fit(b.y * s, b.H, b.codes, start, SYSTEM, cfg) for s in (1.0, 1e3, 1e-3)]
    assert len({f.history.shape[0] for f in fits}) == 1 and fits[0].history.shape[0] > 2
    for f in fits[1:]:
        for name in ("azimuth", "elevation", "range_m"):
            torch.testing.assert_close(getattr(f.estimates, name),
                                       getattr(fits[0].estimates, name), rtol=1e-6,
                                       atol=1e-9, equal_nan=True)


def test_an_lm_acceptance_step_neither_indexes_by_mask_nor_checks_errors():
    """The amplitude solve and the acceptance of candidates use no operation that waits
    for a GPU (boolean-mask indexing: aten::nonzero; linalg.solve's singularity check),
    and accept exactly the candidates that lower the cost, in place."""
    from torch.profiler import ProfilerActivity, profile

    b = simulate_range(0, 6, SYSTEM, SCENE, seed=3, split="test", K=2, snr_db=10.0)
    cfg = NFMLEConfig()
    y, H, codes = (t.to(torch.complex128) for t in (b.y, b.H, b.codes))
    start = perturbed_start(b)
    theta = nfmle._start(start.azimuth, start.elevation, start.range_m, b.mask, cfg,
                         torch.float64)
    fit = nfmle.amplitude_fit(y, H, codes, steering_at(theta, SYSTEM, y.dtype), b.mask,
                              cfg.tikhonov)
    cand = nfmle._start(b.azimuth, b.elevation, b.range_m, b.mask, cfg, torch.float64)
    cand[2:4] = theta[2:4] + 0.2  # scenes 2 and 3: worse than their start, rejected
    idx = torch.tensor([0, 2, 3, 5])
    state = (theta.clone(), nfmle.Fit(*(t.clone() for t in fit)))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ok = nfmle._try(idx, cand[idx], state, y, H, codes, b.mask, SYSTEM, cfg, 6)
    ops = {e.key for e in prof.key_averages()}
    assert not ops & {"aten::nonzero", "aten::_linalg_check_errors"}, ops
    cfit = nfmle.amplitude_fit(y[idx], H[idx], codes[idx], steering_at(cand[idx], SYSTEM,
                               y.dtype), b.mask[idx], cfg.tikhonov)
    assert torch.equal(ok, cfit.cost < fit.cost[idx]) and ok.tolist() == [True, False, False, True]
    expect = theta.clone()
    expect[idx[ok]] = cand[idx][ok]
    assert torch.equal(state[0], expect)
    assert torch.equal(state[1].cost[idx], torch.where(ok, cfit.cost, fit.cost[idx]))
    rest = torch.tensor([1, 4])
    assert torch.equal(state[1].Bm[rest], fit.Bm[rest])


def test_cost_at_truth_is_zero_on_exact_data():
    b, y, H, codes = exact_scenes(4, 4)
    energy = y.abs().square().sum((1, 2))
    exact = ml_residual(y, H, codes, b.azimuth, b.elevation, b.range_m, b.mask, SYSTEM, 0.0)
    assert exact.shape == (4,) and exact.dtype == torch.float64
    assert (exact / energy).max() < 1e-25
    c = ml_residual(y, H, codes, b.azimuth, b.elevation, b.range_m, b.mask, SYSTEM)
    assert (c / energy).max() < 1e-10  # the default Tikhonov term leaves O(tikhonov^2)
    wrong = ml_residual(y, H, codes, b.azimuth + 0.05, b.elevation, b.range_m, b.mask, SYSTEM)
    assert bool((wrong > 1e-2 * energy).all())  # 2.9 deg off: > 1 % of the energy is left


def _fixture_theta(K: int = 3, n: int = 3):
    b = simulate_range(0, n, SYSTEM, SCENE, seed=5, split="test", K=K, snr_db=10.0)
    y = b.y.to(torch.complex128)
    Phi = (b.H.to(torch.complex128), b.codes.to(torch.complex128))  # the operator H diag(c_l)
    theta = pack(b.azimuth, b.elevation, b.range_m).double()[:, :K]  # (B, K, 3)
    theta = theta + 0.01  # off the optimum: the residual is not orthogonal to the columns
    return y, Phi, theta, b.mask[:, :K]


def _residual(y, Phi, theta, mask, tikhonov=0.0):
    A = steering_at(theta, SYSTEM, torch.complex128)
    return nfmle.amplitude_fit(y, *Phi, A, mask, tikhonov).r


def test_jacobian_matches_finite_differences():
    y, Phi, theta, mask = _fixture_theta()
    fit = nfmle.amplitude_fit(y, *Phi, steering_at(theta, SYSTEM, torch.complex128), mask, 0.0)
    J = nfmle._jacobian(fit, *Phi, theta, mask, SYSTEM)  # (B, L, M, 3K), (source, param)
    K = theta.shape[1]
    for p in range(3):
        for k in range(K):
            h = 1e-6 if p < 2 else 1e-6 * float(theta[:, k, 2].min())
            e = torch.zeros_like(theta)
            e[:, k, p] = h
            fd = (_residual(y, Phi, theta + e, mask) - _residual(y, Phi, theta - e, mask)) / (2 * h)
            col = J[..., 3 * k + p]
            assert (col - fd).abs().max() < 1e-6 * col.abs().max(), (p, k)


def test_jacobian_matches_forward_autograd():
    y, Phi, theta, mask = _fixture_theta()
    fit = nfmle.amplitude_fit(y, *Phi, steering_at(theta, SYSTEM, torch.complex128), mask, 0.0)
    J = nfmle._jacobian(fit, *Phi, theta, mask, SYSTEM)
    K = theta.shape[1]
    for j in range(3 * K):
        t = torch.zeros_like(theta)
        t[:, j // 3, j % 3] = 1.0
        _, jvp = torch.func.jvp(lambda th: torch.view_as_real(_residual(y, Phi, th, mask)),
                                (theta,), (t,))
        torch.testing.assert_close(J[..., j], torch.view_as_complex(jvp), rtol=1e-10,
                                   atol=1e-10 * float(J.abs().max()))


def test_padded_slots_do_not_change_the_result():
    b = simulate_range(0, 4, SYSTEM, SCENE, seed=9, split="test", K=2, snr_db=10.0)
    start = perturbed_start(b)
    cfg = NFMLEConfig(iterations=6)
    wide = nfmle_refine(b.y, b.H, b.codes, start, SYSTEM, cfg)  # K=2 in 5 slots
    garbage = Estimates(start.K, start.azimuth.nan_to_num(0.3), start.elevation.nan_to_num(-0.2),
                        start.range_m.nan_to_num(0.7), start.score)
    wide_garbage = nfmle_refine(b.y, b.H, b.codes, garbage, SYSTEM, cfg)
    two = Estimates(start.K, start.azimuth[:, :2], start.elevation[:, :2],
                    start.range_m[:, :2], start.score[:, :2])
    narrow = nfmle_refine(b.y, b.H, b.codes, two, SYSTEM, cfg)
    for name in ("azimuth", "elevation", "range_m", "score"):
        w, g, n = (getattr(e, name) for e in (wide, wide_garbage, narrow))
        torch.testing.assert_close(w[:, :2], n, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g[:, :2], n, rtol=1e-9, atol=1e-12)
        assert bool(w[:, 2:].isnan().all()) and bool(g[:, 2:].isnan().all())


@pytest.mark.parametrize("masked", [False, True])
def test_lm_solve_ignores_what_padded_slots_hold(masked):
    """lm_solve (the ML-fit stage's polish, which passes its slots beyond K as given) reads
    no padded slot: NaN there gives the real slots of the box-centre padding bit for bit
    (a mutation review: steering derivatives left unmasked in the Jacobian passed, and
    moved real slots by 1 deg)."""
    b = simulate_range(0, 4, SYSTEM, SCENE, seed=3, split="test", K=2, snr_db=10.0)
    y, H, codes = (t.to(torch.complex128) for t in (b.y, b.H, b.codes))
    cfg = NFMLEConfig(iterations=3, masked=masked)
    theta = nfmle._start(b.azimuth, b.elevation, b.range_m, b.mask, cfg, torch.float64)
    nan = torch.where(b.mask.unsqueeze(-1), theta, float("nan"))
    want, wfit, _ = nfmle.lm_solve(y, H, codes, theta, b.mask, SYSTEM, cfg)
    got, gfit, _ = nfmle.lm_solve(y, H, codes, nan, b.mask, SYSTEM, cfg)
    assert torch.equal(got[:, :2], want[:, :2]) and torch.equal(gfit.cost, wfit.cost)


def test_mixed_K_batch_equals_per_scene_runs():
    b1 = simulate_range(0, 2, SYSTEM, SCENE, seed=1, split="test", K=1, snr_db=10.0)
    b4 = simulate_range(0, 2, SYSTEM, SCENE, seed=1, split="test", K=4, snr_db=10.0)
    s1, s4 = perturbed_start(b1), perturbed_start(b4)
    cat = lambda a, c: torch.cat([a, c])  # noqa: E731
    mixed = Estimates(*(cat(getattr(s1, f), getattr(s4, f))
                        for f in ("K", "azimuth", "elevation", "range_m", "score")))
    cfg = NFMLEConfig(iterations=5)
    out = nfmle_refine(cat(b1.y, b4.y), cat(b1.H, b4.H), cat(b1.codes, b4.codes), mixed,
                       SYSTEM, cfg)
    alone = nfmle_refine(b4.y, b4.H, b4.codes, s4, SYSTEM, cfg)
    torch.testing.assert_close(out.azimuth[2:], alone.azimuth, rtol=1e-9, atol=1e-12,
                               equal_nan=True)


def test_passes_of_any_size_give_the_same_estimates():
    """The pass size only bounds memory (a GPU takes device_chunk scenes per pass, the CPU
    chunk): each scene's LM steps and damping are its own."""
    b = simulate_range(0, 6, SYSTEM, SCENE, seed=8, split="test", K=3, snr_db=10.0)
    start = perturbed_start(b)
    one = nfmle_refine(b.y, b.H, b.codes, start, SYSTEM, NFMLEConfig(iterations=5))
    two = nfmle_refine(b.y, b.H, b.codes, start, SYSTEM, NFMLEConfig(iterations=5, chunk=2))
    for f in ("azimuth", "elevation", "range_m", "score"):
        torch.testing.assert_close(getattr(two, f), getattr(one, f), rtol=1e-9, atol=1e-12,
                                   equal_nan=True)


def test_zero_iterations_returns_the_start_projected_on_the_box():
    b = simulate_range(0, 3, SYSTEM, SCENE, seed=2, split="test", K=2, snr_db=10.0)
    start = perturbed_start(b)
    out = nfmle_refine(b.y, b.H, b.codes, start, SYSTEM, NFMLEConfig(iterations=0))
    lo, hi = math.radians(-60), math.radians(60)
    torch.testing.assert_close(out.azimuth, start.azimuth.clamp(lo, hi), equal_nan=True)
    assert bool(out.score[b.mask].gt(0).all())


def test_estimates_stay_in_the_field_of_view():
    b = simulate_range(0, 6, SYSTEM, SCENE, seed=4, split="test", K=3, snr_db=-5.0)
    start = perturbed_start(b, 10.0, 0.5)
    cfg = NFMLEConfig(iterations=8, fov=FieldOfView((-20.0, 20.0), range_m=(1.0, 4.0)))
    out = nfmle_refine(b.y, b.H, b.codes, start, SYSTEM, cfg)
    m = b.mask
    assert bool((out.azimuth[m].abs() <= math.radians(20) + 1e-12).all())
    assert bool((out.range_m[m] >= 1.0 - 1e-9).all() and (out.range_m[m] <= 4.0 + 1e-9).all())


def test_float32_mode_is_close_to_float64():
    b = simulate_range(0, 4, SYSTEM, SCENE, seed=6, split="test", K=3, snr_db=20.0)
    start = perturbed_start(b)
    d = nfmle_refine(b.y, b.H, b.codes, start, SYSTEM, NFMLEConfig(iterations=None))
    f = nfmle_refine(b.y, b.H, b.codes, start, SYSTEM, NFMLEConfig(iterations=None, double=False))
    assert (d.azimuth - f.azimuth)[b.mask].abs().max().rad2deg() < 1e-3


def test_bad_inputs_raise():
    b = simulate_range(0, 2, SYSTEM, SCENE, seed=0, split="test", K=2, snr_db=10.0)
    start = perturbed_start(b)
    y_nan = b.y.clone()
    y_nan[0, 0, 0] = complex(float("nan"), 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        nfmle_refine(y_nan, b.H, b.codes, start, SYSTEM)
    with pytest.raises(ValueError, match="shape"):
        nfmle_refine(b.y[:, :, :8], b.H, b.codes, start, SYSTEM)
    with pytest.raises(ValueError, match="must be"):
        nfmle_refine(b.y[0], b.H, b.codes, start, SYSTEM)
    with pytest.raises(ValueError, match="all-zero channel"):
        nfmle_refine(b.y, b.H * torch.tensor([1.0, 0.0]).view(2, 1, 1), b.codes, start, SYSTEM)
    many = Estimates(torch.full((2,), 16), *(torch.zeros(2, 16) for _ in range(2)),
                     torch.ones(2, 16), torch.zeros(2, 16))
    with pytest.raises(ValueError, match="K >= M"):
        nfmle_refine(b.y, b.H, b.codes, many, SYSTEM)
    bad = Estimates(start.K, start.azimuth.clone(), start.elevation, start.range_m, start.score)
    bad.azimuth[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        nfmle_refine(b.y, b.H, b.codes, bad, SYSTEM)
    for r in (0.0, -1.0):  # a range of exactly 0 too (a mutation review: r < 0 passed)
        at = Estimates(start.K, start.azimuth, start.elevation, start.range_m.clone(),
                       start.score)
        at.range_m[1, 0] = r
        with pytest.raises(ValueError, match="ranges must be positive"):
            nfmle_refine(b.y, b.H, b.codes, at, SYSTEM)
    # K = M - 1 is taken, K = M refused (the bound itself)
    edge = Estimates(torch.full((2,), 15), *(torch.zeros(2, 15) for _ in range(2)),
                     torch.ones(2, 15), torch.zeros(2, 15))
    from risloc.core.checks import check_positions

    check_positions(edge.azimuth, edge.elevation, edge.range_m, edge.mask, SYSTEM.M)


def test_config_validation():
    with pytest.raises(ValueError):
        NFMLEConfig(iterations=-1)
    with pytest.raises(ValueError):
        NFMLEConfig(tikhonov=-1.0)
    with pytest.raises(ValueError, match="device_chunk"):
        NFMLEConfig(device_chunk=0)
    with pytest.raises(ValueError):
        NFMLEConfig(fov=FieldOfView(range_m=(2.0, 1.0)))


@pytest.mark.parametrize("double", [True, False])
def test_the_masked_route_gives_the_same_estimates_without_waiting_for_the_device(double):
    """The masked LM route (every retry and doubling on all scenes, accepted where still
    pending; the default off the CPU) gives the shrinking sets' estimates, and none of its
    operations would wait for a GPU (no data-dependent sizes, no value read by the host).
    The tolerance leaves room for GEMMs whose rounding depends on the batch's layout (512
    scenes of bench_equivalence.py on the masked route: K identical, positions within
    0.022 deg after the learned localizer's float32 polish, medians within 0.3 %)."""
    from risloc.core.syncs import SyncCounter

    b = simulate_range(0, 12, SYSTEM, SCENE, seed=5, split="test", snr_db=5.0)
    start = perturbed_start(b, 3.0, 0.3)
    out, waits = {}, {}
    for masked in (False, True):
        cfg = NFMLEConfig(iterations=5, double=double, masked=masked)
        with SyncCounter() as counter:
            out[masked] = nfmle_fit(b.y, b.H, b.codes, start, SYSTEM, cfg)
        waits[masked] = {k for k in counter.syncs if "nfmle.py" in k}
    assert waits[True] == set(), waits[True]  # only the input checks (checks.py) wait
    assert any("nonzero" in k or "index" in k for k in waits[False])  # the shrinking sets
    torch.testing.assert_close(out[True].history, out[False].history, rtol=1e-5, atol=0)
    new, old = out[True].estimates, out[False].estimates
    assert torch.equal(new.K, old.K)
    # (range relative: float32 on an AMX Xeon put one range of 9.6 m 2.8 mm, 2.9e-4, apart)
    for f, atol, rtol in (("azimuth", 2e-4, 0), ("elevation", 2e-4, 0), ("range_m", 0, 5e-4)):
        torch.testing.assert_close(getattr(new, f), getattr(old, f), rtol=rtol, atol=atol,
                                   equal_nan=True)
    assert nfmle.masked_route(NFMLEConfig(), torch.device("cpu")) is False
    assert nfmle.masked_route(NFMLEConfig(), torch.device("meta")) is True


def test_stacked_fits_are_the_amplitude_fits_of_each_candidate_set():
    """The masked route's fits of T candidate sets per scene, taken as the rows of one
    product through each scene's operator, are amplitude_fit of each set on its own
    (padded slots included: zero columns, no influence)."""
    b = simulate_range(0, 6, SYSTEM, SCENE, seed=7, split="test", snr_db=10.0)
    cfg = NFMLEConfig()
    real, cplx = torch.float64, torch.complex128
    y, H, codes = b.y.to(cplx), b.H.to(cplx), b.codes.to(cplx)
    mask = torch.arange(b.azimuth.shape[-1]) < b.K.unsqueeze(-1)
    cands = torch.stack([nfmle._start(*(getattr(perturbed_start(b, 2.0, 0.2, seed=t), f)
                                       for f in ("azimuth", "elevation", "range_m")),
                                     mask, cfg, real) for t in range(3)])  # (3, B, K, 3)
    fits = nfmle._stacked_fits(cands, y, H, codes, mask, SYSTEM, cfg)
    for t in range(3):
        one = nfmle.amplitude_fit(y, H, codes, steering_at(cands[t], SYSTEM, cplx), mask,
                                  cfg.tikhonov)
        for name, got, want in zip(one._fields, (f[t] for f in fits), one, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=name)


def test_a_bound_holds_a_parameter_only_where_descent_points_outward():
    """The projected-Newton active set: a parameter on its lower (upper) bound is fixed
    where -g points below (above) it, free where descent leads back inside; interior and
    real-slot parameters are free whatever g, padded slots never (a mutation review: the
    active set was checked only through the localizers)."""
    lo = torch.tensor([-1.0, -0.5, 0.1], dtype=torch.float64)
    hi = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    theta = torch.tensor([[[-1.0, 0.5, 1.0],   # az on lo, el on hi, 1/r inside
                           [1.0, -0.5, 0.1],   # az on hi, el on lo, 1/r on lo
                           [0.0, 0.0, 2.0]]],  # padded slot
                         dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    g = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    free = nfmle._free_parameters(theta, g, mask, lo, hi)
    want = [[False, False, True, False, False, False, False, False, False]]
    assert free.tolist() == want
    assert nfmle._free_parameters(theta, -g, mask, lo, hi).tolist() == \
        [[True, True, True, True, True, True, False, False, False]]


@pytest.mark.parametrize("masked", [False, True])
def test_a_step_that_leaves_the_cost_equal_is_not_accepted(masked):
    """Monotone acceptance is strict: where no step can lower the cost (y = 0: cost 0 at
    every position, a zero step) every retry is rejected and the damping rises to
    10^retries mu, positions unchanged (a mutation review: accepting at equal cost, which
    lowered the damping, passed every test)."""
    b = simulate_range(0, 2, SYSTEM, SCENE, seed=3, split="test", K=2, snr_db=10.0)
    cfg = NFMLEConfig(masked=masked)
    y = torch.zeros_like(b.y, dtype=torch.complex128)
    H, codes = b.H.to(torch.complex128), b.codes.to(torch.complex128)
    theta = nfmle._start(b.azimuth, b.elevation, b.range_m, b.mask, cfg, torch.float64)
    lo, hi = cfg.fov.bounds(torch.float64, theta.device)
    fit = nfmle.amplitude_fit(y, H, codes, steering_at(theta, SYSTEM, y.dtype), b.mask,
                              cfg.tikhonov)
    mu = torch.full((2,), cfg.damping, dtype=torch.float64)
    got_theta, got_fit, got_mu = nfmle._lm_iteration((theta.clone(), fit, mu), y, H, codes,
                                                     b.mask, SYSTEM, cfg, lo, hi)
    assert torch.equal(got_theta, theta) and float(got_fit.cost.abs().max()) == 0.0
    torch.testing.assert_close(got_mu, mu * 10.0 ** cfg.retries, rtol=1e-12, atol=0)


@pytest.mark.parametrize("masked", [False, True])
def test_an_lm_iteration_takes_marquardts_step_and_updates_its_damping(masked):
    """One LM iteration written out: the step solves (J^T J + mu diag(J^T J)) d = -J^T r,
    retried at 10 mu while the cost does not fall; an accepted step is doubled (2, 4, 8 x)
    while each lowers the cost of the one before, and mu becomes mu / 4 (accepted) or
    10^retries mu (never accepted). Starts 30 deg off give both outcomes (a mutation
    review: a damping left unchanged after a rejected step passed every test)."""
    b = simulate_range(0, 8, SYSTEM, SCENE, seed=3, split="test", K=2, snr_db=10.0)
    cfg = NFMLEConfig(masked=masked)
    y, H, codes = (t.to(torch.complex128) for t in (b.y, b.H, b.codes))
    s, mask = perturbed_start(b, 30.0, 0.3), b.mask
    theta = nfmle._start(s.azimuth, s.elevation, s.range_m, mask, cfg, torch.float64)
    lo, hi = cfg.fov.bounds(torch.float64, theta.device)

    def cost(i, t):  # scene i's cost at positions t [K, 3]
        return float(nfmle.amplitude_fit(y[i:i + 1], H[i:i + 1], codes[i:i + 1],
                                         steering_at(t[None], SYSTEM, y.dtype),
                                         mask[i:i + 1], cfg.tikhonov).cost[0])

    fit = nfmle.amplitude_fit(y, H, codes, steering_at(theta, SYSTEM, y.dtype), mask,
                              cfg.tikhonov)
    mu = torch.logspace(-8, 1, 8, dtype=torch.float64)
    state = (theta.clone(), nfmle.Fit(*(t.clone() for t in fit)), mu.clone())
    got_theta, got_fit, got_mu = nfmle._lm_iteration(state, y, H, codes, mask, SYSTEM, cfg,
                                                     lo, hi)
    J = nfmle._jacobian(fit, H, codes, theta, mask, SYSTEM)
    JtJ, g = nfmle._normal_equations(J, fit.r, theta, mask, lo, hi)
    D = torch.diag_embed(torch.diagonal(JtJ, dim1=-2, dim2=-1))
    want_theta, want_mu, tries, grown = theta.clone(), mu.clone(), [], []
    for i in range(8):
        m, step = float(mu[i]), None
        for _ in range(cfg.retries):
            d = -torch.linalg.solve(JtJ[i] + m * D[i], g[i]).view(-1, 3)
            if cost(i, torch.clamp(theta[i] + d, lo, hi)) < float(fit.cost[i]):
                step = d
                break
            m *= 10.0
        tries.append(round(math.log10(m / float(mu[i]))))  # retries before acceptance
        want_mu[i] = m if step is None else m / 4
        if step is None:
            continue
        best, n = torch.clamp(theta[i] + step, lo, hi), 0
        prev = cost(i, best)
        for scale in (2.0, 4.0, 8.0):
            t = torch.clamp(theta[i] + scale * step, lo, hi)
            if not cost(i, t) < prev:
                break
            best, prev, n = t, cost(i, t), n + 1
        grown.append(n)
        want_theta[i] = best
    assert 0 in tries and cfg.retries in tries and max(grown) > 0  # (both outcomes seen)
    torch.testing.assert_close(got_mu, want_mu, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_theta, want_theta, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_fit.cost, nfmle.amplitude_fit(
        y, H, codes, steering_at(got_theta, SYSTEM, y.dtype), mask, cfg.tikhonov).cost,
        rtol=1e-9, atol=0)


def test_both_routes_accept_the_first_retry_that_lowers_the_cost_and_bound_the_damping():
    """Retries accepted at 10^3 mu (scene 14 of these starts) take that retry's step and
    damping on the masked route too, and both routes keep mu in [1e-12, 1e8]: a step
    accepted at mu = 1e-12 leaves 1e-12, four rejections from 1e7 leave 1e8 (a mutation
    review: the first retry's step or index, or an unbounded damping, passed)."""
    b = simulate_range(0, 16, SYSTEM, SCENE, seed=3, split="test", K=2, snr_db=10.0)
    y, H, codes = (t.to(torch.complex128) for t in (b.y, b.H, b.codes))
    s, mask = perturbed_start(b, 30.0, 0.3), b.mask
    cfg = NFMLEConfig()
    theta = nfmle._start(s.azimuth, s.elevation, s.range_m, mask, cfg, torch.float64)
    lo, hi = cfg.fov.bounds(torch.float64, theta.device)
    fit = nfmle.amplitude_fit(y, H, codes, steering_at(theta, SYSTEM, y.dtype), mask,
                              cfg.tikhonov)
    mu = torch.full((16,), 1e-3, dtype=torch.float64)
    mu[0], mu[1] = 1e7, 1e-12  # scene 0 rejects every retry, scene 1 accepts the first
    out = {}
    for masked in (False, True):
        state = (theta.clone(), nfmle.Fit(*(t.clone() for t in fit)), mu.clone())
        out[masked] = nfmle._lm_iteration(state, y, H, codes, mask, SYSTEM,
                                          NFMLEConfig(masked=masked), lo, hi)
    for masked in (False, True):
        got_theta, got_fit, got_mu = out[masked]
        assert float(got_mu[0]) == 1e8 and float(got_mu[1]) == 1e-12
        assert float(got_mu[14]) == pytest.approx(1e-3 * 1e3 / 4, rel=1e-12)  # 3 retries
        assert float(got_fit.cost[14]) < float(fit.cost[14])
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out[True][1].cost, out[False][1].cost, rtol=1e-9, atol=0)
    torch.testing.assert_close(out[True][2], out[False][2], rtol=1e-12, atol=0)


def test_a_parameter_just_inside_its_bound_is_free():
    """The active set's tolerance is 1e-12 of the box: a parameter 1e-6 of the box inside
    its bound moves whatever the gradient's sign (a mutation review: 1e-3 passed)."""
    lo = torch.tensor([-1.0, -0.5, 0.1], dtype=torch.float64)
    hi = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    eps = 1e-6 * (hi - lo)
    theta = torch.stack([lo + eps, hi - eps]).unsqueeze(0)  # (1, 2, 3)
    g = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    assert nfmle._free_parameters(theta, g, torch.ones(1, 2, dtype=torch.bool), lo,
                                  hi).all()


def test_a_history_of_chunks_is_padded_with_each_chunks_final_cost():
    """Chunks converging after different counts: each scene's history ends at its final
    cost, padded with it, never rising (a mutation review: padding with the first cost
    passed)."""
    b, y, H, codes = exact_scenes(4, 2)  # the first chunk starts at the truth
    far, near = perturbed_start(b, 5.0, 0.3), perturbed_start(b, 1e-6, 1e-8)
    start = Estimates(b.K, *(torch.cat([getattr(near, f)[:2], getattr(far, f)[2:]])
                             for f in ("azimuth", "elevation", "range_m", "score")))
    ref = nfmle_fit(y, H, codes, start, SYSTEM, NFMLEConfig(iterations=None, chunk=2))
    lengths = [nfmle_fit(y[i:i + 2], H[i:i + 2], codes[i:i + 2], start[i:i + 2], SYSTEM,
                         NFMLEConfig(iterations=None)).history.shape[0] for i in (0, 2)]
    assert lengths[0] != lengths[1] and ref.history.shape[0] == max(lengths)
    torch.testing.assert_close(ref.history[-1], ref.cost, rtol=0, atol=0)
    assert (ref.history[1:] <= ref.history[:-1]).all()


def test_source_energy_is_what_each_source_explains_over_all_snapshots():
    """source_energy sums |s_lk|^2 ||b_lk||^2 over the snapshots: one source fitted to
    exact data explains all of ||y||^2 (a mutation review: the mean over snapshots
    passed)."""
    b, y, H, codes = exact_scenes(3, 1)
    start = Estimates(b.K, b.azimuth.double(), b.elevation.double(), b.range_m.double(),
                      torch.zeros_like(b.azimuth.double()))
    ref = nfmle_fit(y, H, codes, start, SYSTEM, NFMLEConfig(iterations=0))
    torch.testing.assert_close(ref.energy[:, 0], y.abs().square().sum((1, 2)), rtol=1e-6,
                               atol=0)


def test_a_scene_without_sources_keeps_its_whole_energy_as_cost():
    """K = 0 beside a K = 2 scene: no columns, so the cost is ||y||^2 (finite) and every
    slot NaN (a mutation review: the Tikhonov weight's 1/K unguarded at K = 0, a NaN cost,
    passed every test)."""
    b, y, H, codes = exact_scenes(2, 2)
    s = perturbed_start(b)
    K = torch.tensor([2, 0])
    m = torch.arange(s.azimuth.shape[1]) < K[:, None]
    start = Estimates(K, *(t.where(m, float("nan")) for t in (s.azimuth, s.elevation,
                                                                s.range_m)), s.score)
    ref = nfmle_fit(y, H, codes, start, SYSTEM, NFMLEConfig(iterations=3))
    torch.testing.assert_close(ref.cost[1], y[1].abs().square().sum(), rtol=1e-12, atol=0)
    assert float(ref.cost[0]) < 1e-6 * float(ref.history[0, 0])
    assert ref.estimates.azimuth[1].isnan().all() and ref.history.isfinite().all()


def test_run_to_convergence_stops_where_the_relative_decrease_is_below_tolerance():
    """iterations None: a scene stops once its cost falls by at most tolerance * cost; at
    tolerance 1 every scene stops after one iteration (a mutation review: a stop on cost
    increase only, running every scene to max_iterations, passed)."""
    b, y, H, codes = exact_scenes(3, 2)
    ref = nfmle_fit(y, H, codes, perturbed_start(b), SYSTEM,
                    NFMLEConfig(iterations=None, tolerance=1.0))
    assert ref.history.shape[0] == 2 and (ref.history[1] < ref.history[0]).all()


def test_normal_equations_give_frozen_parameters_an_identity_row_and_no_gradient():
    """A parameter held by its bound (descent outward) or in a padded slot: identity row of
    J^T J, zero gradient (a mutation review: the full gradient returned passed)."""
    b, y, H, codes = exact_scenes(1, 2)
    cfg = NFMLEConfig()
    lo, hi = cfg.fov.bounds(torch.float64, torch.device("cpu"))
    mask = torch.tensor([[True, False]])
    theta = pack(b.azimuth, b.elevation, b.range_m).double()[:, :2].clone()
    theta[0, 1] = 0.5 * (lo + hi)
    fit = nfmle.amplitude_fit(y, H, codes, steering_at(theta, SYSTEM, y.dtype), mask,
                              cfg.tikhonov)  # only source 0 fitted: a nonzero gradient
    J = nfmle._jacobian(fit, H, codes, theta, mask, SYSTEM)
    _, g0 = nfmle._normal_equations(J, fit.r, theta, mask, lo, hi)
    theta[0, 0, 0] = lo[0] if g0[0, 0] > 0 else hi[0]  # azimuth onto the outward bound
    J = nfmle._jacobian(fit, H, codes, theta, mask, SYSTEM)
    JtJ, g = nfmle._normal_equations(J, fit.r, theta, mask, lo, hi)
    frozen = torch.tensor([True, False, False, True, True, True])
    assert (g[0, frozen] == 0).all() and (g[0, ~frozen] != 0).all()
    torch.testing.assert_close(JtJ[0][frozen][:, frozen], torch.eye(4, dtype=JtJ.dtype))
    assert (JtJ[0][frozen][:, ~frozen] == 0).all()


@pytest.mark.parametrize("field", [{"tolerance": -1e-3}, {"tolerance": float("nan")},
                                   {"max_iterations": 0}])
def test_a_negative_or_nan_tolerance_and_no_iterations_are_refused(field):
    """A run to convergence needs a tolerance >= 0 and at least one iteration (a mutation
    review: a negative tolerance was taken, and ran every scene to max_iterations)."""
    with pytest.raises(ValueError, match="tolerance must be >= 0 and max_iterations >= 1"):
        NFMLEConfig(**field)


@pytest.mark.parametrize("field", [{"retries": 0}, {"damping": 0.0}, {"chunk": 0}])
def test_no_retries_no_damping_and_empty_passes_are_refused(field):
    """An LM iteration needs one try at least, a positive damping and passes of one scene
    at least (a mutation review: retries = 0, an iteration that never steps, was taken)."""
    with pytest.raises(ValueError, match="retries >= 1"):
        NFMLEConfig(**field)


def test_init_for_another_number_of_scenes_is_refused():
    """Start positions for fewer scenes than measurements (a mutation review: without the
    check, the scenes past init's were dropped silently)."""
    b = simulate_range(0, 2, SYSTEM, SCENE, seed=0, split="test", K=2, snr_db=10.0)
    start = perturbed_start(b)
    one = Estimates(start.K[:1], start.azimuth[:1], start.elevation[:1], start.range_m[:1],
                    start.score[:1])
    with pytest.raises(ValueError, match="init holds 1 scenes for 2 measurements"):
        nfmle_fit(b.y, b.H, b.codes, one, SYSTEM)


@pytest.mark.parametrize("masked", [False, True])
def test_a_scene_whose_damping_reaches_the_cap_stops_iterating(masked):
    """iterations None: a scene whose damping is at its cap (1e8) stops even where its
    cost still fell; at tolerance 0 only that stop ends the run after one iteration (a
    mutation review: without it the scene ran on to max_iterations)."""
    b, y, H, codes = exact_scenes(1, 2)
    ref = nfmle_fit(y, H, codes, perturbed_start(b), SYSTEM,
                    NFMLEConfig(iterations=None, damping=1e9, tolerance=0.0,
                                max_iterations=5, masked=masked))
    assert ref.history.shape[0] == 2 and (ref.history[1] < ref.history[0]).all()
