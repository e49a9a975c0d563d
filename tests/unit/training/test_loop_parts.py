"""Pieces of the loop: gradient sanitising, optimizer wiring, EMA, the no-leak property."""

import math
import warnings
from pathlib import Path

import pytest
import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.inference.forward import forward_blend
from risloc.losses import LossConfig, compute_losses
from risloc.model import CovarianceNet, ModelConfig
from risloc.simulation import SceneBatch, scene_true_covariance, simulate_batch
from risloc.training.config import load_train_config
from risloc.training.loop import build_optimizer, ema_multi_avg_fn, sanitise_gradients

SYSTEM = SystemConfig()
ROOT = Path(__file__).resolve().parents[3]


def _small():
    torch.manual_seed(0)
    return CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16))


def test_sanitise_counts_and_zeroes_nonfinite_gradients():
    lin = torch.nn.Linear(3, 2)
    lin.weight.grad = torch.tensor([[1.0, math.nan, 2.0], [math.inf, 0.0, -math.inf]])
    lin.bias.grad = torch.tensor([1.0, 2.0])
    before = lin.weight.grad.clone()
    assert sanitise_gradients(lin) == 3
    finite = torch.isfinite(before)
    assert torch.equal(lin.weight.grad[finite], before[finite])  # the finite ones kept
    assert (lin.weight.grad[~finite] == 0).all() and torch.equal(lin.bias.grad,
                                                                 torch.tensor([1.0, 2.0]))
    assert sanitise_gradients(lin) == 0
    assert sanitise_gradients(torch.nn.Linear(2, 2)) == 0  # no gradients yet


def test_optimizer_wiring_covers_every_parameter():
    model = _small()
    cfg = load_train_config(None)
    opt = build_optimizer(model, cfg)
    wired = {id(p) for g in opt.param_groups for p in g["params"]}
    assert wired == {id(p) for p in model.parameters() if p.requires_grad}
    assert opt.param_groups[1]["weight_decay"] == 0.0  # biases, norms, the gate


def test_ema_warmup_and_decay():
    fn = ema_multi_avg_fn(0.9)
    avg, cur = [torch.zeros(2)], [torch.ones(2)]
    fn(avg, cur, torch.tensor(0))  # decay min(0.9, 1/10) = 0.1
    assert torch.allclose(avg[0], torch.full((2,), 0.9))
    fn(avg, cur, torch.tensor(1000))  # decay 0.9
    assert torch.allclose(avg[0], torch.full((2,), 0.9 + 0.1 * 0.1))


def test_perturbing_R_true_leaves_the_prediction_unchanged():
    """No leak: R_true is only a target. Perturbing the truth (hence R_true) changes the loss
    but not one bit of the network output or of R_blend."""
    model = _small().eval()
    sc = simulate_batch(3, SYSTEM, SceneConfig(), torch.Generator().manual_seed(2), snr_db=5.0)
    moved = SceneBatch(**{**sc.__dict__, "azimuth": sc.azimuth + 0.2,
                          "range_m": sc.range_m * 1.5})
    R1, R2 = scene_true_covariance(sc, SYSTEM), scene_true_covariance(moved, SYSTEM)
    assert (R1 - R2).abs().max() > 0.1
    with torch.no_grad():
        f1, f2 = (forward_blend(model, s.y, s.H, s.codes, s.snr_db, 0.3) for s in (sc, moved))
    assert torch.equal(f1.out.R_pred, f2.out.R_pred) and torch.equal(f1.R_blend, f2.R_blend)
    assert torch.equal(f1.out.K_logits, f2.out.K_logits)
    # and R_true receives no gradient through the loss: it is detached inside
    R1g = R1.clone().requires_grad_(True)
    terms = compute_losses(f1.out, f1.R_blend, R1g, sc, SYSTEM, LossConfig())
    assert not terms.total.requires_grad or torch.autograd.grad(
        terms.total, R1g, allow_unused=True)[0] is None


def test_forward_blend_rejects_scenes_of_another_system():
    model = _small()
    sc = simulate_batch(2, SYSTEM, SceneConfig(), torch.Generator().manual_seed(0))
    other = CovarianceNet(SystemConfig(N_H=10), ModelConfig(width=16, dilations=(1,),
                                                             hidden=16))
    with pytest.raises(ValueError):
        forward_blend(other, sc.y, sc.H, sc.codes, sc.snr_db, 0.3)
    assert forward_blend(model, sc.y, sc.H, sc.codes, None, 0.0).R_blend.shape == (2, 144, 144)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # the skipped step
def test_a_step_the_amp_scaler_skips_is_not_counted_as_taken(tmp_path):
    # With mixed precision the scaler records inf/NaN at unscale and skips the step, even
    # though the sanitised gradients look finite afterwards; weights, EMA and the "taken"
    # count must all say so. (A CPU GradScaler stands in for the CUDA one.)
    from risloc.training.loop import Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [f"out_dir={tmp_path}"])
    tr = Trainer(cfg)
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    tr.scaler.scale(torch.tensor(1.0))  # as micro_step's scaled backward: the scale exists
    before = [p.detach().clone() for p in tr.model.parameters()]
    averaged = int(tr.ema.n_averaged)
    for p in tr.model.parameters():
        p.grad = torch.ones_like(p)
    next(tr.model.parameters()).grad.view(-1)[0] = math.inf
    scheduled = tr.scheduler.last_epoch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        norm, n_bad, taken = tr.optimizer_step()
        assert n_bad == 1 and math.isfinite(norm) and not taken
        assert tr.scaler.get_scale() < 2.0 ** 8
        assert all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
        assert int(tr.ema.n_averaged) == averaged  # the EMA did not count the skipped step
        assert tr.scheduler.last_epoch == scheduled  # nor did the learning-rate schedule
        for p in tr.model.parameters():  # a clean step is taken
            p.grad = torch.ones_like(p)
        assert tr.optimizer_step()[2]
    assert int(tr.ema.n_averaged) == averaged + 1
    assert tr.scheduler.last_epoch == scheduled + 1
    # the schedule never stepped before the optimizer (PyTorch's order warning under AMP)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert not all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
