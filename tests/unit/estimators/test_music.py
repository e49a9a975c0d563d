"""Near-field MUSIC: exact recovery on the exact covariance, spectrum, padding, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from risloc.config import SceneConfig, SystemConfig
from risloc.covariance.tools import LowRank, back_projection, blend_factor
from risloc.estimators.grids import (
    greedy_pick,
    grid_steering,
    local_maxima_3d,
    near_field_grid,
)
from risloc.estimators.music import (
    NULL_FLOOR,
    MusicConfig,
    grid_spectrum,
    music,
    music_spectrum,
    signal_subspace,
)
from risloc.estimators.refine import NearFieldModel, null_spectrum, refine_peaks
from risloc.physics import angular_separation
from risloc.simulation import (
    concat_batches,
    scene_true_covariance,
    simulate_batch,
    true_covariance,
    true_covariance_factor,
)

ANGLE_TOL_DEG = 0.02
RANGE_TOL_M = 0.01


def simulate(n, system, seed, K):
    """n scenes with K sources from a fixed seed (SNR is irrelevant: R_true is used)."""
    gen = torch.Generator().manual_seed(seed)
    return simulate_batch(n, system, SceneConfig(), gen, snr_db=20.0, K=K)


def errors(est, az, el, rng, K):
    """Hungarian-paired great-circle [deg] and range [m] errors of all true sources."""
    angle, dist = [], []
    for b in range(len(K)):
        k, ke = int(K[b]), int(est.K[b])
        t = [v[b, :k].double() for v in (az, el, rng)]
        e = [v[b, :ke].double() for v in (est.azimuth, est.elevation, est.range_m)]
        sep = torch.rad2deg(angular_separation(t[0][:, None], t[1][:, None],
                                               e[0][None], e[1][None]))
        dr = (t[2][:, None] - e[2]).abs()
        i, j = linear_sum_assignment((sep + dr).numpy())
        assert len(i) == k, f"scene {b}: {k} true sources, {len(i)} paired"
        angle += sep[i, j].tolist()
        dist += dr[i, j].tolist()
    return np.array(angle), np.array(dist)


@pytest.fixture(scope="module", params=["spherical", "fresnel"])
def system(request):
    return SystemConfig(wavefront=request.param)


@pytest.mark.parametrize("K", [1, 3, 5])
def test_exact_covariance_recovers_sources(system, K):
    scenes = simulate(12, system, seed=11, K=K)
    R = scene_true_covariance(scenes, system)
    est = music(R, scenes.K, system)
    assert torch.equal(est.K, scenes.K)
    angle, dist = errors(est, scenes.azimuth, scenes.elevation, scenes.range_m, scenes.K)
    assert angle.max() < ANGLE_TOL_DEG
    assert dist.max() < RANGE_TOL_M


def test_low_rank_factor_gives_the_dense_estimates(system):
    """MUSIC on the factor of R_true (K_max columns) and of a blend with the back-projected
    snapshots (c I + W W^H, as validation gets it) finds what it finds on the dense
    matrices, from a 5 x 5 / 21 x 21 eigenproblem instead of a 144 x 144 one."""
    scenes = concat_batches([simulate(6, system, seed=12, K=k) for k in (1, 3, 5)])
    W = true_covariance_factor(scenes, system)
    zero = torch.zeros(len(scenes))
    dense = music(scene_true_covariance(scenes, system), scenes.K, system)
    low = music(LowRank(zero, W), scenes.K, system)
    F = W[..., :3] * 0.7 + 0.1  # an arbitrary 3-column "prediction"
    a = back_projection(scenes.y, scenes.H, scenes.codes)
    factor = blend_factor(F, a, 0.4).shrunk(0.05).loaded(1e-3)
    dense_blend = factor.dense()
    pairs = [(dense, low), (music(dense_blend, scenes.K, system),
                            music(factor, scenes.K, system))]
    for d, f in pairs:  # paired (equal scores may come in either order)
        assert torch.equal(d.K, f.K)
        angle, dist = errors(f, d.azimuth, d.elevation, d.range_m, d.K)
        assert angle.max() < 1e-3 and dist.max() < 1e-3, (angle.max(), dist.max())
    angle, dist = errors(low, scenes.azimuth, scenes.elevation, scenes.range_m, scenes.K)
    assert angle.max() < ANGLE_TOL_DEG and dist.max() < RANGE_TOL_M
    pts = scenes.azimuth[:, :1], scenes.elevation[:, :1], scenes.range_m[:, :1]
    torch.testing.assert_close(music_spectrum(factor, scenes.K, system, *pts),
                               music_spectrum(dense_blend, scenes.K, system, *pts),
                               rtol=1e-3, atol=0)  # the spectrum takes the factor too
    with pytest.raises(ValueError, match="non-finite"):
        music(LowRank(zero, W * float("nan")), scenes.K, system)
    with pytest.raises(ValueError, match="non-finite"):  # a NaN c passes the trace check
        music(LowRank(zero + float("nan"), W), scenes.K, system)
    with pytest.raises(ValueError, match="N=144"):
        music(LowRank(zero, W[:, :100]), scenes.K, system)


def test_close_sources_need_valley_starts():
    """Two sources 5.07 deg apart share one grid peak; the valley starts recover both."""
    system = SystemConfig()
    deg = torch.tensor([[-40.40, 9.32, -31.80, -26.72, -50.21]], dtype=torch.float64)
    el = torch.tensor([[14.96, -10.06, -8.93, -9.71, -23.93]], dtype=torch.float64)
    rng = torch.tensor([[3.84, 4.79, 8.50, 9.15, 7.51]], dtype=torch.float64)
    az, el = torch.deg2rad(deg), torch.deg2rad(el)
    R = true_covariance(az, el, rng, torch.ones_like(rng), system)
    K = torch.tensor([5])
    cfg = MusicConfig(n_azimuth=81, n_elevation=41, n_range=16)
    angle, dist = errors(music(R, K, system, cfg), az, el, rng, K)
    assert angle.max() < ANGLE_TOL_DEG and dist.max() < RANGE_TOL_M
    no_valley = MusicConfig(n_azimuth=81, n_elevation=41, n_range=16, valley_step_deg=0.0)
    angle, _ = errors(music(R, K, system, no_valley), az, el, rng, K)
    assert angle.max() > 1.0  # documents the failure the valley starts fix


def test_spectrum_is_maximal_at_the_source():
    system = SystemConfig()
    az0, el0, r0 = math.radians(23.0), math.radians(-11.0), 2.7
    t = torch.tensor([[az0]]), torch.tensor([[el0]]), torch.tensor([[r0]])
    R = true_covariance(*t, torch.ones(1, 1), system)
    gen = torch.Generator().manual_seed(0)
    d = 0.02 * torch.randn(200, 3, generator=gen)  # ~1 deg and ~2% range perturbations
    az = torch.cat([torch.tensor([az0]), az0 + d[:, 0]])
    el = torch.cat([torch.tensor([el0]), el0 + d[:, 1]])
    rng = torch.cat([torch.tensor([r0]), r0 * (1 + d[:, 2])])
    P = music_spectrum(R, 1, system, az, el, rng)
    assert P.shape == (1, 201)
    assert P[0, 0] > 1e4  # exact covariance: null spectrum ~ 0 at the source
    assert P[0, 0] > 10 * P[0, 1:].max()
    # range cut at the true angle: maximal at the true range
    cut = torch.linspace(0.5, 10.0, 400)
    Pc = music_spectrum(R, 1, system, torch.full_like(cut, az0), torch.full_like(cut, el0), cut)
    assert abs(float(cut[Pc[0].argmax()]) - r0) < 0.05


def test_nan_padding_and_mixed_K_batch_equals_single_scenes():
    system = SystemConfig()
    K = torch.tensor([1, 3, 5, 2])
    scenes = concat_batches([simulate(1, system, seed=5 + i, K=int(k))
                             for i, k in enumerate(K)])
    R = scene_true_covariance(scenes, system)
    est = music(R, K, system)
    assert est.azimuth.shape == (4, system.K_max) and est.K.dtype == torch.int64
    assert torch.equal(est.K, K)
    mask = est.mask
    for field in (est.azimuth, est.elevation, est.range_m, est.score):
        assert torch.isfinite(field[mask]).all()
        assert torch.isnan(field[~mask]).all()
    assert (est.score[mask] >= 1).all()
    for b in range(4):
        single = music(R[b:b + 1], K[b:b + 1], system)
        k = int(K[b])
        torch.testing.assert_close(single.azimuth[0, :k], est.azimuth[b, :k], atol=1e-6, rtol=0)
        torch.testing.assert_close(single.range_m[0, :k], est.range_m[b, :k], atol=1e-5,
                                   rtol=0)


def test_result_does_not_depend_on_source_order_or_scale():
    system = SystemConfig()
    s = simulate(6, system, seed=2, K=4)
    perm = torch.tensor([2, 0, 3, 1, 4])
    R1 = true_covariance(s.azimuth, s.elevation, s.range_m, s.powers, system)
    R2 = true_covariance(s.azimuth[:, perm], s.elevation[:, perm], s.range_m[:, perm],
                         s.powers[:, perm], system)
    e1, e2 = music(R1, s.K, system), music(7.5 * R2, s.K, system)

    def sorted_by_azimuth(e):
        order = e.azimuth[:, :4].argsort(-1)
        return [v[:, :4].gather(1, order) for v in (e.azimuth, e.elevation, e.range_m)]

    for a, b in zip(sorted_by_azimuth(e1), sorted_by_azimuth(e2), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_only_the_hermitian_part_of_R_enters_the_subspace():
    """An anti-Hermitian part of R (S^H = -S) moves no eigenvector: the projector U U^H is
    that of R alone (a mutation review: eigh on the un-Hermitised R, which reads only its
    lower triangle, passed)."""
    system = SystemConfig()
    scenes = simulate(2, system, seed=3, K=2)
    R = scene_true_covariance(scenes, system, torch.complex128)
    X = torch.randn(R.shape, dtype=R.dtype, generator=torch.Generator().manual_seed(4))
    S = 0.1 * (X - X.mH)
    U1, U2 = signal_subspace(R, scenes.K), signal_subspace(R + S, scenes.K)
    torch.testing.assert_close(U2 @ U2.mH, U1 @ U1.mH, atol=1e-9, rtol=0)


def test_fewer_candidates_than_sources_still_refines_k_peaks():
    """n_candidates below K: at least K grid peaks are refined, so every source of an exact
    covariance is found (a mutation review: refining only n_candidates peaks passed)."""
    system = SystemConfig()
    scenes = simulate(3, system, seed=11, K=4)
    R = scene_true_covariance(scenes, system)
    est = music(R, scenes.K, system, MusicConfig(n_candidates=1, valley_step_deg=0.0))
    assert torch.equal(est.K, scenes.K)
    angle, dist = errors(est, scenes.azimuth, scenes.elevation, scenes.range_m, scenes.K)
    assert angle.max() < ANGLE_TOL_DEG and dist.max() < RANGE_TOL_M


def test_k_max_slots_and_a_warning_when_fewer_peaks_than_sources(caplog):
    """Estimates have K_max slots even when every K is smaller; a suppression radius wider
    than the sphere leaves one peak for two sources, which is warned of (a mutation
    review: max(K) slots and a warning on est.K > K passed)."""
    system = SystemConfig()
    caplog.set_level("WARNING", logger="risloc.estimators.music")
    scenes = simulate(2, system, seed=5, K=2)
    R = scene_true_covariance(scenes, system)
    est = music(R, torch.tensor([1, 2]), system)
    assert est.azimuth.shape == (2, system.K_max) and est.K.tolist() == [1, 2]
    assert not caplog.records
    est = music(R, scenes.K, system, MusicConfig(min_separation_deg=181.0))
    assert est.K.tolist() == [1, 1]
    assert [r.getMessage() for r in caplog.records] == [
        "MUSIC found fewer separated peaks than K in 2 scene(s)"]


def _two_sources(system: SystemConfig, azimuth_deg: float) -> torch.Tensor:
    """Exact covariance [1, N, N] of two unit-power sources: (azimuth_deg, 5 deg, 3 m) and
    (-20 deg, 10 deg, 2 m)."""
    f64 = torch.float64
    az = torch.deg2rad(torch.tensor([[azimuth_deg, -20.0]], dtype=f64))
    el = torch.deg2rad(torch.tensor([[5.0, 10.0]], dtype=f64))
    rng = torch.tensor([[3.0, 2.0]], dtype=f64)
    return true_covariance(az, el, rng, torch.ones(1, 2, dtype=f64), system, torch.complex128)


def test_estimates_stay_in_the_field_of_view_searched():
    """A source 3 deg outside the azimuth range is reported on the field of view's edge,
    never outside it (a mutation review: a refinement box 3 deg wider passed)."""
    system = SystemConfig()
    R = _two_sources(system, 63.0)
    est = music(R, 2, system)
    assert int(est.K[0]) == 2
    edge = est.azimuth[0, :2].abs().argmax()
    assert abs(math.degrees(float(est.azimuth[0, edge])) - 60.0) < 1e-9


def test_refinement_converges_monotonically_from_off_grid_start():
    system = SystemConfig()
    truth = torch.tensor([0.4, -0.2, 1 / 3.3], dtype=torch.float64)
    R = true_covariance(truth[0].view(1, 1), truth[1].view(1, 1), 1 / truth[2].view(1, 1),
                        torch.ones(1, 1), system, torch.complex128)
    U = signal_subspace(R, torch.tensor([1]))
    start = (truth + torch.tensor([0.015, -0.01, 0.05], dtype=torch.float64)).view(1, 1, 3)
    cfg, model = MusicConfig(), NearFieldModel(system)
    prev = float(null_spectrum(start, U, model))
    for it in range(1, 6):
        ref = refine_peaks(U, start, model, *cfg.fov.bounds(), iterations=it)
        assert float(ref.null) <= prev + 1e-15
        prev = float(ref.null)
    torch.testing.assert_close(ref.theta[0, 0], truth, atol=1e-8, rtol=0)


@pytest.mark.parametrize("bad", ["nonsquare", "nan", "zero", "real", "wrong_N"])
def test_bad_covariance_raises(bad):
    system = SystemConfig()
    R = torch.eye(system.N, dtype=torch.complex64).expand(2, -1, -1).clone()
    R = {"nonsquare": R[:, :, :-1], "nan": R.index_put_((torch.tensor([0]),) * 3,
                                                        torch.tensor(float("nan") + 0j)),
         "zero": torch.zeros_like(R), "real": R.real, "wrong_N": R[:, :100, :100]}[bad]
    with pytest.raises(ValueError):
        music(R, torch.tensor([1, 1]), system)
    with pytest.raises(ValueError):
        music_spectrum(R, torch.tensor([1, 1]), system, torch.zeros(3), torch.zeros(3),
                       torch.ones(3))


@pytest.mark.parametrize("K", [0, -1, 16, 20])
def test_bad_K_raises(K):
    system = SystemConfig()  # M = 16: K must lie in 1..15
    R = torch.eye(system.N, dtype=torch.complex64).expand(2, -1, -1)
    with pytest.raises(ValueError, match="K"):
        music(R, torch.tensor([1, K]), system)
    with pytest.raises(ValueError, match="K"):
        music(R, torch.tensor([1.0, 2.0]), system)  # float K
    with pytest.raises(ValueError, match="K"):
        music(R, torch.tensor([1, 2, 3]), system)  # wrong length


def test_config_validation():
    for kwargs in ({"n_range": 1}, {"loading": -1.0}, {"n_candidates": 0},
                   {"min_separation_deg": -1.0}, {"valley_step_deg": -1.0},
                   {"refine_iterations": -1}, {"chunk": 0}):
        with pytest.raises(ValueError):
            MusicConfig(**kwargs)


def test_grid_helpers():
    grid = near_field_grid((-60.0, 60.0), (-30.0, 30.0), (0.5, 10.0), 5, 3, 4)
    assert len(grid.azimuth) == 60 and grid.shape == (5, 3, 4)
    s = torch.sin(grid.azimuth.view(5, 3, 4)[:, 0, 0])
    torch.testing.assert_close(s.diff(), (s[1] - s[0]).expand(4))  # uniform in sin
    inv = 1 / grid.range_m.view(5, 3, 4)[0, 0]
    torch.testing.assert_close(inv, torch.linspace(0.1, 2.0, 4, dtype=torch.float64))
    P = torch.rand(3, 9, 7, 5, generator=torch.Generator().manual_seed(1))
    ref = P >= F.max_pool3d(P.unsqueeze(1), 3, 1, 1).squeeze(1)
    assert torch.equal(local_maxima_3d(P), ref)
    vals = torch.tensor([[5.0, 4.0, 3.0, -math.inf]])
    pos = torch.tensor([[0.0, 0.5, 3.0, 9.0]])
    picks = greedy_pick(vals, (pos.unsqueeze(-1) - pos.unsqueeze(-2)).abs(), 3, 1.0)
    assert picks.index[0, :2].tolist() == [0, 2] and picks.valid[0].tolist() == [True, True,
                                                                                  False]
    # "closer than min_distance" suppressed: a candidate exactly that far is kept (a
    # mutation review: <= passed)
    pos = torch.tensor([[0.0, 1.0, 0.5, 9.0]])
    picks = greedy_pick(vals, (pos.unsqueeze(-1) - pos.unsqueeze(-2)).abs(), 2, 1.0)
    assert picks.index[0].tolist() == [0, 1] and picks.valid[0].tolist() == [True, True]
    # min_distance 0 suppresses nothing else, yet never picks one candidate twice (a
    # mutation review: not removing the pick itself passed)
    picks = greedy_pick(vals, (pos.unsqueeze(-1) - pos.unsqueeze(-2)).abs(), 3, 0.0)
    assert picks.index[0].tolist() == [0, 1, 2] and picks.valid[0].all()
    # a NaN value is no candidate and takes none of the n slots (torch's max returns a NaN
    # first: it was an invalid first pick, and the third source was lost)
    nan = torch.tensor([[math.nan, 4.0, 3.0, 5.0]])
    picks = greedy_pick(nan, (pos.unsqueeze(-1) - pos.unsqueeze(-2)).abs(), 3, 0.0)
    assert picks.index[0].tolist() == [3, 1, 2] and picks.valid[0].all()


def test_the_grid_spectrum_is_the_music_spectrum_at_the_grid_points():
    """grid_spectrum's chunked GEMMs give music_spectrum's values at the grid points (a
    mutation review: a wrong scale of the grid's spectrum changed no peak, and nothing
    read its values)."""
    from risloc.physics import steering

    system = SystemConfig()
    grid = near_field_grid((-60.0, 60.0), (-30.0, 30.0), (0.5, 10.0), 7, 5, 4)
    g = torch.Generator().manual_seed(2)
    X = torch.randn(3, 144, 20, dtype=torch.complex128, generator=g)
    R, K = X @ X.mH, torch.tensor([1, 3, 3])
    U = signal_subspace(R, K)
    A_grid = steering(grid.azimuth, grid.elevation, grid.range_m, system, torch.complex128).T
    want = music_spectrum(R, K, system, grid.azimuth, grid.elevation, grid.range_m)
    for chunk in (50, 139, 140):  # 139: a last chunk of one column
        assert torch.allclose(grid_spectrum(U, K, A_grid, chunk=chunk), want, rtol=1e-9)


def test_the_grid_spectrum_is_floored_where_a_grid_point_lies_in_the_subspace():
    """A grid steering vector inside the signal subspace has 1 - ||U^H a||^2 <= 0 after
    complex64 rounding; the spectrum there is the finite cap 1/NULL_FLOOR, never negative
    or inf (a mutation review: dropping the floor in grid_spectrum passed)."""
    system, config = SystemConfig(), MusicConfig()
    _, A = grid_steering(system, config.grid_key, torch.complex64, "cpu")
    cols = A[:, :64].T  # (64, N): one single-source subspace per grid point
    U = (cols / cols.norm(dim=-1, keepdim=True)).unsqueeze(-1)
    P = grid_spectrum(U, torch.ones(64, dtype=torch.int64), A, config.chunk)
    own = P[torch.arange(64), torch.arange(64)]
    assert torch.isfinite(P).all() and (P >= 1).all()
    assert torch.allclose(own, torch.full_like(own, 1 / NULL_FLOOR))


def test_starts_that_greedy_pick_left_invalid_never_become_estimates():
    """On a 3x2x2 grid with one local maximum most grid starts (and, with valley starts,
    some second-round starts) are invalid picks that duplicate the first; with no
    suppression radius they must still never be reported (a mutation review: scoring
    invalid grid or valley starts like valid ones passed)."""
    system = SystemConfig()
    R = _two_sources(system, 20.0)
    tiny = dict(n_azimuth=3, n_elevation=2, n_range=2, min_separation_deg=0.0)
    for valley, want_k in ((4.0, 2), (0.0, 1)):
        est = music(R, 2, system, MusicConfig(valley_step_deg=valley, **tiny))
        assert int(est.K[0]) == want_k
        a, e = est.azimuth[0, :want_k], est.elevation[0, :want_k]
        sep = angular_separation(a[:, None], e[:, None], a[None], e[None])
        assert (sep + torch.eye(want_k, dtype=sep.dtype)).min() > 1e-3  # all distinct


def test_grid_candidates_reach_past_peaks_crowded_around_the_strongest():
    """Four local maxima in one direction (at four ranges) and a weaker one 40 deg away:
    with two picks the second is the weaker one, which only a candidate list longer than
    the picks holds (a mutation review: the n strongest peaks alone passed)."""
    from risloc.estimators.music import _grid_candidates

    grid = near_field_grid((-60.0, 60.0), (-30.0, 30.0), (0.5, 10.0), 20, 3, 8)
    P = torch.zeros(1, 20, 3, 8, dtype=torch.float64)
    for r, v in zip((0, 2, 4, 6), (10.0, 9.0, 8.0, 7.0)):
        P[0, 10, 1, r] = v
    P[0, 2, 1, 3] = 5.0
    theta, valid = _grid_candidates(P.view(1, -1), grid, MusicConfig(), 2)
    assert valid.tolist() == [[True, True]]
    az = grid.azimuth.view(20, 3, 8)
    assert theta[0, :, 0].tolist() == [float(az[10, 1, 0]), float(az[2, 1, 3])]


def test_search_grids_reach_the_field_of_view_edges_and_wrap():
    """The near-field grid's extreme points are the field of view's corners (a mutation
    review: an azimuth grid stopping one step short of +60 deg passed); grid_positions is the
    same grid in (az, el, 1/r); the 2-D frequency grid is periodic, so a point is no local
    maximum when its neighbour across the wrap is higher (replicate padding passed)."""
    from risloc.estimators.grids import grid_positions, local_maxima_2d_periodic

    key = ((-60.0, 50.0), (-30.0, 20.0), (0.5, 10.0), 7, 5, 4)
    grid = near_field_grid(*key)
    torch.testing.assert_close(torch.rad2deg(grid.azimuth).aminmax(),
                               (torch.tensor(-60.0, dtype=torch.float64),
                                torch.tensor(50.0, dtype=torch.float64)))
    torch.testing.assert_close(torch.rad2deg(grid.elevation).aminmax(),
                               (torch.tensor(-30.0, dtype=torch.float64),
                                torch.tensor(20.0, dtype=torch.float64)))
    torch.testing.assert_close(grid.range_m.aminmax(),
                               (torch.tensor(0.5, dtype=torch.float64),
                                torch.tensor(10.0, dtype=torch.float64)))
    # uniform steps in full float64 (a mutation review: a float32 linspace passed)
    el = torch.rad2deg(grid.elevation.view(7, 5, 4)[0, :, 0])
    torch.testing.assert_close(el, torch.linspace(-30.0, 20.0, 5, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    pos = grid_positions(key, torch.float64, "cpu")
    torch.testing.assert_close(pos, torch.stack([grid.azimuth, grid.elevation,
                                                 1.0 / grid.range_m], -1))
    P = torch.zeros(1, 6, 5, dtype=torch.float64)
    P[0, 0, 2], P[0, 5, 2] = 1.0, 2.0  # rows 0 and 5 are neighbours across the wrap
    P[0, 3, 0], P[0, 3, 4] = 3.0, 2.5  # and so are columns 0 and 4
    peaks = local_maxima_2d_periodic(P)
    assert bool(peaks[0, 5, 2]) and not bool(peaks[0, 0, 2])
    assert bool(peaks[0, 3, 0]) and not bool(peaks[0, 3, 4])


def test_angular_distance_matrix_is_the_angle_between_direction_vectors():
    """Great-circle angle = arccos of the dot product of the unit vectors
    (cos el sin az, sin el, cos el cos az) of docs/conventions.md (a mutation review: the
    suppression distance with azimuth and elevation swapped passed)."""
    from risloc.estimators.grids import angular_distance_matrix

    g = torch.Generator().manual_seed(3)
    az = (torch.rand(2, 6, generator=g, dtype=torch.float64) - 0.5) * 2.0
    el = (torch.rand(2, 6, generator=g, dtype=torch.float64) - 0.5) * 1.0
    u = torch.stack([el.cos() * az.sin(), el.sin(), el.cos() * az.cos()], -1)
    want = torch.arccos((u @ u.mT).clamp(-1.0, 1.0))
    torch.testing.assert_close(angular_distance_matrix(az, el), want, atol=1e-6, rtol=0)


def test_null_spectrum_is_one_minus_the_subspace_energy():
    """f = ||(I - U U^H) a||^2 = 1 - ||U^H a||^2 for orthonormal U and unit-norm a (a mutation
    review: dropping the imaginary part of the residual passed)."""
    system = SystemConfig()
    g = torch.Generator().manual_seed(6)
    X = torch.randn(2, system.N, 3, dtype=torch.complex128, generator=g)
    U = torch.linalg.qr(X).Q
    theta = torch.tensor([[[0.3, -0.2, 0.5], [-0.7, 0.4, 1.5]]] * 2, dtype=torch.float64)
    a = NearFieldModel(system).steer(theta)  # (2, 2, N)
    want = 1.0 - (a @ U.conj()).abs().square().sum(-1)
    torch.testing.assert_close(null_spectrum(theta, U, NearFieldModel(system)), want,
                               atol=1e-12, rtol=0)


def test_refinement_keeps_frozen_axes_the_box_and_never_rises():
    """refine_peaks is a projected descent: frozen parameters do not move, iterates stay in
    the box (a start outside is clamped, a source beyond it ends on its face), the returned
    null is the null spectrum at the returned point, and one step from any start never
    raises it (a mutation review: unfrozen axes and unclamped trials or start passed)."""
    system = SystemConfig()
    truth = torch.tensor([0.4, -0.2, 1 / 12.0], dtype=torch.float64)  # 12 m: beyond 10 m
    R = true_covariance(truth[0].view(1, 1), truth[1].view(1, 1), 1 / truth[2].view(1, 1),
                        torch.ones(1, 1), system, torch.complex128)
    U = signal_subspace(R, torch.tensor([1]))
    model = NearFieldModel(system)
    lo, hi = MusicConfig().fov.bounds()
    # the second starts outside the box, nearer the source than any point inside it
    start = torch.tensor([[[0.41, -0.19, 0.05], [0.4, -0.2, 0.085], [0.38, -0.21, 0.3]]],
                         dtype=torch.float64)
    frozen = refine_peaks(U, start, model, lo, hi, 4, free=(False, False, True))
    assert torch.equal(frozen.theta[..., :2], start[..., :2])
    ref = refine_peaks(U, start, model, lo, hi, 6)
    assert ((ref.theta >= lo) & (ref.theta <= hi)).all()
    torch.testing.assert_close(ref.null, null_spectrum(ref.theta, U, model), atol=1e-14,
                               rtol=0)
    torch.testing.assert_close(ref.theta[0, :2, 2], lo[2].expand(2))  # on the 10 m face
    torch.testing.assert_close(ref.theta[0, :2, :2], truth[:2].expand(2, 2), atol=1e-3,
                               rtol=0)
    g = torch.Generator().manual_seed(7)
    starts = lo + (hi - lo) * torch.rand(1, 300, 3, generator=g, dtype=torch.float64)
    one = refine_peaks(U, starts, model, lo, hi, 1)
    assert (one.null <= null_spectrum(starts, U, model) + 1e-15).all()


def test_valley_direction_is_the_weakest_unit_tangent_with_range_reoptimised():
    """valley_directions: among steps of unit great-circle length (cos(el) d_az, d_el) with
    the 1/range change that minimises the Gauss-Newton quadratic d^T H d, the one of least
    rise (brute force over the circle) (a mutation review: a wrong sign of the range change,
    a wrong tangent scale, or a wrong Schur complement all passed)."""
    from risloc.estimators.refine import normal_equations, valley_directions

    system = SystemConfig()
    az = torch.tensor([[0.30, 0.33]], dtype=torch.float64)
    el = torch.tensor([[0.25, 0.27]], dtype=torch.float64)
    R = true_covariance(az, el, torch.tensor([[2.0, 2.5]], dtype=torch.float64),
                        torch.ones(1, 2), system, torch.complex128)
    U = signal_subspace(R, torch.tensor([2])).to(torch.complex128)
    theta = torch.tensor([[[0.31, 0.26, 0.45]]], dtype=torch.float64)
    d = valley_directions(theta, U, system)[0, 0]
    _, H = normal_equations(theta, U, NearFieldModel(system))
    H = H[0, 0]
    ce = math.cos(float(theta[0, 0, 1]))
    assert abs(float((ce * d[0]) ** 2 + d[1] ** 2) - 1.0) < 1e-9  # unit great-circle step
    assert abs(float((H @ d)[2])) < 1e-9 * float(H.diagonal().max())  # range re-optimised
    psi = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    ang = torch.stack([psi.cos() / ce, psi.sin()], -1)  # (n, 2) unit tangent steps
    du = -(ang @ H[:2, 2]) / H[2, 2]
    cand = torch.cat([ang, du.unsqueeze(-1)], -1)
    rise = torch.einsum("ni,ij,nj->n", cand, H, cand)
    assert float(d @ H @ d) <= float(rise.min()) * (1 + 1e-9) + 1e-300


class _Circle:
    """A unit-norm steering model a(t) = (cos t, sin t): with U = e_1 the null spectrum is
    sin^2 t and the Gauss-Newton step -tan t (overshooting beyond 45 deg)."""

    def steer(self, theta):
        return torch.cat([theta.cos(), theta.sin()], -1).to(torch.complex128)

    def jacobian(self, theta):
        a = torch.cat([theta.cos(), theta.sin()], -1)
        return torch.stack([a, torch.cat([-theta.sin(), theta.cos()], -1)], -2).to(
            torch.complex128)


def test_a_refinement_step_is_the_best_of_stay_and_three_fractions_written_out():
    """One refine_peaks iteration: the Gauss-Newton step d, then the least null spectrum
    among t (stay) and clamp(t + f d) for f = 1, 0.5, 0.2 (on a model whose spectrum and
    step are known: sin^2 t, -tan t); a frozen parameter never moves, however steep the
    spectrum along it (a mutation review: the 0.2 fraction dropped, and a frozen axis
    stepping along its gradient, passed)."""
    U = torch.tensor([[[1.0], [0.0]]], dtype=torch.complex128)
    t = torch.linspace(-1.55, 1.55, 63, dtype=torch.float64).view(1, -1, 1)
    lo, hi = torch.tensor([-2.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    d = -t.tan() / (1 + 1e-6)  # Marquardt's 1e-6
    trials = torch.stack([t] + [(t + f * d).clamp(-2.0, 2.0) for f in (1.0, 0.5, 0.2)], -2)
    f_all = trials.sin().square()[..., 0]  # (1, 63, 4)
    best = f_all.argmin(-1)
    assert set(best.unique().tolist()) == {1, 2, 3}  # (each fraction wins somewhere)
    one = refine_peaks(U, t, _Circle(), lo, hi, 1)
    torch.testing.assert_close(one.theta[..., 0], trials[0, torch.arange(63), best[0], 0][None],
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(one.null, f_all.amin(-1), rtol=0, atol=1e-12)
    system = SystemConfig()
    truth = torch.tensor([0.4, -0.2, 1 / 4.0], dtype=torch.float64)
    R = true_covariance(truth[0].view(1, 1), truth[1].view(1, 1), 1 / truth[2].view(1, 1),
                        torch.ones(1, 1), system, torch.complex128)
    U = signal_subspace(R, torch.tensor([1]))
    lo, hi = MusicConfig().fov.bounds()
    g = torch.Generator().manual_seed(3)
    starts = lo + (hi - lo) * torch.rand(1, 200, 3, generator=g, dtype=torch.float64)
    frozen = refine_peaks(U, starts, NearFieldModel(system), lo, hi, 1, free=(False, True, True))
    assert torch.equal(frozen.theta[..., 0], starts[..., 0])
    assert bool((frozen.theta[..., 1:] != starts[..., 1:]).any())
