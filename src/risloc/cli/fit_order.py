"""`risloc fit-order`: fit the K decision (order head) of a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from risloc.cli.common import (
    console,
    handle_errors,
    out,
    print_table,
    progress,
    refuse_existing_model,
)
from risloc.pipeline.order import MIN_ORDER_SCENES


@handle_errors
def fit_order_command(
    checkpoint: Annotated[Path, typer.Argument(help=(
        "Trained model: a training checkpoint or an exported model (export-model)."))],
    out_path: Annotated[Path, typer.Option("--out", "-o", help=(
        "Model to write (.pt): the checkpoint plus the order head (may be the input itself; "
        "written atomically). A model card <checkpoint>.json is carried over to "
        "<out>.json with the head's report (an older <out>.json is removed where the "
        "checkpoint has none)."))] = Path("model.pt"),
    scenes: Annotated[int, typer.Option(min=MIN_ORDER_SCENES, help=(
        "Training-split scenes the head is fitted on (the recipe's scene distribution; the "
        "shipped head's 16,384 take minutes on a CPU: fewer for a first try)."))] = 16384,
    report_scenes: Annotated[int, typer.Option(min=1, help=(
        "Validation-split scenes per row of the report (an SNR with equal or spread "
        "powers)."))] = 256,
    workers: Annotated[int | None, typer.Option(min=1, help=(
        "CPU worker threads (default: one per core)."))] = None,
    scene: Annotated[list[str] | None, typer.Option("--scene", help=(
        "FIELD=VALUE (repeatable): a scene field replaced in the recipe's scene distribution "
        "for the head's training scenes, e.g. --scene 'power_spread_db=[0, 25]' (the "
        "shipped head's). Values are YAML. Default: the fields the model's current head was "
        "fitted with (its model card's order_head.scene), else its recipe's order.scene "
        "(what `risloc train` fits); fields given replace those."))] = None,
    margin: Annotated[float | None, typer.Option(help=(
        "Repairs' margin of the fit stage the head reads (MLFitConfig.repair_margin, in "
        "units of L sigma^2), stored with the head: the pipeline runs its fit stage with it "
        "where the head decides K. Default: the current head's, else 0."))] = None,
    mix: Annotated[bool | None, typer.Option("--mix/--no-mix", help=(
        "Draw the head's scenes from the recipe's data.scene_mix too (--no-mix: its base "
        "scene alone, the recipe's order.scene_mix false). Default: as the current head, "
        "else the recipe's order.scene_mix."))] = None,
    rank: Annotated[bool, typer.Option("--rank/--no-rank", help=(
        "Fit the source ranker with the head, on the same scenes: where the head decides K "
        "and the scene's own fits estimate its SNR below 9 dB (LearnedPipeline."
        "rank_below_db), the pipeline reports the K nested sources it ranks most probably real "
        "(risloc.pipeline.order.SourceRanker); --no-rank: the first K of the nested "
        "order."))] = True,
    keep_head: Annotated[bool, typer.Option("--keep-head", help=(
        "Keep the model's order head (its K decisions unchanged) and fit the source ranker "
        "alone, on the scenes the options say (those of the current head by default)."))
    ] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace --out (and a file where its model card goes) when "
                            "it exists and is not the input itself (refused otherwise).")
    ] = False,
) -> None:
    """Fit the order head: a small classifier that decides K from the nested ML fits of the
    pipeline's fit stage and the network's K head (risloc.pipeline.order); it never reads
    the SNR. The network is frozen; scenes come from the training split (its own stream of
    it, scenes the network never saw), with the recipe's unequal source powers. `risloc train` runs
    this stage itself at the end (recipe section `order`); this command fits or refits the
    head of an existing model (docs/guide.md, "Training the model")."""
    from risloc.inference.checkpoint import check_model_target
    from risloc.pipeline.calibrate import fit_order, n_progress_items, order_scenes
    from risloc.pipeline.learned import load_learned_pipeline

    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if margin is not None and not 0 <= margin < float("inf"):  # (MLFitConfig: repair_margin)
        raise ValueError(f"--margin must be >= 0 and finite, got {margin}")
    if keep_head and not rank:
        raise ValueError("--keep-head with --no-rank changes nothing: keep the head and fit "
                         "the ranker (--keep-head), or refit the head (--no-rank alone)")
    refuse_existing_model(out_path, overwrite, checkpoint)
    check_model_target(out_path, checkpoint, in_place=True)
    fields = scene_fields(scene or [])
    pipe = load_learned_pipeline(checkpoint, order_head=False)  # (a bad model named first)
    kept, kept_mix, kept_margin, whose = head_settings(checkpoint)
    taken = mix is None or margin is None or not set(kept) <= set(fields)  # (kept, said)
    fields = kept | fields
    mix = kept_mix if mix is None else mix
    margin = kept_margin if margin is None else margin
    console.print(f"the head's scenes: the recipe's{f' with {fields}' if fields else ''}"
                  f"{'' if mix else ' without its scene_mix kinds'}, repairs' margin "
                  f"{margin:g}" + (f" (not given: {whose})" if taken else ""))
    # the model and --scene checked before the progress bar (fit_order reads them again)
    order_scenes(pipe, fields, mix)
    with progress() as bar:
        task = bar.add_task("order features", total=n_progress_items(scenes, report_scenes))
        report = fit_order(checkpoint, out_path, scenes, report_scenes, workers=workers,
                           on_batch=lambda n: bar.advance(task, n), scene=fields,
                           margin=margin, mix=mix, rank=rank,
                           keep_head=keep_head)
    print_table(report_table(report), out)
    from risloc.inference.checkpoint import model_card_path

    card = model_card_path(out_path)
    console.print(f"wrote {out_path}" + (f" and its card {card}" if card.exists() else
                                         " (no model card: its input had none)"))


def head_settings(checkpoint: Path) -> tuple[dict, bool, float, str]:
    """(scene fields, mix, margin, where they come from) of a refit where the options are not
    given: those the model's current head was fitted with (its report), else its recipe's
    order section (what `risloc train` fits), so a refit changes only what it is told to.
    (Before, a refit of the shipped model without --scene fitted its head on the recipe's
    base scenes, not the shipped head's.)"""
    import json

    from risloc.inference.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    report, head = state.get("order_report"), state.get("order_head") or {}
    if isinstance(report, dict):  # (the margin the pipeline reads: the head's own)
        margin = head.get("repair_margin", report.get("repair_margin", 0.0))
        return (dict(report.get("scene") or {}), bool(report.get("scene_mix", True)),
                float(margin), "as its current head")
    config = state.get("config")
    config = json.loads(config) if isinstance(config, str) else config or {}
    order = config.get("order") or {}
    return (dict(order.get("scene") or {}), bool(order.get("scene_mix", True)), 0.0,
            "its recipe's order section")


def scene_fields(items: list[str]) -> dict:
    """``["power_spread_db=[0, 25]"]`` -> ``{"power_spread_db": [0, 25]}`` (YAML values, as
    the dotted overrides of :func:`risloc.config.parse_overrides`)."""
    from risloc.config import parse_overrides

    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--scene {item!r} must look like FIELD=VALUE, e.g. "
                             "'power_spread_db=[0, 25]'")
    return parse_overrides(items)


def report_table(report: dict):
    """The validation report of :func:`risloc.pipeline.calibrate.fit_order` as a table."""
    from rich.table import Table

    n = report["per_snr"][0]["scenes"]
    table = Table(title=f"K accuracy, validation split ({n} scenes per row, SNR not given)")
    for col in ("SNR (dB)", "power spread (dB)", "K acc residual rule", "K acc order head",
                "F1 residual rule", "F1 order head"):
        table.add_column(col, justify="right")
    for row in report["per_snr"]:
        table.add_row(f"{row['snr_db']:g}", f"{row['power_spread_db']:g}",
                      *(f"{row[k]:.3f}" for k in ("K_accuracy_residual_rule",
                                                  "K_accuracy_order_head", "f1_residual_rule",
                                                  "f1_order_head")))
    return table
