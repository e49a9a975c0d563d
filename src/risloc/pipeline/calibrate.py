"""Fitting the order head of a trained model (``risloc fit-order``).

The network is frozen. Scenes come from the recipe's own scene distribution (unequal
source powers included), with some of its fields replaced where asked (``scene``: e.g.
powers spread wider than the network trained on), training split, stream
:data:`ORDER_STREAM` (the network trains on stream ``data.stream``, 1 by default, so the
head never sees a scene the network was fitted on, nor a validation or test scene). The
SNR is never shown: the learned pipeline does not use it. The report compares the head
with the residual rule it replaces on fixed-SNR validation scenes (stream
:data:`REPORT_STREAM`), equal and spread powers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch

from risloc.config import Mixture, SceneConfig, check_scene_K, replace_scene_fields
from risloc.core.checks import normalise_scale
from risloc.inference.checkpoint import (
    check_model_target,
    load_checkpoint,
    model_card_path,
    save_checkpoint,
)
from risloc.io.atomic import write_json_atomic, write_text_atomic
from risloc.parallel import run_in_chunks
from risloc.pipeline.learned import LearnedPipeline, load_learned_pipeline
from risloc.pipeline.order import (
    FEATURES_VERSION,
    MIN_ORDER_SCENES,
    OrderFitConfig,
    OrderHead,
    RankerFitConfig,
    SourceRanker,
    fit_order_head,
    fit_source_ranker,
    nested_detections,
    order_features,
    order_head_from_state,
    order_head_state,
    prior_features,
    rank_sources,
    real_sources,
    source_inputs,
)
from risloc.simulation import simulate_range
from risloc.simulation.streams import BLOCK

ORDER_STREAM = 2
REPORT_STREAM = 3
REPORT_SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0)
REPORT_SPREAD_DB = 12.0

Progress = Callable[[int], None]


def order_stages(pipe: LearnedPipeline, scenes):
    """forward, propose, fit of the pipeline on the scaled inputs (exactly as the
    Localizer runs it) and the order features: (Forward, MLFit, features [B, F])."""
    y, H = (t.to(torch.complex64) for t in normalise_scale(scenes.y, scenes.H))
    fwd = pipe.forward(y, H, scenes.codes)
    fit = pipe.fit(y, H, scenes.codes, pipe.propose(fwd), check=False)  # (its own)
    return fwd, fit, order_features(fit, y, fwd.out.K_logits)


@torch.no_grad()
def order_dataset(pipe: LearnedPipeline, scenes, batch: int = 256, workers: int | None = None,
                  on_batch: Progress | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Order features [S, F] of ``scenes`` as the pipeline computes them at inference, the
    nested sources [S, K_max, 3] of its fit stage and the network's view of them
    [S, 3 K_max] (:func:`risloc.pipeline.order.prior_features`)."""
    out = []
    for lo in range(0, len(scenes), batch):
        hi = min(lo + batch, len(scenes))

        def one(a: int, b: int, lo=lo):
            fwd, fit, feats = order_stages(pipe, scenes[lo + a:lo + b])
            return feats, fit.theta, prior_features(fwd.out, fit.theta)

        out.extend(run_in_chunks(one, hi - lo, workers))
        if on_batch is not None:
            on_batch(hi - lo)
    return tuple(torch.cat([o[i] for o in out]) for i in range(3))


class OrderData(NamedTuple):
    """The training data of the order head and the source ranker (:func:`training_data`).

    features : [n, F] order features;  K : [n] true counts;  detections : [n, K_max] true
    sources found reporting the first k nested sources;  sources : [n, K_max, F'] the
    ranker's inputs (:func:`risloc.pipeline.order.source_inputs`);  real : [n, K_max] bool,
    each nested source paired with a true one (:func:`risloc.pipeline.order.real_sources`).
    """

    features: torch.Tensor
    K: torch.Tensor
    detections: torch.Tensor
    sources: torch.Tensor
    real: torch.Tensor


def order_scenes(pipe: LearnedPipeline, scene: dict | None = None, mix: bool = True
                 ) -> SceneConfig | Mixture:
    """The head's scene distribution: the recipe's (its mixture, with ``data.scene_mix``;
    ``mix`` False: its base scene alone) with the SceneConfig fields in ``scene`` replaced
    in the base scene (and so in every kind of the mixture that does not set them
    itself)."""
    r = pipe.recipe
    base = replace_scene_fields(r.scene, scene or {}, "order scene")
    check_scene_K(base, r.system.K_max, "order scene")
    return r.scenes(base) if mix else base


def training_data(pipe: LearnedPipeline, n: int, workers: int | None = None,
                  on_batch: Progress | None = None,
                  scenes: SceneConfig | Mixture | None = None) -> OrderData:
    """:class:`OrderData` of n scenes of ``scenes`` (None: the recipe's;
    :func:`order_scenes`), training split, ORDER_STREAM, simulated block by block."""
    r = pipe.recipe
    scenes = r.scenes() if scenes is None else scenes
    parts = []
    for lo in range(0, n, BLOCK):
        sc = simulate_range(lo, min(n, lo + BLOCK), r.system, scenes, seed=r.data.seed,
                            split="train", stream=ORDER_STREAM)
        f, theta, prior = order_dataset(pipe, sc, workers=workers, on_batch=on_batch)
        truth = (sc.azimuth, sc.elevation, sc.range_m, sc.K)
        parts.append(OrderData(f, sc.K, nested_detections(theta, *truth),
                               source_inputs(f, prior), real_sources(theta, *truth)))
    return OrderData(*(torch.cat(field) for field in zip(*parts, strict=True)))


@torch.no_grad()
def order_report(pipe: LearnedPipeline, head: OrderHead, n_per_snr: int,
                 workers: int | None = None, on_batch: Progress | None = None,
                 ranker: SourceRanker | None = None) -> list[dict]:
    """K accuracy and F1 (of the nested sources before the last polish) of the residual
    rule on the nested fits and of ``head`` (deciding as the pipeline would, with
    :meth:`LearnedPipeline.head_balance`, reporting the sources in ``ranker``'s order where
    given and the pipeline uses it, :meth:`LearnedPipeline.ranking`), per SNR, equal and
    spread powers, validation split, SNR not given."""
    from risloc.estimators.order import residual_order

    r = pipe.recipe
    rows = []
    for i, snr in enumerate(REPORT_SNRS):
        for spread in (0.0, REPORT_SPREAD_DB):
            scene = r.scene.model_copy(update={"power_spread_db": spread})
            sc = simulate_range(0, n_per_snr, r.system, scene, seed=r.data.seed,
                                split="validation", stream=REPORT_STREAM + 16 * i, snr_db=snr)

            def one(lo: int, hi: int, sc=sc):
                fwd, fit, feats = order_stages(pipe, sc[lo:hi])
                rule = residual_order(fit.costs, sc.y.shape[1], sc.y.shape[2])
                decided = head.decide(feats, balance=pipe.head_balance(fit, sc.y[lo:hi], head))
                order = pipe.ranking(fwd, fit, sc.y[lo:hi], feats, ranker)
                ranked = fit.theta if order is None else rank_sources(fit.theta, order)
                return torch.stack([rule, decided], 1), fit.theta, ranked

            parts = run_in_chunks(one, len(sc), workers)
            dec = torch.cat([p[0] for p in parts])
            truth = (sc.azimuth, sc.elevation, sc.range_m, sc.K)
            dets = [nested_detections(torch.cat([p[i] for p in parts]), *truth) for i in (1, 2)]
            row = {"snr_db": snr, "power_spread_db": spread, "scenes": len(sc)}
            for j, name in enumerate(("residual_rule", "order_head")):
                found = dets[j].gather(1, (dec[:, j] - 1).unsqueeze(1)).sum()
                row[f"K_accuracy_{name}"] = (dec[:, j] == sc.K).float().mean().item()
                row[f"f1_{name}"] = float(2 * found / (dec[:, j].sum() + sc.K.sum()))
            rows.append(row)
            if on_batch is not None:
                on_batch(len(sc))
    return rows


def fit_order(checkpoint: str | Path, out: str | Path, n_scenes: int = 16384,
              n_report: int = 256, config: OrderFitConfig = OrderFitConfig(),
              workers: int | None = None, on_batch: Progress | None = None,
              scene: dict | None = None, margin: float = 0.0, mix: bool = True,
              rank: bool = True, ranker_config: RankerFitConfig = RankerFitConfig(),
              keep_head: bool = False) -> dict:
    """Fit the order head of ``checkpoint`` and write ``out`` (the checkpoint plus the
    head and its report, atomically; a model card ``<checkpoint>.json`` is carried over to
    ``<out>.json`` with the report added). ``scene``: SceneConfig fields replaced in the
    recipe's scene distribution for the head's training scenes (:func:`order_scenes`;
    None: the recipe's); ``mix`` False fits it on the base scene alone, without the
    recipe's ``data.scene_mix`` kinds (a network trained on a mixture, its head fitted for
    the scenes users have most). ``margin``: the repairs' margin of the fit stage the head reads
    (``MLFitConfig.repair_margin``), stored with the head: the pipeline that loads it
    runs its fit stage with that margin where the head decides K. ``rank``: fit a source
    ranker (:class:`risloc.pipeline.order.SourceRanker`) on the same scenes and store it
    with the head (False: the pipeline reports the first K nested sources). ``keep_head``:
    keep the checkpoint's head (its K decisions unchanged; ``margin`` must be its own) and
    fit the ranker alone. Returns the report."""
    if n_scenes < MIN_ORDER_SCENES:
        raise ValueError(f"n_scenes must be >= {MIN_ORDER_SCENES}, got {n_scenes}")
    checkpoint, out = Path(checkpoint), Path(out)
    check_model_target(out, checkpoint, in_place=True)  # before the long part
    state = load_checkpoint(checkpoint)
    pipe = load_learned_pipeline(checkpoint, order_head=False)
    kept = _kept_head(state, checkpoint, margin, rank) if keep_head else None
    pipe.fit_config = replace(pipe.fit_config, repair_margin=margin)  # checks margin >= 0
    scenes = order_scenes(pipe, scene, mix)  # bad fields fail before the long part
    data = training_data(pipe, n_scenes, workers, on_batch, scenes)
    head = kept if kept is not None else fit_order_head(
        data.features, data.K, data.detections, pipe.system.K_max, config)
    ranker = fit_source_ranker(data.sources, data.real, ranker_config) if rank else None
    rows = order_report(pipe, head, n_report, workers, on_batch, ranker)
    r = pipe.recipe
    scenes_note = f"with {scene}" if scene else ""
    if "power_spread_db" not in (scene or {}):
        spread = r.scene.power_spread_db  # a pair, or one spread for every scene
        spread = tuple(spread) if isinstance(spread, tuple | list) else spread
        scenes_note = f"(power spread {spread} dB) {scenes_note}"
    if r.data.scene_mix and not mix:
        scenes_note = f"{scenes_note} without its scene_mix kinds".lstrip()
    report = {"training_scenes": n_scenes, "snr": "never given",
              "training_split": f"train, stream {ORDER_STREAM}, seed {r.data.seed}, the "
                                f"recipe's scenes {scenes_note}".rstrip(),
              "scene": dict(scene or {}), "scene_mix": mix,
              "report_split": f"validation, streams {REPORT_STREAM}+16i, seed {r.data.seed}",
              "fit": ({k: getattr(config, k) for k in config.__dataclass_fields__}
                      if kept is None else (state.get("order_report") or {}).get("fit")),
              "head": "fitted" if kept is None else {"kept": _kept_provenance(state)},
              "repair_margin": margin,
              "ranker": ({k: getattr(ranker_config, k)
                          for k in ranker_config.__dataclass_fields__} if rank else None),
              "per_snr": rows}
    state["order_head"] = order_head_state(head, margin, ranker)
    state["order_report"] = report
    card_src, card_dst = model_card_path(checkpoint), model_card_path(out)
    card = json.loads(card_src.read_text()) if card_src.exists() else None
    old_card = card_dst.read_text() if card_dst.exists() else None
    card_dst.unlink(missing_ok=True)  # a kill before the new card: no card, not a wrong one
    try:
        save_checkpoint(out, state)
    except BaseException:  # the model at out is unchanged: so is its card
        if old_card is not None:
            write_text_atomic(card_dst, old_card)
        raise
    if card is not None:
        card["order_head"] = report
        write_json_atomic(card_dst, card)
    return report  # (without a card of its own, out has none: an older one would describe
    # another head)


def _kept_provenance(state: dict) -> dict:
    """Where a kept head was fitted: what the old report says of it (its own "kept" entry
    where the head was kept before: the report's scenes are then the ranker's)."""
    old = state.get("order_report") or {}
    if isinstance(old.get("head"), dict) and "kept" in old["head"]:
        return old["head"]["kept"]
    return {k: old.get(k) for k in ("training_scenes", "training_split", "scene", "scene_mix")}


def _kept_head(state: dict, checkpoint: Path, margin: float, rank: bool) -> OrderHead:
    """The head ``fit_order(keep_head=True)`` keeps: the checkpoint's, read as the pipeline
    reads it; refused by name where there is none, it reads other features, its margin is
    not ``margin`` or no ranker is to be fitted (nothing would change)."""
    order = state.get("order_head")
    if not rank:
        raise ValueError("keep_head with rank False changes nothing: fit the ranker, or "
                         "refit the head")
    if order is None:
        raise ValueError(f"{checkpoint} has no order head to keep")
    if order.get("features", 1) != FEATURES_VERSION:
        raise ValueError(f"{checkpoint}: its order head reads order features version "
                         f"{order.get('features', 1)}, this package computes version "
                         f"{FEATURES_VERSION}: it cannot be kept; refit it")
    if float(order.get("repair_margin", 0.0)) != margin:
        raise ValueError(f"{checkpoint}: its order head was fitted with repairs' margin "
                         f"{order.get('repair_margin', 0.0):g}, not {margin:g}: keep it "
                         f"with its own")
    return order_head_from_state(order)


def n_progress_items(n_scenes: int, n_report: int) -> int:
    """Scenes :func:`fit_order` reports through ``on_batch``."""
    return n_scenes + 2 * n_report * len(REPORT_SNRS)
