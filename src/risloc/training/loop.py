"""The training loop: ``train(cfg) -> metrics``, called by ``risloc train`` and by Optuna.

Per optimizer step (strict order):
    accumulate micro-batch gradients -> unscale -> sanitise non-finite gradients (counted,
    logged) -> clip -> finite check -> step -> scaler update -> zero_grad -> scheduler
    (warm-up + cosine, per step; SWALR per epoch once SWA runs) -> EMA update. A step that
    is skipped (non-finite gradient norm, or the AMP scaler found inf/NaN) advances neither
    the scheduler nor the EMA. Ten steps in a row with non-finite gradients (50 with mixed
    precision, whose scaler overflows while it settles), or a loss that cannot be computed
    from the weights, stop the run as diverged (DivergedError, a one-line message).
Per epoch: beta annealed 0 -> blend.beta over the first beta_warmup_frac of training with
jitter, loss weights by phase (warm-up / main / final), SWA averaging in the final
fraction, validation of the EMA weights with the end-to-end metric, best / last
checkpoints (atomic), CSV logs, early stopping.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import torch
from torch.optim.swa_utils import SWALR, AveragedModel

from risloc.core.graphs import GraphCache
from risloc.inference.checkpoint import load_checkpoint, save_checkpoint
from risloc.inference.forward import forward_blend
from risloc.io.atomic import file_sha256, try_lock
from risloc.losses.total import LossConfig, LossTerms, compute_losses
from risloc.model.network import CovarianceNet
from risloc.simulation.scenes import SceneBatch
from risloc.training import distributed, schedules
from risloc.training.config import (
    RUN_FREE,
    STOPPING_FIELDS,
    TrainConfig,
    differences,
    listed,
    trajectory,
    validate_train_config,
)
from risloc.training.data import TrainData, prefetched, validation_set
from risloc.training.evaluate import EvalResult, evaluate, true_target
from risloc.training.logs import CsvLog, EpochStats, epoch_progress

LOCK_FILE = ".lock"  # held by the run writing to a folder (run_folder_lock)


class ResumeRefused(ValueError):
    """A run that cannot continue from its checkpoint (Trainer.restore says why)."""


class RunFolderInUse(OSError):
    """Another training run is writing to the output folder."""

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


def _data_stamps(cfg: TrainConfig) -> dict[str, list]:
    """[size, mtime_ns, SHA-256] of the recipe's scene files, taken as a run starts (it
    reads them then): one rewritten since a checkpoint would not continue the same run; one
    copied or touched, its bytes the same, does."""
    out = {}
    for name in ("train_file", "val_file"):
        path = getattr(cfg.data, name)
        if path is not None:
            st = Path(path).stat()
            out[name] = [st.st_size, st.st_mtime_ns, file_sha256(path)]
    return out


def _shown_path(path: str | Path | None) -> str:
    return "None" if path is None else repr(str(path))


def _data_change(held: list, now: list) -> str | None:
    """How a scene file differs from a checkpoint's stamp of it (:func:`_data_stamps`; a
    checkpoint of a version before the digest holds [size, mtime_ns]), or None."""
    if len(held) > 2:
        return "its bytes" if held[2] != now[2] else None
    return ("its size or modification time; a checkpoint from before files were compared "
            "by their bytes") if held != now[:2] else None


def ema_multi_avg_fn(decay: float):
    """EMA update with the usual warm-up: decay_t = min(decay, (1 + t) / (10 + t))."""
    def fn(avg: list[torch.Tensor], cur: list[torch.Tensor], n: torch.Tensor) -> None:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        torch._foreach_lerp_(avg, cur, 1.0 - d)
    return fn


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and scalars. Asserts every trainable
    parameter is wired into exactly one group.

    The fused implementation (one kernel per group and step; step counts on the device)
    where the parameters live on the CPU or a CUDA GPU: PyTorch's default there is a loop
    over the parameter tensors on the CPU (6 operations each, 294 per step for the shipped
    network, and a read of each step count) and a handful of multi-tensor kernels on CUDA,
    where the AMP scaler then reads its inf/NaN flag before the step; the fused step takes
    the flag on the device. Same update up to rounding (tested)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    o = cfg.optim
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for p in (*decay, *rest))
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=o.lr, betas=o.betas,
                            fused=fused or None)
    wired = [id(p) for g in opt.param_groups for p in g["params"]]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in wired]
    assert not missing and len(wired) == len(set(wired)), f"optimizer wiring: {missing[:8]}"
    return opt


_IMPLEMENTATION = ("fused", "foreach", "capturable")


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)`` keeping ``opt``'s own implementation (fused, foreach,
    capturable) rather than the saved one's: a checkpoint written before the fused AdamW
    (or on another device) carries ``fused=None`` and step counts on the CPU, and PyTorch
    would restore both, resuming with the per-tensor loop. With the flags carried over,
    the load moves the step counts where the fused step needs them (float32, on the
    parameters' device). Same update to rounding (tested)."""
    if len(state["param_groups"]) == len(opt.param_groups):  # else PyTorch names the mismatch
        state = {**state, "param_groups": [
            {**saved, **{k: now[k] for k in _IMPLEMENTATION if k in now}}
            for saved, now in zip(state["param_groups"], opt.param_groups, strict=True)]}
    opt.load_state_dict(state)


def sanitise_gradients(model: torch.nn.Module) -> int:
    """Zero non-finite gradient entries; return how many there were (never silent).

    One count over all gradients, read once: a read per parameter waited for the GPU 49
    times per step (the shipped model's parameter tensors)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0
    n_bad = int(torch.stack([(~torch.isfinite(g)).sum() for g in grads]).sum())
    if n_bad:
        for g in grads:
            torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
    return n_bad


# optimizer steps in a row with non-finite gradients that stop a run as diverged: a stray
# NaN batch is zeroed and stepped over, a run whose every step is NaN is not trained on;
# mixed precision overflows for a few steps in a row while its scaler settles (its scale
# halves from 2^16 at each overflow)
DIVERGED_STEPS, DIVERGED_STEPS_AMP = 10, 50
LOWER_LR = "; lower optim.lr (or optim.grad_clip), or resume from an earlier checkpoint"


class DivergedError(ValueError):
    """The training diverged (non-finite gradients step after step, or a loss that cannot
    be computed from the weights): the run stops with this message, not a traceback."""


def clip_gradients(model: torch.nn.Module, max_norm: float) -> tuple[float, int]:
    """Sanitise, then clip the gradients to the total 2-norm ``max_norm``; returns (the
    norm before clipping, the count of non-finite entries zeroed).

    One read of the device on a clean step: the total norm (foreach: a few kernels for
    all the parameter tensors on a GPU) is finite exactly when no entry is non-finite (or
    the squares overflow, which the sanitised path then reports as a non-finite norm);
    only otherwise are the entries counted and zeroed (:func:`sanitise_gradients`) and the
    norm taken again. The same gradients and norm as sanitising, then
    ``clip_grad_norm_``, without the 5 operations per parameter tensor of a finite check
    on every step."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0, 0
    grads = [p.grad for p in params]
    total = torch.nn.utils.get_total_norm(grads)
    norm, n_bad = float(total), 0
    if not math.isfinite(norm):
        n_bad = sanitise_gradients(model)
        total = torch.nn.utils.get_total_norm(grads)
        norm = float(total)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return norm, n_bad


def grad_norm(params) -> float:
    g = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.stack(g).norm()) if g else 0.0


class Trainer:
    """State of one run: model, averages, optimizer, schedulers, data, counters."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device=cuda, but torch {torch.__version__} sees no CUDA GPU "
                             "(a CPU-only wheel, or no driver): use device=auto or cpu")
        use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if use_cuda else "cpu")
        world = distributed.world_size()
        if world > 1 and cfg.data.shards != world:
            raise ValueError(f"{world} processes need data.shards = {world} (got "
                             f"{cfg.data.shards}): each trains on its shard of every global "
                             f"batch; run this recipe (a --resume: the run's) on "
                             f"--nproc_per_node {cfg.data.shards} or in one process, or "
                             f"start a new run with --set data.shards={world}")
        self.dist = distributed.setup(self.device)
        if self.dist.active and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        torch.manual_seed(cfg.seed)
        self.model = CovarianceNet(cfg.system, cfg.network_config()).to(self.device)
        if cfg.cuda_graphs and self.device.type == "cuda":  # shared by the EMA / SWA copies
            self.model.refine_graphs = GraphCache("the slots' ML refinement")
        # the module trained through: DDP averages the gradients of the ranks' shards
        self.net = torch.nn.parallel.DistributedDataParallel(self.model) \
            if self.dist.active else self.model
        self.touch_all = _may_skip_a_term(cfg)
        self.optimizer = build_optimizer(self.model, cfg)
        o, s = cfg.optim, cfg.schedule
        self.total_steps = s.epochs * s.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: schedules.get_lr(k, self.total_steps, o.warmup_steps, 1.0,
                                                       o.min_lr_ratio))
        self.amp = o.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = AveragedModel(self.model, multi_avg_fn=ema_multi_avg_fn(s.ema_decay))
        self.swa_start = schedules.final_start(s.swa_frac, s.epochs) if s.swa_frac > 0 \
            else None
        self.swa: AveragedModel | None = None
        self.swa_scheduler: SWALR | None = None
        self.data = TrainData(cfg, (self.dist.rank,) if self.dist.active else None,
                              compute=self.device if cfg.simulate_on == "device" else None)
        self.epoch, self.step, self.micro = 0, 0, 0
        self.bad_in_a_row = 0  # optimizer steps in a row whose gradients held NaN / inf
        self.best = {"objective": math.inf, "epoch": -1}
        self.bad_epochs, self.history = 0, []
        self.data_files = _data_stamps(cfg)  # (the files as the run read them)

    def leave_group(self) -> None:
        """Leave the process group now, while the interpreter is whole. The DDP wrapper
        holds the group (its reducer does), so destroy_process_group alone left gloo's
        group alive, with the Trainer (a reference cycle) until exit: destroyed during the
        interpreter's finalisation, its threads aborted the process now and then ("terminate
        called without an active exception", SIGABRT) after a finished run."""
        if self.net is not self.model:
            self.net = self.model
            gc.collect()  # (DDP's own reference cycles, if any)
        distributed.teardown(self.dist)

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {"config": self.cfg.to_json(), "epoch": self.epoch, "step": self.step,
                "micro": self.micro, "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "swa": self.swa.state_dict() if self.swa is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "swa_scheduler": (self.swa_scheduler.state_dict()
                                  if self.swa_scheduler is not None else None),
                "scaler": self.scaler.state_dict(), "rng": torch.get_rng_state(),
                "best": dict(self.best), "bad_epochs": self.bad_epochs,
                "bad_in_a_row": self.bad_in_a_row, "history": list(self.history),
                "data_files": self.data_files}

    def restore(self, path: Path) -> None:
        """The state of the checkpoint ``path``; ResumeRefused where the run cannot go on
        from it (not a training checkpoint, another recipe, its data files changed)."""
        try:
            st = load_checkpoint(path, self.device)
        except ValueError as err:
            raise ResumeRefused(f"cannot resume: {err}") from None
        if not {"model", "optimizer", "epoch"} <= set(st):
            raise ResumeRefused(f"cannot resume from {path}: it is an inference model (what "
                             "export-model and fit-order write), not a training checkpoint; "
                             "--overwrite starts the run afresh")
        try:
            held = TrainConfig.from_json(st["config"])
        except (KeyError, ValueError) as err:  # (ConfigError is a ValueError)
            raise ResumeRefused(f"cannot resume from {path}: its recipe cannot be read "
                                f"({err})") from None
        diff = differences(trajectory(held, stopping=False),
                           trajectory(self.cfg, stopping=False))
        for i, line in enumerate(diff):  # a scene file compares as "given": name its paths
            field = line.partition(":")[0]
            if field in ("data.train_file", "data.val_file"):
                old, new = (getattr(c.data, field.split(".")[1]) for c in (held, self.cfg))
                diff[i] = f"{field}: {_shown_path(old)} -> {_shown_path(new)}"
        if diff:
            raise ResumeRefused(f"cannot resume from {path}: its recipe differs from this one in "
                             f"{listed(diff)} (only "
                             f"{', '.join(RUN_FREE + STOPPING_FIELDS)} may change)")
        now = self.data_files
        changed = [f"data.{k} {getattr(self.cfg.data, k)} ({_data_change(v, now[k])})"
                   for k, v in (st.get("data_files") or {}).items()
                   if k in now and _data_change(v, now[k])]
        if changed:
            raise ResumeRefused(f"cannot resume from {path}: {', '.join(changed)} changed since "
                             "the checkpoint, so the run would not continue as it began; "
                             "--overwrite starts afresh")
        self.model.load_state_dict(st["model"])
        self.ema.load_state_dict(st["ema"])
        load_optimizer_state(self.optimizer, st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        if st["scaler"]:  # (empty from a run begun without AMP, e.g. on the CPU: the
            self.scaler.load_state_dict(st["scaler"])  # scaler starts afresh, as it would)
        if st["swa"] is not None:
            self._start_swa()
            self.swa.load_state_dict(st["swa"])
            self.swa_scheduler.load_state_dict(st["swa_scheduler"])
        torch.set_rng_state(st["rng"].cpu())
        self.epoch, self.step, self.micro = st["epoch"], st["step"], st["micro"]
        self.best, self.bad_epochs = dict(st["best"]), st["bad_epochs"]
        self.bad_in_a_row = st.get("bad_in_a_row", 0)  # (older checkpoints hold none)
        self.history = list(st["history"])
        log.info("resumed from %s at epoch %d (step %d)", path, self.epoch, self.step)

    def _start_swa(self) -> None:
        s = self.cfg.schedule
        self.swa = AveragedModel(self.model)
        self.swa_scheduler = SWALR(self.optimizer, swa_lr=s.swa_lr_ratio * self.cfg.optim.lr,
                                   anneal_epochs=s.swa_anneal_epochs, anneal_strategy="cos")

    @property
    def in_swa(self) -> bool:
        return self.swa_start is not None and self.epoch >= self.swa_start

    # ---------------------------------------------------------------- one step
    def beta(self) -> float:
        s = self.cfg.schedule
        base = schedules.beta_at(self.step / self.total_steps, self.cfg.blend.beta,
                                 s.beta_warmup_frac)
        jitter = s.beta_jitter_hpo if s.hpo_mode else s.beta_jitter
        return schedules.jittered_beta(base, jitter, self.cfg.seed, self.step)

    def loss_config(self, shard: bool = True) -> LossConfig:
        """This epoch's loss weights; ``shard``: for this rank's share of a global batch
        (training), else for all the scenes (validation, which every rank runs whole)."""
        s = self.cfg.schedule
        w = schedules.loss_weights_at(self.epoch, s.epochs, s.weight_schedule,
                                      s.weight_warmup_epochs, s.weight_final_frac)
        if shard and self.dist.world > 1:  # spectral_scenes counts the global batch
            w["spectral_scenes"] = self.cfg.loss.spectral_scenes // self.dist.world
        return replace(self.cfg.loss, **w)

    def batch_losses(self, scenes: SceneBatch, beta: float, loss_cfg: LossConfig) -> LossTerms:
        """Forward (autocast on CUDA only) and all loss terms (FP32) of a batch."""
        scenes = scenes.to(self.device)
        amp = torch.autocast("cuda", dtype=torch.float16) if self.amp \
            else contextlib.nullcontext()
        with amp:
            fwd = forward_blend(self.net, scenes.y, scenes.H, scenes.codes, scenes.snr_db,
                                beta, self.cfg.blend, dense=False)
        R_true = true_target(scenes, self.cfg.system, fwd.factor is not None)  # target only
        return compute_losses(fwd.out, fwd.R_blend, R_true, scenes, self.cfg.system, loss_cfg,
                              fwd.factor)

    def micro_step(self, scenes: SceneBatch, beta: float, loss_cfg: LossConfig) -> LossTerms:
        """Forward, losses and backward of one micro-batch (gradients accumulate)."""
        try:
            terms = self.batch_losses(scenes, beta, loss_cfg)
        except torch.linalg.LinAlgError as err:  # eigh of a covariance of diverged weights
            raise DivergedError(f"step {self.step}: the loss's eigendecomposition failed "
                                f"({' '.join(str(err).split())[:120]}): the weights have "
                                f"diverged{LOWER_LR}") from None
        if not bool(torch.isfinite(terms.total)):
            log.warning("step %d: non-finite loss %s", self.step, terms.as_dict())
        total = terms.total
        if self.touch_all:  # (_may_skip_a_term)
            total = total + 0.0 * sum(p.sum() for p in self.model.parameters())
        self.scaler.scale(total / self.cfg.optim.accumulation).backward()
        return terms

    def optimizer_step(self) -> tuple[float, int, bool]:
        """unscale -> sanitise -> clip -> finite check -> step -> update -> zero_grad ->
        scheduler -> EMA. Returns (gradient norm before clipping, non-finite count, taken)."""
        self.scaler.unscale_(self.optimizer)
        norm, n_bad = clip_gradients(self.model, self.cfg.optim.grad_clip)
        if n_bad:
            log.warning("step %d: %d non-finite gradient entries zeroed%s", self.step, n_bad,
                        " (mixed precision: the scaler skips this step and lowers its scale)"
                        if self.scaler.is_enabled() else "")
        # gradients are the same on every process (all-reduced): so is this decision
        self.bad_in_a_row = self.bad_in_a_row + 1 if n_bad else 0
        limit = DIVERGED_STEPS_AMP if self.scaler.is_enabled() else DIVERGED_STEPS
        if self.bad_in_a_row >= limit:
            raise DivergedError(f"step {self.step}: {limit} optimizer steps in a row had "
                                f"non-finite gradients (the last: {n_bad} entries): the "
                                f"training has diverged{LOWER_LR}")
        taken = math.isfinite(norm)
        scale = self.scaler.get_scale()
        if taken:
            self.scaler.step(self.optimizer)
        else:
            log.warning("step %d: non-finite gradient norm, step skipped", self.step)
        self.scaler.update()
        if self.scaler.get_scale() < scale:  # the scaler saw inf/NaN at unscale: no step
            taken = False
        self.optimizer.zero_grad(set_to_none=True)
        if taken:  # the schedule counts the updates made (and never runs ahead of them)
            if not self.in_swa:
                self.scheduler.step()
            self.ema.update_parameters(self.model)
        self.step += 1
        return norm, n_bad, taken

    # ---------------------------------------------------------------- one epoch
    def train_epoch(self, csv_steps: CsvLog | None) -> EpochStats:
        s, o = self.cfg.schedule, self.cfg.optim
        loss_cfg = self.loss_config()
        stats = EpochStats()
        self.model.train()
        ahead = self.device.type == "cuda" if self.cfg.prefetch is None else self.cfg.prefetch
        n = s.steps_per_epoch * o.accumulation
        # with simulate_on=device only the draws are made ahead; their physics runs here,
        # on the training device (TrainData.draw; finish passes a whole batch through)
        fetch = self.data.batch if self.data.compute is None else self.data.draw
        batches = prefetched(functools.partial(fetch, epoch=self.epoch),
                             range(self.micro, self.micro + n), ahead)
        # one bar, rank 0's: N ranks' bars on one terminal overwrote each other's lines
        with contextlib.closing(batches), epoch_progress(
                self.cfg.progress and self.dist.main, f"epoch {self.epoch + 1}/{s.epochs}",
                s.steps_per_epoch) as advance:
            for _ in range(s.steps_per_epoch):
                beta = self.beta()
                for _ in range(o.accumulation):
                    terms = self.micro_step(self.data.finish(next(batches)), beta, loss_cfg)
                    self.micro += 1
                    stats.add_terms(terms.as_dict())
                lr = self.optimizer.param_groups[0]["lr"]
                norm, n_bad, taken = self.optimizer_step()
                stats.add_step(norm, n_bad, taken, lr, beta)
                if self.step % self.cfg.log_every == 0 and csv_steps is not None:
                    csv_steps.write({"step": self.step, "epoch": self.epoch, "lr": lr,
                                     "beta": beta, "grad_norm": norm, "nonfinite": n_bad,
                                     **terms.as_dict()})
                advance(terms.total.item())
        return stats

    def validate(self, model: torch.nn.Module, scenes: SceneBatch) -> EvalResult:
        c = self.cfg
        # every rank validates on all the scenes, as one process does
        return evaluate(model, scenes, c.system, c.blend.beta, c.blend,
                        self.loss_config(shard=False),
                        c.music_config(), c.data.val_batch_size, c.evaluation.f1_weight_deg)


def _may_skip_a_term(cfg: TrainConfig) -> bool:
    """Whether a loss weight is 0 in some epoch: its term is then skipped, and parameters
    only it reaches (the zoom refiner's, through the aux, peak and align terms) would get
    no gradient, which DistributedDataParallel refuses ("Expected to have finished
    reduction in the prior iteration"; find_unused_parameters does not help, the zoom's
    outputs being returned). Such runs add 0 x the parameters' sum to the loss, in one
    process too, so both follow one trajectory: every parameter gets a gradient, zero
    where no term reaches it (AdamW then decays it as it decays the others, and a weight
    scheduled down to 0 leaves its parameters moving on their Adam momentum a while; a
    single-process run of such a recipe begun before this rule resumes under it)."""
    weights = [v for k, v in vars(cfg.loss).items()
               if k.startswith("lam_") and k not in cfg.schedule.weight_schedule]
    phases = [w for values in cfg.schedule.weight_schedule.values() for w in values]
    return any(w == 0 for w in weights + phases)


def _epoch_row(epoch: int, seconds: float, stats: EpochStats, val: EvalResult,
               in_swa: bool) -> dict:
    row = {"epoch": epoch + 1, "seconds": seconds, "swa": int(in_swa), **stats.summary()}
    row.update({f"val_{k}": v for k, v in val.metrics().items()})
    return row


def train(cfg: TrainConfig, resume: bool = False,
          callback: EpochCallback | None = None,
          on_start: Callable[[], None] | None = None, lock: bool = True) -> dict[str, float]:
    """Train the learned covariance; return the headline metrics (see module docstring).

    callback(epoch, metrics) runs after every validation (Optuna reports / prunes there by
    raising). on_start() runs once everything the run needs is built and checked (device,
    data files, validation set, the checkpoint resumed from) and before it writes anything:
    ``risloc train --overwrite`` deletes the old run there, so a run that cannot start leaves
    it whole. Writes out_dir/{best.pt, last.pt, final.pt, epochs.csv, steps.csv}, holding
    the folder (:func:`run_folder_lock`) unless ``lock=False`` (a caller that holds it); a
    run already there is replaced unless ``resume`` (``risloc train`` refuses one without
    --resume or --overwrite). ``cfg``: a TrainConfig, or a dict of its fields.
    """
    if isinstance(cfg, dict):
        cfg = validate_train_config(cfg)
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig or a dict of its fields, got "
                        f"{type(cfg).__name__} (a recipe's name or file: "
                        "risloc.training.load_train_config(recipe, overrides))")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = int(os.environ.get("RANK", "0")) == 0  # data-parallel: rank 0 holds the folder
    with run_folder_lock(out) if first and lock else contextlib.nullcontext():
        tr = Trainer(cfg)
        try:
            return _run(tr, out, resume, callback, on_start)
        finally:
            tr.leave_group()


@contextlib.contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold <out>/.lock while a run writes there: a second run into the same folder (two
    ``--resume`` at once would interleave their logs and checkpoints) stops with an error
    naming the first's process. The operating system releases the lock when the process
    ends, however it ends (:func:`risloc.io.atomic.try_lock`; none on Windows)."""
    with open(out / LOCK_FILE, "a+") as fh:
        if not try_lock(fh):
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RunFolderInUse(f"{out} is in use by another training run ({holder}): wait "
                               "for it to finish or stop it, or choose another --out"
                               ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()  # the lock itself goes with the file's closing


def _run(tr: Trainer, out: Path, resume: bool, callback: EpochCallback | None,
         on_start: Callable[[], None] | None) -> dict[str, float]:
    """The epochs of :func:`train` and its final validation."""
    cfg = tr.cfg
    if resume:
        tr.restore(out / "last.pt")
    val_scenes = validation_set(cfg)
    log.info("model: %d parameters; %d validation scenes; device %s; %d process(es)",
             tr.model.n_parameters(), len(val_scenes), tr.device, tr.dist.world)
    main = tr.dist.main  # rank 0 alone writes checkpoints and logs
    if on_start is not None:
        on_start()
    # a resumed run redoes the work after its checkpoint: its rows are dropped first
    csv_epochs = CsvLog(out / "epochs.csv", append=resume,
                        keep=lambda r: int(r["epoch"]) <= tr.epoch) if main else None
    csv_steps = CsvLog(out / "steps.csv", append=resume,
                       keep=lambda r: int(r["step"]) <= tr.step) if main else None
    s = cfg.schedule
    # a resumed run that had stopped early stays stopped (unless schedule.patience was raised)
    stopped = tr.bad_epochs >= s.patience
    if stopped and tr.epoch < s.epochs:
        log.info("the run stopped early at epoch %d (%d epochs without improvement, "
                 "schedule.patience %d): raise schedule.patience to train on", tr.epoch,
                 tr.bad_epochs, s.patience)
    while tr.epoch < s.epochs and not stopped:
        t0 = time.perf_counter()
        if tr.in_swa and tr.swa is None:
            tr._start_swa()
        stats = tr.train_epoch(csv_steps)
        if tr.in_swa:
            tr.swa.update_parameters(tr.model)
            tr.swa_scheduler.step()
        val = tr.validate(tr.ema.module, val_scenes)
        row = _epoch_row(tr.epoch, time.perf_counter() - t0, stats, val, tr.in_swa)
        tr.history.append(row)
        if main:
            csv_epochs.write(row)
        shared = distributed.main_value(tr.dist, val.metrics())  # rank 0's: one decision
        objective = shared["objective"]
        # the first epoch is the best so far even where nothing was paired (objective inf):
        # best.pt, which model.pt is made of, always holds an epoch
        improved = tr.best["epoch"] < 0 or objective < tr.best["objective"] - s.min_improvement
        if improved:
            tr.best = {"objective": objective, "epoch": tr.epoch + 1}
        tr.bad_epochs = 0 if improved else tr.bad_epochs + 1
        stopped = tr.bad_epochs >= s.patience
        tr.epoch += 1
        if main:
            state = tr.state()
            if improved:
                save_checkpoint(out / "best.pt", state)
            save_checkpoint(out / "last.pt", state)
            _log_epoch(row, improved, s.epochs, tr.history)
        distributed.barrier(tr.dist)
        if callback is not None:  # (a pruning callback decides as every rank: on rank 0's)
            callback(tr.epoch, shared)
    if stopped:
        log.info("early stop after %d epochs without improvement", s.patience)
    return _finish(tr, val_scenes, out, stopped)


def _log_epoch(row: dict, improved: bool, epochs: int, history: list[dict]) -> None:
    left = epochs - row["epoch"]  # (from the mean epoch time so far; early stop aside)
    times = [h["seconds"] for h in history]
    eta = f"  ~{_duration(left * sum(times) / len(times))} of epochs left" if left and times else ""
    log.info("epoch %3d/%d  %5.0fs  loss %.4f  val: angle %.2f deg  K acc %.3f  F1 %.3f  "
             "nmse %.3f  overlap %.3f  objective %.3f%s%s", row["epoch"], epochs,
             row["seconds"], row["train_total"], row["val_angle_median_deg"],
             row["val_K_accuracy"], row["val_f1"], row["val_nmse"], row["val_overlap"],
             row["val_objective"], "  *best*" if improved else "", eta)
    if row.get("nonfinite_losses"):
        log.warning("epoch %d: %d micro-batches had a non-finite loss; the epoch's train "
                    "losses leave them out", row["epoch"], row["nonfinite_losses"])


def _duration(seconds: float) -> str:
    """'45s', '17 min', '2.3 h': the time left in the epoch line."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _finish(tr: Trainer, val_scenes: SceneBatch, out: Path, stopped: bool) -> dict[str, float]:
    """Validate the SWA average (if any), write final.pt, return the headline metrics: the
    best epoch's objective and its validation metrics (``val_*``: those of best.pt, the
    weights model.pt is made of), the last epoch's objective, the SWA average's."""
    metrics = {"best_objective": tr.best["objective"], "best_epoch": tr.best["epoch"],
               "epochs_run": tr.epoch, "stopped_early": float(stopped)}
    secs = [r["seconds"] for r in tr.history]
    metrics["seconds_per_epoch"] = sum(secs) / len(secs) if secs else math.nan
    if tr.history:
        best = next((r for r in tr.history if r["epoch"] == tr.best["epoch"]), tr.history[-1])
        metrics.update({k: v for k, v in best.items() if k.startswith("val_")})
        metrics["last_val_objective"] = tr.history[-1]["val_objective"]
    if tr.swa is not None:
        swa_val = tr.validate(tr.swa.module, val_scenes)
        metrics.update({f"swa_{k}": v for k, v in swa_val.metrics().items()})
        log.info("SWA average: angle %.2f deg, K acc %.3f, objective %.3f",
                 swa_val.summary.angle_median_deg, swa_val.summary.K_accuracy,
                 swa_val.objective)
    digests = distributed.all_digests(tr.model, tr.dist)
    metrics["processes"] = tr.dist.world
    metrics["ranks_identical"] = float(len(set(digests)) == 1)
    if tr.dist.main:
        save_checkpoint(out / "final.pt", {**tr.state(), "final_metrics": metrics})
    distributed.barrier(tr.dist)
    if len(set(digests)) != 1:
        log.error("the ranks' weights differ: %s", digests)
    return metrics


__all__ = ["Trainer", "build_optimizer", "clip_gradients", "ema_multi_avg_fn",
           "grad_norm", "sanitise_gradients", "train"]
