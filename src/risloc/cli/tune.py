"""`risloc tune`: Optuna search over the training recipe (resumable, shared by workers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from risloc.cli.common import console, handle_errors, print_table, shell_arg
from risloc.cli.common import out as stdout


@handle_errors
def tune_command(
    config: Annotated[Path, typer.Option(
        "--config", "-c", help="Base training recipe: a YAML/TOML file or a shipped "
                               "recipe's name.", dir_okay=False)] = Path("train_default"),
    trials: Annotated[int, typer.Option(
        "--trials", min=1, help="Finished trials wanted in the study, over all workers "
                                "(resumes to this; trials running when it is reached still "
                                "finish).")] = 20,
    epochs: Annotated[int, typer.Option(
        "--epochs", min=1, help="Epochs per trial (each schedule phase scales with it).")] = 10,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a base recipe field for every trial: section.field=value "
                      "(repeatable), e.g. --set schedule.steps_per_epoch=80.")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Study folder: trial runs, trials.csv, best_overrides.yaml (and "
                            "study.db unless --storage).")] = Path("runs/tune"),
    storage: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL of the study, shared by every worker, e.g. "
             "postgresql://user@host/db (default: sqlite in --out).")] = None,
    study_name: Annotated[str, typer.Option(help="Study name in the storage.")] = "risloc",
    space: Annotated[Path | None, typer.Option(
        help="Search-space YAML (default: risloc/hpo/search_space.yaml).")] = None,
    seed: Annotated[int, typer.Option(
        min=0, help="Base seed of the TPE sampler (each trial adds its trial number: one "
                    "worker with the same seed draws the same trials).")] = 0,
    startup_trials: Annotated[int, typer.Option(
        min=0, help="MedianPruner: trials before any is pruned.")] = 6,
    warmup_epochs: Annotated[int, typer.Option(
        min=0, help="MedianPruner: epochs of a trial before it may be pruned.")] = 8,
    heartbeat: Annotated[int, typer.Option(
        min=1, help="Seconds between a running trial's heartbeats; a trial silent for 3x "
                    "this is failed and re-queued.")] = 60,
    baseline: Annotated[bool, typer.Option(
        "--baseline", help="Queue the base recipe itself as a trial (once per study): the "
                           "best trial is then read against the untuned recipe trained with "
                           "the same budget (best_overrides.yaml: baseline_objective).")] = False,
) -> None:
    """Search the training recipe with Optuna (multivariate TPE, median pruning on the
    per-epoch validation objective). Start the same command on any number of machines
    with one --storage and --study-name to share the work; rerun it to resume."""
    try:
        import optuna  # noqa: F401
    except ModuleNotFoundError:
        console.print("[red]error:[/] risloc tune needs Optuna: pip install "
                      "'risloc\\[hpo]' (from a clone of the repository: pip install -e "
                      "'.\\[hpo]')")  # \[: a bracket, not rich markup
        raise typer.Exit(code=2) from None
    from risloc.hpo import TuneSettings, tune
    from risloc.hpo.search import relative_fields

    settings = TuneSettings(config=str(config),
                            overrides=tuple(set_ or ()), out_dir=str(out), storage=storage,
                            space=None if space is None else str(space), n_trials=trials,
                            epochs=epochs, seed=seed, study_name=study_name,
                            startup_trials=startup_trials, warmup_epochs=warmup_epochs,
                            heartbeat_s=heartbeat, grace_s=3 * heartbeat,
                            baseline=baseline)
    # SIGTERM (kill, a batch system's preemption) ends a trial as Ctrl-C does (cli/entry.py):
    # the next tune continues it from its last finished epoch (killed otherwise: failed once
    # its heartbeats stop, and its copy continues it as well, where it sees its folder)
    started = []  # (the banner printed: the study opened and its folder claimed)

    def on_start() -> None:  # once its arguments passed
        started.append(True)
        console.print(f"tuning -> {settings.storage_shown} study {study_name!r} ({trials} "
                      f"trials x {epochs} epochs)")

    try:
        study = tune(settings, on_start=on_start)
    except KeyboardInterrupt as err:
        # (what is true: no study opened yet; or none of its trials, or trial N, stopped)
        trial = getattr(err, "interrupted_trial", None)
        if not started:
            said = "before the study was opened; the same command starts or continues it"
        else:
            said = (f"the study keeps its finished trials; the same command continues it in "
                    f"{out}")
            if trial is not None:
                said += f", the interrupted trial {trial} from its last finished epoch"
        console.print(f"[yellow]interrupted: {said}[/]")
        raise typer.Exit(code=130) from None
    table = Table(title=f"study {study_name!r}")
    names = sorted({k for t in study.trials for k in t.params})
    relative = relative_fields(settings)  # their parameters: multiples of the recipe's value
    for col in ("trial", "state", "objective", *names):
        # a field's section on a line of its own: narrow columns keep the names apart
        head = col.replace(".", ".\n", 1) + (" (x base)" if col in relative else "")
        table.add_column(head, justify="right")
    for t in study.trials:
        table.add_row(str(t.number), t.state.name,
                      "" if t.value is None else f"{t.value:.4g}",
                      *(_fmt(t.params.get(n)) for n in names))
    print_table(table, stdout)
    best = out / "best_overrides.yaml"
    if best.exists():
        console.print(f"best trial: {best} (risloc train --config {shell_arg(config)} "
                      f"--overrides {shell_arg(best)})")


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))
