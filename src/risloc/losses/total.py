"""The weighted sum of all loss terms, in one place.

Terms (weights in LossConfig; a term whose weight is 0 is skipped and reported as NaN):
 1 cov             covariance NMSE of R_blend vs R_true (diag / off-diag weighted)
 2 cov_pred        the same NMSE on R_pred alone (the network cannot hide behind R_samp)
 3 ortho           orthogonality of the factor columns
 4 cross           cross-term consistency: F inside the span of the slot steering vectors
 5 gap             eigengap hinge   } from the eigenvalues of the loaded, Hermitised R_blend
 6 margin          subspace margin  }
 7 k_ce            K cross-entropy
 8 aux             slot loss: heatmap focal + offsets at the truth + Hungarian-matched slots
 9 peak            chamfer distance of the learned slot directions to the true directions
10 align           learned slots' steering vs the top-K subspace of R_blend
11 subspace_align  ||P_perp R_blend P_perp||^2 / ||R_blend||^2, P from the true steering
12 peak_contrast   Capon spectrum of R_blend at the truth against its neighbourhood

R_true is only a target (terms 1, 2); terms 8-12 use the true positions.
All terms are computed in FP32 / complex64.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import torch

from risloc.config import SystemConfig
from risloc.covariance.tools import LowRank
from risloc.losses import auxiliary as aux
from risloc.losses import covariance as cov
from risloc.losses import subspace as sub
from risloc.model.network import ModelOutput
from risloc.simulation.scenes import SceneBatch


@dataclass(frozen=True)
class LossConfig:
    """Weights (lam_*) and parameters of the loss terms.

    spectral_scenes : the terms that factorise an N x N matrix per scene (gap, margin:
        eigvalsh; align: eigh; peak_contrast: Cholesky) use the first ``spectral_scenes``
        scenes of a batch (0 = all): on a CPU they cost more than the whole network, and a
        subset gives an unbiased estimate of the batch mean. In training with S shards it
        counts the global batch: each shard gives spectral_scenes / S (training.loop).
    """

    lam_cov: float = 1.0
    cov_diag_weight: float = 1.0
    cov_off_weight: float = 1.0
    lam_cov_pred: float = 0.05
    lam_ortho: float = 0.01
    lam_cross: float = 0.05
    lam_gap: float = 0.05
    gap_margin: float = 1.0
    lam_margin: float = 0.05
    margin_target: float = 0.6
    lam_K: float = 0.5
    lam_aux: float = 1.0
    aux_heatmap: float = 1.0
    aux_offset: float = 1.0
    aux_slots: float = 0.1
    angle_scale_deg: float = 1.0
    inv_range_scale: float = 0.05
    lam_peak: float = 0.5
    lam_align: float = 0.05
    lam_subspace_align: float = 0.05
    lam_peak_contrast: float = 0.1
    contrast_delta_deg: float = 3.0
    contrast_delta_inv_range: float = 0.2
    svd_loading: float = 1e-3
    capon_loading: float = 1e-2
    spectral_scenes: int = 16

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not math.isfinite(v) or v < 0 or (f.name == "spectral_scenes" and v != int(v)):
                raise ValueError(f"LossConfig.{f.name} must be finite and >= 0, got {v}")
        if self.lam_cov <= 0 and self.lam_cov_pred <= 0:
            raise ValueError("LossConfig: lam_cov or lam_cov_pred must be > 0 (no covariance "
                             "signal otherwise)")


TERMS = ("cov", "cov_pred", "ortho", "cross", "gap", "margin", "k_ce", "aux", "peak",
         "align", "subspace_align", "peak_contrast")
WEIGHTS = {"cov": "lam_cov", "cov_pred": "lam_cov_pred", "ortho": "lam_ortho",
           "cross": "lam_cross", "gap": "lam_gap", "margin": "lam_margin", "k_ce": "lam_K",
           "aux": "lam_aux", "peak": "lam_peak", "align": "lam_align",
           "subspace_align": "lam_subspace_align", "peak_contrast": "lam_peak_contrast"}


@dataclass(frozen=True)
class LossTerms:
    """Batch-mean value of every term (0-dim float tensors; NaN = weight 0, skipped) and
    their weighted sum ``total``."""

    cov: torch.Tensor
    cov_pred: torch.Tensor
    ortho: torch.Tensor
    cross: torch.Tensor
    gap: torch.Tensor
    margin: torch.Tensor
    k_ce: torch.Tensor
    aux: torch.Tensor
    peak: torch.Tensor
    align: torch.Tensor
    subspace_align: torch.Tensor
    peak_contrast: torch.Tensor
    total: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


def truth_of(scenes: SceneBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(points [B, K_max, 3] float32 (azimuth, elevation [rad], 1/range [1/m]; zeros where
    absent), valid [B, K_max] bool, K [B] int64) from a SceneBatch with truth."""
    if not scenes.has_truth:
        raise ValueError("the loss needs scenes with truth (K and source positions)")
    valid = scenes.mask
    pts = torch.stack([scenes.azimuth, scenes.elevation, 1.0 / scenes.range_m], -1).float()
    return torch.where(valid.unsqueeze(-1), pts, torch.zeros_like(pts)), valid, scenes.K


class _Batch:
    """Inputs of the terms, with the shared pieces (matching, singular values) computed
    once on first use."""

    def __init__(self, out: ModelOutput, R_blend, R_true, scenes, system, cfg: LossConfig,
                 factor: LowRank | None = None):
        self.out, self.R_blend, self.R_true, self.system, self.cfg = (out, R_blend, R_true,
                                                                       system, cfg)
        self.pts, self.valid, self.K = truth_of(scenes)
        self.factor = factor
        # R_blend as the terms read it: its factor where given (r x r products instead)
        self.blend = R_blend if factor is None else factor
        self.n = cfg.spectral_scenes or len(out.K_logits)  # scenes of the factorisations
        self.spectral = R_blend[:self.n] if factor is None else factor.first(self.n)

    @functools.cached_property
    def match(self) -> aux.SlotMatch:
        return aux.match_slots(aux.slot_cost(self.out.learned.float(), self.pts), self.valid)

    @functools.cached_property
    def sv(self) -> torch.Tensor:
        return cov.loaded_singular_values(self.spectral, self.cfg.svd_loading)

    def steering(self, pts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return sub.steering_columns(pts[..., 0], pts[..., 1], 1.0 / pts[..., 2].clamp_min(1e-6),
                                    mask, self.system)


def _cov(b: _Batch) -> torch.Tensor:
    return cov.covariance_nmse(b.blend, b.R_true, b.cfg.cov_diag_weight, b.cfg.cov_off_weight)


def _cov_pred(b: _Batch) -> torch.Tensor:
    R_pred = b.out.R_pred if b.factor is None else LowRank.of(b.out.F.to(torch.complex64))
    return cov.covariance_nmse(R_pred, b.R_true, b.cfg.cov_diag_weight,
                               b.cfg.cov_off_weight)


def _aux(b: _Batch) -> torch.Tensor:
    c, o = b.cfg, b.out
    loss = c.aux_slots * aux.slot_regression(o.learned.float(), b.pts, b.valid, b.match,
                                             c.angle_scale_deg, c.inv_range_scale)
    if c.aux_heatmap > 0:
        loss = loss + c.aux_heatmap * aux.heatmap_focal(o.heatmap, o.grid, b.pts, b.valid)
    if c.aux_offset > 0:
        loss = loss + c.aux_offset * aux.offset_at_truth(o.offsets.float(), o.grid, b.pts,
                                                         b.valid)
    return loss


def _align(b: _Batch) -> torch.Tensor:
    n, lp = b.n, b.out.learned[:b.n]
    A = b.steering(lp, torch.ones_like(b.valid[:n]))
    return sub.predicted_subspace_alignment(b.spectral, b.K[:n], A,
                                            b.match.matched[:n].float())


def _peak_contrast(b: _Batch) -> torch.Tensor:
    n, p, c = b.n, b.pts[:b.n], b.cfg
    return sub.peak_contrast(b.spectral, p[..., 0], p[..., 1], 1.0 / p[..., 2].clamp_min(1e-6),
                             b.valid[:n], b.system, c.contrast_delta_deg,
                             c.contrast_delta_inv_range, c.capon_loading)


_TERM_FUNCTIONS = {
    "cov": _cov,
    "cov_pred": _cov_pred,
    "ortho": lambda b: cov.factor_orthogonality(b.out.F),
    "cross": lambda b: cov.cross_term_consistency(b.out.F, b.out.slot_steering.detach()),
    "gap": lambda b: cov.eigengap_hinge(b.sv, b.K[:b.n], b.cfg.gap_margin),
    "margin": lambda b: cov.subspace_margin(b.sv, b.K[:b.n], b.cfg.margin_target),
    "k_ce": lambda b: aux.k_cross_entropy(b.out.K_logits, b.K),
    "aux": _aux,
    "peak": lambda b: aux.chamfer_angles(b.out.learned[..., 0], b.out.learned[..., 1],
                                         b.out.slot_confidence, b.pts[..., 0], b.pts[..., 1],
                                         b.valid),
    "align": _align,
    "subspace_align": lambda b: sub.gt_subspace_alignment(b.blend, b.steering(b.pts, b.valid)),
    "peak_contrast": _peak_contrast,
}


def compute_losses(out: ModelOutput, R_blend: torch.Tensor | None,
                   R_true: torch.Tensor | LowRank, scenes: SceneBatch, system: SystemConfig,
                   cfg: LossConfig = LossConfig(), factor: LowRank | None = None) -> LossTerms:
    """All loss terms of a batch and their weighted sum.

    out : the network's ModelOutput; R_blend : [B, N, N] complex — the blended covariance
    (``risloc.covariance.blend``), or None with ``factor`` given; R_true : [B, N, N] —
    target only — or its LowRank factor (``simulation.true_covariance_factor``); scenes :
    the batch's truth (K, positions);
    factor : R_blend as c I + W W^H (``Forward.factor``): every term that reads R_blend then
    works on r x r products (the factorisations of gap, margin, align and peak_contrast;
    subspace_align; with R_true's factor the NMSE of R_blend and of R_pred = F F^H), with
    the same values and gradients to rounding (tested).
    """
    if R_blend is None and factor is None:
        raise ValueError("compute_losses needs R_blend or its factor")
    B, N = (factor.W if R_blend is None else R_blend).shape[0], system.N
    if isinstance(R_true, LowRank):  # its factor: the NMSE terms from r x r products too
        R_true = LowRank(R_true.c.float().detach(), R_true.W.to(torch.complex64).detach())
        if factor is None:
            R_true = R_true.dense()
    else:
        R_true = R_true.to(torch.complex64).detach()
    def shape(R):  # a factor W [B, N, r] as the [B, N, N] matrix it stands for
        return (*R.W.shape[:2], N) if isinstance(R, LowRank) else tuple(R.shape)

    blend_shape, true_shape = shape(factor if R_blend is None else R_blend), shape(R_true)
    if blend_shape != (B, N, N) or true_shape != (B, N, N):
        raise ValueError(f"R_blend {blend_shape} and R_true {true_shape} "
                         f"must be [B, {N}, {N}]")
    R_blend = None if R_blend is None else R_blend.to(torch.complex64)
    if factor is not None:
        factor = LowRank(factor.c.float(), factor.W.to(torch.complex64))
    batch = _Batch(out, R_blend, R_true, scenes, system, cfg, factor)
    per_scene = {t: _TERM_FUNCTIONS[t](batch) for t in TERMS if getattr(cfg, WEIGHTS[t]) > 0}
    nan = torch.full((), math.nan, device=out.K_logits.device)
    means = {t: per_scene[t].mean() if t in per_scene else nan for t in TERMS}
    total = sum(getattr(cfg, WEIGHTS[t]) * means[t] for t in per_scene)
    return LossTerms(**means, total=total)
