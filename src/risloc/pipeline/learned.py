"""The learned pipeline: network -> R_blend -> near-field MUSIC -> K decision -> NF-MLE.

Everything it needs (system, network, blend/shrinkage/loading, MUSIC grid) is rebuilt from
the training checkpoint, through the same ``forward_blend`` that training and validation
call, so training and inference cannot drift apart.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch

from risloc.config import SystemConfig
from risloc.core.params import Estimates
from risloc.estimators.music import MusicConfig, music
from risloc.estimators.nfmle import NFMLEConfig, nfmle_fit
from risloc.pipeline.order import (
    FEATURES_VERSION,
    OrderHead,
    order_features,
    order_head_from_state,
    order_statistics,
)
from risloc.pipeline.order_check import OrderCheckConfig, check_order, check_selection
from risloc.simulation.scenes import SceneBatch

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default.pt"


class OrderInputs(NamedTuple):
    """candidates : MUSIC on R_blend with K = K_max (K_max slots by decreasing score);
    features : [B, F] float32 — the order head's input (:mod:`risloc.pipeline.order`)."""

    candidates: Estimates
    features: torch.Tensor


@dataclass
class LearnedPipeline:
    """A trained network plus the inference settings of its recipe.

    nfmle_iterations : Gauss-Newton polish steps after MUSIC (0 = MUSIC only)
    order_head : the K decision fitted after training (``risloc fit-order``); None: the
        network's K head decides
    order_check : the ML check of the order head's K after the polish
        (:mod:`risloc.pipeline.order_check`; needs the order head and nfmle_iterations > 0);
        None: off
    """

    model: torch.nn.Module
    system: SystemConfig
    beta: float
    blend_cfg: object
    music_cfg: MusicConfig
    nfmle_iterations: int = 3
    order_head: OrderHead | None = None
    order_check: OrderCheckConfig | None = field(default_factory=OrderCheckConfig)

    def to(self, device: str | torch.device) -> LearnedPipeline:
        """Move the network and the order head (in place); inputs must be on ``device``."""
        self.model.to(device)
        if self.order_head is not None:
            self.order_head.to(device)
        return self

    def forward(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                snr_db: torch.Tensor | None):
        """Network and R_blend (training's ``forward_blend``); snr_db [B] or None."""
        from risloc.training.evaluate import forward_blend

        snr = torch.full((y.shape[0],), math.nan, device=y.device) if snr_db is None \
            else snr_db.float()
        scenes = SceneBatch(y=y, H=H, codes=codes, snr_db=snr)
        return forward_blend(self.model, scenes, self.beta, self.blend_cfg)

    def order_inputs(self, fwd, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                     snr_db: torch.Tensor | None) -> OrderInputs:
        """K_max MUSIC candidates on R_blend and the order head's features."""
        B = y.shape[0]
        cand = music(fwd.R_blend, torch.full((B,), self.system.K_max, device=y.device),
                     self.system, self.music_cfg)
        stats = order_statistics(y, H, codes, cand, self.system)
        feats = order_features(stats, y, fwd.out.K_logits, cand.score, snr_db)
        return OrderInputs(cand, feats)

    def nfmle_config(self) -> NFMLEConfig:
        """The NF-MLE polish: the checkpoint's iterations, in MUSIC's field-of-view box."""
        return replace(NFMLEConfig(), iterations=self.nfmle_iterations,
                       fov=self.music_cfg.fov)

    @torch.no_grad()
    def localize(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                 snr_db: torch.Tensor | None = None, K: torch.Tensor | None = None
                 ) -> Estimates:
        """y [B,L,M], H [B,M,N], codes [B,L,N] complex64; snr_db [B] or None; K [B] or None.

        K unknown and an order head present: MUSIC once with K_max, the head picks K, the
        K strongest candidates are polished, and where the head is unsure the polished fit
        checks its K (``order_check``). Otherwise MUSIC with the given K or the K head's.
        (MUSIC with K_max then the K strongest gave the same validation errors and F1 as
        MUSIC with the true K, 0-20 dB.)"""
        fwd = self.forward(y, H, codes, snr_db)
        unsure = None
        if K is None and self.order_head is not None:
            inputs = self.order_inputs(fwd, y, H, codes, snr_db)
            prob = torch.softmax(self.order_head(inputs.features), -1)
            est = inputs.candidates.truncate(prob.argmax(-1) + 1)
            if self.order_check is not None:
                unsure = check_selection(prob, snr_db, self.order_check)
        else:
            est = music(fwd.R_blend, fwd.out.K_hat if K is None else K, self.system,
                        self.music_cfg)
        if self.nfmle_iterations > 0:
            polish = self.nfmle_config()
            fit = nfmle_fit(y, H, codes, est, self.system, polish)
            est = fit.estimates
            if unsure is not None and bool(unsure.any()):
                est = check_order(y, H, codes, est, fit.cost, snr_db, self.system, polish,
                                  self.order_check, unsure)
        return Estimates(est.K, *(t.to(torch.float32) for t in
                                  (est.azimuth, est.elevation, est.range_m, est.score)))


def inference_music_config(recipe) -> MusicConfig:
    """MUSIC settings of the learned pipeline: the recipe's field of view on the package's
    default coarse grid (61 x 31 x 16, :class:`MusicConfig`), with a lighter refinement
    (6 candidates, 3 Gauss-Newton steps) since NF-MLE polishes the picks afterwards.

    Both choices were made on the validation split (shipped model, 100 scenes at each of
    0/5/10/20 dB; ``benchmarks/bench_inference_grid.py --set grid`` and ``--set refine``):
    the recipe's own grid (81 x 41 x 16, what training validates with) gave the same median
    errors, K accuracy and F1 within 0.003 at 7 % fewer scenes/s; 6 candidates x 3 steps
    gave the same K accuracy (within one scene), F1 and median errors (within 0.02 deg /
    0.02 m) as the default 10 x 6 at 111-116 instead of 96-103 scenes/s.
    """
    d = MusicConfig()
    return replace(recipe.music_config(), n_azimuth=d.n_azimuth, n_elevation=d.n_elevation,
                   n_range=d.n_range, n_candidates=6, refine_iterations=3)


def load_learned_pipeline(path: str | Path | None = None, weights: str = "ema",
                          nfmle_iterations: int = 3, music: MusicConfig | None = None,
                          order_head: bool = True) -> LearnedPipeline:
    """Rebuild the pipeline of a checkpoint (None: the model shipped with the package).

    The blend (beta, shrinkage, loading) is always the recipe's, as in training; ``music``
    overrides the MUSIC settings (None: :func:`inference_music_config`); ``order_head``
    False leaves a stored order head out (as when it is being refitted)."""
    from risloc.training.checkpoint import load_checkpoint, model_from_state

    path = DEFAULT_MODEL if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint not found: {path}" + (" (this build ships no default model; train "
                                               "one with `risloc train` and pass "
                                               "--checkpoint)" if path == DEFAULT_MODEL else ""))
    try:
        state = load_checkpoint(path)
        model, cfg = model_from_state(state, weights)
        order = state.get("order_head") if order_head else None
        head = None
        if order is not None and order.get("features", 1) != FEATURES_VERSION:
            log.warning("%s: its order head was fitted on order features version %s, this "
                        "package computes version %s; the network's K head decides K "
                        "instead. Refit it: risloc fit-order %s --out %s",
                        path, order.get("features", 1), FEATURES_VERSION, path, path)
        elif order is not None:
            head = order_head_from_state(order)
    except (KeyError, RuntimeError, EOFError) as err:
        raise ValueError(f"{path}: unreadable risloc checkpoint ({err})") from None
    return LearnedPipeline(model, cfg.system, cfg.blend.beta, cfg.blend,
                           inference_music_config(cfg) if music is None else music,
                           nfmle_iterations, head)


INFERENCE_KEYS = ("format_version", "config", "epoch", "step", "ema", "swa", "best", "history",
                  "order_head", "order_report")


def export_model(src: str | Path, dst: str | Path) -> Path:
    """Write an inference-only copy of a training checkpoint (config + averaged weights,
    no optimizer/scheduler/RNG state) and its model card ``<dst>.json`` (the validation
    metrics of the exported epoch, the training history summary), both atomically. This is
    how the shipped model is made."""
    import json
    import statistics

    from risloc import __version__
    from risloc.io.atomic import atomic_path, write_text_atomic
    from risloc.training.checkpoint import load_checkpoint

    state = load_checkpoint(src)
    slim = {k: state[k] for k in INFERENCE_KEYS if k in state}
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        torch.save(slim, tmp)
    history = state.get("history") or []
    row = next((h for h in history if h.get("epoch") == state["epoch"]), {})
    cfg = json.loads(state["config"]) if isinstance(state["config"], str) else state["config"]
    card = {
        "risloc_version": __version__,
        "exported_from": str(src),
        "epoch": state["epoch"], "optimizer_steps": state["step"],
        "epochs_logged": len(history),
        "seconds_per_epoch_median": (statistics.median(h["seconds"] for h in history)
                                     if history else None),
        "validation_set": (
            f"{cfg['data']['n_val']} scenes of the validation split (seed {cfg['data']['seed']}),"
            f" SNR uniform in {cfg['scene']['snr_db']} dB, K uniform in 1..K_max; MUSIC on "
            "R_blend with the network's K, no NF-MLE; EMA weights"),
        "validation": {k[4:]: v for k, v in row.items() if k.startswith("val_")},
        "config": cfg,
    }
    write_text_atomic(dst.with_suffix(".json"), json.dumps(card, indent=2, default=str) + "\n")
    return dst
