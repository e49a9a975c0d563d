"""Set-valued loss terms on the auxiliary slot predictions and the source count.

* ``match_slots`` : exact permutation-invariant (Hungarian) assignment of predicted slots
  to true sources, vectorised over the batch by enumerating the S!/(S-T)! injections
  (120 for K_max = 5) -- no Python loop over scenes.
* ``slot_regression`` : Huber loss on the matched (azimuth, elevation, 1/range) errors.
* ``heatmap_focal`` / ``offset_at_truth`` : the dense confidence map and the sub-cell offsets
  of the candidate grid, CenterNet style (Zhou et al. 2019, "Objects as Points",
  arXiv:1904.07850): focal loss with Gaussian-softened negatives, offsets at true cells.
* ``chamfer_angles`` : symmetric chamfer distance between predicted and true directions.
* ``k_cross_entropy`` : source-count classification over 1..K_max.

Angles in radians, ranges as inverse range 1/r [1/m] (the near-field phase is linear in it).
Every function returns a per-scene loss [B].
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from risloc.model.network import CandidateGrid
from risloc.physics.geometry import direction

EPS = 1e-12


def chord(az1: torch.Tensor, el1: torch.Tensor, az2: torch.Tensor,
          el2: torch.Tensor) -> torch.Tensor:
    """Smooth angular distance: chord |u1 - u2| (~ great-circle angle [rad] when small),
    eps-guarded so its gradient is finite at zero distance. Broadcasting."""
    d2 = (direction(az1, el1) - direction(az2, el2)).square().sum(-1)
    return torch.sqrt(d2 + EPS)


@functools.lru_cache(maxsize=16)
def _injections(S: int, T: int) -> torch.Tensor:
    """All injective maps from T truths to S slots: [P, T] int64."""
    if T > S:
        raise ValueError(f"cannot match {T} true sources to {S} slots")
    return torch.tensor(list(itertools.permutations(range(S), T)), dtype=torch.int64)


class SlotMatch(NamedTuple):
    """slot : [B, T] int64 — slot assigned to each true source (arbitrary where invalid);
    matched : [B, S] bool — slot assigned to a real true source."""

    slot: torch.Tensor
    matched: torch.Tensor


def match_slots(cost: torch.Tensor, valid: torch.Tensor) -> SlotMatch:
    """Minimum-cost assignment of slots to the valid true sources.

    cost : [B, S, T] float — cost of pairing slot s with true source t
    valid : [B, T] bool — real true sources
    """
    B, S, T = cost.shape
    perms = _injections(S, T).to(cost.device)  # (P, T)
    c = cost.detach().mT.gather(2, perms.T.unsqueeze(0).expand(B, T, -1))  # (B,T,P) C[p[t],t]
    total = (c * valid.unsqueeze(-1).to(c.dtype)).sum(1)  # (B, P)
    best = perms[total.argmin(-1)]  # (B, T)
    matched = torch.zeros(B, S, dtype=torch.bool, device=cost.device)
    matched.scatter_(1, best, valid)
    return SlotMatch(best, matched)


def slot_cost(pred: torch.Tensor, truth: torch.Tensor, inv_range_weight: float = 0.05
              ) -> torch.Tensor:
    """Pairing cost chord angle + w |1/r_s - 1/r_t|.

    pred : [B, S, 3], truth : [B, T, 3] (azimuth, elevation [rad], 1/range [1/m])
    -> [B, S, T]
    """
    p, t = pred.unsqueeze(-2), truth.unsqueeze(-3)
    ang = chord(p[..., 0], p[..., 1], t[..., 0], t[..., 1])
    return ang + inv_range_weight * (p[..., 2] - t[..., 2]).abs()


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def slot_regression(pred: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor,
                    match: SlotMatch, angle_scale_deg: float = 1.0,
                    inv_range_scale: float = 0.05) -> torch.Tensor:
    """Huber loss of the matched slot errors in units of (angle_scale_deg, inv_range_scale).

    pred : [B, S, 3], truth : [B, T, 3] (rad, rad, 1/m); valid : [B, T] bool  ->  [B]
    """
    sel = pred.gather(1, match.slot.unsqueeze(-1).expand(-1, -1, 3))  # (B, T, 3)
    t = torch.where(valid.unsqueeze(-1), truth, sel.detach())
    d_az = torch.remainder(sel[..., 0] - t[..., 0] + math.pi, 2 * math.pi) - math.pi
    scale = math.radians(angle_scale_deg)
    err = torch.stack([d_az / scale, (sel[..., 1] - t[..., 1]) / scale,
                       (sel[..., 2] - t[..., 2]) / inv_range_scale], -1)
    h = F.huber_loss(err, torch.zeros_like(err), reduction="none", delta=1.0).mean(-1)
    return _masked_mean(h, valid)


def chamfer_angles(pred_az: torch.Tensor, pred_el: torch.Tensor, weight: torch.Tensor,
                   true_az: torch.Tensor, true_el: torch.Tensor,
                   valid: torch.Tensor) -> torch.Tensor:
    """Symmetric chamfer distance (chord, ~rad) between predicted and true directions.

    truth -> nearest slot (every true source must be covered) plus slot -> nearest truth
    weighted by the slot confidence (confident slots must sit on a source).
    pred_az, pred_el, weight : [B, S]; true_az, true_el : [B, T]; valid : [B, T] bool -> [B]
    """
    zero = torch.zeros_like(true_az)
    taz, tel = torch.where(valid, true_az, zero), torch.where(valid, true_el, zero)
    D = chord(pred_az.unsqueeze(-1), pred_el.unsqueeze(-1), taz.unsqueeze(-2),
              tel.unsqueeze(-2))  # (B, S, T)
    big = torch.full_like(D, 4.0)  # > any chord (max 2)
    to_slot = D.min(1).values  # (B, T)
    to_truth = torch.where(valid.unsqueeze(-2), D, big).min(-1).values  # (B, S)
    cover = _masked_mean(to_slot, valid)
    precise = (weight * to_truth).sum(-1) / weight.sum(-1).clamp_min(EPS)
    return cover + precise


def k_cross_entropy(logits: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the source count; logits [B, K_max] for K = 1..K_max -> [B]."""
    return F.cross_entropy(logits.float(), K - 1, reduction="none")


def _cell_coordinates(grid: CandidateGrid, truth: torch.Tensor) -> torch.Tensor:
    """Continuous cell coordinates (i_r, i_e, i_a) of points truth [B, T, 3] -> [B, T, 3]."""
    axes = [ax.to(truth.device, truth.dtype) for ax in
            (grid.inv_range, grid.elevation, grid.azimuth)]
    cols = (truth[..., 2], truth[..., 1], truth[..., 0])
    out = [(c - ax[0]) / (ax[1] - ax[0]) for ax, c in zip(axes, cols, strict=True)]
    return torch.stack(out, -1)


def nearest_cells(grid: CandidateGrid, truth: torch.Tensor) -> torch.Tensor:
    """Flat index of the nearest cell of each point, truth [B, T, 3] -> [B, T] int64."""
    sizes = (len(grid.inv_range), len(grid.elevation), len(grid.azimuth))
    c = _cell_coordinates(grid, truth).round().long()
    c = torch.stack([c[..., i].clamp(0, n - 1) for i, n in enumerate(sizes)], -1)
    return (c[..., 0] * sizes[1] + c[..., 1]) * sizes[2] + c[..., 2]


def heatmap_focal(logits: torch.Tensor, grid: CandidateGrid, truth: torch.Tensor,
                  valid: torch.Tensor, sigma_cells: float = 1.0, alpha: float = 2.0,
                  beta: float = 4.0) -> torch.Tensor:
    """CenterNet focal loss of the candidate confidence map.

    Target: 1 at the nearest cell of each true source, Gaussian exp(-d^2 / 2 sigma^2)
    (d in cells) elsewhere, used only to soften the negatives by (1 - target)^beta.
    logits : [B, Nr, Ne, Na]; truth : [B, T, 3]; valid : [B, T]  ->  [B]
    """
    B = logits.shape[0]
    lg = logits.reshape(B, -1).float()  # (B, G)
    ir, ie, ia = torch.meshgrid(*(torch.arange(len(a), device=lg.device, dtype=lg.dtype)
                                  for a in (grid.inv_range, grid.elevation, grid.azimuth)),
                                indexing="ij")
    cells = torch.stack([ir, ie, ia], -1).reshape(-1, 3)  # (G, 3)
    tc = _cell_coordinates(grid, truth.float())  # (B, T, 3)
    tc = torch.where(valid.unsqueeze(-1), tc, torch.full_like(tc, 1e4))
    d2 = (cells.view(1, 1, -1, 3) - tc.unsqueeze(-2)).square().sum(-1)  # (B, T, G)
    soft = torch.exp(-d2 / (2 * sigma_cells**2)).amax(1)  # (B, G)
    # counted, not written: a padded truth sharing a real source's cell (truth_of pads with
    # zeros: the boresight cell at the largest range) must not overwrite its positive with False
    pos = torch.zeros_like(lg).scatter_add_(1, nearest_cells(grid, truth), valid.to(lg.dtype)) > 0
    p = torch.sigmoid(lg)
    l_pos = -(1 - p).pow(alpha) * F.logsigmoid(lg)
    l_neg = -(1 - soft).pow(beta) * p.pow(alpha) * F.logsigmoid(-lg)
    loss = torch.where(pos, l_pos, l_neg).sum(-1)
    return loss / valid.sum(-1).clamp_min(1).to(loss.dtype)


def offset_at_truth(offsets: torch.Tensor, grid: CandidateGrid, truth: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor:
    """Huber loss of the predicted sub-cell offsets at the nearest cell of each true source.

    offsets : [B, 3, Nr, Ne, Na] in cells (d_azimuth, d_elevation, d_inverse_range)
    truth : [B, T, 3]; valid : [B, T]  ->  [B]
    """
    B = offsets.shape[0]
    idx = nearest_cells(grid, truth)  # (B, T)
    sizes = (len(grid.inv_range), len(grid.elevation), len(grid.azimuth))
    flat = torch.stack([idx // (sizes[1] * sizes[2]), (idx // sizes[2]) % sizes[1],
                        idx % sizes[2]], -1).to(truth.dtype)  # (i_r, i_e, i_a)
    target = (_cell_coordinates(grid, truth) - flat).flip(-1)  # (B, T, 3) az, el, r
    pred = offsets.reshape(B, 3, -1).gather(2, idx.unsqueeze(1).expand(-1, 3, -1)).mT
    target = torch.where(valid.unsqueeze(-1), target, pred.detach())
    h = F.huber_loss(pred, target, reduction="none", delta=0.5).sum(-1)
    return _masked_mean(h, valid)
