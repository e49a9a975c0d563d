"""The learned covariance: y, H, codes (and the SNR when known) -> F, K logits, slots.

Design (physics first, then a small CNN; every step is batched):

1. Per snapshot, pair y_l with its own operator Phi_l = H diag(c_l) and back-project it,
   a_l = Phi_l^H (Phi_l Phi_l^H + alpha' I)^-1 y_l (``risloc.covariance.back_projection``),
   normalised per scene. Raw Phi_l^H y_l is dominated by the (near rank-one) LoS channel;
   the regularised inverse whitens it (measured: Bartlett peaks within 5 deg of a source
   for 85-100 % of K = 1 scenes from 0 to 20 dB, against ~20 % without it).
2. A fixed beamformer bank on a candidate grid (azimuth x elevation x 1/range):
   S(p) = mean_l |a(p)^H a_l|^2 -- a per-snapshot linear layer, |.|^2, then mean pooling
   over snapshots, so the model is invariant to snapshot order by construction.
3. A dilated residual 2-D CNN over (elevation, azimuth) with the 1/range bins as channels
   maps the log-spectrum to a candidate heatmap and sub-cell offsets per cell
   (CenterNet-style), and pooled features to K logits.
4. Slots: the K_max strongest local maxima of the heatmap; position = cell + offset,
   confidence = sigmoid(heat). Stage 2 (ZoomRefiner) samples the same Bartlett spectrum
   on a fine local stencil around each slot and corrects its position with a small MLP.
5. K logits from pooled CNN features, the slot confidences, the SNR and the
   deterministic-ML residuals of the k = 1..K_max strongest slots (``residual_features``).
6. A fixed physics layer (no parameters, no gradient): a few Levenberg-Marquardt steps
   of the measurement-domain ML cost sum_l ||P_perp(Phi_l A) y_l||^2 refine the K_hat
   strongest slots jointly (``risloc.estimators.nfmle.lm_solve``); the learned positions
   stay in the output (``learned``) and are what the position losses train.
7. The covariance factor is tied to the geometry:
       F[:, s] = w_s (a(slot_s) + g c_s),   w_s = sqrt(conf_s P(K > s)),
   a the unit steering vector (``risloc.physics.steering``), c_s a learned correction with
   a learnable gate g (initialised small), so R_pred = F F^H is Hermitian PSD with rank
   <= K_max and cannot drift to a geometry-free near-identity (LESSONS.md).

R_true is never an input.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as Fn

from risloc.config import FieldOfView, SystemConfig
from risloc.core.checks import check_measurements, check_shapes
from risloc.core.graphs import GraphCache
from risloc.core.operator import apply_operator
from risloc.covariance.tools import abs2, back_projection, solve_loaded
from risloc.estimators.grids import conj_bf16, grid_power, native_bf16
from risloc.estimators.nfmle import NFMLEConfig, lm_solve
from risloc.physics.steering import steering


class CandidateGrid(NamedTuple):
    """Uniform candidate grid: azimuth [Na], elevation [Ne] (rad) and inverse range [Nr]
    (1/m), each uniformly spaced; maps over it are [B, Nr, Ne, Na]."""

    azimuth: torch.Tensor
    elevation: torch.Tensor
    inv_range: torch.Tensor


@dataclass(frozen=True)
class ModelConfig:
    """Network hyper-parameters (the system comes separately: SystemConfig).

    n_azimuth, n_elevation, n_inv_range : candidate grid, uniform in azimuth, elevation
        and 1/range over the field of view ``fov`` (a recipe sets it to its scene's)
    bp_alpha : relative Tikhonov weight of the per-snapshot back-projection
    width, dilations : CNN channels and one dilated residual block per entry
    hidden : width of the K head and of the slot MLP
    offset_cells : largest sub-cell offset, in cells
    correction : learn the per-slot correction c_s; correction_init : initial gate g
    zoom : stage-2 refinement (ZoomRefiner) on a (2 zoom_points + 1)^2 x 3 stencil with
        steps zoom_deg [deg] / zoom_inv_range [1/m], corrections bounded by zoom_max_deg /
        zoom_max_inv_range
    residual_features : feed the K head the deterministic-ML residuals of the slots
    refine_iterations : Levenberg-Marquardt steps of the measurement-domain ML refinement
        of the K_hat strongest slots before F is built (0 = off)
    """

    n_azimuth: int = 31
    n_elevation: int = 16
    n_inv_range: int = 8
    fov: FieldOfView = FieldOfView()
    bp_alpha: float = 1.0
    width: int = 48
    dilations: tuple[int, ...] = (1, 2, 4, 2, 1, 1)
    hidden: int = 128
    offset_cells: float = 1.5
    correction: bool = True
    correction_init: float = 0.01
    zoom: bool = True
    zoom_points: int = 2
    zoom_deg: float = 1.5
    zoom_inv_range: float = 0.15
    zoom_max_deg: float = 3.0
    zoom_max_inv_range: float = 0.3
    residual_features: bool = True
    refine_iterations: int = 3

    def __post_init__(self) -> None:
        if min(self.n_azimuth, self.n_elevation, self.n_inv_range) < 2:
            raise ValueError("ModelConfig grid sizes must be >= 2")
        if self.width < 8 or self.hidden < 8 or not self.dilations:
            raise ValueError("ModelConfig: width, hidden >= 8 and at least one block")


@dataclass(frozen=True)
class ModelOutput:
    """Everything the network predicts for B scenes (S = K_max slots, N RIS elements).

    F : [B, N, S] complex64 — covariance factor; R_pred = F F^H : [B, N, N] complex64
        (both None, and slot_steering too, from ``forward(..., covariance=False)``)
    K_logits : [B, K_max] float — logits of K = 1..K_max
    slot_azimuth, slot_elevation : [B, S] float — [rad]; slot_range : [B, S] — [m]: the
        positions F is built at (ML-refined for the K_hat strongest slots)
    learned : [B, S, 3] float — the network's own (differentiable) slot positions
        (azimuth, elevation [rad], 1/range [1/m]), before the ML refinement
    slot_confidence : [B, S] float in (0, 1), slots sorted by decreasing heat
    slot_steering : [B, N, S] complex64 — unit steering vectors at slot_* positions
    heatmap : [B, Nr, Ne, Na] float — candidate logits; offsets : [B, 3, Nr, Ne, Na] — cells
    grid : CandidateGrid — the candidate axes
    """

    F: torch.Tensor
    K_logits: torch.Tensor
    slot_azimuth: torch.Tensor
    slot_elevation: torch.Tensor
    slot_range: torch.Tensor
    learned: torch.Tensor
    slot_confidence: torch.Tensor
    slot_steering: torch.Tensor
    heatmap: torch.Tensor
    offsets: torch.Tensor
    grid: CandidateGrid

    @functools.cached_property
    def R_pred(self) -> torch.Tensor | None:
        """F F^H : [B, N, N] complex64 (None without F), made on first use: training and
        validation read only F (as a factor), inference's dense blend reads R_pred."""
        return None if self.F is None else self.F @ self.F.mH

    @property
    def K_hat(self) -> torch.Tensor:
        """[B] int64 — most likely number of sources."""
        return self.K_logits.argmax(-1) + 1


def candidate_grid(cfg: ModelConfig) -> CandidateGrid:
    """Uniform axes of the candidate grid (float32)."""
    f = cfg.fov
    az = torch.deg2rad(torch.linspace(*f.azimuth_deg, cfg.n_azimuth))
    el = torch.deg2rad(torch.linspace(*f.elevation_deg, cfg.n_elevation))
    inv = torch.linspace(1.0 / f.range_m[1], 1.0 / f.range_m[0], cfg.n_inv_range)
    return CandidateGrid(az, el, inv)


class BeamformerBank(nn.Module):
    """Fixed per-snapshot beamformers on the grid, |.|^2, mean over snapshots (set pooling).

    a : [B, L, N] complex -> log-spectrum features [B, 2 Nr, Ne, Na] float

    ``bf16`` (off by default) runs the products in bfloat16 in eval mode where the hardware
    does so natively (:func:`risloc.estimators.grids.grid_power`): the bank 2x and the
    pipeline ~5 % faster at the same accuracy on the validation split, but K changed in
    1.2 % of test scenes and a rescaled input moved positions by up to 4 cm (the spectrum
    rounds differently), so it is not the default (docs/results.md, Speed).
    """

    bf16: bool = False

    def __init__(self, grid: CandidateGrid, system: SystemConfig):
        super().__init__()
        r, e, a = torch.meshgrid(1.0 / grid.inv_range, grid.elevation, grid.azimuth,
                                 indexing="ij")
        A = steering(a.reshape(-1), e.reshape(-1), r.reshape(-1), system).T.contiguous()
        self.register_buffer("A", A, persistent=False)  # (N, G)
        self.shape = (len(grid.inv_range), len(grid.elevation), len(grid.azimuth))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        B = a.shape[0]
        fast = self.bf16 and not self.training and native_bf16(a.device)
        # the bfloat16 operand is formed per call (~1 ms): only for this opt-in
        S = grid_power(a, self.A, conj_bf16(self.A) if fast else None) / a.shape[1]  # (B, G)
        S = S / S.mean(-1, keepdim=True).clamp_min(1e-12)
        S = S.view(B, *self.shape)  # (B, Nr, Ne, Na)
        peak = S / S.amax((-3, -2, -1), keepdim=True)
        return torch.cat([torch.log(S + 1e-2), peak], 1)  # (B, 2 Nr, Ne, Na)


class ResBlock(nn.Module):
    """x + conv3x3_dilated(gelu(groupnorm(x)))."""

    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, width)
        self.conv = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(Fn.gelu(self.norm(x)))


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                         nn.GELU(), nn.Linear(hidden, n_out))


class ZoomRefiner(nn.Module):
    """Stage 2: a local fine Bartlett spectrum around each slot -> a bounded correction.

    S_s(p) = mean_l |a(p)^H a_l|^2 on a (2z+1) x (2z+1) x 3 stencil around the stage-1
    position (steps zoom_deg in both angles, zoom_inv_range in 1/range), normalised to its
    maximum, with the slot's CNN feature -> MLP -> (d_az, d_el, d_inv_range) bounded by
    tanh. The last layer starts at zero, so stage 2 starts as the identity.
    """

    def __init__(self, cfg: ModelConfig, system: SystemConfig):
        super().__init__()
        self.system = system
        z = torch.arange(-cfg.zoom_points, cfg.zoom_points + 1, dtype=torch.float32)
        ang = torch.deg2rad(z * cfg.zoom_deg)
        inv = torch.tensor([-1.0, 0.0, 1.0]) * cfg.zoom_inv_range
        g = torch.stack(torch.meshgrid(ang, ang, inv, indexing="ij"), -1).reshape(-1, 3)
        self.register_buffer("stencil", g, persistent=False)  # (P, 3)
        self.register_buffer("bound", torch.tensor([math.radians(cfg.zoom_max_deg)] * 2 + [
            cfg.zoom_max_inv_range]), persistent=False)
        self.mlp = _mlp(len(g) + 1 + cfg.width + 4, cfg.hidden, 3)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, a, theta, feat, conf) -> torch.Tensor:
        """a [B, L, N] complex, theta [B, S, 3], feat [B, S, W], conf [B, S] -> [B, S, 3]."""
        pts = theta.detach().unsqueeze(-2) + self.stencil  # (B, S, P, 3)
        # one slot at a time: the stencil's steering is B x P x N per slot instead of
        # B x S x P x N (1.6x faster at B = 64: the temporaries stay in the caches, measured)
        spec = torch.stack([abs2(a @ steering(p[..., 0], p[..., 1], 1.0 / p[..., 2].clamp_min(
            0.02), self.system).conj().mT).mean(1) for p in pts.unbind(1)], 1)  # (B, S, P)
        top = spec.amax(-1, keepdim=True).clamp_min(1e-12)
        x = torch.cat([spec / top, torch.log(top), feat.float(), conf.unsqueeze(-1),
                       theta.detach()], -1)
        return self.bound * torch.tanh(self.mlp(x.to(feat.dtype)).float())  # (B, S, 3)


def residual_features(y: torch.Tensor, Bm: torch.Tensor,
                      snr_db: torch.Tensor | None) -> torch.Tensor:
    """Model-order features: the deterministic-ML residual of the k strongest slots,

        r_k = sum_l ||y_l - B_l s_l||^2,  B_l = Phi_l A[:, :k],  s_l least squares,

    as log(r_k / ||y||^2) and, when the SNR is known, log(r_k / ((M - k) L sigma^2)) with
    sigma^2 = ||y||^2 / (L M (1 + snr)) (near 0 once k >= K).
    y [B, L, M], Bm [B, L, M, S] = Phi_l A (the slots' measured columns) complex
    -> [B, 2 S + 1] float
    """
    B, L, M = y.shape
    S = Bm.shape[-1]
    y2 = abs2(y).sum((-2, -1)).clamp_min(1e-30)  # (B,)
    res = []
    for k in range(1, S + 1):
        Bk = Bm[..., :k]
        G = Bk.mH @ Bk  # (B, L, k, k)
        G = G + 1e-6 * torch.diagonal(G, dim1=-2, dim2=-1).real.sum(-1)[..., None, None] * \
            torch.eye(k, dtype=G.dtype, device=G.device)
        s = solve_loaded(G, Bk.mH @ y.unsqueeze(-1))  # (B, L, k, 1)
        res.append(abs2(y.unsqueeze(-1) - Bk @ s).sum((-3, -2, -1)))
    r = torch.stack(res, -1).clamp_min(1e-30)  # (B, S)
    rel = torch.log(r / y2.unsqueeze(-1))
    known = torch.isfinite(snr_db) if snr_db is not None else torch.zeros(B, dtype=torch.bool,
                                                                        device=y.device)
    snr = torch.where(known, snr_db, torch.zeros_like(snr_db)) if snr_db is not None else \
        torch.zeros(B, device=y.device)
    sigma2 = y2 / (L * M * (1 + 10 ** (snr / 10)))
    dof = (M - torch.arange(1, S + 1, device=y.device)) * L
    floor = torch.where(known.unsqueeze(-1), torch.log(r / (dof * sigma2.unsqueeze(-1))),
                        torch.zeros_like(r))
    return torch.cat([rel, floor, known.float().unsqueeze(-1)], -1)


class CovarianceNet(nn.Module):
    """The learned covariance network (module docstring). forward(y, H, codes, snr_db)."""

    def __init__(self, system: SystemConfig, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.system, self.cfg = system, cfg
        self.grid = candidate_grid(cfg)
        self._axes: dict[torch.device, list[torch.Tensor]] = {}  # the grid's axes per device
        self._min_inv_range = 0.5 * float(self.grid.inv_range[0])  # slots' 1/range floor
        # the ML refinement replayed from CUDA graphs (set by the trainer: TrainConfig
        # cuda_graphs); None calls it directly
        self.refine_graphs: GraphCache | None = None
        self.bank = BeamformerBank(self.grid, system)
        Nr, W, S = cfg.n_inv_range, cfg.width, system.K_max
        self.stem = nn.Conv2d(2 * Nr + 2, W, 3, padding=1)
        self.blocks = nn.Sequential(*(ResBlock(W, d) for d in cfg.dilations))
        self.norm = nn.GroupNorm(8, W)
        self.head = nn.Conv2d(W, 4 * Nr, 1)  # heat + 3 offsets per 1/range bin
        self.zoom = ZoomRefiner(cfg, system) if cfg.zoom else None
        n_res = 2 * S + 1 if cfg.residual_features else 0
        self.k_head = _mlp(2 * W + 2 + 2 * S + n_res, cfg.hidden, S)
        self.slot_head = _mlp(W + 2, cfg.hidden, 2 * system.N) if cfg.correction else None
        self.gate = nn.Parameter(torch.tensor(float(cfg.correction_init)),
                                 requires_grad=cfg.correction)
        nn.init.constant_(self.head.bias[:Nr], -4.0)  # sparse heatmap at start (CenterNet)

    def _features(self, y, H, codes) -> tuple[torch.Tensor, torch.Tensor]:
        a = back_projection(y, H, codes, self.cfg.bp_alpha)  # (B, L, N)
        a = a / abs2(a).mean((-2, -1), keepdim=True).sqrt().clamp_min(1e-20)
        x = self.bank(a)  # (B, 2 Nr, Ne, Na)
        B, _, Ne, Na = x.shape
        ce = torch.linspace(-1, 1, Ne, device=x.device).view(1, 1, Ne, 1).expand(B, 1, Ne, Na)
        ca = torch.linspace(-1, 1, Na, device=x.device).view(1, 1, 1, Na).expand(B, 1, Ne, Na)
        return a, torch.cat([x, ce, ca], 1)  # (B, L, N), (B, 2 Nr + 2, Ne, Na)

    def _slots(self, heat: torch.Tensor, offsets: torch.Tensor):
        """Top-S local maxima of the heatmap -> flat index [B, S], cell offsets [B, S, 3]."""
        B, S = heat.shape[0], self.system.K_max
        peak = heat == Fn.max_pool3d(heat.unsqueeze(1), 3, 1, 1).squeeze(1)  # (B, Nr, Ne, Na)
        score = torch.where(peak, heat, heat - 1e4).reshape(B, -1)
        idx = score.topk(S, dim=-1).indices  # (B, S) by decreasing heat
        off = offsets.reshape(B, 3, -1).gather(2, idx.unsqueeze(1).expand(-1, 3, -1)).mT
        return idx, off  # off: (B, S, 3) (d_az, d_el, d_inv_range) in cells

    def _positions(self, idx: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        """Cell index + offset -> (azimuth, elevation [rad], 1/range [1/m]): [B, S, 3]."""
        g = self.grid
        Ne, Na = len(g.elevation), len(g.azimuth)
        axes = self._axes.get(off.device)
        if axes is None:  # copied once per device, not on every call (a GPU waits for it)
            axes = self._axes[off.device] = [ax.to(off.device) for ax in
                                             (g.azimuth, g.elevation, g.inv_range)]
        cells = (idx % Na, (idx // Na) % Ne, idx // (Ne * Na))
        return torch.stack([ax[c] + off[..., i] * (ax[1] - ax[0])
                            for i, (ax, c) in enumerate(zip(axes, cells, strict=True))], -1)

    def _k_logits(self, h, heat_slots, snr_db, resid) -> torch.Tensor:
        B = h.shape[0]
        if snr_db is None:
            snr = torch.zeros(B, 2, device=h.device)
        else:
            known = torch.isfinite(snr_db)
            snr = torch.stack([torch.where(known, snr_db, torch.zeros_like(snr_db)) / 20,
                               known.float()], -1)
        pooled = torch.cat([h.mean((-2, -1)), h.amax((-2, -1))], -1)  # (B, 2W)
        top = torch.cat([torch.sigmoid(heat_slots), heat_slots / 10], -1)  # (B, 2S)
        parts = [pooled, snr.to(h.dtype), top] + ([resid.to(h.dtype)] if resid is not None
                                                  else [])
        return self.k_head(torch.cat(parts, -1))  # (B, K_max)

    def _factor(self, feat, A, conf, K_logits) -> torch.Tensor:
        """F = w (A + g C): [B, N, S] complex."""
        B, S = conf.shape
        p_geq = torch.softmax(K_logits, -1).flip(-1).cumsum(-1).flip(-1)  # (B, K_max) P(K>=k)
        w = torch.sqrt(conf * p_geq[:, :S] + 1e-8)  # (B, S)
        if self.slot_head is not None:
            rank = torch.arange(S, device=conf.device).float().expand(B, S) / S
            x = torch.cat([feat, conf.unsqueeze(-1).to(feat.dtype),
                           rank.unsqueeze(-1).to(feat.dtype)], -1)
            c = self.slot_head(x).view(B, S, -1, 2)  # (B, S, N, 2)
            corr = torch.view_as_complex(c.float().contiguous()) / math.sqrt(self.system.N)
            A = A + self.gate * corr.mT
        return A * w.unsqueeze(-2).to(A.dtype)  # (B, N, S)

    def forward(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                snr_db: torch.Tensor | None = None, covariance: bool = True,
                check: bool = True) -> ModelOutput:
        """y : [B, L, M], H : [B, M, N], codes : [B, L, N] complex; snr_db : [B] (NaN or
        None = unknown). covariance False skips what only the covariance needs (the ML
        refinement of the slots, the factor F): R_pred, F and slot_steering are None and
        the slot positions are the learned ones (the learned pipeline's proposals).
        check False skips the input checks (for callers that checked them: the checks read
        the device, a GPU's host waits for them)."""
        if check:
            check_shapes(y, H, codes, self.system)  # and L, M as the system's
            check_measurements(y, H, codes, self.system)
        # Mixed precision (the trainer's autocast on CUDA) reaches the CNN trunk only: the
        # physics around it (steering phases, the ML refinement's solves) stays in FP32.
        fp32 = torch.autocast(y.device.type, enabled=False)
        with fp32:
            a, x = self._features(y, H, codes)
        h = self.norm(self.blocks(self.stem(x)))  # (B, W, Ne, Na)
        out = self.head(Fn.gelu(h))  # (B, 4 Nr, Ne, Na)
        with fp32:
            return self._decode(y, H, codes, snr_db, a, h.float(), out.float(), covariance)

    def _decode(self, y, H, codes, snr_db, a, h, out, covariance: bool = True) -> ModelOutput:
        """Trunk output -> slots, positions, K logits, ML refinement, covariance factor."""
        B, Nr = y.shape[0], self.cfg.n_inv_range
        heat = out[:, :Nr]  # (B, Nr, Ne, Na)
        offsets = self.cfg.offset_cells * torch.tanh(out[:, Nr:].unflatten(1, (3, Nr)))
        idx, off = self._slots(heat.detach(), offsets)  # (B, S), (B, S, 3)
        heat_slots = heat.reshape(B, -1).gather(1, idx)  # (B, S)
        conf = torch.sigmoid(heat_slots).float()
        pix = idx % (h.shape[-2] * h.shape[-1])  # (B, S) flat (e, a) pixel of each slot
        feat = h.flatten(2).gather(2, pix.unsqueeze(1).expand(-1, h.shape[1], -1)).mT
        theta = self._positions(idx, off.float())  # (B, S, 3)
        if self.zoom is not None:
            theta = theta + self.zoom(a, theta, feat, conf)
        theta = torch.cat([theta[..., :2], theta[..., 2:].clamp_min(
            self._min_inv_range)], -1)
        A = steering(theta[..., 0], theta[..., 1], 1.0 / theta[..., 2], self.system,
                     torch.complex64).mT  # (B, N, S)
        resid = residual_features(y, apply_operator(H, codes, A.detach().mT), snr_db) \
            if self.cfg.residual_features else None
        K_logits = self._k_logits(h, heat_slots, snr_db, resid).float()
        if not covariance:
            return ModelOutput(F=None, K_logits=K_logits,
                               slot_azimuth=theta[..., 0], slot_elevation=theta[..., 1],
                               slot_range=1.0 / theta[..., 2], learned=theta,
                               slot_confidence=conf, slot_steering=None, heatmap=heat,
                               offsets=offsets, grid=self.grid)
        pos = self._refine(y, H, codes, theta, K_logits)  # (B, S, 3)
        if pos is not theta:
            A = steering(pos[..., 0], pos[..., 1], 1.0 / pos[..., 2], self.system,
                         torch.complex64).mT  # (B, N, S)
        F = self._factor(feat, A, conf, K_logits)
        return ModelOutput(F=F, K_logits=K_logits, slot_azimuth=pos[..., 0],
                           slot_elevation=pos[..., 1], slot_range=1.0 / pos[..., 2],
                           learned=theta, slot_confidence=conf, slot_steering=A, heatmap=heat,
                           offsets=offsets, grid=self.grid)

    @torch.no_grad()
    def _refine(self, y, H, codes, theta, K_logits) -> torch.Tensor:
        """Measurement-domain ML (Levenberg-Marquardt, ``risloc.estimators.nfmle``) of the
        K_hat strongest slots jointly, started at the learned positions; no gradient."""
        if self.cfg.refine_iterations <= 0:
            return theta
        c = self.cfg
        mask = torch.arange(theta.shape[1], device=theta.device) < (K_logits.argmax(-1) + 1
                                                                     ).unsqueeze(-1)
        nf = NFMLEConfig(iterations=c.refine_iterations, double=False, fov=c.fov)
        args = (y, H, codes, theta.detach().float().contiguous(), mask)

        def solve(*a: torch.Tensor) -> torch.Tensor:
            return lm_solve(*a, self.system, nf)[0]

        ref = solve(*args) if self.refine_graphs is None else self.refine_graphs(
            solve, args, key=(repr(nf), repr(self.system)))
        return torch.where(mask.unsqueeze(-1), ref, theta.detach())

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
