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
