"""The K decision of the learned pipeline: a small classifier on the nested ML fits.

After the ML-fit stage (:mod:`risloc.estimators.mlfit`) the pipeline holds nested fits of
k = 1..K_max sources and their residual costs C_k. The penalised-likelihood rule of the
classical localizer (:func:`risloc.estimators.order.residual_order`) reads only those
costs with one penalty per source; the "order head" reads them and more, all unitless
and none of them the SNR (users' files rarely carry one, so the learned pipeline never
uses it) or the source powers' scale:

* ``log(C_k / C_0)``, k = 1..K_max — the share of the measured energy left unexplained;
* ``log((C_{k-1} - C_k) / sigma^2)`` — what the k-th source explains in units of the
  noise level sigma^2 = C_{K_max} / (L (M - K_max)) estimated from the residual;
* ``log(p_k / P_y)`` — the power the k-th source contributes per antenna against the
  measured power P_y = mean |y|^2;
* the network's K head, log-softmax.

It is a two-layer MLP with two outputs per k: the probability that K = k, and the
expected number of true sources found when the first k nested sources are reported
(:meth:`OrderHead.decide` turns both into K); five of them, fitted from five seeds, with
their outputs averaged: a single MLP's decisions moved the validation split's corner cells
by up to 5 of 36 with its seed alone, the average of five by 2 (docs/results.md).
Maximising K accuracy and maximising F1 are different decisions where sources are weak: at
0 dB the most probable K often reports weak sources whose fits are wrong (measured on the
validation split; docs/results.md).
The head is fitted after the network on simulated training-split scenes of the recipe's
scene distribution (unequal powers included): :func:`fit_order_head`, ``risloc
fit-order``. Heads stored with another ``features`` version than :data:`FEATURES_VERSION`
are ignored with a warning (they read other inputs).

Which K of the nested sources are reported is the :class:`SourceRanker`'s, fitted and stored
with the head: per nested source, the probability that it is a true source (from the
head's features, its own gain and power, and what the network says at its position:
:func:`prior_features`); the pipeline reports the K it ranks first, not the first K of the
nested order, whose k-th source may be a noise fit where the (k+1)-th is real; the pipeline
does so where the scene's estimated SNR is below ``LearnedPipeline.rank_below_db`` (on the
validation split, the shipped ranker: F1 +0.0037 on average over 12 cells at 0-5 dB, from
-0.0031 to +0.0086, +0.0044 to +0.0086 in the 6 with equal powers; K unchanged;
``benchmarks/bench_source_rank.py``, docs/results.md, "The K decision"). A head stored
without one reports the first K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from risloc.core.params import Estimates
from risloc.covariance.tools import abs2
from risloc.estimators.mlfit import MLFit
from risloc.estimators.order import noise_floor
from risloc.evaluation.metrics import match_sources

FLOOR = 1e-6
MIN_ORDER_SCENES = 64  # fewer scenes than this cannot fit the order head's 5-way classifier
FEATURES_VERSION = 4  # 4: nested ML fits, no SNR, K and detections heads (older: other inputs)


def estimated_snr_db(costs: torch.Tensor, n_snapshots: int, n_antennas: int) -> torch.Tensor:
    """Per-antenna SNR [dB] of each scene estimated from its nested fits (the SNR is never
    read): p_y / sigma^2 - 1 (docs/conventions.md) with p_y = C_0 / (L M) and sigma^2 =
    C_S / (L (M - S)) the level the S-source fit leaves. Biased up where sources are weak
    (the S-source fit takes some noise): on 256 validation scenes a true -5 dB read -1.7 to
    +0.1 dB (5 to 95 %), 0 dB 1.2 to 3.1 dB, 5 dB 5.2 to 7.2 dB. At most about 40 dB (the
    noise floor of :func:`residual_noise`).
    costs : [B, S+1] (:class:`risloc.estimators.mlfit.MLFit`); returns [B] float64."""
    C = costs.double()
    p_y = C[:, 0] / (n_snapshots * n_antennas)
    return 10 * torch.log10((p_y / residual_noise(C, n_snapshots, n_antennas) - 1
                             ).clamp_min(1e-12))


def residual_noise(costs: torch.Tensor, n_snapshots: int, n_antennas: int) -> torch.Tensor:
    """sigma^2 [B] = C_S / (L (M - S)), the noise level the S-source fit leaves (costs
    [B, S+1]), at least :func:`risloc.estimators.order.noise_floor` (noise-free data leave
    the fits' float32 rounding, which an extra source always "explains"; above 0): the
    order features' unit and the SNR estimate's noise."""
    S = costs.shape[1] - 1
    level = costs[:, S].double() / (n_snapshots * (n_antennas - S))
    return torch.maximum(level, noise_floor(costs, n_snapshots, n_antennas))


def n_features(K_max: int) -> int:
    """Length of the feature vector of :func:`order_features`."""
    return 4 * K_max


def order_features(fit: MLFit, y: torch.Tensor, K_logits: torch.Tensor) -> torch.Tensor:
    """[B, n_features(K_max)] float32 (module docstring); y [B, L, M], K_logits [B, K_max]."""
    C = fit.costs.double()  # (B, S+1)
    B, L, M = y.shape
    sigma2 = residual_noise(C, L, M).unsqueeze(-1)
    p_y = abs2(y).mean((-1, -2)).double().clamp_min(1e-300).unsqueeze(-1)

    def lg(t):
        return torch.log(t.clamp_min(FLOOR))

    parts = [lg(C[:, 1:] / C[:, :1]), lg((C[:, :-1] - C[:, 1:]) / sigma2),
             lg(fit.received.double() / p_y), torch.log_softmax(K_logits.double(), -1)]
    return torch.cat(parts, -1).float()


class OrderOutput(NamedTuple):
    """probabilities : [B, K_max] — P(K = k); detections : [B, K_max] — expected number of
    true sources found (within the metrics' gate) when the first k nested sources are
    reported."""

    probabilities: torch.Tensor
    detections: torch.Tensor


def _member(n_in: int, hidden: int, K_max: int) -> nn.Sequential:
    """One member of the head: Linear -> GELU -> Linear -> GELU -> Linear to 2 K_max."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                         nn.GELU(), nn.Linear(hidden, 2 * K_max))


class OrderHead(nn.Module):
    """Standardise, then ``members`` two-layer MLPs (:func:`_member`) fitted from different
    seeds, each with 2 K_max outputs: the logits of K and the expected detections of
    reporting k sources (module docstring). The members' probabilities and detections are
    averaged: one MLP's decisions depend on its seed (module docstring)."""

    def __init__(self, n_in: int, K_max: int, hidden: int = 64, balance: float = 0.25,
                 members: int = 1):
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        self.nets = nn.ModuleList(_member(n_in, hidden, K_max) for _ in range(members))
        self.hidden, self.K_max, self.balance = hidden, K_max, balance

    def raw(self, x: torch.Tensor, member: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One member's (K logits [B, K_max], expected detections [B, K_max] >= 0)."""
        out = self.nets[member]((x - self.mean) / self.std)
        return out[:, :self.K_max], nn.functional.softplus(out[:, self.K_max:])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> OrderOutput:
        """The members' mean probabilities and detections."""
        P = det = 0
        for i in range(len(self.nets)):
            logits, d = self.raw(x, i)
            P, det = P + torch.softmax(logits, -1), det + d
        return OrderOutput(P / len(self.nets), det / len(self.nets))

    def decide(self, x: torch.Tensor, k_max: int | None = None,
               balance: torch.Tensor | None = None) -> torch.Tensor:
        """K in 1..k_max [B] int64: the number of nested sources that maximises the expected
        detection score, per scene,

            K = argmax_k  2 E[D_k] - F k + balance * log P(K = k),

        E[D_k] the expected detections of reporting k sources and F = max_k 2 E[D_k] /
        (k + E[K]) the scene's attainable F1. Reporting a source pays when it is found with
        probability above F / 2 (the F1-optimal rule); ``balance`` > 0 leans toward the most
        probable K (K accuracy). balance -> infinity is argmax P(K = k). ``balance``: [B]
        per scene, or None for the head's own (``self.balance``). ``k_max`` below the head's
        caps the decision over all its K (scenes of a system with a smaller K_max): deciding
        over 1..k_max alone, a scene the head holds to have more sources than k_max fell to
        K = 1, its log P(K = k) for every k <= k_max being as small as it is."""
        out = self.forward(x)
        balance = self.balance if balance is None else \
            balance.to(out.detections.dtype).reshape(-1, 1)
        P, det = out.probabilities, out.detections
        k = torch.arange(1, self.K_max + 1, dtype=det.dtype, device=det.device)
        expected_K = (P * k).sum(-1, True)
        F = (2 * det / (k + expected_K)).amax(-1, keepdim=True)
        score = 2 * det - F * k + balance * torch.log(P.clamp_min(1e-9))
        K = score.argmax(-1) + 1
        return K if k_max is None else K.clamp_max(k_max)


@dataclass(frozen=True)
class OrderFitConfig:
    """How the order head is fitted (chosen on the validation split, not the test split).

    hidden : MLP width;  epochs : passes over the feature set;  batch, lr, weight_decay :
    AdamW settings;  seed : initialisation and shuffling of the first member (member i:
    seed + i);  balance : of the decision rule (:meth:`OrderHead.decide`);  members : MLPs
    averaged (one MLP's validation cells moved by up to 5 of 36 with its seed; five
    averaged by 2; docs/results.md).
    """

    hidden: int = 64
    epochs: int = 150
    batch: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-2
    seed: int = 0
    balance: float = 0.25
    members: int = 5


def fit_order_head(features: torch.Tensor, K: torch.Tensor, detections: torch.Tensor,
                   K_max: int, config: OrderFitConfig = OrderFitConfig()) -> OrderHead:
    """Fit an :class:`OrderHead`: cross-entropy on K plus squared error on the detections.

    features [S, F] float32; K [S] in 1..K_max; detections [S, K_max] — true sources found
    within the gate when the first k = 1..K_max nested sources are reported.
    """
    if features.ndim != 2 or features.shape[0] != K.shape[0] or \
            detections.shape != (K.shape[0], K_max):
        raise ValueError(f"features must be [S, F] and detections [S, K_max={K_max}] with "
                         f"S = len(K), got {tuple(features.shape)}, "
                         f"{tuple(detections.shape)} and {tuple(K.shape)}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("order features hold non-finite values")
    if int(K.min()) < 1 or int(K.max()) > K_max:
        raise ValueError(f"K must lie in 1..{K_max}")
    features, detections = features.detach(), detections.detach().float()
    head = OrderHead(features.shape[1], K_max, config.hidden, config.balance, config.members)
    head.mean.copy_(features.mean(0))
    head.std.copy_(features.std(0).clamp_min(1e-6))
    target = K.to(torch.int64) - 1
    for i in range(config.members):
        seed = config.seed + i
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            head.nets[i] = _member(features.shape[1], config.hidden, K_max)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(head.nets[i].parameters(), config.lr,
                                weight_decay=config.weight_decay)
        for _ in range(config.epochs):
            perm = torch.randperm(features.shape[0], generator=gen)
            for lo in range(0, features.shape[0], config.batch):
                idx = perm[lo:lo + config.batch]
                logits, det = head.raw(features[idx], i)
                loss = nn.functional.cross_entropy(logits, target[idx]) + \
                    nn.functional.mse_loss(det, detections[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return head.eval()


def nested_detections(theta: torch.Tensor, azimuth: torch.Tensor, elevation: torch.Tensor,
                      range_m: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """[S, K_max] float — true sources detected (Hungarian pairing within the gate of
    :mod:`risloc.evaluation.metrics`) when the first k nested sources theta [S, K_max, 3]
    are reported, k = 1..K_max: the training target of the head's detections."""
    S, K_max, _ = theta.shape
    out = torch.zeros(S, K_max)
    for k in range(1, K_max + 1):
        est = Estimates.from_theta(torch.full((S,), k), theta.double())
        out[:, k - 1] = match_sources(est, azimuth, elevation, range_m, K).detected.sum(1)
    return out


def real_sources(theta: torch.Tensor, azimuth: torch.Tensor, elevation: torch.Tensor,
                 range_m: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """[S, K_max] bool — each nested source of theta [S, K_max, 3] paired with a true source
    (within the gate of :mod:`risloc.evaluation.metrics`) when all K_max are reported: the
    training target of the :class:`SourceRanker`."""
    S, K_max, _ = theta.shape
    m = match_sources(Estimates.from_theta(torch.full((S,), K_max), theta.double()),
                      azimuth, elevation, range_m, K)
    slot = torch.where(m.detected, m.est_index, torch.full_like(m.est_index, K_max))
    real = torch.zeros(S, K_max + 1, dtype=torch.bool, device=slot.device)
    real.scatter_(1, slot, True)
    return real[:, :K_max]


def _cell(axis: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Index of the nearest point of the uniform ``axis`` to each value of v."""
    step = (axis[-1] - axis[0]) / max(len(axis) - 1, 1)
    return ((v - axis[0]) / step).round().long().clamp(0, len(axis) - 1)


def prior_features(out, theta: torch.Tensor) -> torch.Tensor:
    """[B, 3 K_max] float32 — what the network says at each nested source of theta
    [B, K_max, 3], all SNR-free: the heat-map logit at its nearest grid cell, the logit of
    the confidence of its nearest slot, and the log angle to that slot [deg] (``out``: the
    network's :class:`risloc.model.ModelOutput`)."""
    g = out.grid
    az, el, inv_r = theta.to(out.heatmap.dtype).unbind(-1)
    ia, ie, ir = _cell(g.azimuth, az), _cell(g.elevation, el), _cell(g.inv_range, inv_r)
    B, Nr, Ne, Na = out.heatmap.shape
    heat = out.heatmap.reshape(B, -1).gather(1, (ir * Ne + ie) * Na + ia)
    u = torch.stack([el.cos() * az.sin(), el.sin(), el.cos() * az.cos()], -1)
    se, sa = out.slot_elevation, out.slot_azimuth
    v = torch.stack([se.cos() * sa.sin(), se.sin(), se.cos() * sa.cos()], -1)
    angle = torch.rad2deg(torch.acos((u @ v.transpose(1, 2)).clamp(-1, 1)))  # [B, K, slots]
    d, j = angle.min(-1)
    conf = out.slot_confidence.gather(1, j).clamp(1e-4, 1 - 1e-4)
    return torch.cat([heat, torch.logit(conf), torch.log(d + 0.05)], -1).float()


def n_source_inputs(K_max: int) -> int:
    """Length of a nested source's input to the :class:`SourceRanker`
    (:func:`source_inputs`)."""
    return n_features(K_max) + 5 + K_max


def source_inputs(features: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """[B, K_max, F + 5 + K_max] — the :class:`SourceRanker`'s input per nested source: the
    scene's order features [B, F] (:func:`order_features`), the source's own likelihood
    gain and power (from them), its :func:`prior_features` [B, 3 K_max] and its place k
    (one-hot)."""
    B, K_max = features.shape[0], prior.shape[1] // 3
    own = torch.stack([features[:, K_max:2 * K_max], features[:, 2 * K_max:3 * K_max],
                       *prior.reshape(B, 3, K_max).unbind(1)], -1)
    place = torch.eye(K_max, dtype=features.dtype, device=features.device)
    return torch.cat([features.unsqueeze(1).expand(B, K_max, features.shape[1]), own,
                      place.expand(B, K_max, K_max)], -1)


class SourceRanker(nn.Module):
    """Which nested sources to report: P(real) of each, the probability that it is paired
    with a true source when all K_max are reported, from :func:`source_inputs`
    (standardised, then Linear -> GELU -> Linear -> GELU -> Linear). Where the SNR
    estimated from a scene's nested fits is below ``LearnedPipeline.rank_below_db`` (9 dB),
    the pipeline reports the K the order head decides taken in decreasing P(real) instead
    of the nested order (a weak source's nested fit may come before a real one's;
    docs/results.md, "The K decision")."""

    def __init__(self, n_in: int, hidden: int = 64):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, 1))
        self.hidden = hidden

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """[B, K_max] logits of P(real) of inputs [B, K_max, F']."""
        return self.net((inputs - self.mean) / self.std).squeeze(-1)

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """[B, K_max] P(real)."""
        return torch.sigmoid(self.logits(inputs))

    @torch.no_grad()
    def rank(self, inputs: torch.Tensor) -> torch.Tensor:
        """[B, K_max] int64: the nested sources by decreasing P(real) (ties: nested
        order; a NaN P(real), from a source whose inputs are not finite, last)."""
        logits = self.logits(inputs)
        logits = logits.masked_fill(logits.isnan(), -math.inf)  # (sort puts NaN first)
        return logits.sort(dim=-1, descending=True, stable=True).indices


@dataclass(frozen=True)
class RankerFitConfig:
    """How the :class:`SourceRanker` is fitted (chosen on the validation split:
    ``benchmarks/bench_source_select.py``): hidden width, passes, AdamW batch, lr, weight
    decay, seed of initialisation and shuffling."""

    hidden: int = 64
    epochs: int = 60
    batch: int = 1024
    lr: float = 3e-3
    weight_decay: float = 1e-2
    seed: int = 0


def fit_source_ranker(inputs: torch.Tensor, real: torch.Tensor,
                      config: RankerFitConfig = RankerFitConfig()) -> SourceRanker:
    """Fit a :class:`SourceRanker`: binary cross-entropy of P(real) on every nested source.
    inputs [S, K_max, F'] (:func:`source_inputs`); real [S, K_max] bool
    (:func:`real_sources`)."""
    if inputs.ndim != 3 or real.shape != inputs.shape[:2]:
        raise ValueError(f"inputs must be [S, K_max, F] and real [S, K_max], got "
                         f"{tuple(inputs.shape)} and {tuple(real.shape)}")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("source inputs hold non-finite values")
    flat = inputs.detach().reshape(-1, inputs.shape[-1]).float()
    target = real.reshape(-1).float()
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        ranker = SourceRanker(flat.shape[1], config.hidden)
    ranker.mean.copy_(flat.mean(0))
    ranker.std.copy_(flat.std(0).clamp_min(1e-6))
    opt = torch.optim.AdamW(ranker.net.parameters(), config.lr,
                            weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    for _ in range(config.epochs):
        perm = torch.randperm(len(flat), generator=gen)
        for lo in range(0, len(flat), config.batch):
            idx = perm[lo:lo + config.batch]
            loss = nn.functional.binary_cross_entropy_with_logits(
                ranker.net((flat[idx] - ranker.mean) / ranker.std).squeeze(-1), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return ranker.eval()


def rank_sources(theta: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """theta [B, K_max, 3] taken in the order ranking [B, K_max] (:meth:`SourceRanker.rank`)."""
    return theta.gather(1, ranking.unsqueeze(-1).expand(-1, -1, theta.shape[-1]))


def order_head_state(head: OrderHead, repair_margin: float = 0.0,
                     ranker: SourceRanker | None = None) -> dict:
    """What a model file stores of the head; ``repair_margin``: that of the fit stage whose
    nested fits it was fitted on (``MLFitConfig.repair_margin``); ``ranker``: the source
    ranker fitted with it, if any."""
    state = {"n_in": head.mean.shape[0], "K_max": head.K_max, "hidden": head.hidden,
             "balance": head.balance, "members": len(head.nets), "features": FEATURES_VERSION,
             "repair_margin": float(repair_margin), "state_dict": head.state_dict()}
    if ranker is not None:
        state["ranker"] = {"n_in": ranker.mean.shape[0], "hidden": ranker.hidden,
                           "state_dict": ranker.state_dict()}
    return state


def order_head_from_state(state: dict) -> OrderHead:
    """The head stored by :func:`order_head_state` (heads stored before members existed
    are one MLP under ``net.``)."""
    members = state.get("members", 1)
    head = OrderHead(state["n_in"], state["K_max"], state["hidden"], state["balance"], members)
    weights = {k.replace("net.", "nets.0.", 1) if k.startswith("net.") else k: v
               for k, v in state["state_dict"].items()}
    head.load_state_dict(weights)
    return head.eval()


def ranker_from_state(state: dict) -> SourceRanker | None:
    """The source ranker stored with a head by :func:`order_head_state`; None where the
    head was stored without one (it reports the first K nested sources). Refuses one whose
    input width is not :func:`n_source_inputs` of the head's K_max (ValueError)."""
    stored = state.get("ranker")
    if stored is None:
        return None
    if stored["n_in"] != n_source_inputs(state["K_max"]):
        raise ValueError(f"it reads {stored['n_in']} inputs per source, the pipeline gives "
                         f"{n_source_inputs(state['K_max'])} (K_max {state['K_max']})")
    ranker = SourceRanker(stored["n_in"], stored["hidden"])
    ranker.load_state_dict(stored["state_dict"])
    return ranker.eval()
