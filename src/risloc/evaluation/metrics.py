"""Localization metrics (docs/conventions.md, "Metrics").

Pairing: per scene, estimated and true sources are paired by the Hungarian algorithm
(scipy.optimize.linear_sum_assignment) on the cost
    c_ij = angle(est_i, true_j) [deg] + w |r_i - r_j| [m],
angle = great-circle angle between the two directions, w = ``range_weight_deg_per_m``
(default 0.5 deg/m: a 2 m range error costs as much as 1 deg of angle, and the whole
0.5-10 m range span costs 4.75 deg, less than the 5 deg minimum source separation, so the
pairing is driven by direction and range only breaks near-ties). Unpaired estimates are
false alarms, unpaired true sources are misses.

A *detection* is a pair whose angle error is within ``gate_deg`` (default 5 deg, the
minimum source separation). precision = detections / estimated sources, recall =
detections / true sources (pooled over scenes), F1 their harmonic mean; precision
(recall) is 1 when nothing was estimated (nothing was there).

Errors are summarised over *all* pairs (no penalty padding for misses: those are counted
by recall / K accuracy instead), as median absolute error and RMSE, beside the
square-root CRB of the same paired true sources. The angle bound is the first-order
bound on the great-circle error, sqrt(cos^2(theta) CRB_phi + CRB_theta).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from risloc.core.checks import as_tensor
from risloc.core.params import ELEVATION_LIMIT_DEG, Estimates
from risloc.evaluation.crb import CRBResult
from risloc.physics import angular_separation

log = logging.getLogger(__name__)

DEFAULT_RANGE_WEIGHT_DEG_PER_M = 0.5
DEFAULT_GATE_DEG = 5.0
# median |error| of an unbiased Gaussian estimator whose variance is the CRB, per sqrt(CRB)
# (the median of a half-normal): set medians against 0.6745 sqrt(CRB), RMSE against sqrt(CRB)
EFFICIENT_MEDIAN = 0.6745


@dataclass(frozen=True)
class Matching:
    """Pairing of estimated and true sources of B scenes (Kt true slots, Ke estimate slots).

    truth_mask : [B, Kt] bool — real true sources
    est_mask : [B, Ke] bool — estimated sources
    est_index : [B, Kt] int64 — estimate slot paired with each true source, -1 if missed
    azimuth_error, elevation_error : [B, Kt] float64 — [rad] estimate - truth (azimuth wrapped
        to [-pi, pi)); NaN where unpaired
    angle_error : [B, Kt] float64 — [rad] great-circle angle; NaN where unpaired
    range_error : [B, Kt] float64 — [m] estimate - truth; NaN where unpaired
    truth_elevation : [B, Kt] float64 — [rad] (for the angle bound)
    K_true, K_est : [B] int64
    gate_deg : float — detection gate on the angle error [deg]
    """

    truth_mask: torch.Tensor
    est_mask: torch.Tensor
    est_index: torch.Tensor
    azimuth_error: torch.Tensor
    elevation_error: torch.Tensor
    angle_error: torch.Tensor
    range_error: torch.Tensor
    truth_elevation: torch.Tensor
    K_true: torch.Tensor
    K_est: torch.Tensor
    gate_deg: float = DEFAULT_GATE_DEG

    def __len__(self) -> int:
        return self.K_true.shape[0]

    def __getitem__(self, idx) -> Matching:
        """The scenes ``idx`` selects (a slice, a mask, indices); one index: that scene
        alone, as a matching of one scene (its batch axis kept)."""
        if isinstance(idx, int | np.integer) and not isinstance(idx, bool):
            if not -len(self) <= idx < len(self):
                raise IndexError(f"scene {idx} of a matching of {len(self)} scenes")
            idx = slice(idx % len(self), idx % len(self) + 1)
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self)
                                if f.name != "gate_deg"})

    @property
    def paired(self) -> torch.Tensor:
        """[B, Kt] bool — true source paired with an estimate."""
        return self.est_index >= 0

    @property
    def detected(self) -> torch.Tensor:
        """[B, Kt] bool — paired within the angle gate."""
        return self.paired & (self.angle_error <= math.radians(self.gate_deg))

    @property
    def missed(self) -> torch.Tensor:
        """[B, Kt] bool — real true source left unpaired."""
        return self.truth_mask & ~self.paired

    @property
    def false_alarm(self) -> torch.Tensor:
        """[B, Ke] bool — estimate left unpaired."""
        slots = torch.arange(self.est_mask.shape[-1], device=self.est_mask.device)
        used = (self.est_index.unsqueeze(-1) == slots).any(-2)  # (B, Ke)
        return self.est_mask & ~used


def concat_matchings(parts: list[Matching]) -> Matching:
    """Matchings of consecutive batches as one (same gate): a long run matches each chunk as
    it goes and keeps only this, a few hundred bytes per scene. Parts with fewer true or
    estimate slots (files of another K_max) are padded as empty slots."""
    if not parts:
        raise ValueError("no matchings to concatenate")
    if len({p.gate_deg for p in parts}) > 1:
        raise ValueError("matchings with different gates cannot be concatenated")

    def cat(ts: list[torch.Tensor]) -> torch.Tensor:
        width = max(t.shape[-1] for t in ts) if ts[0].dim() == 2 else None
        if width is not None:  # empty slots: False, -1 (no estimate), NaN
            fill = {torch.bool: False, torch.int64: -1}.get(ts[0].dtype, math.nan)
            ts = [torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=fill)
                  if t.shape[-1] < width else t for t in ts]
        return torch.cat(ts)

    return replace(parts[0], **{f.name: cat([getattr(p, f.name) for p in parts])
                                for f in fields(Matching) if f.name != "gate_deg"})


def _slot_mask(K: torch.Tensor, slots: int, what: str) -> torch.Tensor:
    if K.dim() != 1 or ((K < 0) | (K > slots)).any():
        raise ValueError(f"{what} K must be [B] with 0 <= K <= {slots} slots")
    if K.is_floating_point() and not bool((K == K.round()).all()):  # 2.5 sources
        raise ValueError(f"{what} K must be whole numbers of sources, got {K.tolist()[:10]}")
    return torch.arange(slots, device=K.device) < K.unsqueeze(-1)


def _check_positions(mask: torch.Tensor, what: str, azimuth: torch.Tensor,
                     elevation: torch.Tensor, range_m: torch.Tensor) -> None:
    """Finite positions in the real slots, elevations within +-pi/2 (degrees passed for
    radians, the likeliest slip, read as elevations far beyond it)."""
    ok = torch.stack([torch.isfinite(v) | ~mask for v in (azimuth, elevation, range_m)]).all(0)
    if not ok.all():
        bad = torch.nonzero(~ok.all(-1)).flatten()[:10].tolist()
        raise ValueError(f"non-finite {what} positions in real slots, scenes {bad}")
    steep = mask & (elevation.abs() > math.radians(ELEVATION_LIMIT_DEG))
    if steep.any():
        bad = torch.nonzero(steep.any(-1)).flatten()[:10].tolist()
        worst = float(elevation[steep].abs().max())
        raise ValueError(f"{what} elevations beyond +-pi/2 rad (up to {worst:.4g}) in scenes "
                         f"{bad}: angles are radians here (degrees? torch.deg2rad)")


def _costs(e_az, e_el, e_r, t_az, t_el, t_r, weight: float) -> torch.Tensor:
    """Pairing costs [B, Ke, Kt] float64: angle [deg] + weight * |range error| [m];
    estimates [B, Ke] and truths [B, Kt] in rad / m."""
    angle = angular_separation(e_az.unsqueeze(-1), e_el.unsqueeze(-1),
                               t_az.unsqueeze(-2), t_el.unsqueeze(-2))
    return torch.rad2deg(angle) + weight * (e_r.unsqueeze(-1) - t_r.unsqueeze(-2)).abs()


def _hungarian(cost: np.ndarray, est_mask: np.ndarray, truth_mask: np.ndarray) -> np.ndarray:
    """Per-scene optimal assignment; returns est_index [B, Kt] (-1 where unpaired)."""
    # imported here: scipy.optimize takes 0.6 s to import, a seventh of every CLI command's
    # start, and only scoring needs it
    from scipy.optimize import linear_sum_assignment

    est_index = np.full(truth_mask.shape, -1, dtype=np.int64)
    for b in range(cost.shape[0]):
        rows, cols = np.flatnonzero(est_mask[b]), np.flatnonzero(truth_mask[b])
        if rows.size and cols.size:
            r, c = linear_sum_assignment(cost[b][np.ix_(rows, cols)])
            est_index[b, cols[c]] = rows[r]
    return est_index


_DEGREE_KEYS = ("azimuth_deg", "elevation_deg", "range_m", "K", "score")


def _estimates_of(arrays: dict) -> Estimates:
    """Estimates of a dict of NaN-padded arrays in degrees (:meth:`Estimates.from_degrees`
    names their keys: ``LocalizationResult.to_numpy()``'s)."""
    keys = set(arrays)
    if not set(_DEGREE_KEYS[:3]) <= keys <= set(_DEGREE_KEYS):
        raise ValueError(f"est as a dict holds azimuth_deg, elevation_deg, range_m [S, K_slots] "
                         f"(NaN-padded, degrees / metres) and optionally K [S] and score, as "
                         f"LocalizationResult.to_numpy() gives; got the keys "
                         f"{sorted(map(str, keys))}")
    return Estimates.from_degrees(**arrays)


def _warn_radians(est: Estimates, truth_mask: torch.Tensor, t_az: torch.Tensor,
                  t_el: torch.Tensor) -> None:
    """Warn where estimates given in degrees look like radians (as ``risloc evaluate
    --estimates`` warns of a CSV's): all within +-pi/2 "degrees" of boresight while the truth
    reaches beyond."""
    # (imported here: scene files need h5py, which scoring arrays does not)
    from risloc.io.scenefile import RADIANS_SUSPECT, radians_hint, widest_true_angle

    if not bool(truth_mask.any()):
        return
    truth_widest = float(torch.maximum(t_az.abs(), t_el.abs())[truth_mask].max())
    if math.degrees(truth_widest) > RADIANS_SUSPECT[2]:
        hint = radians_hint(*widest_true_angle(est), "estimated",
                            "azimuth_deg and elevation_deg")
        if hint:
            log.warning(hint)


def match_sources(est: Estimates | dict, truth_azimuth: torch.Tensor, truth_elevation: torch.Tensor,
                  truth_range: torch.Tensor, truth_K: torch.Tensor,
                  range_weight_deg_per_m: float = DEFAULT_RANGE_WEIGHT_DEG_PER_M,
                  gate_deg: float = DEFAULT_GATE_DEG) -> Matching:
    """Pair estimates with true sources per scene (Hungarian, cost in the module docstring).

    Parameters
    ----------
    est : Estimates with [B, Ke] slots — [rad], [m] (or a LocalizationResult, its estimates),
        or a dict of NaN-padded arrays in degrees and metres, ``azimuth_deg``,
        ``elevation_deg``, ``range_m`` [B, Ke] (+ ``K`` [B], ``score``): another estimator's,
        as ``LocalizationResult.to_numpy()`` gives (:meth:`Estimates.from_degrees`)
    truth_azimuth, truth_elevation : [B, Kt] float — [rad], padded beyond truth_K
    truth_range : [B, Kt] float — [m]
    truth_K : [B] int
    range_weight_deg_per_m : weight w of the range term [deg/m]
    gate_deg : detection gate on the great-circle angle error [deg]
    """
    if not range_weight_deg_per_m >= 0 or math.isinf(range_weight_deg_per_m):
        raise ValueError(f"range_weight_deg_per_m must be finite and >= 0, got "
                         f"{range_weight_deg_per_m}")
    if not gate_deg > 0:  # (inf: every pair a detection)
        raise ValueError(f"gate_deg must be > 0 [deg], got {gate_deg}")
    est = getattr(est, "estimates", est)  # a Localizer's LocalizationResult
    in_degrees = isinstance(est, dict)  # arrays in degrees: to_numpy()'s, or another's
    if in_degrees:
        est = _estimates_of(est)
    if not isinstance(est, Estimates):
        raise TypeError(f"est must be Estimates, a LocalizationResult or a dict of NaN-padded "
                        f"arrays in degrees (Estimates.from_degrees), got {type(est).__name__}")
    t_az, t_el, t_r = (as_tensor(name, t).to(torch.float64) for name, t in (
        ("truth_azimuth", truth_azimuth), ("truth_elevation", truth_elevation),
        ("truth_range", truth_range)))
    truth_K = as_tensor("truth_K", truth_K)
    if t_el.shape != t_az.shape or t_r.shape != t_az.shape or t_az.dim() != 2:
        raise ValueError("truth azimuth, elevation and range must all be [B, K_max]")
    if len(est) != t_az.shape[0]:
        raise ValueError(f"{len(est)} estimated scenes for {t_az.shape[0]} true scenes")
    if truth_K.shape != (t_az.shape[0],):
        raise ValueError(f"truth_K must be [B] with the B = {t_az.shape[0]} true scenes, got "
                         f"shape {tuple(truth_K.shape)}")
    truth_mask = _slot_mask(truth_K, t_az.shape[-1], "truth")
    est_mask = _slot_mask(est.K, est.azimuth.shape[-1], "estimated")
    _check_positions(truth_mask, "true", t_az, t_el, t_r)
    _check_positions(est_mask, "estimated", est.azimuth, est.elevation, est.range_m)
    if in_degrees:
        _warn_radians(est, truth_mask, t_az, t_el)
    e_fill = [torch.where(est_mask, t.to(torch.float64), torch.zeros((), dtype=torch.float64))
              for t in (est.azimuth, est.elevation, est.range_m)]
    t_fill = [torch.where(truth_mask, t, torch.zeros_like(t)) for t in (t_az, t_el, t_r)]
    cost = _costs(*e_fill, *t_fill, range_weight_deg_per_m)  # (B, Ke, Kt)
    idx = torch.from_numpy(_hungarian(cost.cpu().numpy(), est_mask.cpu().numpy(),
                                      truth_mask.cpu().numpy())).to(t_az.device)
    paired = idx >= 0
    take = idx.clamp_min(0)
    if est.azimuth.shape[-1] == 0:  # no estimate slots: nothing to gather, nothing paired
        e_fill = [torch.zeros(len(est), 1, dtype=torch.float64, device=t_az.device)] * 3
    e_az, e_el, e_r = (torch.gather(v, 1, take) for v in e_fill)  # (B, Kt) paired estimates
    nan = torch.full_like(t_az, float("nan"))
    d_az = torch.remainder(e_az - t_fill[0] + math.pi, 2 * math.pi) - math.pi
    return Matching(
        truth_mask=truth_mask, est_mask=est_mask, est_index=idx,
        azimuth_error=torch.where(paired, d_az, nan),
        elevation_error=torch.where(paired, e_el - t_fill[1], nan),
        angle_error=torch.where(paired, angular_separation(e_az, e_el, *t_fill[:2]), nan),
        range_error=torch.where(paired, e_r - t_fill[2], nan),
        truth_elevation=torch.where(truth_mask, t_el, nan),
        K_true=truth_K.to(torch.int64), K_est=est.K.to(torch.int64), gate_deg=gate_deg)


_MEDIAN_ERRORS = (("azimuth", "azimuth_error"), ("elevation", "elevation_error"),
                  ("range", "range_error"))


@dataclass(frozen=True)
class MetricSummary:
    """Metrics of a set of scenes; errors over paired sources, bounds over the same sources.

    Counts: scenes, true / estimated sources, pairs, detections (pairs within the gate),
    misses (unpaired true sources), false alarms (unpaired estimates).
    Errors: median absolute error and RMSE — azimuth, elevation, great-circle angle [deg],
    range [m]; NaN when there is no pair.
    Bounds (None without a CRB): median and RMS of the square-root CRB, same units; and per
    coordinate the median over paired sources of |error| / sqrt(CRB), over 0.6745
    (``<coordinate>_median_over_bound``: about 1 for an efficient unbiased estimator).
    The median error against 0.6745 times the median bound is biased where the bound varies
    between sources (for the range by 0.75x on 60 test scenes at 20 dB); this ratio is not.
    """

    n_scenes: int
    n_true: int
    n_estimated: int
    n_paired: int
    n_detected: int
    n_missed: int
    n_false_alarms: int
    K_accuracy: float
    precision: float
    recall: float
    f1: float
    azimuth_median_deg: float
    azimuth_rmse_deg: float
    elevation_median_deg: float
    elevation_rmse_deg: float
    angle_median_deg: float
    angle_rmse_deg: float
    range_median_m: float
    range_rmse_m: float
    crb_azimuth_median_deg: float | None = None
    crb_azimuth_rms_deg: float | None = None
    crb_elevation_median_deg: float | None = None
    crb_elevation_rms_deg: float | None = None
    crb_angle_median_deg: float | None = None
    crb_angle_rms_deg: float | None = None
    crb_range_median_m: float | None = None
    crb_range_rms_m: float | None = None
    azimuth_median_over_bound: float | None = None
    elevation_median_over_bound: float | None = None
    range_median_over_bound: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _median_abs_and_rms(x: torch.Tensor, scale: float = 1.0) -> tuple[float, float]:
    """(median |x|, sqrt(mean x^2)) of a 1-D tensor times ``scale``; NaN for no values."""
    if x.numel() == 0:
        return math.nan, math.nan
    x = x.to(torch.float64) * scale
    return midpoint_median(x.abs()), float(x.square().mean().sqrt())


def midpoint_median(x: torch.Tensor) -> float:
    """Median of a non-empty 1-D tensor, the midpoint of the two middle values for an even
    count (as ``np.median``); any size (``torch.quantile`` refuses more than 2^24 values, the
    pairs of about 5.6 million scenes)."""
    n = x.numel()
    lo = torch.kthvalue(x, (n + 1) // 2).values
    hi = torch.kthvalue(x, n // 2 + 1).values if n % 2 == 0 else lo
    return float((lo + hi) / 2)


def _check_crb_slots(matching: Matching, crb: CRBResult) -> None:
    if crb.azimuth.shape != matching.truth_mask.shape:
        raise ValueError(f"CRB slots {tuple(crb.azimuth.shape)} do not match the true source "
                         f"slots {tuple(matching.truth_mask.shape)}: compute the bound at the "
                         f"truth passed to match_sources, [B, K_slots] NaN-padded (e.g. "
                         f"crb(sc.H, sc.codes, rad2deg(sc.azimuth), rad2deg(sc.elevation), "
                         f"sc.range_m, ...) or crb_for_scenes(sc, system))")


def _crb_fields(matching: Matching, crb: CRBResult) -> dict[str, float]:
    _check_crb_slots(matching, crb)
    p = matching.paired
    az, el, r = crb.azimuth[p], crb.elevation[p], crb.range_m[p]
    if not (torch.isfinite(az) & torch.isfinite(el) & torch.isfinite(r)).all():
        raise ValueError("the CRB is not finite on every paired true source (slot mismatch?)")
    angle = torch.sqrt(torch.cos(matching.truth_elevation[p]) ** 2 * az**2 + el**2)
    deg = math.degrees(1.0)
    out = {}
    for name, values, scale in (("azimuth", az, deg), ("elevation", el, deg),
                                ("angle", angle, deg), ("range", r, 1.0)):
        unit = "m" if name == "range" else "deg"
        out[f"crb_{name}_median_{unit}"], out[f"crb_{name}_rms_{unit}"] = \
            _median_abs_and_rms(values, scale)
    for name, field in _MEDIAN_ERRORS:  # each source against its own bound
        bound = getattr(crb, "range_m" if name == "range" else name)[p]
        known = bound > 0  # (0: a parameter declared known has no error to weigh)
        ratio = getattr(matching, field)[p][known].abs() / bound[known]
        out[f"{name}_median_over_bound"] = _median_abs_and_rms(ratio)[0] / EFFICIENT_MEDIAN
    return out


def _as_crb(crb) -> CRBResult | None:
    """A CRBResult from itself or the dict of :func:`risloc.evaluation.crb` (degrees)."""
    if crb is None or isinstance(crb, CRBResult):
        return crb
    keys = ("azimuth_deg", "elevation_deg", "range_m")
    if not (isinstance(crb, dict) and all(k in crb for k in keys)):
        raise TypeError(f"crb must be a CRBResult or the dict risloc.evaluation.crb returns "
                        f"({', '.join(keys)}), got {type(crb).__name__}")
    az, el, r = (as_tensor(k, crb[k]).to(torch.float64) for k in keys)
    return CRBResult(azimuth=torch.deg2rad(az), elevation=torch.deg2rad(el), range_m=r,
                     fim=torch.zeros(az.shape[0], 0, 0, dtype=torch.float64))


def summarize(matching: Matching, crb: CRBResult | dict | None = None) -> MetricSummary:
    """Summarise a matching (module docstring); ``crb`` [B, Kt] on the true slots (a
    CRBResult, or the dict of :func:`risloc.evaluation.crb`)."""
    crb = _as_crb(crb)
    p = matching.paired
    n_true, n_est = int(matching.truth_mask.sum()), int(matching.est_mask.sum())
    n_det = int(matching.detected.sum())
    precision = n_det / n_est if n_est else 1.0
    recall = n_det / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    if len(matching) == 0:  # no scene: nothing measured (not a perfect score beside a NaN)
        precision = recall = f1 = math.nan
    if not p.any():
        log.warning("no paired sources among %d scenes: errors are NaN", len(matching))
    deg = math.degrees(1.0)
    errors = {}
    for name, values, scale in (("azimuth", matching.azimuth_error, deg),
                                ("elevation", matching.elevation_error, deg),
                                ("angle", matching.angle_error, deg),
                                ("range", matching.range_error, 1.0)):
        unit = "m" if name == "range" else "deg"
        errors[f"{name}_median_{unit}"], errors[f"{name}_rmse_{unit}"] = \
            _median_abs_and_rms(values[p], scale)
    return MetricSummary(
        n_scenes=len(matching), n_true=n_true, n_estimated=n_est, n_paired=int(p.sum()),
        n_detected=n_det, n_missed=int(matching.missed.sum()),
        n_false_alarms=int(matching.false_alarm.sum()),
        K_accuracy=float((matching.K_est == matching.K_true).double().mean()),
        precision=precision, recall=recall, f1=f1, **errors,
        **(_crb_fields(matching, crb) if crb is not None else {}))


def summarize_groups(matching: Matching, groups: torch.Tensor,
                     crb: CRBResult | dict | None = None) -> dict[float | int, MetricSummary]:
    """One summary per distinct value of ``groups`` [B] (sorted keys); scenes whose group is
    NaN (an unknown SNR) are one group of their own, keyed ``math.nan``, last."""
    crb = _as_crb(crb)
    groups = as_tensor("groups", groups)
    if groups.shape != (len(matching),):
        raise ValueError(f"groups must be [B={len(matching)}], got {tuple(groups.shape)}")
    if crb is not None:  # (before selecting its scenes: one bound per scene of the matching)
        _check_crb_slots(matching, crb)
    unknown = torch.isnan(groups) if groups.is_floating_point() else torch.zeros_like(
        groups, dtype=torch.bool)
    out: dict[float | int, MetricSummary] = {}
    for key in torch.unique(groups[~unknown]).tolist():
        sel = groups == key
        out[key] = summarize(matching[sel], crb[sel] if crb is not None else None)
    if bool(unknown.any()):
        out[math.nan] = summarize(matching[unknown], crb[unknown] if crb is not None else None)
    return out


def _check_bin(bin_db: float) -> None:
    if not bin_db > 0:
        raise ValueError(f"the SNR bin must be > 0 dB, got {bin_db}")


def summarize_by_snr(matching: Matching, snr_db: torch.Tensor,
                     crb: CRBResult | dict | None = None,
                     bin_db: float = 1.0) -> dict[float, MetricSummary]:
    """Summaries per SNR bin: key = the nearest multiple of ``bin_db`` [dB] (halfway: the
    upper one; exact for test
    sets simulated at fixed SNR values that are multiples of ``bin_db``); scenes without
    an SNR (NaN) under the key ``math.nan``, last. ``crb`` as :func:`summarize`'s."""
    _check_bin(bin_db)
    snr = as_tensor("snr_db", snr_db).to(torch.float64)
    if snr.shape != (len(matching),):
        raise ValueError(f"snr_db must hold one SNR per scene of the matching, [B={len(matching)}] "
                         f"(NaN: unknown; e.g. scenes.snr_db), got shape {tuple(snr.shape)}: "
                         f"for scenes all at one SNR, summarize(matching, crb)")
    return summarize_groups(matching, _bin_of(snr, bin_db) * bin_db + 0.0, crb)


def _bin_of(snr: torch.Tensor, bin_db: float) -> torch.Tensor:
    """The index of each SNR's bin of ``bin_db`` dB centred on its multiples, a value
    halfway between two centres in the upper one (torch.round rounds halves to even:
    2.5 dB and 7.5 dB fell into the bins of 0 and 10 dB, the 5 dB bin left empty)."""
    return torch.floor(snr / bin_db + 0.5)


def snr_groups(snr_db: torch.Tensor, bin_db: float = 5.0) -> list[tuple[float, torch.Tensor]]:
    """Scenes grouped by SNR for a results table: [(label, mask [B] bool)], no scene left out.

    Bins of ``bin_db`` dB centred on its multiples (a value halfway in the upper one), in
    increasing order, each labelled with the mean SNR of its scenes rounded to 0.1 dB (to
    more digits where two bins' labels would be one; a
    file at a fixed -2 dB reads -2, not the bin's 0; a file simulated at multiples of
    ``bin_db`` reads them exactly). Scenes without an SNR (NaN, as most measurement files)
    form one last group labelled NaN.
    """
    _check_bin(bin_db)
    snr = as_tensor("snr_db", snr_db).to(torch.float64)
    unknown = torch.isnan(snr)
    key = _bin_of(snr, bin_db)
    sels = [key == k for k in torch.unique(key[~unknown]).tolist()]
    means = [float(snr[sel].mean()) for sel in sels]
    digits = 1  # more where two bins' means round to one label (7.46 and 7.5 dB: 7.5 twice)
    while len({round(m, digits) for m in means}) < len(means) and digits < 12:
        digits += 1
    groups = [(round(m, digits) + 0.0, sel) for m, sel in zip(means, sels, strict=True)]
    if bool(unknown.any()):  # (+ 0.0: no -0)
        groups.append((math.nan, unknown))
    return groups


def summarize_by_K(matching: Matching, crb: CRBResult | dict | None = None
                   ) -> dict[int, MetricSummary]:
    """Summaries per true number of sources; ``crb`` as :func:`summarize`'s."""
    return summarize_groups(matching, matching.K_true, crb)


_BOOTSTRAP_CHUNK = 100  # resamples per pass of paired_bootstrap_se


def _weighted_lower_median(values: torch.Tensor, owner: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
    """Lower median of ``values`` [n] (each belonging to scene owner [n]) under each row of
    scene weights [R, B] (a value counts as often as its scene was drawn): [R]."""
    order = torch.argsort(values)
    cw = weights[:, owner[order]].cumsum(-1).double()  # (R, n)
    k = torch.searchsorted(cw, 0.5 * cw[:, -1:]).clamp_max(len(values) - 1).squeeze(-1)
    med = values[order][k].double()
    return torch.where(cw[:, -1] > 0, med, math.nan)  # NaN: none of their scenes drawn


def common_median_ratios(a: Matching, b: Matching) -> dict[str, float]:
    """Median |error| of ``a`` over that of ``b`` on the true sources both pair with an
    estimate (the same sources for both, unlike the ratio of each one's own medians):
    ``<azimuth|elevation|range>_median_ratio_common``; NaN where no source is paired by both
    or b's median is 0."""
    if a.truth_mask.shape != b.truth_mask.shape:
        raise ValueError("the two matchings must cover the same scenes and true slots, got "
                         f"{tuple(a.truth_mask.shape)} and {tuple(b.truth_mask.shape)}")
    both = a.paired & b.paired
    out = {}
    for name, field in _MEDIAN_ERRORS:
        ma, mb = (midpoint_median(getattr(m, field)[both].abs()) if both.any() else math.nan
                  for m in (a, b))
        out[f"{name}_median_ratio_common"] = ma / mb if mb > 0 else math.nan
    return out


def paired_bootstrap_se(a: Matching, b: Matching, reps: int = 1000,
                        seed: int = 0) -> dict[str, float]:
    """Standard errors of the differences between two estimators run on the same scenes.

    The scenes are the independent units: each of ``reps`` resamples draws B scenes with
    replacement (Efron & Tibshirani 1993, ch. 6) and evaluates both matchings on the same
    draw, so what the two share (the scenes' difficulty) cancels. Returns the bootstrap
    standard deviations of

    * ``f1_diff``, ``K_accuracy_diff``: a - b (pooled F1 = 2 detections / (true +
      estimated sources), as :func:`summarize`);
    * ``<azimuth|elevation|range>_median_ratio``: median |error| of a over its pairs /
      that of b over its pairs;
    * ``..._median_ratio_common``: the same over the true sources both pair.

    Medians are lower medians of the resampled values (a ratio's spread, not its value:
    take point estimates from :func:`summarize`). NaN where a resample has no pair, and
    everywhere with fewer than two scenes (every resample of one scene is that scene: a
    spread of 0 would read as certainty).
    """
    if len(a) != len(b) or a.truth_mask.shape != b.truth_mask.shape:
        raise ValueError("the two matchings must cover the same scenes and true slots, got "
                         f"{tuple(a.truth_mask.shape)} and {tuple(b.truth_mask.shape)}")
    if reps < 2:
        raise ValueError(f"reps must be >= 2, got {reps}")
    n = len(a)
    if n < 2:  # (no scene at all: nothing to draw from)
        return {k: math.nan for k in ("f1_diff", "K_accuracy_diff", *(
            f"{name}_median_ratio{suffix}" for name, _ in _MEDIAN_ERRORS
            for suffix in ("", "_common")))}
    g = torch.Generator().manual_seed(seed)
    owner = torch.arange(n).unsqueeze(-1).expand_as(a.truth_mask)
    both = a.paired & b.paired
    counts = [(m.detected.sum(-1).double(), (m.truth_mask.sum(-1) + m.est_mask.sum(-1)).double(),
               (m.K_est == m.K_true).double()) for m in (a, b)]
    medians = []  # (key, |errors| of a, owners, |errors| of b, owners)
    for name, field in _MEDIAN_ERRORS:
        ea, eb = getattr(a, field).abs(), getattr(b, field).abs()
        for suffix, ma, mb in (("", a.paired, b.paired), ("_common", both, both)):
            medians.append((f"{name}_median_ratio{suffix}", ea[ma], owner[ma], eb[mb], owner[mb]))
    out: dict[str, list[torch.Tensor]] = {}
    for lo in range(0, reps, _BOOTSTRAP_CHUNK):  # bounded memory on large scene sets
        r = min(_BOOTSTRAP_CHUNK, reps - lo)
        draws = torch.randint(0, n, (r, n), generator=g)
        W = torch.zeros(r, n, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(r, n, dtype=torch.float64))  # (r, B) times each scene drawn
        (d_a, t_a, k_a), (d_b, t_b, k_b) = ((W @ d, W @ t, W @ k / n) for d, t, k in counts)
        f1 = [torch.where(t > 0, 2 * d / t.clamp_min(1), 1.0)  # 1 with nothing, as summarize
              for d, t in ((d_a, t_a), (d_b, t_b))]
        out.setdefault("f1_diff", []).append(f1[0] - f1[1])
        out.setdefault("K_accuracy_diff", []).append(k_a - k_b)
        for key, ea, oa, eb, ob in medians:
            ratio = (torch.full((r,), math.nan, dtype=torch.float64) if not (len(ea) and len(eb))
                     else _weighted_lower_median(ea, oa, W) / _weighted_lower_median(eb, ob, W))
            out.setdefault(key, []).append(ratio)
    return {k: float(torch.cat(v).std()) for k, v in out.items()}
