"""Shared CLI pieces: console, error handling, config options, progress bars."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.errors import MarkupError
from rich.logging import RichHandler
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from risloc.config import ConfigError, RislocConfig, load_config


class _Console(Console):
    """A rich console on which a user's name never stops a command: a text (message, table
    title or cell) holding a path that rich reads as a closing tag ('c[/]d.h5') is shown as
    it is, its markup unread, where rich would raise (after the work is done) a MarkupError."""

    def render_str(self, text: str, **kwargs):
        try:
            return super().render_str(text, **kwargs)
        except MarkupError:
            return super().render_str(text, **{**kwargs, "markup": False})

    def on_broken_pipe(self) -> None:
        """The reader of this console's pipe is gone (`risloc train ... 2>&1 | head`): the
        rest of its output goes to /dev/null and the command goes on to its end, its files
        written (rich exits 1 there: a training run ended before its model.pt, an evaluate
        before its plots)."""
        self.quiet = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fd = self.file.fileno()  # first: a buffer without one (CliRunner's) opens nothing
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, fd)  # (Python's own flush at exit too)
            finally:
                os.close(devnull)


# Printed messages are never broken into lines of the terminal's width by rich (the
# terminal wraps them): a path or command in one stays whole, to copy (log lines, through
# rich's logging handler on a terminal, are laid out by it; setup_logging).
console = _Console(stderr=True, soft_wrap=True)
# Tables stay readable when stdout is a file or pipe (rich would fall back to 80 columns).
out = _Console(width=None if Console().is_terminal else 150)


def print_table(table: Table, console: Console | None = None) -> None:
    """Print ``table`` (on ``out`` by default) with every header and cell whole: each column
    at least as wide as its longest word, a text wrapping only between words. Where that is
    wider than the terminal, the table is printed that wide and the terminal wraps its lines
    (rich would cut numbers and names to fit: '0.04…' and 'classic…' on 60 columns)."""
    console = console or out
    wide = console.options.update_width(10_000)
    columns = table.columns if isinstance(table, Table) else []  # (others as they are)
    for column in columns:
        column.min_width = max(Measurement.get(console, wide, cell).minimum
                               for cell in (column.header, *column.cells))
    console.print(table, crop=False)


ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="YAML/TOML file with 'system' and 'scene' sections (or a "
                           "training recipe: a file or a shipped recipe's name).",
    exists=False, dir_okay=False)]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config field: section.field=value (repeatable), "
                  "e.g. --set scene.K=3 --set 'scene.snr_db=[0, 10]'.")]

FovOpt = Annotated[list[str] | None, typer.Option(
    "--fov", help="The field of view the classical estimators search, one field at a time "
                  "(repeatable): --fov range_m=0.1,1.0 --fov azimuth_deg=-45,45; fields: "
                  "azimuth_deg, elevation_deg (deg, inside -90..90), range_m (m); a field not "
                  "given keeps the default (-60..60 deg, -30..30 deg, 0.5..10 m). The learned "
                  "model searches its training scenes' box: another is refused.")]

F = TypeVar("F", bound=Callable)


class _StderrHandler(logging.StreamHandler):
    """Log records as plain lines on the sys.stderr of the moment (as the console writes)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # (StreamHandler sets it; the current stderr is used)
        pass


def setup_logging(verbose: bool) -> None:
    """Log records through rich on a terminal; to a file or pipe (a training run's log, CI)
    one plain line each, never broken at rich's 80 columns."""
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s",
                                               "%Y-%m-%d %H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler],
                        force=True)


def shell_arg(path: Path | str) -> str:
    """``path`` as one word of a command printed for the user to copy into a shell: quoted
    where it holds spaces, quotes or other shell characters, and a name that begins with
    '-' led by './' (not taken for an option). Escaped for rich's markup."""
    text = str(path)
    return escape(shlex.quote(f"./{text}" if text.startswith("-") else text))


def handle_errors(fn: F) -> F:
    """Turn expected user errors into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, ValueError, TypeError, FileNotFoundError, OSError) as err:
            console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:  # (train and localize say how to continue themselves)
            console.print("[yellow]interrupted: every output is written whole or not at "
                          "all, so none is half-written[/]")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def refuse_existing(path: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """ValueError when the file ``path`` exists and --overwrite was not given (an input
    rewritten in place, one of ``inputs``, is allowed; a folder is left to the writer's
    checks, which name it)."""
    in_place = any(path.resolve() == p.resolve() for p in inputs)
    if path.exists() and not path.is_dir() and not overwrite and not in_place:
        raise ValueError(f"{path} exists: pass --overwrite to replace it")


def refuse_existing_model(path: Path, overwrite: bool, source: Path) -> None:
    """:func:`refuse_existing` for a model written from ``source`` and for its model card
    beside it (``<name>.json``), which may be a file of the user's where no model is: both
    are replaced only with --overwrite, or where the model is ``source`` rewritten in
    place (its card then updated)."""
    from risloc.inference.checkpoint import MODEL_SUFFIXES, model_card_path

    refuse_existing(path, overwrite, inputs=(source,))
    in_place = path.resolve() == source.resolve()
    if path.suffix.lower() not in MODEL_SUFFIXES:  # (the writer names that first; --out ''
        return  # has no card: model_card_path raised "PosixPath('.') has an empty name")
    card = model_card_path(path)
    if card.is_file() and not overwrite and not in_place:
        raise ValueError(f"{card} exists and would be replaced by the model card of {path}: "
                         "pass --overwrite to replace it, or choose another --out")


def parse_numbers(text: str, option: str, kind: type = float,
                  allow_empty: bool = False) -> tuple:
    """``"-5,0,5"`` -> ``(-5.0, 0.0, 5.0)``; a ValueError naming ``option`` for a value
    that is not a finite number of that kind, a value given twice, or no value at all
    (unless ``allow_empty``)."""
    parts = [v.strip() for v in text.split(",") if v.strip()]
    what = "whole numbers" if kind is int else "finite numbers"
    try:
        values = tuple(kind(v) for v in parts)
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated {what}, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{option}: expected comma-separated {what}, got {text!r}")
    if len(set(values)) < len(values):
        twice = next(v for i, v in enumerate(values) if v in values[:i])
        raise ValueError(f"{option}: {twice:g} is given twice")
    if not values and not allow_empty:
        raise ValueError(f"{option}: no values given")
    return values


def parse_fov(values: list[str] | None):
    """The :class:`risloc.config.FieldOfView` of ``--fov name=low,high`` options (None where
    none is given): the fields named replaced, the others the default's; its own checks (and
    messages) validate the values."""
    import difflib
    from dataclasses import fields

    from risloc.config import FieldOfView

    if not values:
        return None
    names = [f.name for f in fields(FieldOfView)]
    given: dict[str, tuple[str, ...]] = {}
    for text in values:
        name, eq, value = (part.strip() for part in text.partition("="))
        if not eq:
            raise ValueError(f"--fov {text!r}: expected name=low,high, e.g. --fov "
                             "range_m=0.1,1.0")
        if name not in names:
            near = difflib.get_close_matches(name.lower(), names, 1)
            raise ValueError(f"--fov {text!r}: unknown field {name!r}"
                             + (f" (did you mean {near[0]}?)" if near else "")
                             + f"; fields: {', '.join(names)}")
        if name in given:
            raise ValueError(f"--fov: {name} is given twice")
        given[name] = tuple(v.strip() for v in value.split(","))
    try:
        return FieldOfView(**given)
    except ValueError as err:
        raise ValueError(f"--fov: {err}") from None


def refuse_fov(fov, model_fov, alternative: str = "use --method classical") -> str:
    """The message refusing a --fov ``fov`` other than the learned model's ``model_fov``."""
    return (f"--fov {fov.describe()}: the learned localizer searches the field of view it was "
            f"trained for ({model_fov.describe()}), not another; train one with the scenes' "
            "field of view (the recipe's scene.azimuth_deg / scene.elevation_deg / "
            f"scene.range_m, `risloc train --set 'scene.range_m=[low, high]'`) or {alternative}")


def fov_setting(fov) -> list[list[float]] | None:
    """A field of view as a JSON value (a record's, a report's): its three (low, high)."""
    return None if fov is None else [list(fov.azimuth_deg), list(fov.elevation_deg),
                                     list(fov.range_m)]


def get_config(config: Path | None, overrides: list[str] | None) -> RislocConfig:
    """The system and scene of ``--config`` / ``--set``; a training recipe may be given as
    the config (its other sections are skipped, an unknown one is an error)."""
    from risloc.training.config import TrainConfig

    return load_config(config, overrides, ignored=TrainConfig.model_fields)


def sweep_config(config: Path | None, overrides: list[str] | None,
                 checkpoint: Path | None) -> RislocConfig:
    """The config of a simulated sweep: :func:`get_config`, on ``checkpoint``'s own system
    unless ``--config`` names one (``--set system.*`` changes fields of the model's system);
    a model serves only the system it was trained for: a sweep on another is refused here,
    naming the fields that differ, before any scene is simulated (said when the model's is
    not the default one)."""
    if checkpoint is None or config is not None:
        cfg = get_config(config, overrides)
        if checkpoint is None:
            return cfg
    from risloc.pipeline.localizer import check_system

    system, fov = model_system(checkpoint, with_fov=True)
    if config is None:  # the model's system, its scenes in the field of view it searches
        own = [f"system.{k}={v}" for k, v in system.model_dump(mode="json").items()]
        own += [f"scene.{k}={list(getattr(fov, k))}"
                for k in ("azimuth_deg", "elevation_deg", "range_m")]
        cfg = get_config(None, own + list(overrides or []))
    try:
        check_system(system, cfg.system)
    except ValueError as err:
        raise ValueError(f"{checkpoint}: {err}: a model serves the system it was trained for (drop "
                         "--checkpoint and 'learned' from --estimators to evaluate the "
                         "others on this system)") from None
    default = get_config(None, None)
    if cfg.system != default.system or cfg.scene.fov != default.scene.fov:
        changed = "" if cfg.system == system else ", changed by --set"
        console.print(f"simulating the scenes on {checkpoint}'s system{changed} "
                      f"({cfg.system.describe()}), sources in {cfg.scene.fov.describe()}")
    return cfg


def model_system(checkpoint: Path | None, with_fov: bool = False):
    """The system a model (``checkpoint``; None: the shipped one) was trained for (and, with
    ``with_fov``, the field of view it searches: its training scenes'); its own error where
    it is no model."""
    from risloc.inference.checkpoint import load_checkpoint
    from risloc.inference.recipe import InferenceRecipe
    from risloc.pipeline.learned import DEFAULT_MODEL

    state = load_checkpoint(DEFAULT_MODEL if checkpoint is None else checkpoint)
    recipe = InferenceRecipe.from_json(state["config"])
    return (recipe.system, recipe.fov) if with_fov else recipe.system


def check_model_serves(checkpoint: Path | None, system, what: str) -> None:
    """Refuse, before any scene is localized, a model (``checkpoint``; None: the shipped
    one) that is no model or was trained for another system than ``what``'s (a file's, a
    sweep's): it failed only at the learned estimator's first batch, after the bound was
    described and a progress bar drawn."""
    from risloc.pipeline.localizer import check_system

    model = model_system(checkpoint)  # (no model: its own error)
    try:
        check_system(model, system)
    except ValueError as err:
        name = "the shipped model" if checkpoint is None else checkpoint
        raise ValueError(f"{name}: {err}: a model serves the system it was trained for (drop "
                         f"'learned' from --estimators to evaluate the others on {what})"
                         ) from None


def progress() -> Progress:
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)
