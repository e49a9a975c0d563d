"""`risloc export-model`: turn a training checkpoint into a shippable inference model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from risloc.cli.common import console, handle_errors


@handle_errors
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help=(
        "Training checkpoint (best.pt / final.pt), or the output of `risloc fit-order`: a "
        "run's own checkpoints have no order head, so fit one first (or after export) for "
        "the K decision the shipped model uses."))],
    out_path: Annotated[Path, typer.Option("--out", "-o", help=(
        "Inference model to write; its model card goes beside it as .json. The shipped "
        "model is src/risloc/models/default.pt."))] = Path("model.pt"),
) -> None:
    """Write an inference-only model (config + EMA/SWA weights) and its model card."""
    from risloc.inference.checkpoint import export_model
    from risloc.pipeline.learned import load_learned_pipeline

    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    dst = export_model(checkpoint, out_path)
    load_learned_pipeline(dst)  # refuse to report success on a model that does not load
    card = json.loads(dst.with_suffix(".json").read_text())
    val = card["validation"]
    console.print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB) and its card "
                  f"{dst.with_suffix('.json')}: epoch {card['epoch']}, validation angle median "
                  f"{val.get('angle_median_deg', float('nan')):.3g} deg, K accuracy "
                  f"{val.get('K_accuracy', float('nan')):.3f}")
