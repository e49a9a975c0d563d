"""Shared CLI pieces: console, error handling, config options, progress bars."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from risloc.config import ConfigError, RislocConfig, load_config

console = Console(stderr=True)
# Tables stay readable when stdout is a file or pipe (rich would fall back to 80 columns).
out = Console(width=None if Console().is_terminal else 150)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="YAML/TOML file with 'system' and 'scene' sections.",
    exists=False, dir_okay=False)]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config field: section.field=value (repeatable), "
                  "e.g. --set scene.K=3 --set 'scene.snr_db=[0, 10]'.")]

F = TypeVar("F", bound=Callable)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)


def handle_errors(fn: F) -> F:
    """Turn expected user errors into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, ValueError, TypeError, FileNotFoundError, OSError) as err:
            console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True,
                          highlight=False)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def parse_numbers(text: str, option: str, kind: type = float,
                  allow_empty: bool = False) -> tuple:
    """``"-5,0,5"`` -> ``(-5.0, 0.0, 5.0)``; a ValueError naming ``option`` for a value
    that is not a number of that kind, or for no value at all (unless ``allow_empty``)."""
    parts = [v.strip() for v in text.split(",") if v.strip()]
    try:
        values = tuple(kind(v) for v in parts)
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise ValueError(f"{option}: expected comma-separated {what}, got {text!r}") from None
    if not values and not allow_empty:
        raise ValueError(f"{option}: no values given")
    return values


def get_config(config: Path | None, overrides: list[str] | None) -> RislocConfig:
    return load_config(config, overrides)


def progress() -> Progress:
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)
