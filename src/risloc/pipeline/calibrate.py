"""Fitting the order head of a trained model (``risloc fit-order``).

The network is frozen. Scenes come from the recipe's own scene distribution, training
split, stream :data:`ORDER_STREAM` (the network trains on stream ``data.stream``, 1 by
default, so the head never sees a scene the network was fitted on, nor a validation or
test scene). A share of the scenes is shown to the pipeline without its SNR so the head
also decides when a user's file has none. The report compares the network's K head with
the fitted head on fixed-SNR scenes of the validation split (stream
:data:`REPORT_STREAM`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from risloc.pipeline.learned import LearnedPipeline, load_learned_pipeline
from risloc.pipeline.order import OrderFitConfig, OrderHead, fit_order_head, order_head_state
from risloc.simulation import simulate_range
from risloc.simulation.streams import BLOCK, block_generator

ORDER_STREAM = 2
REPORT_STREAM = 3
REPORT_SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0)

Progress = Callable[[int], None]


def _forward_and_features(pipe: LearnedPipeline, scenes, snr_db: torch.Tensor | None):
    """The network pass and the order features, exactly as the pipeline computes them."""
    fwd = pipe.forward(scenes.y, scenes.H, scenes.codes, snr_db)
    return fwd, pipe.order_inputs(fwd, scenes.y, scenes.H, scenes.codes, snr_db).features


@torch.no_grad()
def order_dataset(pipe: LearnedPipeline, scenes, snr_db: torch.Tensor | None,
                  batch: int = 256, workers: int | None = None,
                  on_batch: Progress | None = None) -> torch.Tensor:
    """Order features [S, F] of ``scenes`` as the pipeline computes them at inference."""
    from risloc.parallel import run_in_chunks

    def one(lo: int, hi: int) -> torch.Tensor:
        return _forward_and_features(pipe, scenes[lo:hi],
                                     None if snr_db is None else snr_db[lo:hi])[1]

    out = []
    for lo in range(0, len(scenes), batch):
        hi = min(lo + batch, len(scenes))
        out.extend(run_in_chunks(lambda a, b, lo=lo: one(lo + a, lo + b), hi - lo, workers))
        if on_batch is not None:
            on_batch(hi - lo)
    return torch.cat(out)


def training_data(pipe: LearnedPipeline, recipe, n: int, unknown_snr_fraction: float,
                  workers: int | None = None, on_batch: Progress | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [n, F], K [n]) of n scenes of the recipe's scene distribution, training
    split, ORDER_STREAM, simulated block by block; a random share of them without SNR."""
    seed = recipe.data.seed
    hide_gen = block_generator(seed, "train", 0, ORDER_STREAM + 1)
    feats, Ks = [], []
    for lo in range(0, n, BLOCK):
        sc = simulate_range(lo, min(n, lo + BLOCK), pipe.system, recipe.scene, seed=seed,
                            split="train", stream=ORDER_STREAM)
        hide = torch.rand(len(sc), generator=hide_gen) < unknown_snr_fraction
        snr = torch.where(hide, torch.full_like(sc.snr_db, math.nan), sc.snr_db)
        feats.append(order_dataset(pipe, sc, snr, workers=workers, on_batch=on_batch))
        Ks.append(sc.K)
    return torch.cat(feats), torch.cat(Ks)


@torch.no_grad()
def order_report(pipe: LearnedPipeline, head: OrderHead, recipe, n_per_snr: int, seed: int,
                 workers: int | None = None, on_batch: Progress | None = None) -> list[dict]:
    """K accuracy of the network's K head and of ``head`` per SNR (SNR given), validation
    split."""
    from risloc.parallel import run_in_chunks

    rows = []
    for i, snr in enumerate(REPORT_SNRS):
        sc = simulate_range(0, n_per_snr, pipe.system, recipe.scene, seed=seed,
                            split="validation", stream=REPORT_STREAM + 16 * i, snr_db=snr)

        def one(lo: int, hi: int, sc=sc):
            fwd, feats = _forward_and_features(pipe, sc[lo:hi], sc.snr_db[lo:hi])
            return torch.stack([fwd.out.K_hat, head.decide(feats)], 1)

        dec = torch.cat(run_in_chunks(one, len(sc), workers))
        rows.append({"snr_db": snr, "scenes": len(sc),
                     "K_accuracy_network_head": (dec[:, 0] == sc.K).float().mean().item(),
                     "K_accuracy_order_head": (dec[:, 1] == sc.K).float().mean().item()})
        if on_batch is not None:
            on_batch(len(sc))
    return rows


def fit_order(checkpoint: str | Path, out: str | Path, n_scenes: int = 16384,
              unknown_snr_fraction: float = 0.25, n_report: int = 256,
              config: OrderFitConfig = OrderFitConfig(), workers: int | None = None,
              on_batch: Progress | None = None) -> dict:
    """Fit the order head of ``checkpoint`` and write ``out`` (the checkpoint plus the
    head and its report, atomically; a model card ``<checkpoint>.json`` is carried over to
    ``<out>.json`` with the report added). Returns the report."""
    from risloc.io.atomic import write_text_atomic
    from risloc.training.checkpoint import load_checkpoint, save_checkpoint
    from risloc.training.config import MIN_ORDER_SCENES, TrainConfig

    if n_scenes < MIN_ORDER_SCENES:
        raise ValueError(f"n_scenes must be >= {MIN_ORDER_SCENES}, got {n_scenes}")
    if not 0.0 <= unknown_snr_fraction <= 1.0:
        raise ValueError(f"unknown_snr_fraction must lie in [0, 1], got {unknown_snr_fraction}")
    checkpoint, out = Path(checkpoint), Path(out)
    state = load_checkpoint(checkpoint)
    pipe = load_learned_pipeline(checkpoint, order_head=False)
    recipe = TrainConfig.from_json(state["config"])
    seed = recipe.data.seed
    feats, K = training_data(pipe, recipe, n_scenes, unknown_snr_fraction, workers, on_batch)
    head = fit_order_head(feats, K, pipe.system.K_max, config)
    rows = order_report(pipe, head, recipe, n_report, seed, workers, on_batch)
    report = {"training_scenes": n_scenes, "unknown_snr_fraction": unknown_snr_fraction,
              "training_split": f"train, stream {ORDER_STREAM}, seed {seed}",
              "report_split": f"validation, streams {REPORT_STREAM}+16i, seed {seed}, SNR "
                              "given",
              "fit": {k: getattr(config, k) for k in config.__dataclass_fields__},
              "per_snr": rows}
    state["order_head"] = order_head_state(head)
    state["order_report"] = report
    save_checkpoint(out, state)
    card_src = checkpoint.with_suffix(".json")
    if card_src.exists():
        card = json.loads(card_src.read_text())
        card["order_head"] = report
        write_text_atomic(out.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    return report


def n_progress_items(n_scenes: int, n_report: int) -> int:
    """Scenes :func:`fit_order` reports through ``on_batch``."""
    return n_scenes + n_report * len(REPORT_SNRS)

