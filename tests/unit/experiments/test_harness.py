"""What the evaluation harness hands each estimator: the true K only with known_K, the SNR
only with snr_given, and independent scenes at each SNR point (a mutation review: each
passed every test when broken)."""

import pytest
import torch

from risloc.config import RislocConfig
from risloc.core.params import Estimates
from risloc.experiments import harness
from risloc.experiments.harness import SweepSettings, evaluate_points, sweep_points


@pytest.fixture
def seen(monkeypatch):
    """The (K, snr_db) each call of a recording estimator was given; it reports the truth."""
    calls = []

    def recording(name, checkpoint=None, fov=None):
        def fn(scenes, system, K):
            calls.append((None if K is None else K.clone(), scenes.snr_db.clone()))
            return Estimates(scenes.K, scenes.azimuth.float(), scenes.elevation.float(),
                             scenes.range_m.float(), torch.ones_like(scenes.azimuth).float())
        return fn

    monkeypatch.setattr(harness, "get_estimator", recording)
    return calls


@pytest.mark.parametrize("known_K,snr_given", [(False, True), (True, False)])
def test_the_estimators_get_K_and_the_snr_only_where_told(seen, known_K, snr_given):
    settings = SweepSettings(estimators=("recorder",), snr_db=(10.0,), n_per_point=6,
                             known_K=known_K, snr_given=snr_given)
    points = list(sweep_points(settings, RislocConfig()))
    rows = evaluate_points(points, RislocConfig().system, settings)
    assert rows[0].metrics["f1"] == 1.0  # (the truth, scored)
    K = torch.cat([k for k, _ in seen]) if known_K else None
    snr = torch.cat([s for _, s in seen])
    assert all((k is None) != known_K for k, _ in seen)
    if known_K:
        assert torch.equal(K, points[0][1].K)
    assert bool(torch.isnan(snr).all()) != snr_given
    if snr_given:
        assert torch.equal(snr, points[0][1].snr_db)


def test_each_snr_point_draws_its_own_scenes():
    settings = SweepSettings(snr_db=(0.0, 10.0), n_per_point=4, K=(2,))
    (_, a), (_, b) = sweep_points(settings, RislocConfig())
    assert a.snr_db.tolist() == pytest.approx([0.0] * 4, abs=1e-4)
    assert b.snr_db.tolist() == pytest.approx([10.0] * 4, abs=1e-4)
    assert bool(torch.isfinite(a.azimuth[:, :2]).all())
    assert not bool(torch.isclose(a.azimuth[:, :2], b.azimuth[:, :2]).any())  # other scenes


def test_each_K_of_a_point_draws_its_own_scenes():
    """(a second mutation review: the K values of one point drawn from one seed stream,
    their first sources at the same places, passed every test)"""
    (_, sc), = sweep_points(SweepSettings(snr_db=(10.0,), n_per_point=4, K=(1, 2)),
                            RislocConfig())
    assert sc.K.tolist() == [1] * 4 + [2] * 4
    assert not bool(torch.isclose(sc.azimuth[:4, 0], sc.azimuth[4:, 0]).any())


def test_a_sweep_draws_the_power_spread_it_is_given():
    """(a mutation review: the spread not passed to the scene config passed every test)"""
    equal, spread = (next(iter(sweep_points(SweepSettings(snr_db=(10.0,), K=(3,), n_per_point=8,
                                                          power_spread_db=s), RislocConfig())))[1]
                     for s in (0.0, 12.0))
    ratio = lambda p: p[:, :3].amax(-1) / p[:, :3].amin(-1)  # noqa: E731  (K = 3 slots)
    assert torch.allclose(ratio(equal.powers), torch.ones(8))
    assert float(ratio(spread.powers).max()) > 2.0


def test_demo_and_evaluate_pass_on_what_users_ask(monkeypatch):
    """The demo's defaults are users' conditions (powers spread over 12 dB, the SNR
    withheld, the learned localizer the reference) and its options and evaluate's flags
    reach the sweep (a mutation review: none of these was checked)."""
    from typer.testing import CliRunner

    import risloc.cli.demo as demo
    import risloc.cli.evaluate as evaluate
    from risloc.cli.main import app

    seen = []
    monkeypatch.setattr(demo, "run_report", lambda points, system, settings, *a, **k:
                        seen.append(settings))
    monkeypatch.setattr(evaluate, "run_report", lambda points, system, settings, *a, **k:
                        seen.append(settings) or [])
    runner = CliRunner()
    for args in ([], ["--snr-given", "--power-spread-db", "3"]):
        res = runner.invoke(app, ["demo", "--n", "1", "--snr-db", "10", *args])
        assert res.exit_code == 0, res.output
    (default, told), seen[:] = seen, []
    from risloc.pipeline.learned import DEFAULT_MODEL

    assert default.estimators == (("learned", "classical") if DEFAULT_MODEL.exists()
                                  else ("classical",))
    assert (default.power_spread_db, default.snr_given) == (12.0, False)
    assert (told.power_spread_db, told.snr_given) == (3.0, True)
    for args, want in (([], (True, False)), (["--snr-withheld", "--known-K"], (False, True))):
        res = runner.invoke(app, ["evaluate", "--n", "1", "--snr-db", "10", "--no-plots",
                                  *args])
        assert res.exit_code == 0, res.output
        assert (seen[-1].snr_given, seen[-1].known_K) == want


def test_rows_per_K_time_per_scene_and_no_pooled_rows_in_a_sweep(monkeypatch):
    """Each true K's row summarises its own scenes; the time is per scene in ms; a sweep's
    points are not pooled into a "file" row (a mutation review: all three passed)."""
    import time
    from dataclasses import replace

    def finds_only_single_sources(name, checkpoint=None, fov=None):
        def fn(scenes, system, K):
            time.sleep(0.02)
            one = scenes.K == 1
            nan = torch.full_like(scenes.azimuth, float("nan")).float()
            pick = lambda t: torch.where(one[:, None], t.float(), nan)  # noqa: E731
            return Estimates(torch.where(one, scenes.K, 0), pick(scenes.azimuth),
                             pick(scenes.elevation), pick(scenes.range_m), pick(scenes.range_m))
        return fn

    monkeypatch.setattr(harness, "get_estimator", finds_only_single_sources)
    settings = SweepSettings(estimators=("ones",), snr_db=(10.0, 20.0), K=(1, 2),
                             n_per_point=3)
    rows_points = list(sweep_points(settings, RislocConfig()))
    rows = evaluate_points(rows_points, RislocConfig().system, settings)
    assert [(r.snr_db, r.K) for r in rows] == [(10.0, "all"), (10.0, "1"), (10.0, "2"),
                                               (20.0, "all"), (20.0, "1"), (20.0, "2")]
    by = {r.K: r for r in rows[:3]}
    assert (by["1"].metrics["f1"], by["2"].metrics["f1"]) == (1.0, 0.0)
    assert (by["1"].metrics["n_true"], by["2"].metrics["n_true"]) == (3, 6)
    assert by["all"].metrics["n_true"] == 9 and 0 < by["all"].metrics["f1"] < 1
    assert by["all"].ms_per_scene > 20 / 6  # >= one 20 ms call per point of 6 scenes
    # a true K's row: the point's time per scene, not its time over that K's scenes (a
    # second mutation review)
    assert by["1"].ms_per_scene == by["2"].ms_per_scene == by["all"].ms_per_scene
    # scenes without truth: one K = "?" row, its time per scene in ms too
    def finds_none(name, checkpoint=None, fov=None):
        def fn(scenes, system, K):
            time.sleep(0.02)
            nan = torch.full((len(scenes.y), 5), float("nan"))
            return Estimates(torch.zeros(len(scenes.y), dtype=torch.int64), nan, nan, nan, nan)
        return fn

    monkeypatch.setattr(harness, "get_estimator", finds_none)
    bare = replace(rows_points[0][1], K=None, azimuth=None)
    (row,) = evaluate_points([(10.0, bare)], RislocConfig().system, settings)
    assert (row.K, row.n_scenes, row.metrics) == ("?", 6, {"scenes_left_out": 0})
    assert row.ms_per_scene > 20 / 6


def test_a_row_s_own_fields_are_what_its_csv_line_holds():
    """A metric named like a row field (the summary's n_scenes) does not override it in
    the CSV, where the console table shows the row's (a mutation review: a wrong pooled
    n_scenes reached the table only)."""
    row = harness.ResultRow("c", 10.0, "file", 8, 2.0, {"n_scenes": 3, "f1": 0.5})
    assert row.flat() == {"estimator": "c", "snr_db": 10.0, "K": "file", "n_scenes": 8,
                          "ms_per_scene": 2.0, "f1": 0.5}
    assert list(row.flat())[:5] == ["estimator", "snr_db", "K", "n_scenes", "ms_per_scene"]


def _offset_estimator(scale):
    """Estimates ``scale`` x (0.5..1.5 deg in azimuth, 0.05..0.15 m in range) off the
    truth, the offset varying between sources."""
    def make(name, checkpoint=None):
        def fn(scenes, system, K):
            wobble = 1.0 + 0.5 * torch.sin(7.0 * scenes.range_m.double())
            az = scenes.azimuth.double() + scale * torch.deg2rad(wobble)
            r = scenes.range_m.double() + scale * 0.1 * wobble
            return Estimates(scenes.K, az.float(), scenes.elevation.float(), r.float(),
                             torch.ones_like(r).float())
        return fn
    return make


def _two_estimators(monkeypatch):
    monkeypatch.setattr(harness, "get_estimator", lambda name, checkpoint=None, fov=None:
                        _offset_estimator({"ref": 0.5, "other": 1.0}[name])(name))


def test_rows_hold_the_bound_and_the_differences_to_the_reference(monkeypatch):
    """Every row is summarize() of its scenes beside their own CRB; the second estimator's
    K = "all" row names the first as its reference, with its medians over the reference's
    and the paired standard errors of a = it, b = the reference (a mutation review: the
    bound left out, the arguments swapped or each estimator its own reference passed)."""
    from dataclasses import asdict

    from risloc.evaluation.metrics import (
        common_median_ratios,
        match_sources,
        paired_bootstrap_se,
        summarize,
    )

    _two_estimators(monkeypatch)
    cfg = RislocConfig()
    settings = SweepSettings(estimators=("ref", "other"), snr_db=(10.0,), K=(1, 2),
                             n_per_point=2)
    (snr, scenes), = sweep_points(settings, cfg)
    rows = evaluate_points([(snr, scenes)], cfg.system, settings)
    crb = harness.scene_crb(scenes, cfg.system, settings.crb)
    m = {n: match_sources(_offset_estimator(s)(n)(scenes, cfg.system, None), scenes.azimuth,
                          scenes.elevation, scenes.range_m, scenes.K)
         for n, s in (("ref", 0.5), ("other", 1.0))}
    cells = {(r.estimator, r.K): r.metrics for r in rows}
    for name in ("ref", "other"):
        assert cells[name, "all"]["crb_range_median_m"] is not None
        for k in (1, 2):
            sel = scenes.K == k
            assert cells[name, str(k)] == asdict(summarize(m[name][sel], crb[sel]))
            assert [r.n_scenes for r in rows if (r.estimator, r.K) == (name, str(k))] == [
                int(sel.sum())]
    other = cells["other", "all"]
    assert "reference" not in cells["ref", "all"] and other["reference"] == "ref"
    assert other["azimuth_median_ratio_common"] == pytest.approx(
        common_median_ratios(m["other"], m["ref"])["azimuth_median_ratio_common"])
    assert other["azimuth_median_ratio_common"] == pytest.approx(2.0, rel=1e-3)
    se = paired_bootstrap_se(m["other"], m["ref"])
    assert other["se_range_median_ratio"] == pytest.approx(se["range_median_ratio"])


def test_pooled_rows_sum_times_and_scenes_left_out_over_the_points(monkeypatch):
    """A file's SNR groups pooled: one "file" row per estimator only where there are two
    points or more, its time per scene over all scenes, the scenes left out of every
    point counted, the reference's medians over its own (a mutation review)."""
    from dataclasses import replace

    _two_estimators(monkeypatch)
    cfg = RislocConfig()
    settings = SweepSettings(estimators=("ref", "other"), snr_db=(10.0, 20.0), K=(2,),
                             n_per_point=3)
    points = list(sweep_points(settings, cfg))
    dead = points[0][1].y.clone()
    dead[0] = 0  # a scene no estimator can localize, in the first point
    points[0] = (points[0][0], replace(points[0][1], y=dead))
    points = [(snr, sc, torch.arange(3) + 3 * i) for i, (snr, sc) in enumerate(points)]
    rows = evaluate_points(points, cfg.system, settings, pooled=True)
    pooled = {r.estimator: r for r in rows if r.K == "file"}
    assert list(pooled) == ["ref", "other"]
    alls = [r for r in rows if r.K == "all" and r.estimator == "other"]
    assert pooled["other"].n_scenes == 5 == sum(r.n_scenes for r in alls)
    assert pooled["other"].ms_per_scene == pytest.approx(
        sum(r.ms_per_scene * r.n_scenes for r in alls) / 5)
    assert pooled["other"].metrics["scenes_left_out"] == 1
    # every K = "all" row counts its point's scenes left out, the reference's too
    assert [r.metrics["scenes_left_out"] for r in rows if r.K == "all"] == [1, 1, 0, 0]
    # a scene with unusable measurements and truth both is left out once, for one reason
    az = points[1][1].azimuth.clone()
    az[0, 0] = float("nan")  # a real true source without a position
    twice = replace(points[1][1], y=torch.zeros_like(points[1][1].y), azimuth=az)
    reasons, ok = harness.left_out(twice, cfg.system)
    assert [i for i, _ in reasons] == [0, 1, 2] and not bool(ok.any())
    # a file's SNR groups: each scene's index in the file, from the offset of its range
    (_, sc, where), = harness.file_points(points[1][1], offset=7)
    assert where.tolist() == [7, 8, 9] and len(sc) == 3
    assert pooled["other"].metrics["azimuth_median_ratio_common"] == pytest.approx(2.0,
                                                                                   rel=1e-3)
    one = evaluate_points(points[1:], cfg.system, settings, pooled=True)
    assert not [r for r in one if r.K == "file"]


def test_a_file_s_bound_takes_its_noise_and_powers_a_chunk_of_scenes_at_a_time(monkeypatch):
    """A file without an SNR is one group of all its scenes; its noise and powers, fitted
    at the truth, are found CRB_CHUNK scenes at a time as the bound is (a review: all at
    once, about 0.75 MB a scene: 15 GB for a file of 20,000), with the same bound, and a
    scene where they cannot be found is named by its index in the group."""
    import math
    from dataclasses import replace

    from risloc.config import SceneConfig, SystemConfig
    from risloc.evaluation.crb import SingularFIMError, noise_and_powers_at
    from risloc.simulation import simulate_range

    system = SystemConfig()
    sc = simulate_range(0, 6, system, SceneConfig(), split="test", K=2, snr_db=10.0)
    file = replace(sc, noise_var=None, powers=None, symbols=None,
                   snr_db=torch.where(torch.arange(6) == 1, 10.0, math.nan))
    whole = harness.scene_crb(file, system, "stochastic")
    sizes = []

    def recording(*args, **kwargs):
        sizes.append(args[0].shape[0])
        return noise_and_powers_at(*args, **kwargs)

    monkeypatch.setattr(harness, "noise_and_powers_at", recording)
    monkeypatch.setattr(harness, "CRB_CHUNK", 4, raising=False)
    got = harness.scene_crb(file, system, "stochastic")
    assert sizes == [4, 2]
    # a scene with an SNR is bounded at the noise of its SNR, not at the fitted one
    alone = harness.scene_crb(file[1:2], system, "stochastic")
    torch.testing.assert_close(whole.range_m[1:2], alone.range_m, rtol=1e-9, atol=0,
                               equal_nan=True)
    for k in ("azimuth", "elevation", "range_m"):
        torch.testing.assert_close(getattr(got, k), getattr(whole, k), rtol=1e-12, atol=0,
                                   equal_nan=True)
    az = file.azimuth.clone()
    az[5, 1] = az[5, 0]  # two sources at one place: the Gram matrix is singular in scene 5
    el, r = file.elevation.clone(), file.range_m.clone()
    el[5, 1], r[5, 1] = el[5, 0], r[5, 0]
    with pytest.raises(SingularFIMError) as err:
        harness.scene_crb(replace(file, azimuth=az, elevation=el, range_m=r), system,
                          "stochastic")
    assert err.value.scenes == [5]
    assert harness.scene_crb(file[0:0], system, "stochastic") is None  # no scene: no bound


def test_a_source_the_noise_buries_is_named_by_its_scene_s_index_in_the_file(monkeypatch,
                                                                             caplog):
    """evaluate bounds a file's SNR groups apart: the warning of a source the noise buries
    (no power at its true position: the bound is the power floor's) named the scene by its
    place in its group, not in the file (a review: scene 5 of a file whose scenes 0-3 have
    an SNR was named scene 1; --start and scenes left out shifted it too)."""
    import logging
    import math
    from dataclasses import replace

    from risloc.config import SceneConfig
    from risloc.core.operator import apply_operator
    from risloc.physics import steering
    from risloc.simulation import simulate_range

    _two_estimators(monkeypatch)
    cfg = RislocConfig()
    system = cfg.system
    sc = simulate_range(0, 6, system, SceneConfig(), split="test", K=1, snr_db=20.0)
    # scene 5: noise orthogonal to its source's measured columns, nothing of the source in y
    az, el, r = (t[5:, :1].double() for t in (sc.azimuth, sc.elevation, sc.range_m))
    Bm = apply_operator(sc.H[5:].to(torch.complex128), sc.codes[5:].to(torch.complex128),
                        steering(az, el, r, system, torch.complex128))
    n = torch.view_as_complex(torch.randn(1, system.L, system.M, 2, dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(0)))
    n = (n.unsqueeze(-1) - Bm @ torch.linalg.pinv(Bm) @ n.unsqueeze(-1)).squeeze(-1)
    y = sc.y.clone()
    y[5] = n[0].to(y.dtype)
    file = replace(sc, y=y, noise_var=None, powers=None, symbols=None,
                   snr_db=torch.where(torch.arange(6) < 4, 20.0, math.nan))
    settings = SweepSettings(estimators=("ref",), snr_db=(20.0,), K=(1,), n_per_point=6)
    with caplog.at_level(logging.WARNING, logger="risloc.evaluation.crb"):
        evaluate_points(harness.file_points(file, offset=7), system, settings)
    said = [rec.getMessage() for rec in caplog.records if "no power above" in rec.getMessage()]
    assert len(said) == 1 and said[0].startswith("1 source(s) in scenes [12]:"), said


def test_an_estimator_s_own_limit_names_the_estimator():
    """A baseline that cannot serve a small RIS (ramezani-samp's sub-RISs, MUSIC's K < N on
    2 x 2 elements) stopped evaluate with a message naming no estimator ("every K must
    satisfy 1 <= K < 4"): run_estimator now names it; a message naming it is kept as is."""
    from risloc.config import SystemConfig
    from risloc.simulation import simulate_range

    system = SystemConfig(N_H=2, N_V=2)
    scenes = simulate_range(0, 2, system, scene=None, split="test", snr_db=20.0, K=4)
    with pytest.raises(ValueError, match=r"^ramezani-samp: every K must satisfy 1 <= K < 4"):
        harness.run_estimator("ramezani-samp", scenes, system, True, 2)
    with pytest.raises(ValueError, match=r"^music-oracle: MUSIC needs a RIS of at least 2 "):
        harness.run_estimator("music-oracle", scenes[:1], SystemConfig(N_H=1, N_V=1), True, 1)


def test_estimates_made_elsewhere_are_refused_on_a_simulated_sweep(seen):
    """Estimates given for a scene file's scenes have no scenes to pair with in a simulated
    sweep: said, not an IndexError (a second mutation review: the check unchecked)."""
    from risloc.experiments.harness import GivenEstimates

    cfg = RislocConfig()
    points = list(sweep_points(SweepSettings(snr_db=(10.0,), n_per_point=2, K=(1,)), cfg))
    sc = points[0][1]
    mine = GivenEstimates("mine", "e.csv", Estimates(sc.K, sc.azimuth.float(),
                                                     sc.elevation.float(), sc.range_m.float(),
                                                     torch.ones_like(sc.azimuth).float()))
    settings = SweepSettings(estimators=("recorder",), snr_db=(10.0,), n_per_point=2, K=(1,),
                             given=(mine,))
    with pytest.raises(ValueError, match="scored on a scene file's scenes"):
        evaluate_points(points, cfg.system, settings)


def test_the_sources_the_noise_buries_are_named_in_one_warning_for_every_chunk(
        monkeypatch, caplog):
    """A file without an SNR has its noise and powers fitted CRB_CHUNK scenes at a time;
    the sources the noise buries in scenes of two chunks are named in one warning, not one a
    chunk (a persona's file of 300 scenes got the same warning three times)."""
    import logging
    import math
    from dataclasses import replace

    from risloc.config import SceneConfig, SystemConfig
    from risloc.core.operator import apply_operator
    from risloc.physics.steering import steering
    from risloc.simulation import simulate_range

    system = SystemConfig()
    sc = simulate_range(0, 6, system, SceneConfig(), split="test", K=1, snr_db=20.0)
    pos = (sc.azimuth[:, :1].double(), sc.elevation[:, :1].double(),
           sc.range_m[:, :1].double())
    Bm = apply_operator(sc.H.to(torch.complex128), sc.codes.to(torch.complex128),
                        steering(*pos, system, torch.complex128))  # (B, L, M, 1)
    n = torch.view_as_complex(torch.randn(*sc.y.shape, 2, dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(0)))
    n = (n.unsqueeze(-1) - Bm @ torch.linalg.pinv(Bm) @ n.unsqueeze(-1)).squeeze(-1)
    buried = torch.isin(torch.arange(6), torch.tensor([1, 5])).view(6, 1, 1)
    file = replace(sc, y=torch.where(buried, n.to(sc.y.dtype), sc.y), noise_var=None,
                   powers=None, symbols=None, snr_db=torch.full((6,), math.nan))
    monkeypatch.setattr(harness, "CRB_CHUNK", 4)
    with caplog.at_level(logging.WARNING, logger="risloc.evaluation.crb"):
        harness.scene_crb(file, system, "stochastic")
    said = [r.getMessage() for r in caplog.records if "no power above" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("2 source(s) in scenes [1, 5]: "), said


def test_run_estimator_hands_each_pass_its_own_scenes_K_and_reports_progress(monkeypatch):
    """A batch split into passes of MAX_CHUNK scenes: each pass gets the true K of its own
    scenes (known_K), and the progress advances by the scenes of each batch (a third
    mutation review: the batch's K handed to every pass, and batch_size as the advance,
    passed every test)."""
    from risloc.config import SystemConfig
    from risloc.simulation import simulate_range

    calls = []

    def recording(name, checkpoint=None, fov=None):
        def fn(scenes, system, K):
            calls.append((len(scenes), K.clone()))
            return Estimates(scenes.K, scenes.azimuth.float(), scenes.elevation.float(),
                             scenes.range_m.float(), torch.ones_like(scenes.azimuth).float())
        return fn

    monkeypatch.setattr(harness, "get_estimator", recording)
    monkeypatch.setattr(harness, "MAX_CHUNK", 2)
    system = SystemConfig()
    scenes = simulate_range(0, 7, system, scene=None, split="test", snr_db=10.0)
    steps = []
    est, _ = harness.run_estimator("rec", scenes, system, True, 4, steps.append, workers=1)
    assert [n for n, _ in calls] == [2, 2, 2, 1] and steps == [4, 3]
    assert all(len(K) == n for n, K in calls)
    assert torch.equal(torch.cat([K for _, K in calls]), scenes.K)
    assert torch.equal(est.K, scenes.K)


def test_the_snr_points_and_K_values_of_a_sweep_draw_from_disjoint_streams():
    """(a third mutation review: streams 100 + i + K, point 0's K = 2 the stream of point 1's
    K = 1, its scenes' first sources at the same places, passed every test)"""
    (_, a), (_, b) = sweep_points(SweepSettings(snr_db=(10.0, 20.0), n_per_point=4,
                                                K=(1, 2)), RislocConfig())
    assert not bool(torch.isclose(a.azimuth[4:, 0], b.azimuth[:4, 0]).any())


def test_a_deterministic_bound_without_symbols_is_the_stochastic_one():
    """Scenes with their noise but no symbols get the stochastic bound asked for "deterministic"
    (a third mutation review: handing on "deterministic", which raises, passed)."""
    from dataclasses import replace

    cfg = RislocConfig()
    (_, sc), = sweep_points(SweepSettings(snr_db=(10.0,), n_per_point=2, K=(1,)), cfg)
    bare = replace(sc, symbols=None)
    got = harness.scene_crb(bare, cfg.system, "deterministic")
    want = harness.scene_crb(bare, cfg.system, "stochastic")
    torch.testing.assert_close(got.range_m, want.range_m, equal_nan=True)


def test_the_report_s_meta_records_the_field_of_view_searched():
    """(a third mutation review: the fov left out of metrics.json passed every test)"""
    from risloc.config import FieldOfView

    fov = FieldOfView(range_m=(1.0, 4.0))
    meta = SweepSettings(fov=fov).meta()
    assert meta["fov"] == {"azimuth_deg": (-60.0, 60.0), "elevation_deg": (-30.0, 30.0),
                           "range_m": (1.0, 4.0)}
    assert "given" not in meta and "fov" not in SweepSettings().meta()


def _file_points(dead, offset=10):
    """Two file-like SNR groups (10 and 20 dB, K = 1, 3 scenes each, indices offset..), the
    measurements of the scenes ``dead`` (indices in the file) zero."""
    from dataclasses import replace

    cfg = RislocConfig()
    points = []
    for i, (snr, sc) in enumerate(sweep_points(SweepSettings(snr_db=(10.0, 20.0),
                                                             n_per_point=3, K=(1,)), cfg)):
        where = torch.arange(3) + offset + 3 * i
        y = torch.where(torch.isin(where, torch.tensor(dead)).view(3, 1, 1), 0, sc.y)
        points.append((snr, replace(sc, y=y, noise_var=None, powers=None, symbols=None),
                       where))
    return points


def test_a_point_whose_scenes_are_all_left_out_has_no_rows_and_is_not_pooled(seen):
    """(a third mutation review: scoring such a point, or counting it as a point for the
    pooled rows, passed every test)"""
    points = _file_points(dead=[10, 11, 12])
    rows = evaluate_points(points, RislocConfig().system,
                           SweepSettings(estimators=("recorder",)), pooled=True)
    assert [(r.snr_db, r.K, r.n_scenes) for r in rows] == [(20.0, "all", 3), (20.0, "1", 3)]
    assert rows[0].metrics["scenes_left_out"] == 0


def test_estimates_made_elsewhere_pair_with_the_scenes_kept(seen):
    """Estimates given for a file's scenes: those of the scenes left out are dropped with
    them (a third mutation review: all of a point's estimates scored passed every test)."""
    from risloc.core.params import concat_estimates
    from risloc.experiments.harness import GivenEstimates

    points = _file_points(dead=[11])
    truth = concat_estimates([Estimates(sc.K, sc.azimuth.float(), sc.elevation.float(),
                                        sc.range_m.float(), torch.ones_like(sc.azimuth).float())
                              for _, sc, _ in points])
    # the file's scenes 0..9 unknown here: estimates of scenes 10..15 at their index
    pad = concat_estimates([truth[:1]] * 10 + [truth])
    settings = SweepSettings(estimators=("recorder",),
                             given=(GivenEstimates("mine", "e.csv", pad),))
    rows = evaluate_points(points, RislocConfig().system, settings)
    mine = [r for r in rows if r.estimator == "mine" and r.K == "all"]
    assert [(r.n_scenes, r.metrics["f1"], r.metrics["reference"]) for r in mine] == [
        (2, 1.0, "recorder"), (3, 1.0, "recorder")]
    assert all(r.ms_per_scene != r.ms_per_scene for r in mine)  # NaN: not timed here


def test_a_singular_bound_names_its_scene_s_index_in_the_file(seen, caplog):
    """Scenes left out before the bound: the scene where it is singular is named by its
    index in the file (a third mutation review: the indices of every scene of the point,
    shifting it by the ones left out, passed every test)."""
    import logging
    from dataclasses import replace

    (snr, sc, where), _ = _file_points(dead=[10])
    az, el, r = sc.azimuth.clone(), sc.elevation.clone(), sc.range_m.clone()
    K = sc.K.clone()
    K[2] = 2  # scene 12: two sources at one place
    az[2, 1], el[2, 1], r[2, 1] = az[2, 0], el[2, 0], r[2, 0]
    sc = replace(sc, K=K, azimuth=az, elevation=el, range_m=r)
    with caplog.at_level(logging.WARNING, logger="risloc.experiments.harness"):
        evaluate_points([(snr, sc, where)], RislocConfig().system,
                        SweepSettings(estimators=("recorder",)))
    said = [m.getMessage() for m in caplog.records if "no CRB" in m.getMessage()]
    assert len(said) == 1 and "in scene(s) [12]" in said[0], said
    assert any(m.getMessage().startswith("scene 10 left out: ") for m in caplog.records)


def test_the_scenes_left_out_are_listed_in_their_order_in_the_point():
    """Reasons of both kinds (measurements, truth) in scene order, as logged (a third
    mutation review: the truth's reasons after the measurements' passed)."""
    from dataclasses import replace

    (_, sc, _), _ = _file_points(dead=[11])
    az = sc.azimuth.clone()
    az[0, 0] = float("nan")  # scene 0: a true source without a position
    reasons, ok = harness.left_out(replace(sc, azimuth=az), RislocConfig().system)
    assert [i for i, _ in reasons] == [0, 1] and ok.tolist() == [False, False, True]


def test_metrics_csv_has_a_column_for_every_row_s_metrics(tmp_path):
    """The reference's row holds no "reference" nor se_* keys, the others' do: the CSV's
    columns are those of every row (a third mutation review: the first row's passed)."""
    import csv

    rows = [harness.ResultRow("a", 10.0, "all", 2, 1.0, {"f1": 1.0}),
            harness.ResultRow("b", 10.0, "all", 2, 1.0, {"f1": 0.5, "reference": "a"})]
    csv_path, _ = harness.write_results(rows, tmp_path, {})
    with open(csv_path) as f:
        got = list(csv.DictReader(f))
    assert got[1]["reference"] == "a" and got[0]["reference"] == ""
