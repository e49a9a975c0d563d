"""Optuna search over the training recipe: ``tune(settings) -> study``.

Each trial is one call of :func:`risloc.training.train` on the base recipe plus the
trial's overrides, in HPO mode (smaller beta jitter), for a few epochs. The objective is
the recipe's end-to-end validation objective (median angle error + a weighted F1 miss,
MUSIC on R_blend, on the fixed validation set): the same number that selects best.pt.
After every epoch the trial reports it to Optuna, and a median pruner stops trials that
fall behind (the training loop's callback raises ``optuna.TrialPruned``).

The study lives in an SQLite database (SQLAlchemy storage) in the output folder, so an
interrupted search resumes where it stopped: rerunning the same command counts the
finished trials and runs only the missing ones. The test split is never touched.

The search space follows the design notes (seeds): learning rate on a log scale around
the recipe's, weight decay, the final blend weight beta and the weights of the K,
auxiliary-position and peak losses. Other recipe fields stay as the base recipe says.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from risloc.io.atomic import write_csv_atomic, write_text_atomic
from risloc.training.config import TrainConfig, load_train_config

log = logging.getLogger(__name__)

# name -> (recipe field, low, high, log scale); "lr" is relative to the base recipe's.
SEARCH_SPACE: dict[str, tuple[str, float, float, bool]] = {
    "lr_factor": ("optim.lr", 0.25, 4.0, True),
    "weight_decay": ("optim.weight_decay", 1e-5, 1e-3, True),
    "beta": ("blend.beta", 0.1, 0.5, False),
    "lam_K": ("loss.lam_K", 0.2, 1.0, True),
    "lam_aux": ("loss.lam_aux", 0.3, 2.0, True),
    "lam_peak": ("loss.lam_peak", 0.2, 1.0, True),
}


@dataclass(frozen=True)
class TuneSettings:
    """What ``risloc tune`` runs.

    config : base recipe file (None = the package defaults)
    overrides : extra ``section.field=value`` overrides applied to every trial
    out_dir : study database, per-trial run folders, trials.csv, best_overrides.yaml
    n_trials : finished (complete or pruned) trials wanted in the study in total
    epochs : training epochs per trial
    seed : seed of the TPE sampler
    """

    config: str | None
    overrides: tuple[str, ...] = ()
    out_dir: str = "runs/tune"
    n_trials: int = 20
    epochs: int = 3
    seed: int = 0
    study_name: str = "risloc"
    startup_trials: int = 4  # trials before the pruner may prune
    warmup_epochs: int = 1  # epochs of a trial before it may be pruned

    def __post_init__(self) -> None:
        if self.n_trials < 1 or self.epochs < 1:
            raise ValueError(f"n_trials and epochs must be >= 1, got {self.n_trials}, "
                             f"{self.epochs}")


def suggest_overrides(trial, base: TrainConfig) -> list[str]:
    """The trial's recipe overrides (``section.field=value``) from :data:`SEARCH_SPACE`."""
    out = []
    for name, (field, lo, hi, log_scale) in SEARCH_SPACE.items():
        v = trial.suggest_float(name, lo, hi, log=log_scale)
        if name == "lr_factor":
            v *= base.optim.lr
        out.append(f"{field}={v!r}")
    return out


def _trial_config(settings: TuneSettings, trial_overrides: list[str], number: int
                  ) -> TrainConfig:
    run_dir = Path(settings.out_dir) / f"trial_{number:04d}"
    return load_train_config(settings.config, [
        *settings.overrides, *trial_overrides, f"schedule.epochs={settings.epochs}",
        "schedule.hpo_mode=true", f"out_dir={run_dir}", "progress=false"])


def _objective(settings: TuneSettings, base: TrainConfig):
    import optuna

    from risloc.training import train

    def objective(trial: optuna.Trial) -> float:
        cfg = _trial_config(settings, suggest_overrides(trial, base), trial.number)

        def report(epoch: int, metrics: dict[str, float]) -> None:
            value = metrics["objective"]
            trial.report(value if math.isfinite(value) else 1e9, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: objective {value:.3f}")

        result = train(cfg, callback=report)
        for key in ("best_epoch", "val_K_accuracy", "val_angle_median_deg"):
            if key in result:
                trial.set_user_attr(key, float(result[key]))
        return float(result["best_objective"])

    return objective


def _finished(study) -> int:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(t.state in done for t in study.trials)


def tune(settings: TuneSettings, progress: bool = False):
    """Run (or resume) the study until it holds ``n_trials`` finished trials; write
    trials.csv and, once a trial has completed, best_overrides.yaml. Returns the study."""
    import optuna

    base = load_train_config(settings.config, list(settings.overrides))
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=settings.study_name, storage=f"sqlite:///{out / 'study.db'}",
        load_if_exists=True, direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=settings.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials,
                                           n_warmup_steps=settings.warmup_epochs))
    missing = settings.n_trials - _finished(study)
    if missing > 0:
        log.info("study %s: %d finished trials, running %d more", settings.study_name,
                 settings.n_trials - missing, missing)
        study.optimize(_objective(settings, base), n_trials=missing,
                       show_progress_bar=progress, gc_after_trial=True)
    write_reports(study, base, out)
    return study


def write_reports(study, base: TrainConfig, out: Path) -> None:
    """trials.csv (every trial) and best_overrides.yaml (the best completed trial as
    recipe overrides), each written atomically."""
    rows = [{"number": t.number, "state": t.state.name, "value": t.value,
             **t.params, **t.user_attrs} for t in study.trials]
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("number", "state",
                                                                           "value"), k))
    write_csv_atomic(out / "trials.csv", cols, rows)
    completed = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    if not completed:
        return
    best = min(completed, key=lambda t: t.value)
    params = {}
    for name, (field, *_rest) in SEARCH_SPACE.items():
        v = best.params[name] * (base.optim.lr if name == "lr_factor" else 1.0)
        params[field] = float(v)
    text = yaml.safe_dump({"trial": best.number, "objective": float(best.value),
                           "overrides": params}, sort_keys=False)
    write_text_atomic(out / "best_overrides.yaml",
                      "# Best trial of the study; apply with risloc train --set field=value\n"
                      + text)
