"""End-to-end validation during training: the forward pass of
:func:`risloc.inference.forward_blend` (shared with inference), near-field MUSIC on
R_blend with the network's K, Hungarian-matched errors, the loss terms. Subspaces (MUSIC's,
the overlap's) come from R_blend's and R_true's low-rank factors where R_blend has one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from risloc.config import SystemConfig
from risloc.core.params import Estimates, concat_estimates
from risloc.covariance.tools import LowRank
from risloc.covariance.tools import subspace_overlap as overlap_fn
from risloc.estimators.music import MusicConfig, music
from risloc.evaluation.metrics import Matching, MetricSummary, match_sources, summarize
from risloc.inference.forward import forward_blend
from risloc.inference.recipe import BlendConfig
from risloc.losses.covariance import covariance_nmse
from risloc.losses.total import LossConfig, compute_losses
from risloc.model.network import CovarianceNet
from risloc.simulation.scenes import SceneBatch, scene_true_covariance, true_covariance_factor


@dataclass(frozen=True)
class EvalResult:
    """Validation of a model on a fixed scene set.

    loss : mean of every loss term (LossTerms.as_dict keys)
    summary : MetricSummary of MUSIC on R_blend with the predicted K
    matching : the Hungarian Matching (per scene) behind ``summary``
    estimates : MUSIC Estimates; K_hat : [S] int64 — the network's K
    nmse, nmse_pred : [S] float — covariance NMSE of R_blend / R_pred against R_true
    overlap : [S] float — top-K (true K) subspace overlap of R_blend with R_true
    objective : median angle error [deg] + f1_weight_deg (1 - F1), lower is better
    """

    loss: dict[str, float]
    summary: MetricSummary
    matching: Matching
    estimates: Estimates
    K_hat: torch.Tensor
    nmse: torch.Tensor
    nmse_pred: torch.Tensor
    overlap: torch.Tensor
    objective: float

    def metrics(self) -> dict[str, float]:
        """Flat dict of the headline numbers (for logs and Optuna)."""
        s = self.summary
        return {"objective": self.objective, "angle_median_deg": s.angle_median_deg,
                "azimuth_median_deg": s.azimuth_median_deg,
                "elevation_median_deg": s.elevation_median_deg,
                "range_median_m": s.range_median_m, "K_accuracy": s.K_accuracy, "f1": s.f1,
                "nmse": float(self.nmse.mean()), "nmse_pred": float(self.nmse_pred.mean()),
                "overlap": float(self.overlap.mean()),
                **{f"loss_{k}": v for k, v in self.loss.items()}}


def objective_of(summary: MetricSummary, f1_weight_deg: float) -> float:
    """End-to-end selection metric; inf when nothing was paired."""
    angle = summary.angle_median_deg
    if not math.isfinite(angle):
        return math.inf
    return angle + f1_weight_deg * (1.0 - summary.f1)


def true_target(scenes: SceneBatch, system: SystemConfig, factored: bool
                ) -> torch.Tensor | LowRank:
    """R_true of scenes with truth: its factor (LowRank, K_max columns) where ``factored``
    (the loss terms and metrics then work on r x r products), else the N x N matrix."""
    if not factored:
        return scene_true_covariance(scenes, system)
    return LowRank.of(true_covariance_factor(scenes, system))


@torch.no_grad()
def evaluate(model: CovarianceNet, scenes: SceneBatch, system: SystemConfig, beta: float,
             blend_cfg: BlendConfig, loss_cfg: LossConfig, music_cfg: MusicConfig,
             batch_size: int = 128, f1_weight_deg: float = 5.0) -> EvalResult:
    """End-to-end validation (module docstring); scenes must carry the truth."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    est, khat, nmse, nmse_p, ovl = [], [], [], [], []
    try:  # (an error mid-way, a Ctrl-C included, leaves the model in its mode)
        for lo in range(0, len(scenes), batch_size):
            sc = scenes[lo:lo + batch_size].to(device)
            fwd = forward_blend(model, sc.y, sc.H, sc.codes, sc.snr_db, beta, blend_cfg,
                                dense=False)
            R_true = true_target(sc, system, fwd.factor is not None)
            terms = compute_losses(fwd.out, fwd.R_blend, R_true, sc, system, loss_cfg, fwd.factor)
            for k, v in terms.as_dict().items():
                sums[k] = sums.get(k, 0.0) + v * len(sc)
            K_hat = fwd.out.K_hat
            # the factors where R_blend has one (r x r products and eigenproblems, not N x N)
            if fwd.factor is None:
                R_blend, R_pred = fwd.R_blend, fwd.out.R_pred
            else:
                R_blend, R_pred = fwd.factor, LowRank.of(fwd.out.F.to(torch.complex64))
            est.append(music(R_blend, K_hat, system, music_cfg).to("cpu"))
            khat.append(K_hat.cpu())
            nmse.append(covariance_nmse(R_blend, R_true).cpu())
            nmse_p.append(covariance_nmse(R_pred, R_true).cpu())
            ovl.append(overlap_fn(R_blend, R_true, sc.K).cpu())
    finally:
        model.train(was_training)
    estimates = concat_estimates(est)
    matching = match_sources(estimates, scenes.azimuth, scenes.elevation, scenes.range_m,
                             scenes.K)
    summary = summarize(matching)
    return EvalResult(
        loss={k: v / len(scenes) for k, v in sums.items()}, summary=summary,
        matching=matching, estimates=estimates, K_hat=torch.cat(khat), nmse=torch.cat(nmse),
        nmse_pred=torch.cat(nmse_p), overlap=torch.cat(ovl),
        objective=objective_of(summary, f1_weight_deg))

