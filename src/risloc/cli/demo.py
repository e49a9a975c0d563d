"""`risloc demo`: the main job — the shipped model and the classical localizer beside the CRB."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from risloc.cli.common import console, handle_errors, parse_numbers, sweep_config
from risloc.cli.evaluate import run_report
from risloc.config import RislocConfig, check_snr_db
from risloc.experiments.harness import SweepSettings, sweep_points
from risloc.io.atomic import check_writable


@handle_errors
def demo_command(
    n: Annotated[int, typer.Option("--n", min=1, help="Scenes per SNR point.")] = 100,
    snr_db: Annotated[str, typer.Option(
        "--snr-db", help="SNR points in dB, comma-separated.")] = "-5,0,5,10,20",
    checkpoint: Annotated[Path | None, typer.Option(
        help="Learned model (default: the model shipped with the package).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path(
        "reports/demo"),
    seed: Annotated[int, typer.Option(min=0, help="Seed of the simulated test scenes.")] = 0,
    power_spread_db: Annotated[float, typer.Option(
        min=0, max=60, help="Source powers spread over this many dB (0: equal powers).")] = 12.0,
    snr_given: Annotated[bool, typer.Option(
        "--snr-given/--snr-withheld", help="Tell the localizers the SNR.")] = False,
) -> None:
    """Simulate a test set across SNRs on the default system (with --checkpoint, on its
    model's system), K unknown, 1..K_max, by default as users' data come (unequal source
    powers, no SNR given); localize it with the learned pipeline and the classical
    localizer, and report both beside the CRB (table, metrics.csv/json, PNG plots)."""
    from risloc.pipeline.learned import DEFAULT_MODEL

    estimators = ("learned", "classical")
    if checkpoint is None and not DEFAULT_MODEL.exists():
        console.print("[yellow]no shipped model in this build: running the classical "
                      "localizer only (pass --checkpoint to add a trained model)[/]")
        estimators = ("classical",)
    snrs = parse_numbers(snr_db, "--snr-db")
    for snr in snrs:
        check_snr_db(snr, "--snr-db")
    for name in ("metrics.csv", "metrics.json"):  # before the sweep, not after it
        check_writable(out_dir / name)
    settings = SweepSettings(estimators=estimators, snr_db=snrs, n_per_point=n, seed=seed,
                             checkpoint=None if checkpoint is None else str(checkpoint),
                             snr_given=snr_given, power_spread_db=power_spread_db)
    cfg = sweep_config(None, None, checkpoint)
    whose = "default" if cfg.system == RislocConfig().system else "the model's"
    run_report(sweep_points(settings, cfg), cfg.system, settings, out_dir, True,
               f"{whose} system, simulated test split", "risloc demo")
