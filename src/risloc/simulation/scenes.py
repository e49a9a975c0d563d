"""Vectorised scene simulation (docs/conventions.md, "Measurement model").

y_l = H diag(c_l) A s_l + n_l,  s_l ~ CN(0, diag(p)) independent per snapshot,
n_l ~ CN(0, sigma^2 I_M), sigma^2 set so that the *realised* per-antenna SNR
(1/(L M)) sum_l ||H diag(c_l) A s_l||^2 / sigma^2 equals the requested SNR.

A batch is generated without Python loops over scenes, snapshots or elements; the only
loop is over source slots (K_max <= a handful) for the minimum-separation rejection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

from risloc.config import SceneConfig, SystemConfig, check_snr_db
from risloc.physics.channel import ChannelDraws, draw_channel_params, rician_channel
from risloc.physics.codebooks import codes_at, draw_code_indices
from risloc.physics.geometry import angular_separation
from risloc.physics.rng import complex_normal, uniform
from risloc.physics.steering import steering

_MAX_REJECTION_ROUNDS = 200


@dataclass(frozen=True)
class SceneBatch:
    """A batch of simulated (or loaded) scenes. Source slots beyond K are NaN-padded.

    y : [B, L, M] complex — measurements
    H : [B, M, N] complex — BS <- RIS channel
    codes : [B, L, N] complex — RIS codes
    snr_db : [B] float — realised SNR [dB]
    K : [B] int64 — number of sources (truth)
    azimuth, elevation : [B, K_max] float — [rad], NaN beyond K
    range_m : [B, K_max] float — [m], NaN beyond K
    powers : [B, K_max] float — source powers p_k, 0 beyond K
    noise_var : [B] float — sigma^2
    symbols : [B, L, K_max] complex or None — s_l (simulation only, never written)
    """

    y: torch.Tensor
    H: torch.Tensor
    codes: torch.Tensor
    snr_db: torch.Tensor
    K: torch.Tensor | None = None
    azimuth: torch.Tensor | None = None
    elevation: torch.Tensor | None = None
    range_m: torch.Tensor | None = None
    powers: torch.Tensor | None = None
    noise_var: torch.Tensor | None = None
    symbols: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.y.shape[0]

    def __repr__(self) -> str:
        """Shapes and types, not values (a notebook cell showing 8 scenes printed 38,000
        characters of tensors)."""
        held = ", ".join(f"{f.name} {list(t.shape)} {str(t.dtype).removeprefix('torch.')}"
                         for f in fields(self) if (t := getattr(self, f.name)) is not None)
        return f"SceneBatch({len(self)} scenes on {self.y.device}: {held})"

    @property
    def has_truth(self) -> bool:
        return self.K is not None and self.azimuth is not None

    @property
    def mask(self) -> torch.Tensor:
        """[B, K_max] bool — True for real source slots."""
        if self.K is None or self.azimuth is None:
            raise ValueError("this scene batch carries no truth (K / positions)")
        slots = torch.arange(self.azimuth.shape[-1], device=self.K.device)
        return slots < self.K.unsqueeze(-1)

    def _map(self, fn) -> SceneBatch:
        return replace(self, **{f.name: (None if getattr(self, f.name) is None
                                         else fn(getattr(self, f.name))) for f in fields(self)})

    def to(self, device: torch.device | str) -> SceneBatch:
        return self._map(lambda t: t.to(device))

    def pin_memory(self) -> SceneBatch:
        """The batch in page-locked memory: a DataLoader with ``pin_memory=True`` calls this
        (without it the batch came back unpinned, silently)."""
        return self._map(lambda t: t.pin_memory())

    def __getitem__(self, idx) -> SceneBatch:
        return self._map(lambda t: t[idx])


def draw_sources(batch: int, K_max: int, scene: SceneConfig,
                 generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
    """Draw K_max source slots per scene, uniform in the field of view, pairwise at least
    ``scene.min_separation_deg`` apart (great-circle angle).

    Returns azimuth, elevation [rad] and range [m], each [B, K_max].
    """
    az_lo, az_hi = map(math.radians, scene.azimuth_deg)
    el_lo, el_hi = map(math.radians, scene.elevation_deg)
    az = uniform((batch, K_max), az_lo, az_hi, generator, dtype, device)
    el = uniform((batch, K_max), el_lo, el_hi, generator, dtype, device)
    rng = uniform((batch, K_max), *scene.range_m, generator, dtype, device)
    min_sep = math.radians(scene.min_separation_deg)
    for k in range(1, K_max):
        for _ in range(_MAX_REJECTION_ROUNDS):
            sep = angular_separation(az[:, k:k + 1], el[:, k:k + 1], az[:, :k], el[:, :k])
            bad = sep.min(dim=-1).values < min_sep  # (B,)
            n_bad = int(bad.sum())
            if n_bad == 0:
                break
            az[bad, k] = uniform(n_bad, az_lo, az_hi, generator, dtype, device)
            el[bad, k] = uniform(n_bad, el_lo, el_hi, generator, dtype, device)
        else:
            raise ValueError(
                f"could not place {K_max} sources {scene.min_separation_deg} deg apart in the "
                f"field of view (every scene draws K_max = {K_max} positions, whatever its "
                "K); widen the field of view or lower scene.min_separation_deg")
    return az, el, rng


def _draw_K(batch: int, K_max: int, scene: SceneConfig, K: int | None,
            generator: torch.Generator | None, device) -> torch.Tensor:
    fixed = K if K is not None else scene.K
    if fixed is not None:
        if isinstance(fixed, bool) or not float(fixed).is_integer():
            raise ValueError(f"K must be a whole number of sources, got {fixed!r}")
        fixed = int(fixed)
        if not 1 <= fixed <= K_max:
            raise ValueError(f"K={fixed} must lie in 1..K_max={K_max}")
        return torch.full((batch,), fixed, dtype=torch.int64, device=device)
    return torch.randint(1, K_max + 1, (batch,), generator=generator, device=device)


def draw_powers(mask: torch.Tensor, spread_db: float | tuple[float, float],
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Source powers p_k (docs/conventions.md): 1 for every real source when the spread s is 0,
    else 10 log10 p_k ~ U[-s/2, s/2] independently per source; ``spread_db`` = (lo, hi)
    draws s ~ U[lo, hi] per scene first.

    mask : [B, K_max] bool — real source slots.  Returns [B, K_max] float32, 0 where padded.
    """
    lo, hi = (spread_db, spread_db) if isinstance(spread_db, float | int) else spread_db
    if not 0 <= lo <= hi:
        raise ValueError(f"power spread must be >= 0 dB (a range: lo <= hi), got {spread_db}")
    powers = mask.to(torch.float32)
    if hi > 0:  # no draw at 0: equal-power streams stay what they were
        s = torch.full((mask.shape[0], 1), float(hi), device=mask.device) if lo == hi else \
            uniform((mask.shape[0], 1), lo, hi, generator, torch.float32, mask.device)
        db = s * (uniform(mask.shape, 0.0, 1.0, generator, torch.float32, mask.device) - 0.5)
        powers = powers * 10.0 ** (db / 10.0)
    return powers


@dataclass(frozen=True)
class SceneDraws:
    """The random draws of a batch of scenes (:func:`draw_scenes`), before the physics that
    turns them into measurements (:func:`synthesize`): K [B]; azimuth, elevation, range_m
    [B, K_max] (every slot drawn); the channel's draws; the codes' indices
    (:func:`risloc.physics.codebooks.draw_code_indices`); unit symbols [B, L, K_max]; SNR
    [B] dB; unit noise [B, L, M]; powers [B, K_max] (0 where padded)."""

    K: torch.Tensor
    azimuth: torch.Tensor
    elevation: torch.Tensor
    range_m: torch.Tensor
    channel: ChannelDraws
    code_index: torch.Tensor
    symbols: torch.Tensor
    snr_db: torch.Tensor
    noise: torch.Tensor
    powers: torch.Tensor

    def to(self, device: torch.device | str) -> SceneDraws:
        return SceneDraws(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def simulate_batch(batch: int, system: SystemConfig, scene: SceneConfig,
                   generator: torch.Generator | None = None,
                   snr_db: float | None = None, K: int | None = None,
                   device: torch.device | str | None = None,
                   compute: torch.device | str | None = None) -> SceneBatch:
    """Simulate ``batch`` scenes (complex64). ``snr_db`` / ``K`` fix those values. The
    random draws are made on ``device`` (the generator's), the physics on ``compute``
    (default: the same): a GPU's training draws its batches on the host, so that they are
    the scenes of their seeds, and computes them where it trains."""
    return synthesize(draw_scenes(batch, system, scene, generator, snr_db, K, device), system,
                      scene, compute)


def draw_scenes(batch: int, system: SystemConfig, scene: SceneConfig,
                generator: torch.Generator | None = None, snr_db: float | None = None,
                K: int | None = None, device: torch.device | str | None = None) -> SceneDraws:
    """The random part of :func:`simulate_batch`: every draw of its scenes, in its order
    (the scenes of a seed are fixed by this order)."""
    real, cplx = torch.float32, torch.complex64
    Kb = _draw_K(batch, system.K_max, scene, K, generator, device)
    az, el, rng = draw_sources(batch, system.K_max, scene, generator, real, device)
    slots = torch.arange(system.K_max, device=device)
    mask = slots < Kb.unsqueeze(-1)  # (B, K_max)
    channel = draw_channel_params(batch, system, scene, generator, cplx, device)
    code_index = draw_code_indices(batch, system, scene.codebook, scene.code_bits, generator,
                                   device)
    s = complex_normal((batch, system.L, system.K_max), generator, cplx, device)
    if snr_db is None:
        snr = uniform(batch, *scene.snr_db, generator, real, device)
    else:
        check_snr_db(float(snr_db), "snr_db")  # (NaN: 'unknown' to localizers, not a level)
        snr = torch.full((batch,), float(snr_db), dtype=real, device=device)
    noise = complex_normal((batch, system.L, system.M), generator, cplx, device)
    # drawn last, so a scene with a power spread keeps the sources, channel, codes, unit
    # symbols, SNR and unit noise of the same scene with equal powers
    powers = draw_powers(mask, scene.power_spread_db, generator)  # (B, K_max), 0 if padded
    return SceneDraws(Kb, az, el, rng, channel, code_index, s, snr, noise, powers)


def synthesize(draws: SceneDraws, system: SystemConfig, scene: SceneConfig,
               device: torch.device | str | None = None) -> SceneBatch:
    """The scenes of ``draws`` (the measurement model, module docstring), computed on
    ``device`` (default: the draws')."""
    d = draws if device is None else draws.to(device)
    dev, real, cplx = d.K.device, torch.float32, torch.complex64
    mask = torch.arange(system.K_max, device=dev) < d.K.unsqueeze(-1)  # (B, K_max)
    c = d.channel
    H = rician_channel(c.kappa, c.bs_angle, c.ris_azimuth, c.ris_elevation, system,
                       dtype=cplx, nlos=c.nlos)  # (B, M, N)
    codes = codes_at(d.code_index, system, scene.codebook, scene.code_bits, cplx)
    A = steering(d.azimuth, d.elevation, d.range_m, system, cplx)  # (B, K_max, N)
    s = d.symbols * d.powers.sqrt().unsqueeze(1)  # (B, L, K_max)
    sA = s @ A
    x = torch.mul(codes, sA, out=sA)  # (B, L, N)   c_l (.) A s_l
    signal = x @ H.transpose(-1, -2)  # (B, L, M)   H diag(c_l) A s_l
    p_sig = signal.abs().square().mean(dim=(-1, -2))  # (B,)
    noise_var = p_sig / 10 ** (d.snr_db / 10)
    y = signal + noise_var.sqrt().view(-1, 1, 1) * d.noise
    nan = torch.tensor(float("nan"), dtype=real, device=dev)
    return SceneBatch(
        y=y, H=H, codes=codes, snr_db=d.snr_db, K=d.K,
        azimuth=torch.where(mask, d.azimuth, nan), elevation=torch.where(mask, d.elevation, nan),
        range_m=torch.where(mask, d.range_m, nan), powers=d.powers, noise_var=noise_var,
        symbols=s,
    )


def true_covariance(azimuth: torch.Tensor, elevation: torch.Tensor, range_m: torch.Tensor,
                    powers: torch.Tensor, system: SystemConfig,
                    dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """R_true = A diag(p) A^H scaled to trace N (training target / oracle only).

    azimuth, elevation, range_m, powers : [B, K_max] (NaN slots must have power 0)
    Returns R : [B, N, N] complex.
    """
    A, p = _source_steering(azimuth, elevation, range_m, powers, system, dtype)
    # A holds steering vectors as rows, so the column matrix is A^T and A^H = conj(A).
    R = (A.transpose(-1, -2) * p.unsqueeze(-2)) @ A.conj()  # (B, N, N) = A diag(p) A^H
    trace = p.sum(-1).clamp_min(torch.finfo(p.dtype).tiny)  # ||a_k|| = 1 => tr = sum p
    return R * (system.N / trace).view(-1, 1, 1)


def true_covariance_factor(scenes: SceneBatch, system: SystemConfig,
                           dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """W [B, N, K_max] with W W^H = :func:`scene_true_covariance` (to rounding): column k
    = sqrt(p_k N / sum p) a_k, zero in padded slots. Its top-K eigenvectors come from a
    K_max x K_max eigenproblem instead of an N x N one (validation's subspace overlap)."""
    A, p = _source_steering(scenes.azimuth, scenes.elevation, scenes.range_m,
                            _true_powers(scenes), system, dtype)
    scale = p * system.N / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    return A.transpose(-1, -2) * scale.sqrt().unsqueeze(-2).to(dtype)


def scene_true_covariance(scenes: SceneBatch, system: SystemConfig,
                          dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """R_true of a SceneBatch that carries truth: [B, N, N]."""
    return true_covariance(scenes.azimuth, scenes.elevation, scenes.range_m,
                           _true_powers(scenes), system, dtype)


def _true_powers(scenes: SceneBatch) -> torch.Tensor:
    """The scenes' source powers (1 in each source slot where the file has none)."""
    if not scenes.has_truth:
        raise ValueError("R_true needs the truth (K and source positions)")
    return scenes.powers if scenes.powers is not None else scenes.mask.to(torch.float32)


def _source_steering(azimuth: torch.Tensor, elevation: torch.Tensor, range_m: torch.Tensor,
                     powers: torch.Tensor, system: SystemConfig, dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Steering rows A [B, K, N] of the slots (a finite stand-in position where the power
    is 0, whose row the power then zeroes) and the powers p [B, K] in A's real dtype."""
    valid = powers > 0
    zero = torch.zeros((), dtype=azimuth.dtype, device=azimuth.device)
    one = torch.ones((), dtype=azimuth.dtype, device=azimuth.device)
    A = steering(torch.where(valid, azimuth, zero), torch.where(valid, elevation, zero),
                 torch.where(valid, range_m, one), system, dtype)  # (B, K, N)
    return A, powers.to(A.real.dtype)
