"""`risloc export-model`: turn a training checkpoint into a shippable inference model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from risloc.cli.common import console, handle_errors, refuse_existing_model


@handle_errors
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help=(
        "A run's model.pt (with the order head `risloc train` fits at its end), a training "
        "checkpoint (best.pt / last.pt / final.pt: no order head, so fit one with `risloc "
        "fit-order`, before or after export, for the K decision the shipped model uses), "
        "or the output of `risloc fit-order`."))],
    out_path: Annotated[Path, typer.Option("--out", "-o", help=(
        "Inference model to write (.pt); its model card goes beside it as .json. Written "
        "and loaded under a temporary name first: a checkpoint that does not make a "
        "working model replaces nothing. The shipped model is "
        "src/risloc/models/default.pt."))] = Path("model.pt"),
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace --out, and a file where its model card goes, when "
                            "they exist (refused otherwise).")] = False,
) -> None:
    """Write an inference-only model (config, EMA and SWA weights, order head) and its model
    card. Loading uses the EMA weights (the ones validation selected; in Python
    load_learned_pipeline(path, weights="swa") takes the SWA average)."""
    from risloc.inference.checkpoint import export_model, model_card_path
    from risloc.pipeline.learned import load_learned_pipeline

    if not checkpoint.exists():
        run = checkpoint.parent  # a run folder whose first epoch is still training
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}" + (
            f" (no epoch of the run in {run} has finished yet: best.pt and last.pt are "
            "written as its first ends)" if checkpoint.name in ("best.pt", "last.pt") and
            ((run / ".lock").exists() or (run / "steps.csv").exists()) else ""))
    refuse_existing_model(out_path, overwrite, checkpoint)  # itself: named below
    # the written model must load as a pipeline before it replaces anything at --out
    # (a run's checkpoint has no order head yet: not worth a warning here)
    dst = export_model(checkpoint, out_path,
                       verify=lambda p: load_learned_pipeline(p, warn_headless=False))
    card = json.loads(model_card_path(dst).read_text())
    val = card["validation"]
    console.print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB) and its card "
                  f"{model_card_path(dst)}: epoch {card['epoch']}, validation angle median "
                  f"{_number(val.get('angle_median_deg'), '.3g')} deg, K accuracy "
                  f"{_number(val.get('K_accuracy'), '.3f')}")


def _number(v, spec: str) -> str:
    """A card's metric for the summary line ('-' where the checkpoint has none)."""
    return format(v, spec) if isinstance(v, int | float) else "-"
