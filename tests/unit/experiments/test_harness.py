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

    def recording(name, checkpoint=None):
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
