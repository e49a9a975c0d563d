"""The network's forward pass and the blended covariance: one function that training,
validation and inference all call, so they cannot drift apart."""

from __future__ import annotations

from typing import NamedTuple

import torch

from risloc.covariance.tools import (
    LowRank,
    blend,
    blend_factor,
    load_diagonal,
    shrink,
    snapshot_covariance,
    unit_snapshots,
)
from risloc.inference.recipe import BlendConfig
from risloc.model.network import CovarianceNet, ModelOutput


class Forward(NamedTuple):
    """out : ModelOutput; R_samp, R_blend : [B, N, N] complex64 (trace N), or None where
    the covariance was not made (the learned pipeline proposing the network's slots) or
    only its factor (``forward_blend(..., dense=False)``);
    factor : R_blend as c I + W W^H (:class:`risloc.covariance.LowRank`, W [B, N, S + L]),
    which the loss terms that factorise R_blend use (21 x 21 instead of 144 x 144); None
    where S + L >= N."""

    out: ModelOutput
    R_samp: torch.Tensor | None
    R_blend: torch.Tensor | None
    factor: LowRank | None = None


def forward_blend(model: CovarianceNet, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                  snr_db: torch.Tensor | None, beta: float,
                  blend_cfg: BlendConfig = BlendConfig(), check: bool = True,
                  dense: bool = True) -> Forward:
    """Network forward pass and the blended covariance -- the one place where R_blend is
    made, for training, validation and inference alike.

    R_blend = shrink/load(blend(R_pred, R_samp, beta)), R_samp from the measurements
    (``risloc.covariance.sample_covariance``, detached inside ``blend``).
    y [B, L, M], H [B, M, N], codes [B, L, N] complex; snr_db [B] (NaN = unknown) or None;
    check False: the inputs were checked by the caller (the network's ``check``);
    dense False: R_samp and R_blend are left out (None) where the factor stands for them
    (training and validation read only the factor then).
    """
    out = model(y, H, codes, snr_db, check=check)
    a = unit_snapshots(y, H, codes, blend_cfg.bp_alpha)
    B, N = y.shape[0], getattr(model, "module", model).system.N  # model or its DDP wrapper
    # PERMANENT shape assertions at the blend site: they catch shape drift at once.
    assert out.F.shape[:2] == (B, N), f"F {tuple(out.F.shape)} != {(B, N, '*')}"
    assert a.shape[0] == B and a.shape[-1] == N, f"snapshots {tuple(a.shape)} != {(B, '*', N)}"
    factor = blend_factor(out.F, a, beta, N)  # None for a small RIS (S + L >= N)
    if factor is not None:
        if blend_cfg.shrinkage > 0:
            factor = factor.shrunk(blend_cfg.shrinkage)
        if blend_cfg.loading > 0:
            factor = factor.loaded(blend_cfg.loading)
        if not dense:
            return Forward(out, None, None, factor)
    R_samp = snapshot_covariance(a)  # risloc.covariance.sample_covariance
    assert out.R_pred.shape == (B, N, N), f"R_pred {tuple(out.R_pred.shape)} != {(B, N, N)}"
    assert R_samp.shape == (B, N, N), f"R_samp {tuple(R_samp.shape)} != {(B, N, N)}"
    R_blend = blend(out.R_pred, R_samp, beta, N)
    if blend_cfg.shrinkage > 0:
        R_blend = shrink(R_blend, blend_cfg.shrinkage)
    if blend_cfg.loading > 0:
        R_blend = load_diagonal(R_blend, blend_cfg.loading)
    return Forward(out, R_samp, R_blend, factor)
