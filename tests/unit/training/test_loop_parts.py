"""Pieces of the loop: gradient sanitising, optimizer wiring, EMA, the no-leak property."""

import copy
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
from risloc.training.loop import (
    build_optimizer,
    clip_gradients,
    ema_multi_avg_fn,
    load_optimizer_state,
    sanitise_gradients,
)

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


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, 3e30])
def test_clip_gradients_is_sanitise_then_clip_grad_norm(bad):
    """clip_gradients (one device read on a clean step) leaves the gradients, norm and
    count that sanitise_gradients followed by clip_grad_norm_ leave: clean gradients, a
    NaN, an inf, and finite entries whose squares overflow float32 (a non-finite norm,
    nothing zeroed)."""
    gen = torch.Generator().manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)) for _ in "ab"]
    nets[1].load_state_dict(nets[0].state_dict())
    grads = [torch.randn(p.shape, generator=gen) for p in nets[0].parameters()]
    if bad is not None:
        grads[2].view(-1)[1] = bad
    for net in nets:
        for p, g in zip(net.parameters(), grads, strict=True):
            p.grad = g.clone()
    norm, n_bad = clip_gradients(nets[0], 0.5)
    n_ref = sanitise_gradients(nets[1])
    ref = float(torch.nn.utils.clip_grad_norm_(nets[1].parameters(), 0.5))
    assert n_bad == n_ref == (1 if bad in (math.nan, math.inf) else 0)
    assert norm == ref or (math.isnan(norm) and math.isnan(ref))
    assert math.isfinite(norm) == (bad is None or bad != 3e30)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, equal_nan=True)
    assert clip_gradients(torch.nn.Linear(2, 2), 1.0) == (0.0, 0)  # no gradients yet


def test_optimizer_wiring_covers_every_parameter():
    model = _small()
    cfg = load_train_config(None)
    opt = build_optimizer(model, cfg)
    wired = {id(p) for g in opt.param_groups for p in g["params"]}
    assert wired == {id(p) for p in model.parameters() if p.requires_grad}
    assert opt.param_groups[1]["weight_decay"] == 0.0  # biases, norms, the gate
    # every matrix (linear layers' 2-D weights too) decays, nothing else (a mutation review:
    # ndim > 2 passed, AdamW's decay being too small for the fused-step comparison to see)
    assert {id(p) for p in opt.param_groups[0]["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad and p.ndim >= 2}
    assert any(p.ndim == 2 for p in opt.param_groups[0]["params"])


def test_the_fused_optimizer_steps_as_the_plain_one():
    """build_optimizer's fused AdamW (on the CPU here) moves the weights as PyTorch's
    per-tensor AdamW with the same groups does, over 5 steps, to float32 rounding."""
    models = [_small() for _ in "ab"]
    models[1].load_state_dict(models[0].state_dict())
    start = [q.detach().clone() for q in models[0].parameters()]
    cfg = load_train_config(None, ["optim.lr=0.01"])
    fused = build_optimizer(models[0], cfg)
    assert fused.param_groups[0]["fused"]
    plain = torch.optim.AdamW([{**g, "params": list(p)} for g, p in zip(
        [{"weight_decay": g["weight_decay"]} for g in fused.param_groups],
        [[q for q in models[1].parameters() if (q.ndim >= 2) == (i == 0)] for i in (0, 1)],
        strict=True)], lr=0.01, betas=cfg.optim.betas, foreach=False)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(q.shape, generator=gen) for q in models[0].parameters()]
        for m, opt in zip(models, (fused, plain), strict=True):
            for q, g in zip(m.parameters(), grads, strict=True):
                q.grad = g.clone()
            opt.step()
    for a, b, c in zip(models[0].parameters(), models[1].parameters(), start, strict=True):
        assert (a - c).abs().max() > 1e-3  # it moved (5 steps of about lr = 0.01)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_plain_optimizer_state_resumes_fused():
    """A checkpoint of the per-tensor AdamW (fused=None, step counts on the CPU, as written
    before the fused one) resumes with the fused step, continuing as the plain optimizer
    does to float32 rounding; PyTorch's own load would have restored the plain loop."""
    models = [_small() for _ in "abc"]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    cfg = load_train_config(None, ["optim.lr=0.01"])
    gen = torch.Generator().manual_seed(2)

    def steps(model, opt, n, seed):
        gen.manual_seed(seed)
        for _ in range(n):
            for q in model.parameters():
                q.grad = torch.randn(q.shape, generator=gen)
            opt.step()

    old = build_optimizer(models[0], cfg)
    for g in old.param_groups:  # what the optimizer of an old checkpoint was
        g["fused"] = None
    steps(models[0], old, 3, seed=3)
    saved = copy.deepcopy(old.state_dict())  # as read from a file: its own tensors
    assert saved["param_groups"][0]["fused"] is None
    models[1].load_state_dict(models[0].state_dict())
    resumed = build_optimizer(models[1], cfg)
    load_optimizer_state(resumed, copy.deepcopy(saved))
    assert all(g["fused"] for g in resumed.param_groups)
    assert all(s["step"].dtype == torch.float32 for s in resumed.state.values())
    plain = build_optimizer(models[2], cfg)
    plain.load_state_dict(copy.deepcopy(saved))  # PyTorch's load: the saved one comes back
    assert plain.param_groups[0]["fused"] is None
    models[2].load_state_dict(models[0].state_dict())
    steps(models[1], resumed, 3, seed=4)
    steps(models[2], plain, 3, seed=4)
    for a, b, c in zip(models[1].parameters(), models[2].parameters(), models[0].parameters(),
                       strict=True):
        assert (a - c).abs().max() > 1e-3  # it moved on from the checkpoint
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="parameter groups"):
        load_optimizer_state(resumed, {**saved, "param_groups": saved["param_groups"][:1]})


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


def test_epoch_stats_count_the_non_finite_losses_they_leave_out():
    from risloc.training.logs import EpochStats

    stats = EpochStats()
    for total in (1.0, math.nan, 3.0, math.inf):
        stats.add_terms({"total": total, "cov": 0.5})
    row = stats.summary()
    assert row["train_total"] == 2.0 and row["train_cov"] == 0.5
    assert row["nonfinite_losses"] == 2


def test_a_run_folder_is_held_by_one_run_at_a_time(tmp_path):
    """Two runs into one folder (two --resume at once) would interleave their logs and
    checkpoints; the second stops, naming the first. A killed holder frees the folder."""
    import subprocess
    import sys
    import time

    from risloc.training.loop import RunFolderInUse, run_folder_lock, train

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                            [f"out_dir={tmp_path}", "progress=false"])
    with run_folder_lock(tmp_path):
        with pytest.raises(RunFolderInUse, match=rf"{tmp_path} is in use by another training "
                                                 rf"run \(pid \d+ on "):
            train(cfg)
    assert not (tmp_path / "epochs.csv").exists()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from "
         "risloc.training.loop import run_folder_lock as lock\n"
         f"with lock(Path({str(tmp_path)!r})):\n print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderInUse, match=f"pid {holder.pid} "), \
                run_folder_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    for _ in range(50):  # the operating system releases the lock of a killed process
        try:
            with run_folder_lock(tmp_path):
                break
        except RunFolderInUse:
            time.sleep(0.1)
    else:
        pytest.fail("the killed holder's lock was not released")


def test_a_run_folder_lock_is_let_go_and_its_holder_line_cleared_on_an_error(tmp_path):
    """An error inside the held folder releases it (the next run takes it) and leaves no
    line naming a process that no longer holds it (a mutation review: the line left behind
    passed)."""
    from risloc.training.loop import LOCK_FILE, run_folder_lock

    with pytest.raises(RuntimeError, match="boom"), run_folder_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().startswith("pid ")
        raise RuntimeError("boom")
    assert (tmp_path / LOCK_FILE).read_text() == ""
    with run_folder_lock(tmp_path):
        pass
    assert (tmp_path / LOCK_FILE).read_text() == ""


def test_two_accumulated_micro_batches_make_one_batch_s_gradient(tmp_path):
    """With accumulation 2, two micro-steps on the same scenes leave the gradient one
    micro-step leaves with accumulation 1: each adds loss / accumulation (a mutation review:
    the undivided loss passed, AdamW being nearly blind to the gradient's scale)."""
    from risloc.training.loop import Trainer

    grads = {}
    for acc in (1, 2):
        cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                                [f"out_dir={tmp_path}", f"optim.accumulation={acc}"])
        tr = Trainer(cfg)
        scenes = tr.data.batch(0, 0)
        loss_cfg, beta = tr.loss_config(), tr.beta()
        for _ in range(acc):
            tr.micro_step(scenes, beta, loss_cfg)
        grads[acc] = [p.grad.clone() for p in tr.model.parameters() if p.grad is not None]
    assert grads[1] and len(grads[1]) == len(grads[2])
    for a, b in zip(grads[1], grads[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_each_epoch_trains_with_its_phase_s_loss_weights(tmp_path):
    """Epoch e (0-based) trains with the weights of phase_of(e): the warm-up's in epoch 0,
    the main phase's until the final fifth, then the final's (a mutation review: the next
    epoch's weights passed)."""
    from risloc.training.loop import Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                            [f"out_dir={tmp_path}", "schedule.epochs=10"])
    tr = Trainer(cfg)
    sched = cfg.schedule.weight_schedule
    assert sched
    for epoch, phase in ((0, 0), (1, 1), (7, 1), (8, 2), (9, 2)):
        tr.epoch = epoch
        got = tr.loss_config()
        assert {t: getattr(got, t) for t in sched} == {t: v[phase] for t, v in sched.items()}


def test_ten_non_finite_steps_in_a_row_stop_a_run_and_a_clean_step_resets_the_count(
        tmp_path):
    """Without AMP the tenth step in a row with NaN gradients stops the run, not the
    eleventh nor the fiftieth (AMP's limit); a clean step in between starts the count anew
    (a mutation review: a count never reset, '>', AMP's limit all passed)."""
    from risloc.training.loop import DIVERGED_STEPS, DivergedError, Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [f"out_dir={tmp_path}"])
    tr = Trainer(cfg)
    assert not tr.scaler.is_enabled() and DIVERGED_STEPS == 10

    def step(bad):
        for p in tr.model.parameters():
            p.grad = torch.full_like(p, 1e-3)
        if bad:
            next(tr.model.parameters()).grad.view(-1)[0] = math.nan
        return tr.optimizer_step()

    for _ in range(9):
        assert step(True)[1] == 1
    assert step(False)[1] == 0 and tr.bad_in_a_row == 0
    for _ in range(9):
        step(True)
    with pytest.raises(DivergedError, match="10 optimizer steps in a row"):
        step(True)


def test_with_mixed_precision_only_the_fiftieth_non_finite_step_in_a_row_stops_a_run(
        tmp_path):
    """An AMP scaler overflows for some steps in a row while it settles: with it on, the
    tenth bad step in a row goes on and the fiftieth stops (a mutation review: the plain
    limit used under AMP too passed). A CPU GradScaler stands in for the CUDA one."""
    from risloc.training.loop import DIVERGED_STEPS_AMP, DivergedError, Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [f"out_dir={tmp_path}"])
    tr = Trainer(cfg)
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    tr.scaler.scale(torch.tensor(1.0))  # as micro_step's scaled backward: the scale exists
    assert DIVERGED_STEPS_AMP == 50

    def step():
        for p in tr.model.parameters():
            p.grad = torch.full_like(p, 1e-3)
        next(tr.model.parameters()).grad.view(-1)[0] = math.nan
        return tr.optimizer_step()

    for _ in range(49):
        assert not step()[2]
    with pytest.raises(DivergedError, match="50 optimizer steps in a row"):
        step()


def test_a_step_whose_gradient_norm_overflows_is_skipped_and_gradients_are_cleared(tmp_path):
    """Finite gradients whose squares overflow (a non-finite norm): no update, no schedule
    or EMA step, yet the step counter moves on; every step leaves no gradient behind (a
    mutation review: such a step taken, zero_grad left out, the counter held all passed)."""
    from risloc.training.loop import Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [f"out_dir={tmp_path}"])
    tr = Trainer(cfg)
    before = [p.detach().clone() for p in tr.model.parameters()]
    for p in tr.model.parameters():
        p.grad = torch.full_like(p, 3e30)
    norm, n_bad, taken = tr.optimizer_step()
    assert not math.isfinite(norm) and n_bad == 0 and not taken
    assert all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters(), strict=True))
    assert tr.scheduler.last_epoch == 0 and int(tr.ema.n_averaged) == 0 and tr.step == 1
    assert all(p.grad is None for p in tr.model.parameters())
    for p in tr.model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    assert tr.optimizer_step()[2] and tr.step == 2 and tr.scheduler.last_epoch == 1
    assert all(p.grad is None for p in tr.model.parameters())


def test_the_step_s_beta_rate_and_swa_rate_come_from_the_recipe(tmp_path):
    """beta at optimizer step k: the recipe's jitter (the HPO one in hpo_mode) around the
    anneal at k / (epochs x steps_per_epoch), drawn for step k, micro-batches aside; the
    cosine schedule spans the optimizer steps; SWALR anneals to swa_lr_ratio x lr (a
    mutation review: the epoch's progress, the micro-batch count, the plain jitter in
    hpo_mode, a schedule over micro-batches and an absolute SWA rate all passed)."""
    from risloc.training import schedules
    from risloc.training.loop import Trainer

    over = [f"out_dir={tmp_path}", "optim.accumulation=2", "schedule.epochs=4",
            "schedule.steps_per_epoch=5", "schedule.beta_warmup_frac=0.5",
            "schedule.beta_jitter=0.05", "schedule.beta_jitter_hpo=0.01", "optim.lr=0.004"]
    for hpo in (False, True):
        cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                                [*over, f"schedule.hpo_mode={str(hpo).lower()}"])
        tr = Trainer(cfg)
        assert tr.total_steps == 20
        jitter = 0.01 if hpo else 0.05
        for k in (0, 3, 7, 15):
            tr.step, tr.micro, tr.epoch = k, 2 * k, k // 5
            want = schedules.jittered_beta(
                schedules.beta_at(k / 20, cfg.blend.beta, 0.5), jitter, cfg.seed, k)
            assert tr.beta() == pytest.approx(want, abs=1e-12), (hpo, k)
    assert tr.scheduler.lr_lambdas[0](12) == pytest.approx(
        schedules.get_lr(12, 20, cfg.optim.warmup_steps, 1.0, cfg.optim.min_lr_ratio))
    tr._start_swa()
    assert tr.optimizer.param_groups[0]["swa_lr"] == pytest.approx(
        cfg.schedule.swa_lr_ratio * 0.004)


def test_an_epoch_trains_in_training_mode(tmp_path):
    """(a mutation review: an epoch run in eval mode passed; the network's bf16 path reads
    the mode)"""
    from risloc.training.loop import Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                            [f"out_dir={tmp_path}", "schedule.steps_per_epoch=1"])
    tr = Trainer(cfg)
    tr.model.eval()
    seen = []
    batch_losses = tr.batch_losses
    tr.batch_losses = lambda *a: (seen.append(tr.model.training), batch_losses(*a))[1]
    tr.train_epoch(None)
    assert seen == [True] and tr.step == 1


def test_swa_epochs_step_at_the_swa_rate_and_leave_the_cosine_schedule_alone(tmp_path):
    """Once SWA runs the rate is SWALR's (set per epoch): an optimizer step in an SWA epoch
    neither advances the warm-up + cosine schedule nor sets its rate back (a mutation
    review: the cosine schedule stepped through the SWA epochs passed)."""
    from risloc.training.loop import Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                            [f"out_dir={tmp_path}", "schedule.epochs=4"])
    tr = Trainer(cfg)
    tr.epoch = tr.swa_start
    assert tr.in_swa and tr.swa_start == 2
    tr._start_swa()
    lr, scheduled = tr.optimizer.param_groups[0]["lr"], tr.scheduler.last_epoch
    for _ in range(3):
        for p in tr.model.parameters():
            p.grad = torch.full_like(p, 1e-3)
        assert tr.optimizer_step()[2]
    assert tr.scheduler.last_epoch == scheduled
    assert tr.optimizer.param_groups[0]["lr"] == lr
    assert lr != pytest.approx(tr.scheduler.lr_lambdas[0](3) * cfg.optim.lr)


def test_an_epoch_trains_on_the_run_s_next_micro_batches(tmp_path):
    """Epoch e draws micro-batches micro .. micro + steps x accumulation - 1 of the run's
    stream, with e's scene settings: every epoch new scenes (a mutation review: each epoch
    drawing micro-batches 0 .. n - 1 again passed, resumed runs repeating it alike)."""
    from risloc.training.loop import Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                            [f"out_dir={tmp_path}", "schedule.steps_per_epoch=2",
                             "optim.accumulation=2", "prefetch=false"])
    tr = Trainer(cfg)
    seen = []
    batch = tr.data.batch
    tr.data.batch = lambda index, epoch: (seen.append((index, epoch)), batch(index, epoch))[1]
    tr.train_epoch(None)
    tr.epoch += 1
    tr.train_epoch(None)
    assert seen == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 1), (7, 1)]
    assert tr.micro == 8 and tr.step == 4


def test_a_loss_weight_of_0_in_some_epoch_makes_every_parameter_get_a_gradient(tmp_path):
    """_may_skip_a_term: a weight 0 in the recipe's loss or in a phase of its weight
    schedule (a mutation review: a plain loss weight of 0 left out passed)."""
    from risloc.training.loop import _may_skip_a_term

    def skips(*over):
        return _may_skip_a_term(load_train_config(ROOT / "configs" / "train_tiny.yaml",
                                                  [f"out_dir={tmp_path}", *over]))

    assert not skips()
    assert skips("loss.lam_peak=0")
    assert skips("schedule.weight_schedule.lam_peak_contrast=[0.05,0.1,0.0]")


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # SWALR without steps
def test_a_run_resumed_during_the_swa_anneal_continues_its_swa_rate_and_history(tmp_path):
    """restore brings back SWALR's place in its anneal: the resumed run's next SWA epochs
    have the rates the uninterrupted run's have; and the epochs' rows, the best epoch and
    the count of epochs without improvement, which the final metrics and early stopping
    read (a mutation review: a fresh SWALR, its anneal begun again from the checkpoint's
    rate, and an empty history both passed)."""
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.training.loop import Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                            [f"out_dir={tmp_path}", "schedule.epochs=8",
                             "schedule.swa_anneal_epochs=4"])
    tr = Trainer(cfg)
    tr.epoch = tr.swa_start
    tr._start_swa()
    for _ in range(2):  # two SWA epochs into the anneal
        tr.swa.update_parameters(tr.model)
        tr.swa_scheduler.step()
        tr.epoch += 1
    tr.history = [{"epoch": 1, "val_objective": 0.5}, {"epoch": 2, "val_objective": 0.7}]
    tr.best, tr.bad_epochs = {"objective": 0.5, "epoch": 1}, 1
    save_checkpoint(tmp_path / "last.pt", tr.state())
    back = Trainer(cfg)
    back.restore(tmp_path / "last.pt")
    assert (back.history, back.best, back.bad_epochs) == (tr.history, tr.best, 1)
    for t in (tr, back):
        t.swa_scheduler.step()
    lr = tr.optimizer.param_groups[0]["lr"]
    assert back.optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12)
    assert lr != pytest.approx(cfg.schedule.swa_lr_ratio * cfg.optim.lr)  # still annealing


def test_the_swa_metrics_are_the_swa_average_s(tmp_path):
    """_finish validates the SWA average for the swa_* metrics, not the EMA nor the last
    weights (a mutation review: the EMA validated in its place passed)."""
    from risloc.training.loop import Trainer, _finish

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [f"out_dir={tmp_path}"])
    tr = Trainer(cfg)
    tr.epoch = tr.swa_start
    tr._start_swa()
    seen = []

    class Seen(Exception):
        pass

    def validate(model, scenes):
        seen.append(model)
        raise Seen

    tr.validate = validate
    with pytest.raises(Seen):
        _finish(tr, None, tmp_path, False)
    assert len(seen) == 1 and seen[0] is tr.swa.module and tr.swa.module is not tr.ema.module


def test_every_rank_validates_with_the_recipe_s_spectral_scenes(tmp_path, monkeypatch):
    """Each of N processes trains with spectral_scenes / N of its shard but validates on all
    the scenes: its validation losses take the recipe's spectral_scenes, as one process
    does (a 2-process run logged val_loss_gap 0.0 where the same weights gave 0.071 in one
    process: its spectral terms over the first 2 validation scenes instead of 4)."""
    from risloc.training import loop
    from risloc.training.distributed import Distributed

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                            [f"out_dir={tmp_path}", "data.shards=2"])
    tr = loop.Trainer(cfg)
    tr.dist = Distributed(rank=0, world=2)
    seen = []
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: seen.append(a[5]))
    tr.validate(tr.model, None)
    assert cfg.loss.spectral_scenes == 4
    assert tr.loss_config().spectral_scenes == 2  # training: this rank's share
    assert seen[0].spectral_scenes == 4


@pytest.mark.parametrize(("rank", "progress"), [(0, True), (1, True), (0, False)])
def test_only_rank_0_draws_the_epoch_progress_bar(tmp_path, monkeypatch, rank, progress):
    """Under torchrun every rank drew its bar on the one terminal, each overwriting the
    other's line (two "epoch 1/1 ... loss" bars with their shards' losses interleaved)."""
    from risloc.training import loop
    from risloc.training.distributed import Distributed

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                            [f"out_dir={tmp_path}", "data.shards=2",
                             f"progress={str(progress).lower()}", "schedule.steps_per_epoch=1"])
    tr = loop.Trainer(cfg)
    tr.dist = Distributed(rank=rank, world=2)
    shown = []
    real = loop.epoch_progress
    monkeypatch.setattr(loop, "epoch_progress",
                        lambda enabled, *a: (shown.append(enabled), real(False, *a))[1])
    tr.train_epoch(None)
    assert shown == [progress and rank == 0]


def test_a_world_size_other_than_the_shards_is_refused_naming_both_fixes(tmp_path,
                                                                        monkeypatch):
    """3 processes on a recipe (or a resumed run) of data.shards=2: the error names the
    process count that fits the recipe, as a --resume cannot change data.shards (the bare
    "need data.shards = 3" sent a resuming user to a --set that resume refuses)."""
    from risloc.training import loop

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                            [f"out_dir={tmp_path}", "data.shards=2"])
    monkeypatch.setattr(loop.distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match=r"3 processes need data\.shards = 3 \(got 2\).*"
                       r"--nproc_per_node 2 or in one process.*--set data\.shards=3"):
        loop.Trainer(cfg)


def test_resume_brings_back_the_checkpoint_s_random_state(tmp_path):
    """restore sets the global torch RNG to the checkpoint's, not the seed's fresh state a
    new Trainer leaves (a mutation review: the state saved but never restored passed, no
    step of today's loop drawing from the global RNG)."""
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.training.loop import Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [f"out_dir={tmp_path}"])
    tr = Trainer(cfg)
    torch.rand(5)  # the run's draws move the state on from the seed's
    save_checkpoint(tmp_path / "last.pt", tr.state())
    want = torch.rand(3)
    back = Trainer(cfg)  # seeds the global RNG afresh
    back.restore(tmp_path / "last.pt")
    assert torch.equal(torch.rand(3), want)


def test_a_resumed_run_keeps_counting_its_non_finite_steps_in_a_row(tmp_path):
    """A streak of non-finite steps across a checkpoint goes on counting after a resume: a
    diverging run stops at the same step whether or not it was interrupted (the count was
    not saved, so a resumed run began it at 0)."""
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.training.loop import Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [f"out_dir={tmp_path}"])
    tr = Trainer(cfg)
    tr.bad_in_a_row = 7
    save_checkpoint(tmp_path / "last.pt", tr.state())
    back = Trainer(cfg)
    back.restore(tmp_path / "last.pt")
    assert back.bad_in_a_row == 7


def test_a_run_resumed_before_swa_continues_its_warm_up_and_cosine_rate(tmp_path):
    """restore brings back the warm-up + cosine schedule's place: the resumed run's next
    step has the uninterrupted run's rate, not the warm-up's first again (a mutation review:
    the schedule never restored passed, the tiny recipe's resumed epochs all being SWA's)."""
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.training.loop import Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                            [f"out_dir={tmp_path}", "schedule.swa_frac=0"])
    tr = Trainer(cfg)

    def step(t):
        for p in t.model.parameters():
            p.grad = torch.full_like(p, 1e-3)
        assert t.optimizer_step()[2]

    for _ in range(3):
        step(tr)
    save_checkpoint(tmp_path / "last.pt", tr.state())
    back = Trainer(cfg)
    back.restore(tmp_path / "last.pt")
    for t in (tr, back):
        step(t)
    lr = tr.optimizer.param_groups[0]["lr"]
    assert back.scheduler.last_epoch == tr.scheduler.last_epoch == 4
    assert back.optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12)
    assert lr != pytest.approx(tr.scheduler.lr_lambdas[0](1) * cfg.optim.lr)


def test_the_optimizer_steps_on_gradients_clipped_to_the_recipe_s_grad_clip(tmp_path):
    """optimizer_step clips to optim.grad_clip before the step and returns the norm before
    clipping (a mutation review: the recipe's clip ignored passed, AdamW's update being
    nearly blind to the gradient's scale)."""
    from risloc.training.loop import Trainer, grad_norm

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml",
                            [f"out_dir={tmp_path}", "optim.grad_clip=0.25"])
    tr = Trainer(cfg)
    params = list(tr.model.parameters())
    for p in params:
        p.grad = torch.ones_like(p)
    want = math.sqrt(sum(p.numel() for p in params))
    seen = []
    tr.optimizer.register_step_pre_hook(lambda *_: seen.append(grad_norm(params)))
    norm, n_bad, taken = tr.optimizer_step()
    assert taken and n_bad == 0 and norm == pytest.approx(want, rel=1e-5)
    assert seen == [pytest.approx(0.25, rel=1e-4)]


def test_the_epoch_line_says_which_epoch_of_how_many_and_the_time_left(caplog):
    """A log file (stdout redirected: no progress bar) still tells a long run's progress:
    'epoch 2/20' and the time left at the mean epoch time so far (two of 55 and 65 s:
    18 epochs x 60 s = 18 min); the last epoch has none."""
    from risloc.training.loop import _log_epoch

    row = {"epoch": 2, "seconds": 65.0, "train_total": 1.0, "val_angle_median_deg": 1.0,
           "val_K_accuracy": 0.5, "val_f1": 0.5, "val_nmse": 0.2, "val_overlap": 0.7,
           "val_objective": 3.0}
    history = [{"seconds": 55.0}, {"seconds": 65.0}]
    with caplog.at_level("INFO", logger="risloc.training.loop"):
        _log_epoch(row, False, 20, history)
        _log_epoch({**row, "epoch": 20}, True, 20, history)
    first, last = (r.getMessage() for r in caplog.records)
    assert first.startswith("epoch   2/20 ") and first.endswith("  ~18 min of epochs left"), first
    assert last.startswith("epoch  20/20 ") and last.endswith("*best*"), last


def test_the_time_left_reads_in_seconds_minutes_then_hours():
    """Up to 90 s in seconds, then minutes up to 90 min, then hours (the epoch line)."""
    from risloc.training.loop import _duration

    assert [_duration(s) for s in (45, 75, 89, 90, 1020, 5399, 5400, 8280)] == [
        "45s", "75s", "89s", "2 min", "17 min", "90 min", "1.5 h", "2.3 h"]


def test_early_stopping_best_epoch_checkpoints_and_a_stopped_run_s_resume(tmp_path,
                                                                           monkeypatch):
    """Patience and min_improvement decide improvement strictly; best.pt holds the best
    epoch, last.pt the last; the headline val_* are the best epoch's; a resumed run that
    had stopped stays stopped and keeps its epoch rows (a mutation review: '<=', '+
    min_improvement', a bad-epoch count never reset, '>' patience, best.pt written every
    epoch, a resume that trains on all survived)."""
    from risloc.inference.checkpoint import load_checkpoint
    from risloc.training import loop
    from risloc.training.logs import EpochStats

    objectives = iter([math.inf, 3.0, 2.875, 2.0, 1.75, 5.0, 0.5, 0.25])
    validated = []

    class Val:
        def __init__(self, objective):
            self.objective = objective

        def metrics(self):
            return {"objective": self.objective}

    def validate(self, model, scenes):
        validated.append(self.epoch)
        return Val(next(objectives))

    monkeypatch.setattr(loop.Trainer, "train_epoch", lambda self, csv: EpochStats())
    monkeypatch.setattr(loop.Trainer, "validate", validate)
    monkeypatch.setattr(loop, "_log_epoch", lambda *a: None)
    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [
        f"out_dir={tmp_path}", "schedule.epochs=8", "schedule.patience=2",
        "schedule.min_improvement=0.25", "schedule.swa_frac=0"])
    m = loop.train(cfg)
    assert (m["epochs_run"], m["best_epoch"], m["best_objective"]) == (6, 4, 2.0)
    assert m["stopped_early"] == 1.0 and m["val_objective"] == 2.0
    assert load_checkpoint(tmp_path / "best.pt", torch.device("cpu"))["epoch"] == 4
    assert load_checkpoint(tmp_path / "last.pt", torch.device("cpu"))["epoch"] == 6
    assert len(validated) == 6
    m = loop.train(cfg, resume=True)
    assert len(validated) == 6 and m["epochs_run"] == 6 and m["best_epoch"] == 4
    rows = (tmp_path / "epochs.csv").read_text().splitlines()
    assert len(rows) == 1 + 6
    # a first epoch that paired nothing (objective inf) is still the best so far: best.pt
    # holds an epoch
    objectives = iter([math.inf])
    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [
        f"out_dir={tmp_path / 'one'}", "schedule.epochs=1", "schedule.swa_frac=0"])
    m = loop.train(cfg)
    assert m["best_epoch"] == 1 and (tmp_path / "one" / "best.pt").exists()


def test_resume_brings_back_the_micro_batch_count(tmp_path):
    """restore sets the micro-batch count the data is drawn by (a mutation review: a
    restore that dropped it passed)."""
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.training.loop import Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [f"out_dir={tmp_path}"])
    tr = Trainer(cfg)
    tr.epoch, tr.step, tr.micro = 1, 3, 7
    save_checkpoint(tmp_path / "last.pt", tr.state())
    back = Trainer(cfg)
    back.restore(tmp_path / "last.pt")
    assert (back.epoch, back.step, back.micro) == (1, 3, 7)


def test_a_step_row_logs_its_step_s_rate_and_beta_every_log_every_steps(tmp_path):
    """A steps.csv row is written after every log_every-th optimizer step (counted from 1)
    with the rate that step used (read before it) and that step's own beta (a mutation
    review: rows one step early, the rate after the step and one beta per epoch passed)."""
    from risloc.training import schedules
    from risloc.training.loop import Trainer

    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [
        f"out_dir={tmp_path}", "schedule.steps_per_epoch=4", "log_every=2",
        "optim.warmup_steps=3", "schedule.beta_jitter=0.05",
        "schedule.beta_warmup_frac=0.5", "schedule.swa_frac=0"])
    tr = Trainer(cfg)
    rows = []

    class Rows:
        def write(self, row):
            rows.append(row)

    stats = tr.train_epoch(Rows())
    assert stats.summary()  # (the steps were taken)
    assert [r["step"] for r in rows] == [2, 4]
    o, total = cfg.optim, tr.total_steps
    for r in rows:
        k = r["step"] - 1  # the optimizer step the row is of (0-based)
        lr = [o.lr * schedules.get_lr(j, total, o.warmup_steps, 1.0, o.min_lr_ratio)
              for j in (k, k + 1)]
        assert lr[0] != pytest.approx(lr[1])
        assert r["lr"] == pytest.approx(lr[0], rel=1e-6), k
        beta = [schedules.jittered_beta(schedules.beta_at(j / total, cfg.blend.beta, 0.5),
                                        0.05, cfg.seed, j) for j in (k, 0)]
        assert beta[0] != pytest.approx(beta[1])
        assert r["beta"] == pytest.approx(beta[0], abs=1e-12), k


def test_a_resumed_run_keeps_the_step_rows_up_to_its_checkpoint_s_step(tmp_path,
                                                                        monkeypatch):
    """Resuming drops the steps.csv rows written after the checkpoint and keeps those up to
    its step, that step's included (a mutation review: '<' passed)."""
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.training import loop

    monkeypatch.setattr(loop, "validation_set", lambda cfg: [])
    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [
        f"out_dir={tmp_path}", "schedule.swa_frac=0"])
    tr = loop.Trainer(cfg)
    tr.epoch, tr.step = cfg.schedule.epochs, 3  # (nothing left to train)
    save_checkpoint(tmp_path / "last.pt", tr.state())
    (tmp_path / "steps.csv").write_text("step,lr\n" + "".join(f"{k},0.1\n" for k in range(1, 6)))
    loop.train(cfg, resume=True)
    lines = (tmp_path / "steps.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["step", "1", "2", "3"]


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # SWALR without steps
def test_each_swa_epoch_adds_the_weights_to_the_swa_average(tmp_path, monkeypatch):
    """Every epoch of the SWA phase averages the model's weights into the SWA copy once
    (a mutation review: the update removed passed)."""
    from types import SimpleNamespace

    from risloc.training import loop
    from risloc.training.logs import EpochStats

    seen = []

    class Val:
        objective = 1.0
        summary = SimpleNamespace(angle_median_deg=1.0, K_accuracy=1.0)

        def metrics(self):
            return {"objective": 1.0}

    def validate(self, model, scenes):
        seen.append(self)
        return Val()

    monkeypatch.setattr(loop, "validation_set", lambda cfg: [])
    monkeypatch.setattr(loop.Trainer, "train_epoch", lambda self, csv: EpochStats())
    monkeypatch.setattr(loop.Trainer, "validate", validate)
    monkeypatch.setattr(loop, "_log_epoch", lambda *a: None)
    cfg = load_train_config(ROOT / "configs" / "train_tiny.yaml", [
        f"out_dir={tmp_path}", "schedule.epochs=4", "schedule.swa_frac=0.5"])
    loop.train(cfg)
    tr = seen[-1]
    assert tr.swa_start == 2 and int(tr.swa.n_averaged) == 2
