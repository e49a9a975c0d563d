"""The `risloc` command line."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from risloc import __version__
from risloc.cli.common import setup_logging
from risloc.cli.demo import demo_command
from risloc.cli.evaluate import evaluate_command
from risloc.cli.export import export_command
from risloc.cli.fit_order import fit_order_command
from risloc.cli.localize import localize_command
from risloc.cli.plot_run import plot_run_command
from risloc.cli.simulate import info_command, simulate_command
from risloc.cli.train import train_command
from risloc.cli.tune import tune_command

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Near-field localization of radio sources through a RIS.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"risloc {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    setup_logging(verbose)


def _help(command) -> str:
    """A command's docstring as its help: each paragraph one line, for the terminal to wrap
    (the source's line breaks, kept by rich's help, broke sentences mid-line)."""
    text = inspect.getdoc(command) or ""
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


for name, command in (("demo", demo_command), ("simulate", simulate_command),
                      ("info", info_command), ("evaluate", evaluate_command),
                      ("localize", localize_command), ("train", train_command),
                      ("export-model", export_command), ("fit-order", fit_order_command),
                      ("tune", tune_command), ("plot-run", plot_run_command)):
    app.command(name, help=_help(command))(command)
