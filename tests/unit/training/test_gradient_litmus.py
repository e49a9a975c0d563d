"""Gradient litmus: one fixed batch, 5 optimizer steps with the beta warm-up 0 -> 0.3.
The total loss must fall by >= 20 %, and every gradient must be finite and non-zero in
every parameter group at every step."""

import math

import torch

from risloc.config import SceneConfig
from risloc.simulation import simulate_batch
from risloc.training.config import load_train_config
from risloc.training.loop import Trainer, grad_norm


def test_one_batch_five_steps_loss_falls(tmp_path):
    cfg = load_train_config(None, [
        "model.width=16", "model.dilations=[1, 2]", "model.hidden=32", "optim.lr=3e-3",
        "optim.warmup_steps=1", "schedule.epochs=1", "schedule.steps_per_epoch=5",
        "schedule.beta_warmup_frac=1.0", "schedule.beta_jitter=0", "loss.spectral_scenes=4",
        f"out_dir={tmp_path}", "threads=1"])
    tr = Trainer(cfg)
    batch = simulate_batch(16, cfg.system, SceneConfig(snr_db=(10.0, 20.0)),
                           torch.Generator().manual_seed(5))
    losses, betas = [], []
    for _ in range(5):
        beta = tr.beta()
        terms = tr.micro_step(batch, beta, tr.loss_config())
        for group in tr.optimizer.param_groups:
            grads = [p.grad for p in group["params"]]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            assert grad_norm(group["params"]) > 0
        norm, n_bad, taken = tr.optimizer_step()
        assert taken and n_bad == 0 and math.isfinite(norm)
        losses.append(float(terms.total.detach()))
        betas.append(beta)
    assert betas[0] == 0.0 and 0.2 < betas[-1] <= 0.3 and betas == sorted(betas)
    with torch.no_grad():
        terms = tr.batch_losses(batch, tr.beta(), tr.loss_config())
    final = float(terms.total)
    assert final <= 0.8 * losses[0], (losses, final)
