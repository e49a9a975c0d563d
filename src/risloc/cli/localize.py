"""`risloc localize`: a scene file in, the estimates CSV out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from risloc.cli.common import console, handle_errors, out, progress
from risloc.core.params import Estimates, concat_estimates
from risloc.evaluation.metrics import match_sources, summarize_by_snr
from risloc.io import read_scenes
from risloc.io.atomic import check_writable
from risloc.pipeline import METHODS, Localizer
from risloc.pipeline.estimates_file import estimate_rows, write_estimates
from risloc.pipeline.localizer import check_system


def _metrics_table(est: Estimates, scenes) -> Table:
    m = match_sources(est, scenes.azimuth, scenes.elevation, scenes.range_m, scenes.K)
    t = Table(title="metrics against the file's truth")
    for col in ("SNR dB", "scenes", "K acc", "F1", "az med°", "el med°", "range med m"):
        t.add_column(col, justify="right")
    for snr, s in summarize_by_snr(m, scenes.snr_db.nan_to_num(0.0)).items():
        t.add_row(f"{snr:g}", str(s.n_scenes), f"{s.K_accuracy:.3f}", f"{s.f1:.3f}",
                  f"{s.azimuth_median_deg:.3g}", f"{s.elevation_median_deg:.3g}",
                  f"{s.range_median_m:.3g}")
    return t


@handle_errors
def localize_command(
    scenes: Annotated[Path, typer.Argument(help="Scene file (.h5 / .npz, docs/conventions.md).")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Estimates CSV.")] = Path(
        "estimates.csv"),
    method: Annotated[str | None, typer.Option(help=(
        f"One of {', '.join(METHODS)}; default: learned when a model is available (the shipped "
        "one or --checkpoint), else classical."))] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Trained checkpoint (learned method); default: the shipped model.")] = None,
    K: Annotated[int | None, typer.Option("--K", help="Known number of sources.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
) -> None:
    """Localize every scene of a file and write the estimates CSV."""
    if method is None:
        from risloc.pipeline.learned import DEFAULT_MODEL

        method = "learned" if checkpoint is not None or DEFAULT_MODEL.exists() else "classical"
        if method == "classical":
            console.print("[yellow]no shipped model in this build: using the classical "
                          "localizer (pass --checkpoint for a trained model)[/]")
    if method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
    check_writable(out_path, [scenes] + ([checkpoint] if checkpoint is not None else []))
    batch, info = read_scenes(scenes)
    if K is not None and not 1 <= K <= info.system.K_max:
        raise ValueError(f"--K must lie in 1..K_max={info.system.K_max}, got {K}")
    if method == "learned":
        loc = Localizer.from_checkpoint(checkpoint)
        try:
            check_system(loc.system, info.system)
        except ValueError as err:
            raise ValueError(f"{scenes}: {err}") from None
    else:
        loc = Localizer(info.system, "classical")
    snr = batch.snr_db  # NaN where a scene's SNR is unknown
    parts, rows, bad, t0 = [], [], [], time.perf_counter()
    with progress() as bar:
        task = bar.add_task(f"localizing ({method})", total=len(batch))
        for lo in range(0, len(batch), batch_size):
            hi = min(lo + batch_size, len(batch))
            res = loc.localize(batch.y[lo:hi], batch.H[lo:hi], batch.codes[lo:hi],
                               snr[lo:hi], K, system=info.system)
            parts.append(res.estimates)
            rows.extend(estimate_rows(res.estimates, lo))
            bad.extend((lo + i, why) for i, why in res.bad)
            bar.advance(task, hi - lo)
    dt = time.perf_counter() - t0
    write_estimates(out_path, rows)
    for i, why in bad:
        console.print(f"[yellow]scene {i} not localized:[/] {why}")
    console.print(f"{len(batch)} scenes in {dt:.1f} s ({len(batch) / dt:.1f} scenes/s); "
                  f"{len(rows)} sources written to {out_path}")
    if info.has_truth:
        out.print(_metrics_table(concat_estimates(parts), batch))
    if bad:
        raise typer.Exit(code=1)
