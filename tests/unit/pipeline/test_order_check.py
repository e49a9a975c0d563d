"""The ML check of K on the polished fit (risloc.pipeline.order_check)."""

import math

import pytest
import torch

from risloc.config import SceneConfig
from risloc.core.params import Estimates
from risloc.estimators.nfmle import NFMLEConfig, ml_residual, nfmle_fit
from risloc.pipeline.order_check import OrderCheckConfig, check_order, check_selection
from risloc.simulation import simulate_range

POLISH = NFMLEConfig(iterations=3)


@pytest.fixture(scope="module")
def scenes(system):
    """K = 3 at 20 dB: the third source is the one the tests leave out or replace."""
    return simulate_range(0, 8, system, SceneConfig(), seed=5, split="test", K=3,
                          snr_db=20.0)


def sources(sc, K_max: int, k: int, extra: tuple[float, float, float] | None = None):
    """The first k true sources (+ one extra at (az deg, el deg, r m)) in K_max slots."""
    B = len(sc)
    cols = [t[:, :k] for t in (sc.azimuth, sc.elevation, sc.range_m)]
    if extra is not None:
        az, el, r = extra
        cols = [torch.cat([c, torch.full((B, 1), v)], 1)
                for c, v in zip(cols, (math.radians(az), math.radians(el), r))]
    n = cols[0].shape[1]
    pad = torch.full((B, K_max - n), math.nan)
    return Estimates(torch.full((B,), n), *(torch.cat([c, pad], 1) for c in cols),
                     torch.cat([torch.ones(B, n), pad], 1))


def polished(sc, system, est):
    fit = nfmle_fit(sc.y, sc.H, sc.codes, est, system, POLISH)
    return fit.estimates, fit.cost


def found_all(sc, est, tol_deg=1.0) -> torch.Tensor:
    """[B] bool: every true source within tol of an estimate."""
    d = torch.maximum((sc.azimuth.unsqueeze(-1) - est.azimuth.unsqueeze(1)).abs(),
                      (sc.elevation.unsqueeze(-1) - est.elevation.unsqueeze(1)).abs())
    real = torch.isfinite(sc.azimuth)
    return ((torch.rad2deg(d.nan_to_num(1e9)) < tol_deg).any(-1) | ~real).all(-1)


def test_a_missing_source_is_added(scenes, system):
    est, cost = polished(scenes, system, sources(scenes, system.K_max, 2))
    out = check_order(scenes.y, scenes.H, scenes.codes, est, cost, scenes.snr_db, system,
                      POLISH)
    assert out.K.tolist() == [3] * len(scenes)
    assert bool(found_all(scenes, out).all())
    # with the noise level estimated from the residual instead of the SNR, for all scenes
    # or for some (NaN = unknown): the same
    out2 = check_order(scenes.y, scenes.H, scenes.codes, est, cost, None, system, POLISH)
    assert out2.K.tolist() == [3] * len(scenes)
    partial = torch.where(torch.arange(len(scenes)) % 2 == 0, scenes.snr_db, math.nan)
    out3 = check_order(scenes.y, scenes.H, scenes.codes, est, cost, partial, system, POLISH)
    assert out3.K.tolist() == [3] * len(scenes)


def test_a_complete_fit_is_left_alone(scenes, system):
    est, cost = polished(scenes, system, sources(scenes, system.K_max, 3))
    out = check_order(scenes.y, scenes.H, scenes.codes, est, cost, scenes.snr_db, system,
                      POLISH)
    assert torch.equal(out.K, est.K)
    assert torch.equal(out.azimuth.nan_to_num(), est.azimuth.nan_to_num())


def test_a_spurious_source_is_swapped_for_the_missing_one(scenes, system):
    # Two true sources and a spurious one far from all (the cost passed is that of this
    # unpolished fit): the check adds the third true source and drops the spurious one,
    # K stays 3.
    est = sources(scenes, system.K_max, 2, extra=(55.0, -28.0, 9.0))
    cost = ml_residual(scenes.y, scenes.H, scenes.codes, est.azimuth, est.elevation,
                       est.range_m, est.mask, system)
    assert not bool(found_all(scenes, est).any())
    out = check_order(scenes.y, scenes.H, scenes.codes, est, cost, scenes.snr_db, system,
                      POLISH)
    assert out.K.tolist() == [3] * len(scenes)
    assert bool(found_all(scenes, out).all())


def test_unselected_scenes_are_unchanged(scenes, system):
    est, cost = polished(scenes, system, sources(scenes, system.K_max, 2))
    select = torch.arange(len(scenes)) % 2 == 0
    out = check_order(scenes.y, scenes.H, scenes.codes, est, cost, scenes.snr_db, system,
                      POLISH, select=select)
    assert out.K.tolist() == [3 if s else 2 for s in select.tolist()]
    assert torch.equal(out.azimuth[~select].nan_to_num(), est.azimuth[~select].nan_to_num())


def test_bad_settings_and_shapes_raise(scenes, system):
    with pytest.raises(ValueError, match="drop_nats"):
        OrderCheckConfig(add_nats=30.0, drop_nats=40.0)
    with pytest.raises(ValueError, match="gate"):
        OrderCheckConfig(gate=0.0)
    est, cost = polished(scenes, system, sources(scenes, system.K_max, 2))
    with pytest.raises(ValueError, match="slots"):
        two = Estimates(est.K, *(t[:, :2] for t in (est.azimuth, est.elevation,
                                                    est.range_m, est.score)))
        check_order(scenes.y, scenes.H, scenes.codes, two, cost, None, system, POLISH)


def test_the_selection_gates_on_head_confidence_and_snr():
    prob = torch.tensor([[0.97, 0.03], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]])
    snr = torch.tensor([10.0, 10.0, 0.0, math.nan])
    cfg = OrderCheckConfig()  # gate 0.95, min_snr_db 5
    assert check_selection(prob, snr, cfg).tolist() == [False, True, False, True]
    assert check_selection(prob, None, cfg).tolist() == [False, True, True, True]
    cfg = OrderCheckConfig(gate=1.0, min_snr_db=None)  # every scene, a sure one included
    assert check_selection(torch.tensor([[1.0, 0.0]] + prob[1:].tolist()), snr,
                           cfg).tolist() == [True] * 4
