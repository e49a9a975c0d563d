"""`risloc train`: train the learned covariance from a recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from risloc.cli.common import console, handle_errors
from risloc.cli.common import out as stdout
from risloc.training.config import load_train_config
from risloc.training.loop import train

_HEADLINE = ("best_objective", "best_epoch", "epochs_run", "seconds_per_epoch",
             "val_angle_median_deg", "val_range_median_m", "val_K_accuracy", "val_f1",
             "val_nmse", "val_overlap", "swa_angle_median_deg", "swa_K_accuracy")


def _summary_table(metrics: dict[str, float], out_dir: Path) -> Table:
    table = Table(title=f"training finished: {out_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in _HEADLINE:
        if key in metrics:
            v = metrics[key]
            table.add_row(key, f"{v:.4g}" if isinstance(v, float) else str(v))
    return table


@handle_errors
def train_command(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Training recipe (YAML/TOML), e.g. configs/train_default.yaml.",
        dir_okay=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue exactly from <out>/last.pt.")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a recipe field: section.field=value (repeatable), e.g. "
                      "--set optim.lr=3e-4 --set schedule.epochs=5.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output folder (checkpoints, CSV logs); overrides out_dir.")] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", min=1, help="Override schedule.epochs.")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=0, help="torch CPU threads (0 = leave as is).")] = None,
    progress: Annotated[bool, typer.Option(
        "--progress/--no-progress", help="Show a progress bar per epoch.")] = True,
) -> None:
    """Train the learned covariance network; write best.pt, last.pt, final.pt and CSV logs."""
    overrides = list(set_ or [])
    if out is not None:
        overrides.append(f"out_dir={out}")
    if epochs is not None:
        overrides.append(f"schedule.epochs={epochs}")
    if threads is not None:
        overrides.append(f"threads={threads}")
    overrides.append(f"progress={str(progress).lower()}")
    cfg = load_train_config(config, overrides)
    if resume and not (Path(cfg.out_dir) / "last.pt").exists():
        raise FileNotFoundError(f"--resume: no checkpoint {Path(cfg.out_dir) / 'last.pt'}")
    console.print(f"training -> {cfg.out_dir} ({cfg.schedule.epochs} epochs x "
                  f"{cfg.schedule.steps_per_epoch} steps, batch {cfg.optim.batch_size})")
    metrics = train(cfg, resume=resume)
    (Path(cfg.out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    stdout.print(_summary_table(metrics, Path(cfg.out_dir)))
