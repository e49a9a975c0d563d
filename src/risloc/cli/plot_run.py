"""`risloc plot-run RUN`: the training curves of a run folder as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from risloc.cli.common import console, handle_errors


@handle_errors
def plot_run_command(
    run: Annotated[Path, typer.Argument(help="Run folder of `risloc train` (epochs.csv).")],
    out_path: Annotated[Path | None, typer.Option(
        "--out", "-o", help="PNG to write (default: <run>/curves.png).")] = None,
) -> None:
    """Draw a run's training curves: loss per step and epoch, the validation objective,
    K accuracy, F1, median angle and range errors, subspace overlap and NMSE per epoch,
    learning rate and blend beta."""
    from risloc.experiments.plots import plot_run
    from risloc.io.atomic import check_writable

    target = out_path or run / "curves.png"
    if target.suffix.lower() != ".png":
        raise ValueError(f"--out {target}: the curves are drawn as a PNG; give a name ending "
                         "in .png")
    if not run.is_dir():  # (named before the write check)
        raise FileNotFoundError(f"{run}: no such folder" if not run.exists() else
                                f"{run} is a file: give the run's folder")
    if not (run / "epochs.csv").exists():
        raise FileNotFoundError(f"{run}: no epochs.csv: " + (
            "no epoch of this run has finished yet" if (run / "steps.csv").exists() or
            (run / ".lock").exists() else "not a risloc run folder?"))
    check_writable(target, inputs=[run / "epochs.csv", run / "steps.csv"])
    path = plot_run(run, target)
    console.print(f"wrote {path}")
