"""The learned pipeline, stage by stage:

    forward -> propose -> fit -> decide order -> polish

1. **forward** — the network and the blended covariance R_blend (``forward_blend``, the
   same call as in training). A network trained without the SNR (``data.snr_shown`` 0,
   the shipped one) is never given it.
2. **propose** — K_max candidate sources: near-field MUSIC peaks on R_blend (the network's
   own slots fill any slot MUSIC leaves empty), or the slots alone (``music=None``).
3. **fit** — nested measurement-domain ML fits from the candidates, with repair rounds
   that find the sources the candidates miss (:mod:`risloc.estimators.mlfit`).
4. **decide order** — who decides K: the caller when K is given; otherwise the order head
   (:mod:`risloc.pipeline.order`) reading the nested fits' costs and the network's K head;
   a model without a fitted head falls back on the classical penalised-likelihood rule
   (:func:`risloc.estimators.order.residual_order`, noise level from the residual). The SNR
   never enters the decision.
5. **polish** — NF-MLE of the K chosen sources. When the caller gives K, one repair round
   on those K first (the weakest is swapped for the best grid point on the others'
   residual where that lowers the cost; among all K_max candidates a spurious one can
   absorb a weak source's energy). With K decided it is left out: on the validation split
   it lowered F1 at 0-5 dB (noise peaks lower the cost too) and the order head reads the
   fits without it (``benchmarks/bench_fit_settings.py --variants chosen``). Then, as in
   the classical localizer, a pair of sources that cancel (one of them explaining more than
   twice the scene's energy) loses one member to a fresh search
   (:func:`risloc.estimators.classical.separate_cancelling`).

Everything is rebuilt from the checkpoint (:func:`load_learned_pipeline`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from risloc.config import FieldOfView, SystemConfig
from risloc.core.checks import InputError, check_source_counts, float32_default
from risloc.core.params import Estimates
from risloc.estimators.classical import ClassicalConfig, separate_cancelling
from risloc.estimators.mlfit import MLFit, MLFitConfig, ml_fit, repair_chosen
from risloc.estimators.music import MusicConfig, music
from risloc.estimators.nfmle import NFMLEConfig, nfmle_fit
from risloc.estimators.order import residual_order
from risloc.inference.checkpoint import load_checkpoint, model_from_state
from risloc.inference.forward import Forward, forward_blend
from risloc.inference.recipe import InferenceRecipe
from risloc.model.network import CovarianceNet
from risloc.pipeline.order import (
    FEATURES_VERSION,
    OrderHead,
    SourceRanker,
    estimated_snr_db,
    order_features,
    order_head_from_state,
    prior_features,
    rank_sources,
    ranker_from_state,
    source_inputs,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default.pt"
STAGES = ("forward", "propose", "fit", "decide order", "polish")
_HEADLESS: set[Path] = set()  # checkpoints said to have no order head (load_learned_pipeline)


class OrderDecision(NamedTuple):
    """K : [B] int64 in 1..K_max; probabilities : [B, K_max] of the order head, or None
    (K given, or decided by the residual rule); ranking : [B, K_max] int64, the nested
    sources in the order they are reported (the first K), where the order head decides K
    and has a source ranker, else None (the nested order)."""

    K: torch.Tensor
    probabilities: torch.Tensor | None
    ranking: torch.Tensor | None = None


def inference_music_config(fov: FieldOfView) -> MusicConfig:
    """MUSIC settings of the proposal stage: the package's default grid (61 x 31 x 16) over
    the network's field of view, 6 refined candidates x 3 Gauss-Newton steps (the fit stage
    refines the picks by ML anyway)."""
    return MusicConfig(fov=fov, n_candidates=6, refine_iterations=3)


def default_fit_config(fov: FieldOfView) -> MLFitConfig:
    """The fit stage over ``fov``: 2-iteration float32 polish, a repair round on the
    S-source fit and one on each nested set (:class:`MLFitConfig`)."""
    base = MLFitConfig()
    return replace(base, polish=replace(base.polish, fov=fov),
                   search=ClassicalConfig().with_fov(fov))


def default_polish(fov: FieldOfView) -> NFMLEConfig:
    """The last stage: NF-MLE of the chosen sources, 3 LM iterations, float32 (5 gave the
    same accuracy on the validation split at 9 % more time of the whole pipeline:
    ``benchmarks/bench_fit_settings.py --variants cheaper``)."""
    return NFMLEConfig(iterations=3, double=False, fov=fov)


@dataclass
class LearnedPipeline:
    """A trained network plus the settings of the stages (module docstring).

    network : the covariance network (eval mode)
    recipe : the inference view of its training recipe (system, field of view, blend)
    music : MUSIC settings of the proposal stage; None proposes the network's slots
    fit_config : the ML-fit stage; polish : the last NF-MLE
    order_head : the fitted K decision; None falls back on the residual rule
    chosen_repairs : repair rounds on the K sources before the last NF-MLE when the caller
        gives K (:func:`risloc.estimators.mlfit.repair_chosen`; 0 = none)
    repair_decided : run them when the order head decides K too (off: on the validation
        split that lowered F1 at 0-5 dB and cost 25 % more time)
    known_K_margin : ``MLFitConfig.repair_margin`` of the fit stage and of those rounds when
        the caller gives K. Chosen on the validation split, K given (docs/results.md, "The
        K decision"): 0.5 against 0 raised F1 by 0.011-0.021 at 0-5 dB and moved it by
        -0.003 to +0.002 at 10-20 dB in two sets of 400 scenes per cell. Where the order
        head decides K, the fit stage runs with ``fit_config.repair_margin``: the margin
        the head was fitted on, stored with it (``risloc fit-order --margin``; the shipped
        head's is 0: one refitted with 0.5 gained F1 at 5 dB but lost it with near sources,
        docs/results.md, "The K decision").
    low_snr_db, low_snr_balance : where the SNR estimated from the scene's own nested fits
        (:func:`risloc.pipeline.order.estimated_snr_db`) is below ``low_snr_db`` [dB] the
        order head decides with ``balance`` = ``low_snr_balance``, the F1-optimal rule,
        instead of its own (0.25, which trades F1 for K accuracy); None: never. At a true
        -5 dB the head's balance cost 0.02 F1 against the rule (docs/results.md, "The K
        decision"); 0.5 dB separates -5 dB scenes (estimated -1.7 to +0.1 dB) from 0 dB
        ones (1.2 to 3.1) on the validation split.
    source_ranker : where the order head decides K, the K nested sources reported are the
        K it ranks most probably real (:class:`risloc.pipeline.order.SourceRanker`, fitted
        and stored with the head); None: the first K of the nested order.
    rank_below_db : the ranker's order is used only where the SNR estimated from the scene's
        nested fits is below this [dB] (None: everywhere). Chosen on the validation split
        (docs/results.md, "The K decision"): above it the nested order is right in nearly
        every scene and the ranker can only err (F1 -0.0008 to -0.005 in 6 of 18 cells at
        10-20 dB without it, none with it; the same gains at -5 to 5 dB, where 5 dB scenes
        read 5.2 to 7.2 dB).
    """

    network: CovarianceNet
    recipe: InferenceRecipe
    music: MusicConfig | None
    fit_config: MLFitConfig
    polish_config: NFMLEConfig
    order_head: OrderHead | None = None
    chosen_repairs: int = 1
    repair_decided: bool = False
    known_K_margin: float = 0.5
    low_snr_db: float | None = 0.5
    low_snr_balance: float = 0.0
    source_ranker: SourceRanker | None = None
    rank_below_db: float | None = 9.0

    @property
    def system(self) -> SystemConfig:
        return self.recipe.system

    @property
    def fov(self) -> FieldOfView:
        return self.recipe.fov

    def to(self, device: str | torch.device) -> LearnedPipeline:
        """Move the network, the order head and the source ranker (in place); inputs must be
        on ``device``."""
        self.network.to(device)
        for part in (self.order_head, self.source_ranker):
            if part is not None:
                part.to(device)
        return self

    # ------------------------------------------------------------------ the stages
    def forward(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                snr_db: torch.Tensor | None = None) -> Forward:
        """Stage 1: the network, and R_blend when MUSIC proposes (otherwise the network's
        covariance part is skipped and R_samp, R_blend are None). snr_db [B] (NaN =
        unknown) reaches the network only if it was trained with the SNR
        (``recipe.reads_snr``), on y's device (a file's SNR is read on the host)."""
        snr = snr_db.to(y.device, torch.float32) if snr_db is not None \
            and self.recipe.reads_snr else None
        if self.music is None:  # the slots propose: no covariance needed
            return Forward(self.network(y, H, codes, snr, covariance=False, check=False),
                           None, None)
        return forward_blend(self.network, y, H, codes, snr, self.recipe.blend.beta,
                             self.recipe.blend, check=False)

    def propose(self, fwd: Forward) -> torch.Tensor:
        """Stage 2: candidates [B, K_max, 3] (azimuth, elevation, 1/range), all finite."""
        out = fwd.out
        slots = torch.stack([out.slot_azimuth, out.slot_elevation, 1.0 / out.slot_range], -1)
        if self.music is None:
            return slots
        K_max = self.system.K_max
        K = torch.full((fwd.R_blend.shape[0],), K_max, device=fwd.R_blend.device)
        peaks = music(fwd.R_blend, K, self.system, self.music).theta[:, :K_max]
        return torch.where(torch.isfinite(peaks), peaks.to(slots.dtype), slots)

    def fit(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
            candidates: torch.Tensor, known: bool = False, check: bool = True) -> MLFit:
        """Stage 3: nested ML fits from the candidates (:func:`ml_fit`); ``known``: the
        caller gives K (the repairs' margin is then ``known_K_margin``). candidates :
        [B, K_max, 3] (azimuth [rad], elevation [rad], 1/range [1/m]), all finite, as
        :meth:`propose` gives them; ``check`` (off in :meth:`localize`, whose own proposals
        need none: it waits for a GPU) refuses others by name."""
        if check:
            _check_candidates(candidates, y.shape[0], self.system.K_max, self.fov)
        return ml_fit(y, H, codes, candidates, self.system, self._fit_config(known))

    def _fit_config(self, known: bool) -> MLFitConfig:
        if not known or self.known_K_margin == self.fit_config.repair_margin:
            return self.fit_config
        return replace(self.fit_config, repair_margin=self.known_K_margin)

    def decide_order(self, fwd: Forward, fit: MLFit, y: torch.Tensor,
                     K: torch.Tensor | None = None, k_max: int | None = None,
                     check: bool = True) -> OrderDecision:
        """Stage 4: K [B] — given, else the order head (with its source ranker's order of
        the nested sources, :meth:`ranking`), else the residual rule; never more
        than k_max (default: the system's K_max). A given K may be a column [B, 1] or row
        [1, B] (a MATLAB or pandas one); ``check`` (off in :meth:`localize`, whose K the
        caller has checked) refuses one outside 1..K_max by name."""
        if K is not None:
            if check:
                K = _given_K(K, y.shape[0], self.system.K_max, "decide_order")
            return OrderDecision(K.to(device=y.device, dtype=torch.int64), None)
        k_max = self.system.K_max if k_max is None else k_max
        if self.order_head is None:
            return OrderDecision(residual_order(fit.costs[:, :k_max + 1], y.shape[1],
                                                y.shape[2]), None)
        x = order_features(fit, y, fwd.out.K_logits)
        ranking = self.ranking(fwd, fit, y, x, self.source_ranker)
        return OrderDecision(self.order_head.decide(x, k_max,
                                                    self.head_balance(fit, y, self.order_head)),
                             self.order_head(x).probabilities, ranking)

    def ranking(self, fwd: Forward, fit: MLFit, y: torch.Tensor, x: torch.Tensor,
                ranker: SourceRanker | None) -> torch.Tensor | None:
        """The order [B, K_max] in which the nested sources are reported: ``ranker``'s
        (:meth:`SourceRanker.rank`) where the SNR estimated from the scene's nested fits is
        below ``rank_below_db``, the nested order elsewhere; None without a ranker. x: the
        order features (:func:`order_features`)."""
        if ranker is None:
            return None
        order = ranker.rank(source_inputs(x, prior_features(fwd.out, fit.theta)))
        if self.rank_below_db is None:
            return order
        low = estimated_snr_db(fit.costs, y.shape[1], y.shape[2]) < self.rank_below_db
        nested = torch.arange(order.shape[1], device=order.device).expand_as(order)
        return torch.where(low.unsqueeze(-1), order, nested)

    def head_balance(self, fit: MLFit, y: torch.Tensor, head: OrderHead) -> torch.Tensor | None:
        """``head``'s balance per scene [B]: ``low_snr_balance`` where the SNR estimated from
        the scene's nested fits is below ``low_snr_db``, the head's own elsewhere (None:
        the head's own everywhere, as when ``low_snr_db`` is None)."""
        if self.low_snr_db is None:
            return None
        low = estimated_snr_db(fit.costs, y.shape[1], y.shape[2]) < self.low_snr_db
        return torch.where(low, self.low_snr_balance, head.balance)

    def polish(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, fit: MLFit,
               K: torch.Tensor, repair: bool = False, known: bool = False,
               check: bool = True, ranking: torch.Tensor | None = None) -> Estimates:
        """Stage 5: NF-MLE of the first K [B] sources of the nested fit (taken in the order
        ``ranking`` [B, K_max], :attr:`OrderDecision.ranking`, where given), after
        ``chosen_repairs`` repair rounds on them if ``repair``; ``known``: K given by the
        caller (as for :meth:`fit`). ``check`` (off in :meth:`localize`, whose K lies in
        range: it waits for a GPU) refuses a K outside 1..K_max by name (a column [B, 1]
        is read as [B])."""
        if check and ranking is not None:
            _check_ranking(ranking, fit.theta.shape[0], fit.theta.shape[1])
        theta = fit.theta if ranking is None else rank_sources(fit.theta, ranking)
        if check:
            K = _given_K(K, theta.shape[0], theta.shape[1], "polish")
        if repair and self.chosen_repairs > 0:
            theta = repair_chosen(y, H, codes, theta, K, self.system, self._fit_config(known),
                                  self.chosen_repairs)
        init = Estimates.from_theta(K, theta)
        refined = nfmle_fit(y, H, codes, init, self.system, self.polish_config, check=False)
        return separate_cancelling(y, H, codes, refined, self.system, self.polish_config)

    @torch.no_grad()
    @float32_default()
    def localize(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                 snr_db: torch.Tensor | None = None, K: torch.Tensor | None = None,
                 k_max: int | None = None,
                 on_stage: Callable[[str], None] | None = None) -> Estimates:
        """All stages. y [B,L,M], H [B,M,N], codes [B,L,N] complex64 (checked and scaled
        by the caller, :class:`risloc.pipeline.Localizer`: this checks nothing, so that it
        never waits for a GPU; another system's scenes, a NaN or unscaled units give wrong
        estimates, not an error); snr_db [B] or None; K [B] (known
        counts) or None; k_max caps the decided K; on_stage(name) is called after each
        stage (:data:`STAGES`; benchmarks time them with it). Returns Estimates with K_max
        slots (float32; score = estimated source power mean_l |s_lk|^2)."""
        done = on_stage or (lambda name: None)
        fwd = self.forward(y, H, codes, snr_db)
        done("forward")
        candidates = self.propose(fwd)
        done("propose")
        known = K is not None
        fit = self.fit(y, H, codes, candidates, known, check=False)
        done("fit")
        decision = self.decide_order(fwd, fit, y, K, k_max, check=False)
        done("decide order")
        est = self.polish(y, H, codes, fit, decision.K, repair=known or self.repair_decided,
                          known=known, check=False, ranking=decision.ranking).float()
        done("polish")
        return est


def _given_K(K, B: int, K_max: int, stage: str) -> torch.Tensor:
    """A stage's K as [B] int64 in 1..K_max (:func:`check_source_counts`; errors name the
    stage)."""
    return check_source_counts(f"{stage}: K", K, B, K_max)


def _check_ranking(ranking: torch.Tensor, B: int, K_max: int) -> None:
    """InputError unless ranking is [B, K_max] integers, each scene's a permutation of
    0..K_max-1 (:meth:`LearnedPipeline.polish`)."""
    if tuple(ranking.shape) != (B, K_max) or ranking.dtype.is_floating_point \
            or ranking.is_complex() or ranking.dtype == torch.bool:
        raise InputError(f"polish: ranking must be [B, K_max] = [{B}, {K_max}] integers, got "
                         f"{tuple(ranking.shape)} {ranking.dtype}")
    order = torch.arange(K_max, device=ranking.device)
    bad = (ranking.sort(dim=-1).values != order).any(-1)
    if bool(bad.any()):
        raise InputError("polish: each scene's ranking must be a permutation of 0..K_max-1 "
                         f"(K_max {K_max}); scene(s) {bad.nonzero().flatten()[:5].tolist()} "
                         "are not")


def _check_candidates(candidates: torch.Tensor, B: int, K_max: int, fov: FieldOfView) -> None:
    """Refuse proposals the fit stage would misread (:meth:`LearnedPipeline.fit`)."""
    form = (f"candidates must be [B, K_max, 3] = [{B}, {K_max}, 3] (azimuth [rad], "
            f"elevation [rad], 1/range [1/m])")
    if not isinstance(candidates, torch.Tensor) or tuple(candidates.shape) != (B, K_max, 3):
        got = tuple(candidates.shape) if isinstance(candidates, torch.Tensor) \
            else type(candidates).__name__
        hint = "; fewer sources of your own: fill the other slots with the network's " \
            "(propose's) candidates" if isinstance(candidates, torch.Tensor) \
            and candidates.ndim == 3 and candidates.shape[0] == B \
            and candidates.shape[1] < K_max else ""
        raise ValueError(f"{form}, got {got}{hint}")
    if not bool(torch.isfinite(candidates).all()):
        raise ValueError(f"{form}, all finite: got NaN or inf (padding?); fill the unused "
                         f"slots with the network's (propose's) candidates, not NaN")
    az, el, inv_r = candidates.unbind(-1)
    if bool((az.abs() > math.pi).any() | (el.abs() > math.pi / 2).any()):
        raise ValueError(f"{form}: azimuth beyond +-pi or elevation beyond +-pi/2; "
                         f"degrees? pass radians (torch.deg2rad)")
    if bool((inv_r <= 0).any() | (inv_r > 2 / fov.range_m[0]).any()):
        raise ValueError(f"{form}: a third coordinate outside (0, {2 / fov.range_m[0]:g}] "
                         f"(twice 1 / the field of view's {fov.range_m[0]:g} m); a range in "
                         f"metres? pass 1/range")


def load_learned_pipeline(path: str | Path | None = None, weights: str = "ema",
                          music: MusicConfig | None | str = "default",
                          order_head: bool = True, warn_headless: bool = True
                          ) -> LearnedPipeline:
    """Rebuild the pipeline of a checkpoint (None: the model shipped with the package).

    music : the proposal stage: "default" or None, the network's slots; a MusicConfig
        (e.g. :func:`inference_music_config`), MUSIC peaks on R_blend (an ablation,
        ``benchmarks/bench_versus.py --propose music``); order_head False leaves a stored
        head out (as when refitting it); warn_headless: say (once per checkpoint and
        process) that one without a head decides K by the residual rule.
    """
    with float32_default():  # (a caller's float64 default would make float64 layers)
        return _load_learned_pipeline(path, weights, music, order_head, warn_headless)


def _load_learned_pipeline(path, weights, music, order_head, warn_headless) -> LearnedPipeline:
    path = DEFAULT_MODEL if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint not found: {path}" + (" (this build ships no default model; train "
                                               "one with `risloc train` and pass "
                                               "--checkpoint)" if path == DEFAULT_MODEL else ""))
    state = load_checkpoint(path)
    network, recipe = model_from_state(state, weights)
    head = _stored_head(state, path) if order_head else None
    if order_head and warn_headless and "order_head" not in state and path not in _HEADLESS:
        _HEADLESS.add(path)  # (evaluate loads it once per SNR point)
        log.warning("%s has no order head: K is decided by the classical residual rule, not "
                    "as by a finished model (risloc fit-order %s --out MODEL.pt fits one; "
                    "`risloc train` does so itself)", path, path)
    fov = recipe.fov
    fit_config = default_fit_config(fov)
    if head is not None:  # the head reads the nested fits of the fit stage it was fitted on
        fit_config = replace(fit_config,
                             repair_margin=state["order_head"].get("repair_margin", 0.0))
    ranker = _stored_ranker(state, path) if head is not None else None
    return LearnedPipeline(network, recipe, None if music == "default" else music,
                           fit_config, default_polish(fov), head, source_ranker=ranker)


def _stored_ranker(state: dict, path: Path) -> SourceRanker | None:
    try:
        return ranker_from_state(state["order_head"])
    except (AttributeError, KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: unreadable source ranker ({err})") from None


def _stored_head(state: dict, path: Path) -> OrderHead | None:
    order = state.get("order_head")
    if order is None:
        return None
    if order.get("features", 1) != FEATURES_VERSION:
        log.warning("%s: its order head reads order features version %s, this package "
                    "computes version %s; K is decided by the residual rule instead. Refit "
                    "it: risloc fit-order %s --out %s", path, order.get("features", 1),
                    FEATURES_VERSION, path, path)
        return None
    try:
        return order_head_from_state(order)
    except (AttributeError, KeyError, RuntimeError, TypeError) as err:
        raise ValueError(f"{path}: unreadable order head ({err})") from None
