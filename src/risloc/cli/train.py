"""`risloc train`: train the learned covariance from a recipe."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from risloc.cli.common import console, handle_errors, print_table, progress, shell_arg
from risloc.cli.common import out as stdout
from risloc.config import parse_overrides, read_config_file, shipped_recipes
from risloc.io.atomic import (
    check_folder_writable,
    check_output_folder,
    make_output_folder,
    write_json_atomic,
)
from risloc.training.config import OrderStageConfig, TrainConfig, load_train_config
from risloc.training.loop import LOCK_FILE, RunFolderInUse, run_folder_lock, train

DEFAULT_RECIPE = "train_default"  # the shipped recipe of `risloc train` without --config
# the exported network before its order head is fitted: model.pt appears only with its head
HEADLESS = "model-without-order-head.pt"
RUN_FILES = ("best.pt", "last.pt", "final.pt", "epochs.csv", "steps.csv", "metrics.json",
             "curves.png",
             "model.pt", "model.json", HEADLESS, Path(HEADLESS).with_suffix(".json").name)
# how an interrupted run goes on: the same command with --resume (--overwrite excludes it)
_RESUME = {False: "--resume", True: "--resume in place of --overwrite"}
_HEADLINE = ("best_objective", "best_epoch", "epochs_run", "seconds_per_epoch",
             "val_angle_median_deg", "val_range_median_m", "val_K_accuracy", "val_f1",
             "val_nmse", "val_overlap", "swa_angle_median_deg", "swa_K_accuracy")


def read_overrides(path: Path | None) -> list[str]:
    """``section.field=value`` strings of an overrides YAML (a mapping, or one under the key
    'overrides' as risloc tune writes it), or of the same in TOML."""
    if path is None:
        return []
    if not path.exists():
        raise FileNotFoundError(f"overrides file not found: {path}")
    data = read_config_file(path)  # names a file that is not YAML / TOML
    data = data.get("overrides", data)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of recipe fields to values")
    return [f"{k}={json.dumps(v)}" for k, v in data.items()]


def _recipe(config: Path | None, overrides: list[str], resume: bool) -> TrainConfig:
    """The run's recipe: --config's; without it, on --resume the one stored in the run's
    last.pt, else the shipped train_default (each with the overrides applied)."""
    if config is not None:
        return load_train_config(config, overrides)
    if not resume:
        console.print(f"recipe: {DEFAULT_RECIPE} (shipped; --config names another)")
        return load_train_config(DEFAULT_RECIPE, overrides)
    given = parse_overrides(overrides).get("out_dir")  # --out, or --set / --overrides
    folder = Path(given) if given is not None else Path(
        load_train_config(DEFAULT_RECIPE).out_dir)
    last = folder / "last.pt"
    if not last.exists() and (folder / LOCK_FILE).exists():
        with run_folder_lock(folder):  # a run still in its first epoch is named as such
            pass
    if not last.exists():
        raise _no_checkpoint(folder, given is not None)
    from risloc.inference.checkpoint import load_checkpoint

    console.print(f"recipe: the one stored in {last}")
    return TrainConfig.from_json(load_checkpoint(last)["config"],
                                 [*overrides, f"out_dir={last.parent}"])


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
        "--config", "-c", help="Training recipe: a YAML/TOML file or a shipped recipe's "
        f"name ({', '.join(shipped_recipes())}). Default: train_default, or with --resume "
        "the recipe stored in the run's last.pt.", dir_okay=False, show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue exactly from <out>/last.pt.")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a recipe field: section.field=value (repeatable), e.g. "
                      "--set optim.lr=3e-4 --set schedule.epochs=5.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output folder (checkpoints, CSV logs); overrides out_dir.")] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", min=1, help="Override schedule.epochs (not on --resume: a run goes "
        "on to the epochs it began with).")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu or cuda; overrides the recipe's device (auto: CUDA "
                         "when present).")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=0, help="torch CPU threads; overrides the recipe's threads "
        "(0 = leave as is; default: the recipe's, 1 in train_default).")] = None,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Show a progress bar per epoch on a terminal "
                                         "(default: the recipe's progress, on unless it "
                                         "says false).",
        show_default=False)] = None,
    overrides_file: Annotated[Path | None, typer.Option(
        "--overrides", help="YAML of recipe overrides (e.g. best_overrides.yaml of "
                            "risloc tune: its 'overrides' mapping), applied before --set.",
        dir_okay=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Start afresh in an output folder that holds a run: its "
                            "checkpoints, logs and model are deleted once the new run has "
                            "started (its data, device and recipe checked), so a run that "
                            "cannot start leaves the old one whole.")] = False,
) -> None:
    """Train the learned covariance network; write best.pt, last.pt, final.pt, CSV logs and
    metrics.json, then (recipe section `order`, on by default) the inference model
    model.pt: the best epoch's averaged weights plus its order head, as shipped in the
    package."""
    with _rank_zero_reports():  # data-parallel: one process's lines, not one per rank
        _train(config, set_, out, epochs, device, threads, resume, progress, overrides_file,
               overwrite)


@contextlib.contextmanager
def _rank_zero_reports() -> Iterator[None]:
    """On a data-parallel process other than rank 0 (torchrun's RANK), no console lines and
    no log records below warnings while it runs: rank 0 reports. Its warnings and errors
    still print, the log's through a console of their own (errors leaving the command are
    printed after this, by handle_errors)."""
    if int(os.environ.get("RANK", "0")) == 0:
        yield
        return
    handlers = logging.getLogger().handlers
    saved = [(h, getattr(h, "console", None), h.level) for h in handlers]
    loud = Console(stderr=True)
    for h in handlers:
        if isinstance(h, RichHandler):  # (its console is quieted below)
            h.console = loud
        h.setLevel(logging.WARNING)
    quiet, console.quiet = console.quiet, True
    try:
        yield
    finally:
        console.quiet = quiet
        for h, c, level in saved:
            if isinstance(h, RichHandler):
                h.console = c
            h.setLevel(level)


def _train(config, set_, out, epochs, device, threads, resume, progress, overrides_file,
           overwrite) -> None:
    overrides = [*read_overrides(overrides_file), *(set_ or [])]
    if out is not None:
        overrides.append(f"out_dir={out}")
    if epochs is not None:
        overrides.append(f"schedule.epochs={epochs}")
    if device is not None:
        overrides.append(f"device={device}")
    if threads is not None:
        overrides.append(f"threads={threads}")
    if progress is not None:
        overrides.append(f"progress={str(progress).lower()}")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    cfg = _recipe(config, overrides, resume)
    run = Path(cfg.out_dir)
    check_output_folder(run, what=f"the output folder {run}")
    first_rank = int(os.environ.get("RANK", "0")) == 0  # data-parallel: rank 0 checks
    created = first_rank and not run.exists()
    if first_rank:  # the folder is this run's until its model is written
        make_output_folder(run)
    try:
        if first_rank:  # (before any setup; root is refused by chattr +i alone)
            check_folder_writable(run)
        with run_folder_lock(run) if first_rank else contextlib.nullcontext():
            # checked under the lock: a run still writing the folder is named as such, not
            # as one that stopped before its first checkpoint
            if resume and not (run / "last.pt").exists():
                raise _no_checkpoint(run)
            _train_in_folder(cfg, run, resume, overwrite, first_rank)
    except BaseException as err:
        # a run that failed to start leaves no empty folder behind (one that lost the folder
        # to another run starting at once leaves it to that run)
        if created and not isinstance(err, RunFolderInUse):
            _remove_if_unused(run)
        raise


def _no_checkpoint(run: Path, named: bool = True) -> FileNotFoundError:
    """The error of --resume where ``run`` holds no last.pt (``named``: --out named it)."""
    stopped = run.is_dir() and any(p.name in RUN_FILES for p in run.glob("*"))
    return FileNotFoundError(f"--resume: no checkpoint {run / 'last.pt'}" + (
        " (the run stopped before its first checkpoint: --overwrite, not --resume, starts "
        "it afresh)" if stopped else
        " (no run here to continue: without --resume a new run starts)" if named else
        " (--out names the run folder)"))


def _remove_if_unused(run: Path) -> None:
    """Remove the folder ``run`` if it holds nothing but the lock file."""
    if {p.name for p in run.iterdir()} <= {LOCK_FILE}:
        (run / LOCK_FILE).unlink(missing_ok=True)
        run.rmdir()


def _train_in_folder(cfg: TrainConfig, run: Path, resume: bool, overwrite: bool,
                     first_rank: bool) -> None:
    """The run of :func:`train_command` once it holds its folder: train, then the
    inference model."""
    held = sorted(p.name for p in run.glob("*") if p.name in RUN_FILES) if run.is_dir() else []
    # every rank refuses (not rank 0 alone): rank 1 had gone on to wait for rank 0 in the
    # process group, deaf to torchrun's SIGTERM there, until its SIGKILL 30 s later
    if held and not (resume or overwrite):
        how = ("pass --resume to continue it or --overwrite to start afresh"
               if "last.pt" in held else "it stopped before its first checkpoint, so there "
               "is nothing to resume: --overwrite starts afresh")
        raise ValueError(f"{run} already holds a run ({', '.join(held)}): {how}")

    def clear_old_run() -> None:  # afresh: no file of the old run is left to be mistaken
        for name in held:  # for this one's (a model.pt where this run fits no order head)
            (run / name).unlink(missing_ok=True)

    console.print(f"training -> {cfg.out_dir} ({cfg.schedule.epochs} epochs x "
                  f"{cfg.schedule.steps_per_epoch} steps, batch {cfg.optim.batch_size})")
    # the old run goes only once this one is set up and checked (train's on_start)
    before = _file_stamps(run)
    try:
        metrics = train(cfg, resume=resume, lock=False,  # (held here, model.pt included)
                        on_start=clear_old_run if overwrite and first_rank else None)
    except KeyboardInterrupt:
        last = run / "last.pt"
        ours = {name for name, stamp in _file_stamps(run).items() if before.get(name) != stamp}
        if last.exists() and (resume or "last.pt" in ours):
            console.print(f"[yellow]interrupted: the same command with {_RESUME[overwrite]} "
                          f"continues from {last} (the last finished epoch)[/]")
        else:  # no epoch of this run finished: a last.pt there is an older run's
            if first_rank:  # what this run wrote (its first log rows) cannot be resumed
                for name in ours:
                    (run / name).unlink(missing_ok=True)
            again = "with --overwrite " if any(p.name in RUN_FILES for p in run.glob("*")) \
                else ""
            console.print(f"[yellow]interrupted before this run's first epoch finished: "
                          f"nothing of it to resume; the same command {again}starts "
                          f"afresh[/]")
        raise typer.Exit(code=130) from None
    if not first_rank:  # data-parallel: rank 0 writes and reports
        return
    write_json_atomic(run / "metrics.json", metrics)
    print_table(_summary_table(metrics, run), stdout)
    if cfg.order.scenes == 0:
        held = f"so no {run / 'model.pt'}"
        if (run / "model.pt").exists():
            held = (f"the {run / 'model.pt'} there, fitted earlier, is left as it was" + (
                "" if _model_of_best_epoch(run) is not None else
                " (of another epoch than best.pt's now)"))
        console.print(f"order.scenes = 0: no order head fitted, {held} (risloc export-model "
                      f"{shell_arg(run / 'best.pt')}, then risloc fit-order on what it writes, "
                      "make one: "
                      f"{_fit_order_options(cfg, OrderStageConfig().scenes)} for this "
                      "recipe's other settings)")
    elif resume and _model_is_current(cfg):
        console.print(f"{run / 'model.pt'} is already the inference model of {run / 'best.pt'}, "
                      "its order head fitted with this recipe's order settings: kept (delete "
                      "it to fit the head again)")
    else:
        try:
            _inference_model(cfg, progress_bar=cfg.progress)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted while fitting the order head: the training "
                          f"is complete, model.pt is not written; the same command with "
                          f"{_RESUME[overwrite]} fits it (or: risloc fit-order "
                          f"{shell_arg(run / HEADLESS)} --out {shell_arg(run / 'model.pt')} "
                          f"{_fit_order_options(cfg)})[/]")
            raise typer.Exit(code=130) from None


def _file_stamps(run: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime_ns) of each run file in ``run``: the files a run has written
    since are those whose stamp changed (a checkpoint or log is replaced by a new file)."""
    out = {}
    for p in run.glob("*"):
        if p.name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                out[p.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def _model_of_best_epoch(run: Path) -> dict | None:
    """<run>/model.pt's state where it holds best.pt's epoch (and recipe); else None (one
    of them absent or unreadable, or another epoch)."""
    from risloc.inference.checkpoint import load_checkpoint

    try:
        model, best = load_checkpoint(run / "model.pt"), load_checkpoint(run / "best.pt")
    except (FileNotFoundError, ValueError):
        return None
    same = all(model.get(k) == best.get(k) for k in ("epoch", "step", "config"))
    return model if same else None


def _model_is_current(cfg: TrainConfig) -> bool:
    """Whether <out_dir>/model.pt holds best.pt's epoch and an order head fitted with the
    recipe's order settings, and its source ranker (a finished run resumed again: nothing
    to fit anew; one finished before the ranker existed gets both)."""
    model = _model_of_best_epoch(Path(cfg.out_dir))
    if model is None:
        return False
    report, o = model.get("order_report") or {}, cfg.order
    return (model.get("order_head") is not None and "ranker" in model["order_head"]
            and report.get("training_scenes") == o.scenes
            and report.get("scene") == dict(o.scene) and report.get("scene_mix") == o.scene_mix
            and len(report.get("per_snr") or ()) > 0
            and all(r.get("scenes") == o.report_scenes for r in report["per_snr"]))


def _fit_order_options(cfg: TrainConfig, scenes: int | None = None) -> str:
    """The `risloc fit-order` options that fit the head as the recipe's order section does
    (``scenes`` in place of its count: the default where it skips the stage)."""
    import json
    import shlex

    o = cfg.order
    opts = [f"--scenes {o.scenes if scenes is None else scenes}",
            f"--report-scenes {o.report_scenes}"]
    opts += [f"--scene {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in o.scene.items()]
    return " ".join(opts + ([] if o.scene_mix else ["--no-mix"]))


def _inference_model(cfg, progress_bar: bool) -> Path:
    """Export <out_dir>/best.pt and fit its order head into <out_dir>/model.pt (written only
    when the head is fitted: a run stopped in between leaves no model.pt without its head)."""
    from risloc.cli.fit_order import report_table
    from risloc.inference.checkpoint import export_model, model_card_path
    from risloc.pipeline.calibrate import fit_order, n_progress_items

    o = cfg.order
    run = Path(cfg.out_dir)
    headless, model = export_model(run / "best.pt", run / HEADLESS), run / "model.pt"
    console.print(f"fitting the order head of {model} on {o.scenes} training-split scenes")
    if progress_bar:
        with progress() as bar:
            task = bar.add_task("order features",
                                total=n_progress_items(o.scenes, o.report_scenes))
            report = fit_order(headless, model, o.scenes, o.report_scenes,
                               on_batch=lambda n: bar.advance(task, n), scene=o.scene,
                               mix=o.scene_mix)
    else:
        report = fit_order(headless, model, o.scenes, o.report_scenes, scene=o.scene,
                           mix=o.scene_mix)
    headless.unlink()
    model_card_path(headless).unlink(missing_ok=True)
    print_table(report_table(report), stdout)
    console.print(f"inference model (as shipped): {model} and its card "
                  f"{model_card_path(model)}")
    return model
