"""The order head's statistics, features and fitting (risloc.pipeline.order)."""

import math

import pytest
import torch

from risloc.config import SceneConfig
from risloc.core.params import Estimates
from risloc.pipeline.order import (
    OrderFitConfig,
    fit_order_head,
    n_features,
    order_features,
    order_head_from_state,
    order_head_state,
    order_statistics,
)
from risloc.simulation import simulate_range


@pytest.fixture(scope="module")
def exact(system):
    """Noise-free (120 dB) scenes with K = 3 and the truth as candidates."""
    sc = simulate_range(0, 6, system, SceneConfig(snr_db=(120.0, 120.0)), seed=3,
                        split="test", K=3)
    cand = Estimates(sc.K, sc.azimuth, sc.elevation, sc.range_m,
                     torch.where(torch.isfinite(sc.azimuth), 1.0, math.nan))
    return sc, cand


def test_nested_fits_explain_exact_data_and_recover_the_powers(system, exact):
    sc, cand = exact
    stats = order_statistics(sc.y, sc.H, sc.codes, cand, system)
    C = stats.costs
    assert C.shape == (6, system.K_max + 1)
    assert bool((C[:, 1:] <= C[:, :-1]).all())  # nested fits never explain less
    rel = C / C[:, :1]
    assert bool((rel[:, 2] > 1e-3).all())  # two of three sources leave the third's energy
    assert float(rel[:, 3].max()) < 1e-6  # all three explain the data exactly
    true_power = sc.symbols[:, :, :3].abs().square().mean(1)
    torch.testing.assert_close(stats.powers[:, 2, :3], true_power.float(), rtol=1e-3, atol=0)
    assert float(stats.powers[:, 2, 3:].abs().max()) == 0.0  # unused slots stay 0
    # one exact source: the power it contributes per antenna is the measured power
    one = simulate_range(0, 4, system, SceneConfig(snr_db=(120.0, 120.0)), seed=4,
                         split="test", K=1)
    c1 = Estimates(one.K, one.azimuth, one.elevation, one.range_m, torch.ones_like(one.azimuth))
    s1 = order_statistics(one.y, one.H, one.codes, c1, system)
    torch.testing.assert_close(s1.received[:, 0, 0], one.y.abs().square().mean((-1, -2)),
                               rtol=1e-3, atol=0)


def test_features_are_finite_scale_invariant_and_flag_the_snr(system, exact):
    sc, cand = exact
    stats = order_statistics(sc.y, sc.H, sc.codes, cand, system)
    logits = torch.randn(6, system.K_max)
    f = order_features(stats, sc.y, logits, cand.score, sc.snr_db)
    assert f.shape == (6, n_features(system.K_max)) and bool(torch.isfinite(f).all())
    assert bool((f[:, -2] == 1).all()) and torch.allclose(f[:, -1], torch.full((6,), 12.0))
    unknown = order_features(stats, sc.y, logits, cand.score, None)
    assert bool((unknown[:, -2:] == 0).all())
    # scaling the measurements (and so every cost and power) changes no feature, nor does
    # scaling the channel (the fitted source powers scale with 1 / |H|^2)
    stats2 = order_statistics(10 * sc.y, sc.H, sc.codes, cand, system)
    g = order_features(stats2, 10 * sc.y, logits, cand.score, sc.snr_db)
    torch.testing.assert_close(f, g, rtol=0, atol=1e-4)
    stats3 = order_statistics(sc.y, 1e3 * sc.H, sc.codes, cand, system)
    h = order_features(stats3, sc.y, logits, cand.score, sc.snr_db)
    torch.testing.assert_close(f, h, rtol=0, atol=1e-3)


def test_fit_order_head_learns_a_separable_rule_reproducibly():
    gen = torch.Generator().manual_seed(0)
    K = torch.randint(1, 6, (2000,), generator=gen)
    X = torch.randn(2000, 8, generator=gen)
    X[:, 3] += 6.0 * K  # the class is readable from one feature (Bayes accuracy 0.995)
    cfg = OrderFitConfig(epochs=20)
    head = fit_order_head(X[:1500], K[:1500], 5, cfg)
    acc = (head.decide(X[1500:]) == K[1500:]).float().mean().item()
    assert acc > 0.95
    again = fit_order_head(X[:1500], K[:1500], 5, cfg)
    assert torch.equal(head(X[:10]), again(X[:10]))
    back = order_head_from_state(order_head_state(head))
    assert torch.equal(back(X[:10]), head(X[:10]))


def test_fit_order_head_rejects_bad_input():
    X, K = torch.zeros(10, 4), torch.ones(10, dtype=torch.int64)
    with pytest.raises(ValueError, match="len"):
        fit_order_head(X, K[:5], 5)
    with pytest.raises(ValueError, match="1..5"):
        fit_order_head(X, K * 6, 5)
    X[0, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_order_head(X, K, 5)


def test_truncate_keeps_the_strongest_slots():
    nan = math.nan
    est = Estimates(torch.tensor([3, 1]), torch.tensor([[1.0, 2.0, 3.0], [4.0, nan, nan]]),
                    torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3))
    t = est.truncate(torch.tensor([2, 3]))
    assert t.K.tolist() == [2, 1]  # never more than were found
    assert t.azimuth[0, :2].tolist() == [1.0, 2.0] and math.isnan(t.azimuth[0, 2])
    assert math.isnan(t.range_m[1, 1])
