"""Classical localizer: finds every source at high SNR, estimates K, validates inputs."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from risloc.config import FieldOfView, SceneConfig, SystemConfig
from risloc.core.operator import apply_operator
from risloc.core.params import Estimates, pack, steering_at
from risloc.covariance.tools import abs2
from risloc.estimators import classical
from risloc.estimators.classical import (
    ClassicalConfig,
    cancelling_sources,
    classical_localize,
    greedy_search,
    next_source,
    residual_proposal,
    search_grid,
    separate_cancelling,
    snapshot_gains,
)
from risloc.estimators.grids import grid_power
from risloc.estimators.nfmle import amplitude_fit, nfmle_fit
from risloc.evaluation.metrics import match_sources
from risloc.simulation import simulate_range

SYSTEM = SystemConfig()
SCENE = SceneConfig()



def angle_errors_deg(est, b) -> torch.Tensor:
    """Great-circle errors of the Hungarian-paired true sources [deg] (NaN = missed)."""
    m = match_sources(est, b.azimuth, b.elevation, b.range_m, b.K)
    return m.angle_error[m.truth_mask].rad2deg()


def test_single_source_at_30_db_is_found_within_0p1_deg():
    b = simulate_range(0, 8, SYSTEM, SCENE, seed=1, split="test", K=1, snr_db=30.0)
    est = classical_localize(b.y, b.H, b.codes, SYSTEM, K=1)
    err = angle_errors_deg(est, b)
    assert err.max() < 0.1, err
    rel = ((est.range_m[:, 0] - b.range_m[:, 0]) / b.range_m[:, 0]).abs()
    assert rel.max() < 0.05, rel


def test_three_sources_known_K_are_all_found():
    # At 30 dB the CRB is ~0.03-0.04 deg per angle (K = 3), so 0.1 deg great-circle is a
    # ~2.5 sigma gate: most, not all, sources pass it; at 40 dB every one does.
    b30 = simulate_range(0, 8, SYSTEM, SCENE, seed=2, split="test", K=3, snr_db=30.0)
    err30 = angle_errors_deg(classical_localize(b30.y, b30.H, b30.codes, SYSTEM, K=3), b30)
    assert (err30 < 0.1).float().mean() >= 0.85 and err30.max() < 0.3, err30
    b40 = simulate_range(0, 6, SYSTEM, SCENE, seed=2, split="test", K=3, snr_db=40.0)
    err40 = angle_errors_deg(classical_localize(b40.y, b40.H, b40.codes, SYSTEM, K=3), b40)
    assert err40.max() < 0.1, err40


def _first_two(b, padding: int) -> Estimates:
    """The first two true sources of each scene as found sources, plus padded slots."""
    nan = torch.full((len(b), padding), math.nan)
    return Estimates(torch.full((len(b),), 2), *(torch.cat([t[:, :2], nan], 1) for t in
                                                 (b.azimuth, b.elevation, b.range_m, b.powers)))


def test_next_source_finds_the_one_left_out_given_the_others():
    # Two of three sources given: the greedy step lands on the third within about one grid
    # cell (the grid spacing is ~5 deg).
    b = simulate_range(0, 8, SYSTEM, SCENE, seed=3, split="test", K=3, snr_db=30.0)
    pos = next_source(b.y, b.H, b.codes, _first_two(b, 2), SYSTEM)
    assert pos.shape == (8, 3)
    gap = torch.rad2deg(torch.maximum((pos[:, 0] - b.azimuth[:, 2]).abs(),
                                      (pos[:, 1] - b.elevation[:, 2]).abs()))
    assert gap.max() < 6.0, gap
    with pytest.raises(ValueError, match="found holds 7 scenes"):
        next_source(b.y, b.H, b.codes, _first_two(b, 2)[:7], SYSTEM)


@pytest.mark.parametrize("shortlist", [None, 64])
def test_next_source_ignores_padded_slots(shortlist):
    # Padded slots are zero columns; their QR directions must not enter the statistic.
    b = simulate_range(0, 16, SYSTEM, SCENE, seed=4, split="test", K=4, snr_db=0.0)
    compact = next_source(b.y, b.H, b.codes, _first_two(b, 0), SYSTEM, shortlist=shortlist)
    padded = next_source(b.y, b.H, b.codes, _first_two(b, 3), SYSTEM, shortlist=shortlist)
    assert torch.equal(padded, compact)


def test_next_source_shortlist_of_the_whole_grid_is_the_full_search():
    b = simulate_range(0, 8, SYSTEM, SCENE, seed=6, split="test", K=3, snr_db=5.0)
    G = search_grid(SYSTEM).pos.shape[0]
    full = next_source(b.y, b.H, b.codes, _first_two(b, 1), SYSTEM)
    assert torch.equal(next_source(b.y, b.H, b.codes, _first_two(b, 1), SYSTEM,
                                   shortlist=G), full)
    with pytest.raises(ValueError, match="shortlist"):
        next_source(b.y, b.H, b.codes, _first_two(b, 1), SYSTEM, shortlist=0)
    # a shortlist of one: the gain-weighted half takes the odd point (the other half none)
    one = next_source(b.y, b.H, b.codes, _first_two(b, 1), SYSTEM, shortlist=1)
    grid = search_grid(SYSTEM).pos
    assert bool((one.unsqueeze(1) == grid).all(-1).any(-1).all())


def test_order_is_estimated_at_20_db():
    # measured on 200 scenes per SNR (K in {1, 3, 5}, benchmarks/bench_classical.py):
    # 100 % at 20 dB with sigma^2 estimated, 98 % with sigma^2 from the SNR
    b = simulate_range(0, 20, SYSTEM, SCENE, seed=3, split="test", snr_db=20.0)
    est = classical_localize(b.y, b.H, b.codes, SYSTEM)
    assert (est.K == b.K).float().mean() >= 0.9, (est.K, b.K)
    with_snr = classical_localize(b.y[:10], b.H[:10], b.codes[:10], SYSTEM, snr_db=b.snr_db[:10])
    assert (with_snr.K == b.K[:10]).float().mean() >= 0.9, (with_snr.K, b.K[:10])
    ok = est.K == b.K
    assert angle_errors_deg(est[ok], b[ok]).max() < 1.0


def test_an_snr_far_from_the_data_is_warned_of(caplog, monkeypatch):
    """The K decision trusts a given SNR: a linear SNR passed as snr_db (31.6 for 15 dB)
    made every scene K_max, silently. Now a warning names it; the right SNR, or none, is
    quiet."""
    b = simulate_range(0, 6, SYSTEM, SCENE, seed=3, split="test", snr_db=15.0)
    caplog.set_level("WARNING", logger="risloc.estimators.classical")
    for snr in (b.snr_db, None, torch.full((6,), math.nan)):
        classical_localize(b.y, b.H, b.codes, SYSTEM, snr_db=snr)
    assert not caplog.records
    for snr, says in ((10 ** 1.5, "e.g. 31.6 dB given"), (-20.0, "e.g. -20.0 dB given")):
        monkeypatch.setattr(classical, "_SNR_WARNED", [])  # once per process: a fresh one
        classical_localize(b.y, b.H, b.codes, SYSTEM, snr_db=snr)
        text = caplog.records[-1].getMessage()
        assert "the SNR given for 6 of 6 scenes disagrees with their data by more than 10 dB" \
            in text and says in text and "a linear SNR passed as snr_db? " in text, text
        implied = float(text.split("the residual implies about ")[1].split(" dB")[0])
        assert abs(implied - 15.0) < 3.0  # the data's own SNR
    n = len(caplog.records)  # said once: the next chunk of a file does not say it again
    classical_localize(b.y, b.H, b.codes, SYSTEM, snr_db=-20.0)
    assert len(caplog.records) == n
    # once per system, not per process: in a notebook another system's slip is still said
    other = SYSTEM.model_copy(update={"wavelength": SYSTEM.wavelength * 1.01})
    classical_localize(b.y, b.H, b.codes, other, snr_db=-20.0)
    assert len(caplog.records) == n + 1


def test_output_layout_and_per_scene_known_K():
    b = simulate_range(0, 3, SYSTEM, SCENE, seed=4, split="test", snr_db=25.0)
    res = classical.classical_fit(b.y, b.H, b.codes, SYSTEM, K=b.K)
    est = res.estimates
    # known K: the greedy search stops at the largest K given (C_0..C_max K)
    assert res.costs.shape == (3, int(b.K.max()) + 1) and res.noise_var is None
    assert est.azimuth.shape == (3, SYSTEM.K_max) and est.K.dtype == torch.int64
    assert est.azimuth.dtype == est.range_m.dtype == est.score.dtype == torch.float32
    assert torch.equal(est.K, b.K)
    assert bool(torch.isfinite(est.azimuth[est.mask]).all())
    assert bool(est.azimuth[~est.mask].isnan().all() and est.score[~est.mask].isnan().all())
    assert bool((est.score[est.mask] > 0).all())
    assert angle_errors_deg(est, b).max() < 0.5


def test_greedy_costs_are_nested_and_decreasing():
    b = simulate_range(0, 4, SYSTEM, SCENE, seed=5, split="test", K=2, snr_db=10.0)
    g = greedy_search(b.y, b.H, b.codes, SYSTEM, 3)
    assert len(g.thetas) == 3 and g.thetas[2].shape == (4, 3, 3) and g.thetas[1].shape == (4, 2, 3)
    assert bool((g.costs[:, 1:] <= g.costs[:, :-1]).all())
    torch.testing.assert_close(g.costs[:, 0], b.y.abs().square().sum((1, 2)).double(),
                               rtol=1e-5, atol=0)
    # C_k is the residual of the k-source fit itself (what the K decision reads)
    for k, th in enumerate(g.thetas, start=1):
        fit = amplitude_fit(b.y, b.H, b.codes, steering_at(th, SYSTEM, b.y.dtype),
                            torch.ones(4, k, dtype=torch.bool), ClassicalConfig().step.tikhonov)
        torch.testing.assert_close(g.costs[:, k], fit.cost.double(), rtol=2e-5, atol=0)


def test_buffers_shared_by_chunks_and_searches_change_no_bit():
    # greedy_search reuses one set of buffers for every chunk (the last one smaller) and
    # every search; run chunk by chunk with fresh buffers it must give the same bits
    b = simulate_range(0, 7, SYSTEM, SCENE, seed=6, split="test", K=2, snr_db=10.0)
    cfg = ClassicalConfig(chunk=3)
    shared = greedy_search(b.y, b.H, b.codes, SYSTEM, 3, cfg)
    for i in range(0, 7, 3):
        alone = greedy_search(b.y[i:i + 3], b.H[i:i + 3], b.codes[i:i + 3], SYSTEM, 3, cfg)
        assert torch.equal(alone.costs, shared.costs[i:i + 3])
        for k in range(3):
            assert torch.equal(alone.thetas[k], shared.thetas[k][i:i + 3])
    # the statistic itself: with buffers (reused from a larger call) as without
    y, H, codes = (t.to(torch.complex64) for t in (b.y, b.H, b.codes))
    grid = search_grid(SYSTEM)
    Bg = classical._grid_columns(H, codes, grid)
    gains = abs2(Bg).sum(2)
    buffers = classical._Buffers()
    for k in (2, 0, 1):
        A = steering_at(pack(b.azimuth[:, :k], b.elevation[:, :k], b.range_m[:, :k]).float(),
                        SYSTEM, torch.complex64)
        fit = amplitude_fit(y, H, codes, A, torch.ones(7, k, dtype=torch.bool), 1e-5) \
            if k else classical._empty_fit(y)
        assert torch.equal(classical.ols_statistic(fit, Bg, gains, 0.05, buffers=buffers),
                           classical.ols_statistic(fit, Bg, gains, 0.05))
    assert torch.equal(classical._column_gains(Bg, buffers, block=128), gains)


def test_grid_covers_the_field_of_view():
    grid = search_grid(SYSTEM)
    assert grid.pos.shape == (24 * 13 * 10, 3) and grid.A.shape == (SYSTEM.N, 3120)
    az, el, u = grid.pos.T.double()
    assert math.isclose(float(az.min()), math.radians(-60), abs_tol=1e-6)
    assert math.isclose(float(el.max()), math.radians(30), abs_tol=1e-6)
    assert math.isclose(float(u.min()), 0.1, abs_tol=1e-6) and math.isclose(float(u.max()), 2.0,
                                                                            abs_tol=1e-6)


def test_the_grid_grows_with_the_aperture_and_finds_every_source_of_a_larger_ris():
    """A review: the default grid (24 x 13 x 10, for 12 x 12 elements at lambda/2) covered
    29 % of the field of view of a 24 x 24 RIS, and the localizer missed sources at 30 dB.
    The default system and field of view keep it exactly."""
    from risloc.config import FieldOfView
    from risloc.evaluation import match_sources, summarize
    from risloc.pipeline import Localizer

    base = classical.ClassicalConfig()
    assert base.with_fov(FieldOfView()).for_system(SystemConfig()) == base
    assert base.for_system(SystemConfig(N_H=8, N_V=6, M=8)) == base  # smaller: never fewer
    big = SystemConfig(N_H=24, N_V=24)
    grown = base.for_system(big)
    assert (grown.grid_azimuth, grown.grid_elevation, grown.grid_inv_range) == (48, 26, 20)
    assert grown.chunk == 1  # 32 x the grid columns per scene: one scene a pass
    # a spurious source is the best of 8 x the cells: the order penalty grows with them
    assert grown.penalty == pytest.approx(40 + 4 * (math.sqrt(2 * math.log(8e3))
                                                    - math.sqrt(2 * math.log(1e3))))
    assert base.penalty is None  # (the default system: default_penalty(L), as before)
    loc = Localizer(big, "classical", workers=1)
    assert loc.classical_config.grid_azimuth == 48
    sc = simulate_range(0, 20, big, SCENE, seed=3, split="test", snr_db=30.0, K=3)
    est = loc.localize(sc.y, sc.H, sc.codes, K=sc.K).estimates
    assert summarize(match_sources(est, sc.azimuth, sc.elevation, sc.range_m, sc.K)).f1 == 1.0


def test_the_grid_grows_along_each_axis_with_its_own_side_and_span():
    """A rectangular RIS and a field of view other than the default: sin(az) grows with the
    horizontal side and its sin span, el with the vertical side, 1/r with the wider side and
    its 1/r span (hand-computed: 24 x 1.155, 13 x 1.5, 10 x 1.895, rounded up)."""
    from risloc.config import FieldOfView

    fov = FieldOfView(azimuth_deg=(-30.0, 30.0), range_m=(0.5, 5.0))
    grown = ClassicalConfig().with_fov(fov).for_system(SystemConfig(N_H=24, N_V=18))
    assert (grown.grid_azimuth, grown.grid_elevation, grown.grid_inv_range) == (28, 20, 19)
    assert grown.chunk == 3  # 32 / (28 * 20 * 19 / 3120 cells x 432 / 144 elements)
    assert grown.fov == fov


def test_the_1_over_r_grid_grows_with_the_wider_side_when_it_is_the_vertical_one():
    # a mutation review: 1/r grown with the horizontal side (N_H >= N_V in every other test)
    # survived the suite. 18 x 24 RIS, default field of view: sides 1.5 and 2.0 x the default
    # 12-element aperture, so 24 x 1.5, 13 x 2.0 and 10 x 2.0 (not 10 x 1.5) points.
    grown = ClassicalConfig().for_system(SystemConfig(N_H=18, N_V=24))
    assert (grown.grid_azimuth, grown.grid_elevation, grown.grid_inv_range) == (36, 26, 20)


def test_config_bounds_are_checked_at_their_edges():
    for bad in (dict(grid_azimuth=0), dict(grid_elevation=0), dict(grid_inv_range=0),
                dict(chunk=0), dict(relax_sweeps=-1), dict(floor=0.0), dict(floor=1.5),
                dict(same_source=0.0), dict(same_source=1.5)):
        with pytest.raises(ValueError, match="must"):
            ClassicalConfig(**bad)
    ok = ClassicalConfig(grid_azimuth=1, grid_elevation=1, grid_inv_range=1, chunk=1,
                         relax_sweeps=0, floor=1.0, same_source=1.0)
    assert (ok.floor, ok.same_source) == (1.0, 1.0)


def test_bf16_shortlist_ranking_proposes_what_the_exact_one_does(monkeypatch):
    """The grid power in bfloat16 (the ML fit's shortlist ranking) is within 1 % of the
    exact one, and the proposal for a second source given the first is the same grid point."""
    monkeypatch.setattr(classical, "native_bf16", lambda device: True)  # emulated elsewhere
    exact, fast = search_grid(SYSTEM), search_grid(SYSTEM, bf16=True)
    assert exact.A_bf16 is None and fast.A_bf16.shape == (2 * SYSTEM.N, 2 * 3120)
    b = simulate_range(0, 16, SYSTEM, SCENE, seed=3, split="test", K=2, snr_db=15.0)
    Z = torch.randn(16, 4, 3, SYSTEM.N, dtype=torch.complex64,
                    generator=torch.Generator().manual_seed(0))
    P, Pb = grid_power(Z, exact.A), grid_power(Z, fast.A, fast.A_bf16)
    assert float(((Pb - P).abs() / P.amax(-1, keepdim=True)).max()) < 1e-2
    mask = torch.ones(16, 1, dtype=torch.bool)
    first = pack(b.azimuth[:, :1], b.elevation[:, :1], b.range_m[:, :1])
    fit = amplitude_fit(b.y, b.H, b.codes, steering_at(first, SYSTEM, b.y.dtype), mask, 1e-5)
    props = [residual_proposal(b.y, b.H, b.codes, fit, mask, g, 0.05, 32).theta
             for g in (exact, fast)]
    torch.testing.assert_close(props[1], props[0], rtol=0, atol=0)


def test_bad_inputs_raise():
    b = simulate_range(0, 2, SYSTEM, SCENE, seed=0, split="test", K=2, snr_db=10.0)
    y_nan = b.y.clone()
    y_nan[1, 2, 3] = complex(0.0, float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        classical_localize(y_nan, b.H, b.codes, SYSTEM)
    with pytest.raises(ValueError, match="shape"):
        classical_localize(b.y, b.H[:, :, :100], b.codes, SYSTEM)
    with pytest.raises(ValueError, match="all-zero channel"):
        classical_localize(b.y, torch.zeros_like(b.H), b.codes, SYSTEM)
    with pytest.raises(ValueError, match="K must lie in 1..K_max=5, got 6"):
        classical_localize(b.y, b.H, b.codes, SYSTEM, K=SYSTEM.K_max + 1)  # (the bound)
    with pytest.raises(ValueError, match="K must lie in 1..K_max=5, got 0"):
        classical_localize(b.y, b.H, b.codes, SYSTEM, K=0)
    assert classical_localize(b.y, b.H, b.codes, SYSTEM, K=SYSTEM.K_max).K.tolist() == [5, 5]
    with pytest.raises(ValueError, match="K must be"):
        classical_localize(b.y, b.H, b.codes, SYSTEM, K=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError):
        ClassicalConfig(floor=0.0)


def test_a_known_K_that_is_no_whole_count_is_refused_and_a_column_is_read():
    """classical_localize checks K as the localizer does (check_source_counts): a fraction,
    NaN, inf, a bool or a complex K is refused by name, not truncated, cast or overflowed,
    and a MATLAB column [B, 1] is read as [B] (each of these, a review: K = 1.5 localized
    one source, K = True one, NaN raised a RuntimeError, a column was refused)."""
    b = simulate_range(0, 2, SYSTEM, SCENE, seed=0, split="test", K=2, snr_db=10.0)
    for K, match in ((1.5, "whole numbers of sources, got 1.5"),
                     ([2, 2.5], "whole numbers of sources, got 2.5 in scene 1"),
                     (math.nan, "whole numbers of sources, got nan"),
                     (math.inf, r"1..K_max=5, got inf")):
        with pytest.raises(ValueError, match=match):
            classical_localize(b.y, b.H, b.codes, SYSTEM, K=K)
    for K in (True, np.array([2 + 0j, 2])):
        with pytest.raises(TypeError, match="K must be an integer or integers"):
            classical_localize(b.y, b.H, b.codes, SYSTEM, K=K)
    column = classical_localize(b.y, b.H, b.codes, SYSTEM, K=torch.tensor([[1], [2]]))
    assert column.K.tolist() == [1, 2]


def test_relax_skips_only_the_refinement_of_a_source_found_again(monkeypatch):
    """RELAX re-searches that find the same source are not refined (same_source): fewer
    refinements, and the nested fits end where refining every re-search ends them, or
    within the little a skipped refinement would have gained."""
    import risloc.estimators.classical as classical

    b = simulate_range(0, 12, SYSTEM, SCENE, seed=7, split="test", K=3, snr_db=15.0)
    refined = []
    lm_solve = classical.lm_solve

    def counting(y, *args, **kwargs):
        refined.append(y.shape[0])
        return lm_solve(y, *args, **kwargs)

    monkeypatch.setattr(classical, "lm_solve", counting)
    runs = {}
    for same in (None, ClassicalConfig().same_source):
        refined.clear()
        runs[same] = (greedy_search(b.y, b.H, b.codes, SYSTEM, 3,
                                    ClassicalConfig(same_source=same)), sum(refined))
    (every, n_every), (skip, n_skip) = runs[None], runs[ClassicalConfig().same_source]
    assert n_skip < 0.8 * n_every, (n_skip, n_every)
    rel = (skip.costs - every.costs) / every.costs
    assert rel.abs().max() < 0.02 and (rel.abs() < 1e-3).float().mean() > 0.9, rel
    for th_skip, th_every in zip(skip.thetas, every.thetas, strict=True):
        close = (th_skip[..., :2] - th_every[..., :2]).abs().amax((-1, -2)) < math.radians(0.2)
        assert close.float().mean() > 0.9, close


def test_snapshot_gains_are_exact_for_a_rank_one_channel():
    """g_l(g) keeps the dominant singular direction exactly: with H of rank one it is
    ||Phi_l a(g)||^2 itself; otherwise the others enter by their mean over directions."""
    b = simulate_range(0, 4, SYSTEM, SCENE, seed=7, split="test", K=1, snr_db=10.0)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(4, SYSTEM.M, 1, dtype=torch.complex64, generator=g)
    v = torch.randn(4, 1, SYSTEM.N, dtype=torch.complex64, generator=g)
    grid = search_grid(SYSTEM)
    for H, rtol in ((u @ v, 1e-3), (b.H.to(torch.complex64), None)):
        exact = abs2(apply_operator(H, b.codes.to(torch.complex64), grid.A.T)).sum(2)
        approx = snapshot_gains(H, b.codes.to(torch.complex64), grid)
        assert approx.shape == exact.shape and bool((approx > 0).all())
        big = exact > 1e-3 * exact.amax(-1, keepdim=True)
        if rtol is not None:
            torch.testing.assert_close(approx[big], exact[big], rtol=rtol, atol=0)
        else:  # a Rician channel: the same total, and the same shape over the grid
            torch.testing.assert_close(approx.mean(-1), exact.mean(-1), rtol=0.3, atol=0)
            r = torch.corrcoef(torch.stack([approx[big].log(), exact[big].log()]))[0, 1]
            assert float(r) > 0.9, float(r)


@pytest.mark.parametrize("codebook", ["dft", "hadamard"])
def test_shortlist_holds_the_full_search_pick_with_beam_codebooks(codebook):
    """With codes that form beams the gains ||Phi_l a(g)||^2 vary over the grid by orders of
    magnitude; half the shortlist ranks by the numerator over them (snapshot_gains), so its
    32 points hold the full search's pick in 31 / 32 of 32 scenes (DFT / Hadamard,
    measured; all 32 ranked by the numerator alone: 10 / 16)."""
    b = simulate_range(0, 32, SYSTEM, SCENE.model_copy(update={"codebook": codebook}),
                       seed=8, split="test", K=3, snr_db=20.0)
    full = next_source(b.y, b.H, b.codes, _first_two(b, 1), SYSTEM)
    short = next_source(b.y, b.H, b.codes, _first_two(b, 1), SYSTEM, shortlist=32)
    assert float((short == full).all(-1).float().mean()) >= 0.9


def test_projected_shortlist_keeps_a_source_beside_a_found_one():
    """A source 2 deg from a found one (and a third found far off): the repair's shortlist
    with the found sources' projection (``found``) holds the whole grid's maximum in nearly
    every scene; the plain shortlist ranks it out in many (its numerator shrinks beside the
    found source). Measured over 4 draws at 2-3 deg: 29-32 of 32 scenes projected, 19-30
    plain; this draw 30 and 24."""
    n = 32
    b = simulate_range(0, n, SYSTEM, SCENE, seed=5, split="test", K=1, snr_db=20.0)
    g = torch.Generator().manual_seed(0)
    az0 = (torch.rand(n, generator=g) - 0.5) * math.radians(60)
    el0 = (torch.rand(n, generator=g) - 0.5) * math.radians(20)
    turn = torch.rand(n, generator=g) * 2 * math.pi
    sep = math.radians(2.0)
    theta = pack(torch.stack([az0, az0 + sep * torch.cos(turn), math.radians(25) - az0 / 2], 1),
                 torch.stack([el0, el0 + sep * torch.sin(turn), -el0], 1),
                 torch.full((n, 3), 3.0))
    A = steering_at(theta, SYSTEM, b.y.dtype)
    s = torch.randn(n, SYSTEM.L, 3, dtype=torch.complex64, generator=g)
    y = (apply_operator(b.H, b.codes, A) @ s.unsqueeze(-1)).squeeze(-1)
    found, mask = A[:, [0, 2]], torch.ones(n, 2, dtype=torch.bool)
    fit = amplitude_fit(y, b.H, b.codes, found, mask, 1e-5)
    grid = search_grid(SYSTEM)
    whole = residual_proposal(y, b.H, b.codes, fit, mask, grid, 0.05, None).theta
    plain = residual_proposal(y, b.H, b.codes, fit, mask, grid, 0.05, 32).theta
    projected = residual_proposal(y, b.H, b.codes, fit, mask, grid, 0.05, 32, found=found).theta
    same_plain, same_projected = ((p == whole).all(-1).sum() for p in (plain, projected))
    assert int(same_projected) >= n - 3 and int(same_plain) <= int(same_projected) - 4, \
        (same_plain, same_projected)


def _with_pair(b, gap_deg: float) -> Estimates:
    """Each scene's first two true sources plus a twin of the second ``gap_deg`` away in
    azimuth (three slots: the third true source is left out)."""
    az = torch.stack([b.azimuth[:, 0], b.azimuth[:, 1],
                      b.azimuth[:, 1] + math.radians(gap_deg)], 1)
    take = lambda t: torch.stack([t[:, 0], t[:, 1], t[:, 1]], 1)  # noqa: E731
    return Estimates(torch.full((len(b),), 3), az, take(b.elevation), take(b.range_m),
                     take(b.powers))


def test_source_energy_of_a_lone_source_is_the_received_energy_less_the_noise():
    # One source at 20 dB: it explains sigma_s^2 / (sigma_s^2 + sigma^2) of the energy
    # (0.990), less the noise in its own column (1 / (L M) of the noise: negligible).
    b = simulate_range(0, 8, SYSTEM, SCENE, seed=12, split="test", K=1, snr_db=20.0)
    ref = nfmle_fit(b.y, b.H, b.codes, Estimates.from_theta(
        b.K, pack(b.azimuth, b.elevation, b.range_m)), SYSTEM)
    share = ref.energy[:, 0] / abs2(b.y).sum((-1, -2)).double()
    assert torch.allclose(share, torch.full_like(share, 100 / 101), atol=0.01), share
    assert (ref.energy[:, 1:] == 0).all()


def test_a_cancelling_pair_is_split_and_its_member_sent_to_the_missing_source():
    # Three sources at 30 dB; the start holds two of them and a twin of the second 0.3 deg
    # away. Where the polished pair cancels (each member explains far more than the
    # scene's energy), separating it must find all three (the CRB is ~0.03-0.04 deg here:
    # 0.3 deg is a miss-or-hit gate); elsewhere the estimates stay as they were.
    b = simulate_range(0, 12, SYSTEM, SCENE, seed=13, split="test", K=3, snr_db=30.0)
    cfg = ClassicalConfig()
    ref = nfmle_fit(b.y, b.H, b.codes, _with_pair(b, 0.3), SYSTEM, cfg.final)
    flagged = cancelling_sources(ref.energy, b.y, ref.estimates.mask).any(-1)
    assert flagged.sum() >= 2, ref.energy  # what the pair does before the step
    est = separate_cancelling(b.y, b.H, b.codes, ref, SYSTEM, cfg.final, cfg)
    assert torch.equal(est.K, b.K)
    err = angle_errors_deg(est[flagged], b[flagged])
    assert err.max() < 0.3, err
    again = nfmle_fit(b.y, b.H, b.codes, est, SYSTEM, replace(cfg.final, iterations=0))
    assert not cancelling_sources(again.energy, b.y, est.mask).any()
    assert (est.score[flagged] < 5 * b.powers[flagged].max()).all(), est.score
    for name in ("azimuth", "elevation", "range_m", "score"):
        assert torch.equal(getattr(est, name)[~flagged], getattr(ref.estimates, name)[~flagged])


def test_the_device_route_treats_the_largest_excesses_without_counting_them(monkeypatch):
    # The route that never waits for a GPU treats a fixed share of the batch, the scenes of
    # largest excess: the same answer where it covers every flagged scene, and with a share
    # of one scene only the worst one's.
    from risloc.core.syncs import SyncCounter
    from risloc.estimators import nfmle

    b = simulate_range(0, 12, SYSTEM, SCENE, seed=13, split="test", K=3, snr_db=30.0)
    cfg = ClassicalConfig()
    ref = nfmle_fit(b.y, b.H, b.codes, _with_pair(b, 0.3), SYSTEM, cfg.final)
    host = separate_cancelling(b.y, b.H, b.codes, ref, SYSTEM, cfg.final, cfg)
    flagged = cancelling_sources(ref.energy, b.y, ref.estimates.mask).any(-1)
    monkeypatch.setattr(nfmle, "masked_route", lambda cfg, device: True)
    monkeypatch.setattr(classical, "DEVICE_SHARE", 4)  # 3 of the 12 scenes
    assert 2 <= flagged.sum() <= 3
    with SyncCounter() as counter:
        device = separate_cancelling(b.y, b.H, b.codes, ref, SYSTEM, cfg.final, cfg)
    assert not [k for k in counter.syncs if "classical.py" in k], counter.syncs
    torch.testing.assert_close(device.azimuth, host.azimuth, equal_nan=True)
    monkeypatch.setattr(classical, "DEVICE_SHARE", 12)  # one scene
    one = separate_cancelling(b.y, b.H, b.codes, ref, SYSTEM, cfg.final, cfg)
    changed = (one.azimuth != ref.estimates.azimuth).any(-1)
    excess = (ref.energy / abs2(b.y).sum((-1, -2)).double().unsqueeze(-1)).amax(-1)
    worst = int(excess.argmax())
    assert changed.nonzero().flatten().tolist() == [worst]
    # a graph's last pass is padded with copies of its last scene: with the worst scene
    # last and copied twice, a share of two scenes treats it and the next flagged one
    rows = torch.tensor([i for i in range(12) if i != worst] + [worst] * 3)
    padded = nfmle_fit(b.y[rows], b.H[rows], b.codes[rows], _with_pair(b, 0.3)[rows], SYSTEM,
                       cfg.final)
    monkeypatch.setattr(classical, "DEVICE_SHARE", 8)  # 2 of the 14 scenes
    two = separate_cancelling(b.y[rows], b.H[rows], b.codes[rows], padded, SYSTEM,
                              cfg.final, cfg)
    changed = (two.azimuth != padded.estimates.azimuth).any(-1).nonzero().flatten()
    second = int(torch.where(flagged, excess, 0).topk(2).indices[1])
    assert [int(rows[i]) for i in changed] == [second, worst]


def test_a_source_is_cancelling_only_above_ratio_times_the_received_energy():
    # a mutation review: a halved threshold survived the suite. Received energy 4.
    y = torch.ones(1, 1, 4, dtype=torch.complex64)
    r = classical.CANCELLING_RATIO
    energy = torch.tensor([[0.75 * r * 4, r * 4, 1.25 * r * 4]])
    mask = torch.tensor([[True, True, True]])
    assert classical.cancelling_sources(energy, y, mask).tolist() == [[False, False, True]]


def test_scenes_without_a_cancelling_pair_keep_their_estimates():
    b = simulate_range(0, 16, SYSTEM, SCENE, seed=14, split="test", snr_db=10.0)
    cfg = ClassicalConfig()
    ref = nfmle_fit(b.y, b.H, b.codes, Estimates.from_theta(
        b.K, pack(b.azimuth, b.elevation, b.range_m)), SYSTEM, cfg.final)
    assert not cancelling_sources(ref.energy, b.y, ref.estimates.mask).any()
    assert separate_cancelling(b.y, b.H, b.codes, ref, SYSTEM, cfg.final) is ref.estimates


@pytest.mark.parametrize(("capability", "native"), [((7, 0), False), ((7, 5), False),
                                                    ((8, 0), True), ((9, 0), True)])
def test_bf16_counts_as_native_on_gpus_from_ampere_only(monkeypatch, capability, native):
    """A V100 (7.0) or T4 (7.5) emulates bfloat16 (torch.cuda.is_bf16_supported() says True
    there, counting the emulation): the shortlist stays complex64 on them."""
    from risloc.estimators import grids

    asked = []

    def capability_of(device):
        asked.append(torch.device(device))
        return capability

    monkeypatch.setattr(grids.torch.cuda, "get_device_capability", capability_of)
    grids.native_bf16.cache_clear()
    try:
        assert grids.native_bf16("cuda:1") is native
        assert asked == [torch.device("cuda:1")]  # the tensors' GPU, not the current one
    finally:
        grids.native_bf16.cache_clear()


def test_bf16_counts_as_native_on_a_cpu_with_mkldnn_bf16_only(monkeypatch):
    """On a CPU, native bfloat16 is what oneDNN reports; another non-CUDA device never has it
    (a mutation review: the CPU test inverted passed on every machine without BF16)."""
    from risloc.estimators import grids

    monkeypatch.setattr(grids.torch.backends.mkldnn, "is_available", lambda: True)
    for supported in (True, False):
        monkeypatch.setattr(grids.torch.ops.mkldnn, "_is_mkldnn_bf16_supported",
                            lambda supported=supported: supported)
        grids.native_bf16.cache_clear()
        try:
            assert grids.native_bf16("cpu") is supported
            assert grids.native_bf16("meta") is False
            assert grids.native_bf16("mps") is False  # (a mutation review: only meta excluded)
        finally:
            grids.native_bf16.cache_clear()


def test_the_ols_statistic_is_its_formula_with_the_floor_beside_a_found_source():
    """T(g) = sum_l |r_l^H b_l|^2 / max(||b_l||^2 - ||Q_l^H b_l||^2, floor ||b_l||^2), Q_l
    an orthonormal basis of the found columns, written out with NumPy on a grid whose
    first point lies almost in their span, where the floor decides (a mutation review:
    the floor switched off passed)."""
    import numpy as np

    from risloc.estimators.nfmle import Fit

    rng = np.random.default_rng(5)
    B, L, M, k, G = 2, 3, 6, 2, 4

    def cn(*shape):
        return rng.normal(size=shape) + 1j * rng.normal(size=shape)

    Bm, r = cn(B, L, M, k), cn(B, L, M)
    Bg = cn(B, L, M, G)
    Bg[..., 0] = Bm[..., 0] + 1e-3 * cn(B, L, M)  # beside a found source
    floor = 0.05
    want = np.zeros((B, G))
    for b in range(B):
        for l in range(L):
            Q = np.linalg.qr(Bm[b, l])[0]
            for g in range(G):
                col = Bg[b, l, :, g]
                gain = np.vdot(col, col).real
                den = max(gain - np.sum(np.abs(Q.conj().T @ col) ** 2), floor * gain)
                want[b, g] += abs(np.vdot(r[b, l], col)) ** 2 / den
    t = torch.from_numpy
    fit = Fit(torch.zeros(B, dtype=torch.float64), t(r), torch.zeros(B, L, k,
              dtype=torch.complex128), t(Bm), torch.zeros(B, L, k, k, dtype=torch.complex128))
    gains = t(np.sum(np.abs(Bg) ** 2, axis=2))
    got = classical.ols_statistic(fit, t(Bg).clone(), gains.clone(), floor)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-8)


def test_the_order_test_and_the_snr_check_read_snapshots_and_antennas_apart(monkeypatch):
    """classical_fit hands the K decision and the SNR check (L, M) = (snapshots, antennas)
    of the data: with L != M a swap changes the penalty and the noise level's degrees of
    freedom (a mutation review: swapped, every test passed, all at L = M = 16)."""
    system = SystemConfig(L=6, M=10)
    b = simulate_range(0, 2, system, SCENE, seed=2, split="test", K=2, snr_db=10.0)
    seen = []
    for name in ("residual_order", "snr_disagreement"):
        real = getattr(classical, name)
        monkeypatch.setattr(classical, name, lambda costs, L, M, *a, _real=real, _name=name:
                            seen.append((_name, L, M)) or _real(costs, L, M, *a))
    res = classical.classical_fit(b.y, b.H, b.codes, system, snr_db=b.snr_db)
    assert sorted(seen) == [("residual_order", 6, 10), ("snr_disagreement", 6, 10)]
    from risloc.estimators.order import noise_var_from_snr, residual_order
    sigma2 = noise_var_from_snr(b.y, b.snr_db)
    assert torch.equal(res.estimates.K, residual_order(res.costs, 6, 10, sigma2))
    # the noise level of the K decision is the scene's (the simulator's sigma^2)
    torch.testing.assert_close(res.noise_var, sigma2, rtol=1e-12, atol=0)
    torch.testing.assert_close(res.noise_var, b.noise_var.double(), rtol=0.25, atol=0)


def test_a_relax_sweep_keeps_a_change_only_where_the_joint_cost_falls():
    """RELAX (Li & Stoica 1996) re-searches each source with the others fixed and keeps the
    refined change only where the joint cost falls: the sweep's cost is never above its
    start's, is the amplitude fit's at the positions returned, and falls where a start
    holds a junk source beside two true ones (a mutation review: keeping every change
    passed every test)."""
    b = simulate_range(0, 8, SYSTEM, SCENE, seed=7, split="test", K=3, snr_db=15.0)
    cfg = ClassicalConfig(same_source=None)
    y, H, codes = (t.to(torch.complex64) for t in (b.y, b.H, b.codes))
    grid = search_grid(SYSTEM)
    Bg = classical._grid_columns(H, codes, grid)
    gains = abs2(Bg).sum(2)
    junk = torch.tensor([0.3, -0.2, 0.5]).expand(8, 1, 3)
    start = torch.cat([pack(b.azimuth[:, :2], b.elevation[:, :2], b.range_m[:, :2]), junk], 1)
    mask = torch.ones(8, 3, dtype=torch.bool)
    theta, fit, _ = classical.lm_solve(y, H, codes, start, mask, SYSTEM, cfg.step)
    out, ofit = classical._relax(y, H, codes, theta, fit, grid, Bg, gains, SYSTEM, cfg,
                                 classical._Buffers())
    assert bool((ofit.cost <= fit.cost).all()), (ofit.cost, fit.cost)
    assert bool((ofit.cost < 0.5 * fit.cost).any())
    again = amplitude_fit(y, H, codes, steering_at(out, SYSTEM, y.dtype), mask,
                          cfg.step.tikhonov)
    torch.testing.assert_close(ofit.cost, again.cost, rtol=1e-5, atol=0)
    # from the ML fit at the true sources (run to convergence), a re-search's few float32
    # LM iterations from a grid point end a little above it: nothing is kept
    truth = pack(b.azimuth[:, :3], b.elevation[:, :3], b.range_m[:, :3])
    best, bfit, _ = classical.lm_solve(y, H, codes, truth, mask, SYSTEM,
                                       replace(cfg.step, iterations=None))
    out, ofit = classical._relax(y, H, codes, best, bfit, grid, Bg, gains, SYSTEM, cfg,
                                 classical._Buffers())
    assert bool((ofit.cost <= bfit.cost).all()), (ofit.cost, bfit.cost)


def test_separation_drops_the_pair_member_beside_the_strongest_flagged_source():
    """_separate keeps the strongest flagged source and every source outside the pair, and
    drops its most collinear partner (with a polish of 0 iterations the K - 1 kept
    positions come back as they were, leading). A mutation review: dropping the least
    collinear source (the lone true one) passed the end-to-end test."""
    b = simulate_range(0, 12, SYSTEM, SCENE, seed=13, split="test", K=3, snr_db=30.0)
    cfg = ClassicalConfig()
    ref = nfmle_fit(b.y, b.H, b.codes, _with_pair(b, 0.3), SYSTEM, cfg.final)
    idx = cancelling_sources(ref.energy, b.y, ref.estimates.mask).any(-1).nonzero().flatten()
    assert idx.numel() >= 2
    c = torch.complex128
    theta = ref.estimates.theta.double()[idx]
    mask, energy = ref.estimates.mask[idx], ref.energy[idx].double()
    out = classical._separate(b.y[idx].to(c), b.H[idx].to(c), b.codes[idx].to(c), theta, mask,
                              ref.estimates.K[idx], energy, SYSTEM,
                              replace(cfg.final, iterations=0), cfg, classical.CANCELLING_RATIO)
    first = torch.where(mask, energy, -1.0).argmax(-1)
    assert bool((first >= 1).all())  # a member of the pair (slots 1 and 2)
    partner = 3 - first
    for i in range(idx.numel()):
        near = lambda t, u: torch.allclose(t, u, rtol=0, atol=1e-6)  # noqa: E731 (float32 in)
        assert near(out[i, 0], theta[i, 0]), (out[i, 0] - theta[i, 0])
        assert near(out[i, 1], theta[i, first[i]])
        assert not any(near(out[i, j], theta[i, partner[i]]) for j in range(3))


def test_one_snapshot_with_the_right_snr_is_not_warned_of(caplog, monkeypatch):
    """With L = 1 the K_max-source fit takes part of the noise along: a right SNR read
    -19..+19 dB off the residual's level, and 'disagrees with their data by more than 10
    dB' warned of most scenes at -10 dB (an edge review: 24 of 32). A linear SNR passed as
    snr_db (100 for 20 dB) is still named."""
    one = SYSTEM.model_copy(update={"L": 1})
    b = simulate_range(0, 8, one, SCENE, seed=3, split="test", snr_db=-10.0)
    caplog.set_level("WARNING", logger="risloc.estimators.classical")
    monkeypatch.setattr(classical, "_SNR_WARNED", [])  # once per process: a fresh one
    classical_localize(b.y, b.H, b.codes, one, snr_db=b.snr_db)
    assert not caplog.records, caplog.text
    b = simulate_range(0, 4, one, SCENE, seed=3, split="test", snr_db=20.0)
    classical_localize(b.y, b.H, b.codes, one, snr_db=100.0)
    assert "disagrees with their data by more than 25 dB (e.g. 100.0 dB given" in caplog.text


def test_buffers_follow_the_dtype_and_size_asked_for():
    # a mutation review: a buffer reused across dtypes (the check dropped) survived the suite
    buffers = classical._Buffers()
    a = buffers.take("x", (2, 3), torch.zeros(1, dtype=torch.float32))
    b = buffers.take("x", (2, 2), torch.zeros(1, dtype=torch.complex64))
    c = buffers.take("x", (4, 4), torch.zeros(1, dtype=torch.complex64))
    assert (a.dtype, b.dtype, c.dtype) == (torch.float32, torch.complex64, torch.complex64)
    assert c.shape == (4, 4) and b.shape == (2, 2)


def test_a_shortlist_of_the_whole_grid_ranks_nothing(monkeypatch):
    # shortlist >= G evaluates T on the whole grid: no ranking products (a mutation review:
    # ranking at shortlist == G passed, its two halves holding the maximum by chance)
    b = simulate_range(0, 2, SYSTEM, SCENE, seed=6, split="test", K=1, snr_db=20.0)
    grid = search_grid(SYSTEM)

    def no_ranking(*args, **kwargs):
        raise AssertionError("ranked a shortlist of the whole grid")

    monkeypatch.setattr(classical, "grid_power", no_ranking)
    residual_proposal(b.y, b.H, b.codes, classical._empty_fit(b.y),
                      torch.ones(2, 0, dtype=torch.bool), grid, 0.05, grid.pos.shape[0])


def test_the_projected_ranking_floors_a_found_source_s_own_grid_point():
    # A found source on a grid point: 1 - ||Q^H a(g)||^2 vanishes there (3.6e-7) while a
    # regularised fit leaves some of that source in the residual; the floor bounds the
    # point's boost, so a shortlist of one (the gain-weighted half only) lands on the other
    # source (a mutation review: a floor of 1e-30 there passed the suite).
    b = simulate_range(0, 4, SYSTEM, SCENE, seed=5, split="test", K=1, snr_db=20.0)
    grid = search_grid(SYSTEM)
    g0 = 1000
    other = pack(b.azimuth[:, :1], b.elevation[:, :1], b.range_m[:, :1])
    A0 = grid.A.T[g0].expand(4, 1, -1)
    A = torch.cat([A0, steering_at(other, SYSTEM, torch.complex64)], 1)
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, SYSTEM.L, 2, dtype=torch.complex64, generator=g)
    y = (apply_operator(b.H, b.codes, A) @ s.unsqueeze(-1)).squeeze(-1)
    mask = torch.ones(4, 1, dtype=torch.bool)
    fit = amplitude_fit(y, b.H, b.codes, A0, mask, 1e-2)  # a fit that leaves some of it
    new = residual_proposal(y, b.H, b.codes, fit, mask, grid, 0.05, 1, found=A0).theta
    assert not (new == grid.pos[g0]).all(-1).any(), new


def test_separation_polishes_the_k_minus_1_kept_sources_before_its_search(monkeypatch):
    # the first joint solve and the residual search see the K - 1 kept sources only (a
    # mutation review: keeping all K there passed, the final polish hiding it)
    b = simulate_range(0, 12, SYSTEM, SCENE, seed=13, split="test", K=3, snr_db=30.0)
    cfg = ClassicalConfig()
    ref = nfmle_fit(b.y, b.H, b.codes, _with_pair(b, 0.3), SYSTEM, cfg.final)
    masks, solve = [], classical.lm_solve
    monkeypatch.setattr(classical, "lm_solve",
                        lambda *a, **k: masks.append(a[4].sum(-1)) or solve(*a, **k))
    idx = cancelling_sources(ref.energy, b.y, ref.estimates.mask).any(-1).nonzero().flatten()
    c = torch.complex128
    classical._separate(b.y[idx].to(c), b.H[idx].to(c), b.codes[idx].to(c),
                        ref.estimates.theta.double()[idx], ref.estimates.mask[idx],
                        ref.estimates.K[idx], ref.energy[idx].double(), SYSTEM,
                        replace(cfg.final, iterations=0), cfg, classical.CANCELLING_RATIO)
    assert [m.tolist() for m in masks] == [[2] * idx.numel(), [3] * idx.numel()]


def test_separation_keeps_the_grid_point_where_the_polish_cancels_again():
    # ratio 0: every polished source counts as cancelling, so the K - 1 polished sources and
    # the grid point come back (the last slot exactly a grid point), not the full polish
    b = simulate_range(0, 12, SYSTEM, SCENE, seed=13, split="test", K=3, snr_db=30.0)
    cfg = ClassicalConfig()
    ref = nfmle_fit(b.y, b.H, b.codes, _with_pair(b, 0.3), SYSTEM, cfg.final)
    idx = cancelling_sources(ref.energy, b.y, ref.estimates.mask).any(-1).nonzero().flatten()
    c = torch.complex128
    out = classical._separate(b.y[idx].to(c), b.H[idx].to(c), b.codes[idx].to(c),
                              ref.estimates.theta.double()[idx], ref.estimates.mask[idx],
                              ref.estimates.K[idx], ref.energy[idx].double(), SYSTEM,
                              cfg.final, cfg, 0.0)
    grid = search_grid(SYSTEM).pos.double()
    assert bool((out[:, 2].unsqueeze(1) == grid).all(-1).any(-1).all()), out[:, 2]


def test_the_snr_warning_names_missed_sources_with_k_max_within_2_of_m(caplog, monkeypatch):
    # a mutation review: "within 2" read as "within 1" passed the suite
    caplog.set_level("WARNING", logger="risloc.estimators.classical")
    monkeypatch.setattr(classical, "snr_disagreement",
                        lambda costs, *a: (torch.ones(costs.shape[0], dtype=torch.bool),
                                           torch.zeros(costs.shape[0], dtype=torch.float64)))
    for k_max, crowded in ((5, True), (4, False)):  # M = 7 antennas
        monkeypatch.setattr(classical, "_SNR_WARNED", [])
        classical._check_snr(torch.ones(2, k_max + 1, dtype=torch.float64),
                             torch.ones(2, 3, 7, dtype=torch.complex64),
                             torch.ones(1, dtype=torch.float64), 10.0)
        assert ("sources the search missed" in caplog.records[-1].getMessage()) == crowded


@pytest.mark.parametrize("codebook, bits, wavefront", [("hadamard", 1, "spherical"),
                                                        ("random", 3, "fresnel")])
def test_exact_data_of_a_non_default_system_are_recovered_exactly(codebook, bits, wavefront):
    # A non-square RIS (5 x 7) at 0.35 lambda of another wavelength (0.12 m), M = 8, L = 12,
    # a narrower field of view, 300 dB: K and every position come back to float32 rounding
    # (a review measured <= 1e-5 deg and 1e-5 relative range on such systems).
    system = SystemConfig(N_H=5, N_V=7, wavelength=0.12, spacing=0.042, M=8, L=12,
                          wavefront=wavefront, K_max=3)
    fov = dict(azimuth_deg=(-40.0, 40.0), elevation_deg=(-20.0, 20.0), range_m=(0.3, 2.0))
    scene = SceneConfig(**fov, min_separation_deg=15.0, codebook=codebook, code_bits=bits)
    b = simulate_range(0, 4, system, scene, seed=3, split="test", snr_db=300.0)
    config = ClassicalConfig().with_fov(FieldOfView(**fov)).for_system(system)
    for K in (b.K, None):
        est = classical_localize(b.y, b.H, b.codes, system, K=K, config=config)
        assert torch.equal(est.K, b.K), (est.K, b.K)
        m = match_sources(est, b.azimuth, b.elevation, b.range_m, b.K)
        assert m.angle_error[m.truth_mask].rad2deg().max() < 1e-4, m.angle_error
        rel = (m.range_error[m.truth_mask] / b.range_m[b.mask]).abs()
        assert rel.max() < 1e-4, rel


def test_k_max_of_m_antennas_or_more_is_refused():
    # SystemConfig refuses K_max >= M, but a model_copy skips that validation: the localizer
    # checks it again against the data's M, before any search, K given or not (a mutation
    # review: K_max == M passed; with K given nothing else refused it)
    b = simulate_range(0, 1, SYSTEM, SCENE, seed=0, split="test", K=1, snr_db=10.0)
    crowded = SYSTEM.model_copy(update={"K_max": SYSTEM.M})
    for K in (None, 1):
        with pytest.raises(ValueError, match="K_max=16 must be smaller than M=16"):
            classical.classical_fit(b.y, b.H, b.codes, crowded, K=K)


def test_the_snr_warning_counts_and_quotes_the_scenes_off_only(caplog, monkeypatch):
    # three of six scenes given a linear SNR (31.6 for 15 dB), the rest their own: the
    # warning counts the three and quotes the first of them; with K given there is no K
    # decision for the SNR to mislead, and no warning (a mutation review: the count as the
    # batch's size, the example as scene 0, and a check at known K all passed)
    b = simulate_range(0, 6, SYSTEM, SCENE, seed=3, split="test", snr_db=15.0)
    snr = b.snr_db.clone().double()
    snr[[1, 3, 4]] = 10 ** 1.5
    caplog.set_level("WARNING", logger="risloc.estimators.classical")
    monkeypatch.setattr(classical, "_SNR_WARNED", [])
    classical_localize(b.y, b.H, b.codes, SYSTEM, K=b.K, snr_db=10 ** 1.5)
    assert not caplog.records, caplog.text
    classical_localize(b.y, b.H, b.codes, SYSTEM, snr_db=snr)
    text = caplog.records[-1].getMessage()
    assert "for 3 of 6 scenes" in text and "e.g. 31.6 dB given" in text, text


def test_next_source_in_chunks_is_the_whole_batch_s_search():
    # next_source passes chunk by chunk; each chunk pairs its scenes with their own found
    # sources (8 scenes in chunks of 3; a mutation review: every chunk read the first
    # scenes' found sources and passed, every test's batch within one chunk)
    b = simulate_range(0, 8, SYSTEM, SCENE, seed=3, split="test", K=3, snr_db=30.0)
    whole = next_source(b.y, b.H, b.codes, _first_two(b, 1), SYSTEM)
    chunked = next_source(b.y, b.H, b.codes, _first_two(b, 1), SYSTEM, ClassicalConfig(chunk=3))
    assert torch.equal(chunked, whole)


def test_the_grid_spans_its_own_count_of_points_along_each_axis(monkeypatch):
    # 24 x 13 x 10 distinct values of sin(az), el and 1/r (a mutation review: the counts of
    # el and 1/r swapped in the grid's key kept 3120 points and the span's ends, and passed);
    # a bfloat16 form only where the device runs bfloat16 natively
    grid = search_grid(SYSTEM)
    assert [int(grid.pos[:, i].unique().numel()) for i in range(3)] == [24, 13, 10]
    monkeypatch.setattr(classical, "native_bf16", lambda device: False)
    assert search_grid(SYSTEM, bf16=True).A_bf16 is None


def test_k_is_decided_with_the_snr_given():
    # the order test trusts a given SNR: 45 dB above the data's makes every residual look
    # like sources (K_max), where the estimated noise level finds fewer (a mutation review:
    # the SNR dropped from the K decision passed)
    b = simulate_range(0, 4, SYSTEM, SCENE, seed=3, split="test", K=2, snr_db=15.0)
    assert bool((classical_localize(b.y, b.H, b.codes, SYSTEM).K < SYSTEM.K_max).all())
    est = classical_localize(b.y, b.H, b.codes, SYSTEM, snr_db=60.0)
    assert est.K.tolist() == [SYSTEM.K_max] * 4, est.K


def test_each_scene_takes_the_greedy_fit_of_its_own_K():
    """A batch of scenes with different K: scene b's slots are the K_b-source fit, the rest
    NaN (a mutant taking every fit of K_b sources or more survived the other tests)."""
    from risloc.estimators.classical import _select

    B, k_slots = 4, 4
    thetas = [torch.full((B, k, 3), float(k)) + torch.arange(B).view(B, 1, 1) / 10
              for k in range(1, k_slots + 1)]
    K = torch.tensor([1, 3, 2, 4])
    out = _select(thetas, K, k_slots)
    for b, k in enumerate(K.tolist()):
        torch.testing.assert_close(out[b, :k], thetas[k - 1][b])
        assert out[b, k:].isnan().all()


@pytest.mark.parametrize("L, margin", [(1, 25.0), (2, 10.0), (3, 10.0)])
def test_the_snr_check_allows_25_db_with_one_snapshot_only(monkeypatch, L, margin):
    """_check_snr's margin is 25 dB for one snapshot and 10 dB from two on (a mutation
    review: one read as "up to two", every test passed)."""
    seen = []
    monkeypatch.setattr(classical, "snr_disagreement", lambda costs, L_, M_, s2, m:
                        seen.append(m) or (torch.zeros(1, dtype=torch.bool), torch.zeros(1)))
    y = torch.ones(1, L, 5, dtype=torch.complex64)
    classical._check_snr(torch.ones(1, 3, dtype=torch.float64), y,
                         torch.ones(1, dtype=torch.float64), 10.0)
    assert seen == [margin]
