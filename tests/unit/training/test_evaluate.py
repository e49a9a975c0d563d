"""End-to-end validation during training (risloc.training.evaluate)."""

import math
from types import SimpleNamespace

import pytest
import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.covariance.tools import subspace_overlap
from risloc.estimators.music import MusicConfig
from risloc.inference.forward import forward_blend
from risloc.inference.recipe import BlendConfig
from risloc.losses import LossConfig
from risloc.losses.covariance import covariance_nmse
from risloc.model import CovarianceNet, ModelConfig
from risloc.simulation import scene_true_covariance, simulate_batch
from risloc.training.evaluate import evaluate, objective_of

SYSTEM = SystemConfig()
MUSIC = MusicConfig(n_azimuth=21, n_elevation=11, n_range=6, refine_iterations=1)


def test_each_metric_is_its_own_quantity_and_batches_weigh_by_their_scenes():
    """Per scene: MUSIC with the network's K (never the true K), the NMSE of R_blend and of
    R_pred against R_true, the overlap at the true K; the loss means weigh a short last
    batch by its scenes; each headline number is its own summary field; the model's mode
    comes back (a mutation review: the true K to MUSIC, R_pred's NMSE as R_blend's, K_hat
    for the overlap, batches weighed alike, swapped metric names all passed)."""
    torch.manual_seed(0)
    model = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16)).eval()
    sc = simulate_batch(5, SYSTEM, SceneConfig(), torch.Generator().manual_seed(3), snr_db=10.0)
    args = (sc, SYSTEM, 0.3, BlendConfig(), LossConfig(), MUSIC)
    whole, split = evaluate(model, *args, batch_size=8), evaluate(model, *args, batch_size=2)
    assert whole.loss.keys() == split.loss.keys()
    for k in whole.loss:
        assert abs(whole.loss[k] - split.loss[k]) <= 1e-4 * (1 + abs(whole.loss[k])), k
    with torch.no_grad():
        fwd = forward_blend(model, sc.y, sc.H, sc.codes, sc.snr_db, 0.3, BlendConfig())
    R_true = scene_true_covariance(sc, SYSTEM)
    K_hat = fwd.out.K_hat
    assert not torch.equal(K_hat, sc.K)  # (an untrained network: the test can tell them apart)
    for res in (whole, split):
        assert torch.equal(res.K_hat, K_hat) and torch.equal(res.estimates.K, K_hat)
        torch.testing.assert_close(res.nmse, covariance_nmse(fwd.R_blend, R_true),
                                   rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(res.nmse_pred, covariance_nmse(fwd.out.R_pred, R_true),
                                   rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(res.overlap, subspace_overlap(fwd.R_blend, R_true, sc.K),
                                   rtol=1e-3, atol=1e-4)
    assert (whole.nmse - whole.nmse_pred).abs().min() > 1e-3  # (they differ: the test can tell)
    m, s = whole.metrics(), whole.summary
    for name in ("angle_median_deg", "azimuth_median_deg", "elevation_median_deg",
                 "range_median_m", "K_accuracy", "f1"):
        assert m[name] == getattr(s, name), name
    assert m["nmse"] == float(whole.nmse.mean()) and m["overlap"] == float(whole.overlap.mean())
    assert m["nmse_pred"] == float(whole.nmse_pred.mean())
    assert m["objective"] == whole.objective
    assert len({s.azimuth_median_deg, s.elevation_median_deg, s.f1, s.precision}) == 4
    assert not model.training
    model.train()
    evaluate(model, *args)
    assert model.training


def _small_model_and_scenes():
    """A small network in eval mode (seed 0) and two scenes at 10 dB."""
    torch.manual_seed(0)
    model = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16)).eval()
    sc = simulate_batch(2, SYSTEM, SceneConfig(), torch.Generator().manual_seed(3), snr_db=10.0)
    return model, sc


def test_the_factored_path_never_builds_the_n_by_n_truth(monkeypatch):
    """Where R_blend has a factor, R_true is its K_max-column factor too: the loss terms and
    metrics work on r x r products (a second mutation review: the dense N x N truth, equal
    in value, passed; the objective's F1 weight defaults to the config's 5 deg)."""
    import importlib

    ev = importlib.import_module("risloc.training.evaluate")  # (the package's evaluate is
    # the function)

    def dense(*a, **k):
        raise AssertionError("the N x N R_true built on the factored path")

    monkeypatch.setattr(ev, "scene_true_covariance", dense)
    model, sc = _small_model_and_scenes()
    res = evaluate(model, sc, SYSTEM, 0.3, BlendConfig(), LossConfig(), MUSIC)
    assert res.objective == ev.objective_of(res.summary, 5.0)
    assert res.summary.f1 < 1.0  # (the weight shows in the objective: the test can tell)


def test_an_error_mid_way_gives_the_model_its_mode_back(monkeypatch):
    """An exception (or Ctrl-C) during validation left a training model in eval mode."""
    import importlib

    ev = importlib.import_module("risloc.training.evaluate")

    def fails(*a, **k):
        raise RuntimeError("mid-way")

    monkeypatch.setattr(ev, "music", fails)
    model, sc = _small_model_and_scenes()
    model.train()
    with pytest.raises(RuntimeError, match="mid-way"):
        evaluate(model, sc, SYSTEM, 0.3, BlendConfig(), LossConfig(), MUSIC)
    assert model.training and all(m.training for m in model.modules())


def test_music_reads_r_blend_in_eval_mode_and_the_metrics_carry_every_loss(monkeypatch):
    """MUSIC scores R_blend (not R_pred), the forward pass runs in eval mode, the caller's
    F1 weight reaches the objective and every loss term is in metrics() as loss_<name> (a
    third mutation review: MUSIC on R_pred, no model.eval(), the weight fixed at 5 deg and
    the loss_ prefix dropped all passed)."""
    import importlib

    from risloc.covariance.tools import LowRank
    from risloc.estimators.music import music

    ev = importlib.import_module("risloc.training.evaluate")
    seen = []

    def spy(model, *a, **k):
        seen.append(model.training)
        return forward_blend(model, *a, **k)

    monkeypatch.setattr(ev, "forward_blend", spy)
    model, sc = _small_model_and_scenes()
    model.train()
    res = evaluate(model, sc, SYSTEM, 0.3, BlendConfig(), LossConfig(), MUSIC,
                   f1_weight_deg=0.0)
    assert seen == [False] and model.training
    model.eval()
    with torch.no_grad():
        fwd = forward_blend(model, sc.y, sc.H, sc.codes, sc.snr_db, 0.3, BlendConfig(),
                            dense=False)
    if fwd.factor is None:
        R_blend, R_pred = fwd.R_blend, fwd.out.R_pred
    else:
        R_blend, R_pred = fwd.factor, LowRank.of(fwd.out.F)
    K_hat = fwd.out.K_hat
    want, other = music(R_blend, K_hat, SYSTEM, MUSIC), music(R_pred, K_hat, SYSTEM, MUSIC)
    assert not torch.allclose(want.range_m, other.range_m, equal_nan=True)  # (can tell)
    for f in ("azimuth", "elevation", "range_m"):
        torch.testing.assert_close(getattr(res.estimates, f), getattr(want, f),
                                   equal_nan=True)
    assert res.objective == res.summary.angle_median_deg != ev.objective_of(res.summary, 5.0)
    m = res.metrics()
    assert res.loss and all(m[f"loss_{k}"] == v for k, v in res.loss.items())


def test_the_objective_adds_the_missed_f1_and_is_inf_where_nothing_was_paired():
    """objective = median angle error + weight x (1 - F1); inf where the median is NaN (a
    mutation review: weight x F1 and a NaN objective both passed)."""
    assert objective_of(SimpleNamespace(angle_median_deg=2.0, f1=0.75), 4.0) == 3.0
    assert objective_of(SimpleNamespace(angle_median_deg=math.nan, f1=0.0), 5.0) == math.inf
