"""`risloc tune`: Optuna search over the training recipe (resumable, SQLite storage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from risloc.cli.common import console, handle_errors
from risloc.cli.common import out as stdout


@handle_errors
def tune_command(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Base training recipe (YAML/TOML).", dir_okay=False)] = None,
    trials: Annotated[int, typer.Option(
        "--trials", min=1, help="Finished trials wanted in the study (resumes to this).")] = 20,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs per trial.")] = 3,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a base recipe field for every trial: section.field=value "
                      "(repeatable), e.g. --set schedule.steps_per_epoch=80.")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Study folder: study.db, trial runs, trials.csv, "
                            "best_overrides.yaml.")] = Path("runs/tune"),
    seed: Annotated[int, typer.Option(min=0, help="Seed of the TPE sampler.")] = 0,
) -> None:
    """Search learning rate, weight decay, blend beta and loss weights with Optuna (TPE +
    median pruning on the per-epoch validation objective). Rerun the same command to
    resume an interrupted study."""
    try:
        import optuna  # noqa: F401
    except ModuleNotFoundError:
        console.print("[red]error:[/] risloc tune needs Optuna: pip install 'risloc[hpo]'")
        raise typer.Exit(code=2) from None
    from risloc.hpo import TuneSettings, tune

    settings = TuneSettings(config=None if config is None else str(config),
                            overrides=tuple(set_ or ()), out_dir=str(out), n_trials=trials,
                            epochs=epochs, seed=seed)
    console.print(f"tuning -> {out} ({trials} trials x {epochs} epochs)")
    study = tune(settings, progress=True)
    table = Table(title=f"study {out / 'study.db'}")
    for col in ("trial", "state", "objective", *study.trials[0].params):
        table.add_column(col, justify="right")
    for t in study.trials:
        table.add_row(str(t.number), t.state.name,
                      "" if t.value is None else f"{t.value:.4g}",
                      *(f"{v:.3g}" for v in t.params.values()))
    stdout.print(table)
    best = out / "best_overrides.yaml"
    if best.exists():
        console.print(f"best trial as recipe overrides: {best}")
