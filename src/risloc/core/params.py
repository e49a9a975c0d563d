"""Source parameters: the one layout, and the result type every estimator returns.

Inside the estimators a set of K source slots per scene is ``theta : [..., K, 3]`` float,
the last axis (azimuth [rad], elevation [rad], inverse range u = 1/r [1/m]): 1/r is the
natural coordinate of the near-field phase (the spectrum has about constant width in it)
and the one NF-MLE iterates on. :func:`pack` / :func:`unpack` convert, :func:`steering_at`
gives the steering rows of a theta. At the edges (users, files, metrics) sources are an
:class:`Estimates`: K per scene and NaN-padded [B, K_slots] azimuth, elevation, range in
(rad, rad, m), degrees only where they are printed or written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

from risloc.config import SystemConfig
from risloc.core.checks import as_tensor, matlab_vector
from risloc.physics.steering import steering

# The largest |elevation| [deg] a source may have where it is given in degrees: 90, and
# 1e-6 more for float32's pi / 2, which reads 90.0000025 deg (as to_numpy() gives it).
ELEVATION_LIMIT_DEG = 90 * (1 + 1e-6)


def pack(azimuth: torch.Tensor, elevation: torch.Tensor, range_m: torch.Tensor) -> torch.Tensor:
    """(azimuth [rad], elevation [rad], range [m]) [...] -> theta [..., 3] (az, el, 1/r)."""
    return torch.stack([azimuth, elevation, 1.0 / range_m], -1)


def unpack(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """theta [..., 3] -> (azimuth [rad], elevation [rad], range [m]), each [...]."""
    return theta[..., 0], theta[..., 1], 1.0 / theta[..., 2]


def steering_at(theta: torch.Tensor, system: SystemConfig, dtype: torch.dtype,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Steering rows a(theta_k): theta [..., K, 3] -> [..., K, N] complex ``dtype``.

    mask : [..., K] bool or None — slots where it is False (padding, NaN allowed there) get
    a zero row, so they add no column to any operator.
    """
    if mask is None:
        return steering(theta[..., 0], theta[..., 1], 1.0 / theta[..., 2], system, dtype)
    m = mask.unsqueeze(-1)  # padded slots at (0, 0, 1/r = 1): no tensor from host data
    safe = torch.cat([torch.where(m, theta[..., :2], 0.0), torch.where(m, theta[..., 2:], 1.0)],
                     -1)
    A = steering(safe[..., 0], safe[..., 1], 1.0 / safe[..., 2], system, dtype)
    return A * mask.unsqueeze(-1).to(A.dtype)


@dataclass(frozen=True)
class Estimates:
    """Estimated sources of a batch of scenes; slots beyond K are NaN-padded.

    K : [B] int64 — estimated number of sources
    azimuth, elevation : [B, K_slots] float — [rad]
    range_m : [B, K_slots] float — [m]
    score : [B, K_slots] float — estimator-specific confidence (higher = stronger)
    """

    K: torch.Tensor
    azimuth: torch.Tensor
    elevation: torch.Tensor
    range_m: torch.Tensor
    score: torch.Tensor

    def __len__(self) -> int:
        return self.K.shape[0]

    @property
    def mask(self) -> torch.Tensor:
        """[B, K_slots] bool — True for estimated sources."""
        slots = torch.arange(self.azimuth.shape[-1], device=self.K.device)
        return slots < self.K.unsqueeze(-1)

    @property
    def theta(self) -> torch.Tensor:
        """[B, K_slots, 3] — (azimuth [rad], elevation [rad], 1/range [1/m]), NaN-padded."""
        return pack(self.azimuth, self.elevation, self.range_m)

    @classmethod
    def from_theta(cls, K: torch.Tensor, theta: torch.Tensor, score: torch.Tensor | None = None,
                   dtype: torch.dtype | None = None) -> Estimates:
        """Estimates of the first K [B] slots of theta [B, S, 3] (the rest NaN); score
        [B, S] or None (zeros); fields cast to ``dtype`` (default: theta's)."""
        keep = torch.arange(theta.shape[1], device=theta.device) < K.unsqueeze(-1)
        dtype = dtype or theta.dtype
        score = torch.zeros_like(theta[..., 0]) if score is None else score
        az, el, r = unpack(theta)
        return cls(K.to(torch.int64), *(torch.where(keep, t.to(dtype), math.nan)
                                         for t in (az, el, r, score)))

    @classmethod
    def from_degrees(cls, azimuth_deg, elevation_deg, range_m, K=None,
                     score=None) -> Estimates:
        """Estimates of arrays in degrees, as users hold them (the inverse of
        ``LocalizationResult.to_numpy()``): another estimator's, to score with
        :func:`risloc.evaluation.match_sources` beside the localizers'.

        azimuth_deg, elevation_deg : [S, K_slots] (or one scene's [K_slots]) real — [deg]
        range_m : [S, K_slots] real — [m]; NumPy or torch, each scene's sources in its
            first slots and NaN after them
        K : [S] whole numbers (one scene's: a number), or None: each scene's slots up to its
            last source
        score : [S, K_slots] (one scene's [K_slots]) or None (0 for every source)
        Returns float64 Estimates in radians / metres. TypeError for complex arrays;
        ValueError naming the first scene and slot of a source NaN in part, a NaN slot
        before a source or within K, an elevation beyond +-90 deg or a range <= 0.
        """
        az, el, r = _real_2d(azimuth_deg=azimuth_deg, elevation_deg=elevation_deg,
                             range_m=range_m)
        slots = torch.arange(az.shape[1], device=az.device)
        held = ~(torch.isnan(az) & torch.isnan(el) & torch.isnan(r))  # (NaN: a padded slot)
        _refuse(held & ~(torch.isfinite(az) & torch.isfinite(el) & torch.isfinite(r)),
                "a source needs azimuth, elevation and range all finite (a padded slot: all "
                "NaN)")
        if K is None:  # each scene's slots up to its last source
            K = torch.where(held, slots + 1, 0).amax(-1) if az.shape[1] else \
                torch.zeros(az.shape[0], dtype=torch.int64, device=az.device)
        else:
            K = as_tensor("K", K).to(az.device)
            K = K.reshape(1) if K.ndim == 0 else matlab_vector(K, az.shape[0])  # (one
            # scene's K: a number; a MATLAB / pandas column [S, 1]: [S])
            if K.shape != (az.shape[0],) or K.dtype == torch.bool or K.is_complex() or not \
                    bool(((K == K.double().round()) & (K >= 0) & (K <= az.shape[1])).all()):
                raise ValueError(f"K must be [S={az.shape[0]}] whole numbers in 0..K_slots="
                                 f"{az.shape[1]}, got {K.tolist()[:10]}")
        mask = slots < K.to(torch.int64).unsqueeze(-1)
        _refuse(mask & ~held, "NaN before the scene's last source or within its K: put each "
                "scene's sources in its first slots, NaN only after them")
        _refuse(mask & ((el.abs() > ELEVATION_LIMIT_DEG) | (r <= 0)), "an elevation lies within "
                "+-90 deg and a range is > 0 (docs/conventions.md: degrees, not radians; not a "
                "zenith angle)", el, r)
        if score is not None:
            score = as_tensor("score", score)
            if score.is_complex():  # (cast, its imaginary part was dropped with a warning)
                raise TypeError(f"score must be a real array, got {score.dtype}")
        score = torch.zeros_like(az) if score is None else score.to(az)
        score = score.unsqueeze(0) if score.ndim == 1 and az.shape[0] == 1 else score  # one scene
        if score.shape != az.shape:
            raise ValueError(f"score must be [S, K_slots] as the positions, "
                             f"{tuple(az.shape)}, got {tuple(score.shape)}")
        return cls(K.to(torch.int64), *(torch.where(mask, t, math.nan) for t in
                                         (torch.deg2rad(az), torch.deg2rad(el), r, score)))

    def __getitem__(self, idx) -> Estimates:
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def truncate(self, K: torch.Tensor) -> Estimates:
        """The min(K, self.K) first slots of each scene (the strongest, for estimators that
        sort by score); the rest NaN. K : [B] int64."""
        K = torch.minimum(K.to(self.K), self.K)
        slots = torch.arange(self.azimuth.shape[-1], device=self.K.device)
        keep = slots < K.unsqueeze(-1)
        return Estimates(K, *(torch.where(keep, getattr(self, n), math.nan)
                              for n in ("azimuth", "elevation", "range_m", "score")))

    def to(self, device) -> Estimates:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def float(self) -> Estimates:
        """The same estimates with float32 positions and scores."""
        return replace(self, **{f.name: getattr(self, f.name).to(torch.float32)
                                for f in fields(self) if f.name != "K"})


def _real_2d(**arrays) -> list[torch.Tensor]:
    """Named real arrays of one shape [S, K_slots] (one scene's [K_slots] made [1, K_slots]) as
    float64 tensors; TypeError for complex ones, ValueError for shapes that differ."""
    pos = [as_tensor(name, v) for name, v in arrays.items()]
    for name, t in zip(arrays, pos):
        if t.is_complex():  # (named, with its dtype: which of them came complex)
            raise TypeError(f"{', '.join(arrays)} must be real arrays; {name} is {t.dtype} "
                            f"(pass {name}.real where its imaginary part is 0)")
    pos = [t.to(torch.float64) for t in pos]
    if all(t.ndim == 1 for t in pos):  # one scene
        pos = [t.unsqueeze(0) for t in pos]
    if len({tuple(t.shape) for t in pos}) > 1 or pos[0].ndim != 2:
        raise ValueError(f"{', '.join(arrays)} must each be [S, K_slots] (NaN-padded), got "
                         f"shapes {[tuple(t.shape) for t in pos]}")
    return pos


def _refuse(bad: torch.Tensor, why: str, elevation_deg: torch.Tensor | None = None,
            range_m: torch.Tensor | None = None) -> None:
    """ValueError naming the first scene and slot where ``bad`` [S, K_slots] holds."""
    if bool(bad.any()):
        b, k = (int(i) for i in bad.nonzero()[0])
        got = "" if elevation_deg is None else (f": elevation {float(elevation_deg[b, k]):g} "
                                                f"deg, range {float(range_m[b, k]):g} m")
        raise ValueError(f"scene {b}, slot {k}{got}; {why}")


def concat_estimates(parts: list[Estimates]) -> Estimates:
    """Concatenate the scenes of several Estimates (float32), NaN-padding the slots to the
    widest part."""
    if not parts:
        raise ValueError("concat_estimates needs at least one part")
    width = max(p.azimuth.shape[-1] for p in parts)

    def pad(t: torch.Tensor) -> torch.Tensor:
        extra = width - t.shape[-1]
        t = t.float()
        return torch.nn.functional.pad(t, (0, extra), value=math.nan) if extra else t

    return Estimates(K=torch.cat([p.K for p in parts]),
                     **{n: torch.cat([pad(getattr(p, n)) for p in parts])
                        for n in ("azimuth", "elevation", "range_m", "score")})
