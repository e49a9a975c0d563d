"""Evaluation harness: estimators x SNR sweep (x K), metrics beside the CRB.

Scenes come from the simulator (test split; each (SNR, K) point has its own seed stream)
or from a user's scene file (grouped by its snr_db in bins, :func:`file_points`). Results are
written as CSV + JSON; plots by :mod:`risloc.experiments.plots`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from risloc.config import FieldOfView, RislocConfig, SystemConfig
from risloc.core.checks import scene_problems
from risloc.core.params import Estimates, concat_estimates
from risloc.evaluation.crb import (
    CRBResult,
    SingularFIMError,
    crb_for_scenes,
    noise_and_powers_at,
    noise_var_for_snr,
    warn_buried,
)
from risloc.evaluation.metrics import (
    Matching,
    common_median_ratios,
    concat_matchings,
    match_sources,
    paired_bootstrap_se,
    snr_groups,
    summarize,
)
from risloc.experiments.estimators import get_estimator
from risloc.io.atomic import write_csv_atomic, write_json_atomic
from risloc.io.scenefile import batch_truth_problems
from risloc.parallel import MAX_CHUNK, run_in_chunks
from risloc.simulation import SceneBatch, concat_batches, simulate_range

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GivenEstimates:
    """Estimates made elsewhere, e.g. by a user's own method (an estimates CSV read with
    :func:`risloc.pipeline.read_estimates`), scored beside the estimators as ``name``:
    one per scene of the scene file evaluated."""

    name: str
    path: str
    estimates: Estimates


@dataclass(frozen=True)
class SweepSettings:
    """What `risloc evaluate` runs (``given``: estimates of a scene file's scenes made
    elsewhere, scored after the estimators; no time per scene)."""

    estimators: tuple[str, ...] = ("learned", "classical")
    snr_db: tuple[float, ...] = (-5.0, 0.0, 5.0, 10.0, 20.0)
    K: tuple[int, ...] | None = None  # None: K drawn 1..K_max per scene
    n_per_point: int = 100
    known_K: bool = False
    seed: int = 0
    batch_size: int = 64
    crb: str = "deterministic"
    checkpoint: str | None = None  # for the "learned" estimator (None: the shipped model)
    snr_given: bool = True  # False: the estimators are not told the SNR (as most files)
    power_spread_db: float = 0.0  # simulated sweeps: source powers spread over this (dB)
    given: tuple[GivenEstimates, ...] = ()
    fov: FieldOfView | None = None  # searched by the estimators other than "learned" (None:
    #                                 the default field of view)

    def meta(self) -> dict:
        """The settings as the report's JSON records them (the estimates given: their
        names and files)."""
        used = {k: v for k, v in self.__dict__.items() if k not in ("given", "fov")}
        if self.fov is not None:
            used["fov"] = asdict(self.fov)
        if self.given:
            used["given"] = [{"name": g.name, "path": g.path} for g in self.given]
        return used


@dataclass(frozen=True)
class ResultRow:
    """One (estimator, SNR, K) cell of the results table."""

    estimator: str
    snr_db: float
    K: str  # "1".."5", "all", "?" (no truth) or "file" (every scene of a file: pooled)
    n_scenes: int
    ms_per_scene: float
    metrics: dict = field(default_factory=dict)

    def flat(self) -> dict:
        """The row's fields, then its metrics (a metric of a field's name, as the summary's
        n_scenes, never overrides the row's: the console table reads the row's)."""
        row = {"estimator": self.estimator, "snr_db": self.snr_db, "K": self.K,
               "n_scenes": self.n_scenes, "ms_per_scene": self.ms_per_scene}
        return row | {k: v for k, v in self.metrics.items() if k not in row}


def run_estimator(name: str, scenes: SceneBatch, system: SystemConfig, known_K: bool,
                  batch_size: int, advance: Callable[[int], None] | None = None,
                  checkpoint: str | None = None, workers: int | None = None,
                  fov: FieldOfView | None = None) -> tuple[Estimates, float]:
    """Run one estimator over scenes in batches, each batch split into passes of at most
    MAX_CHUNK scenes run by ``workers`` CPU threads (None: one per core; as the
    :class:`risloc.pipeline.Localizer` does; :mod:`risloc.parallel`); ``fov``: the field
    of view searched by an estimator other than "learned" (None: the default); returns
    (estimates, seconds)."""
    fn = get_estimator(name, checkpoint, fov)
    parts, t0 = [], time.perf_counter()
    try:
        for lo in range(0, len(scenes), batch_size):
            sc = scenes[lo:lo + batch_size]
            parts.extend(run_in_chunks(
                lambda a, b, sc=sc: fn(sc[a:b], system, sc.K[a:b] if known_K else None),
                len(sc), workers, sc.y.device, MAX_CHUNK))
            if advance is not None:
                advance(len(sc))
    except ValueError as err:  # an estimator's own limit (a baseline's on a small RIS)
        if str(err).startswith(f"{name}:"):  # named by the estimator itself
            raise
        raise ValueError(f"{name}: {err}") from None
    seconds = time.perf_counter() - t0
    return concat_estimates(parts), seconds


def scene_crb(scenes: SceneBatch, system: SystemConfig, kind: str,
              index: torch.Tensor | None = None) -> CRBResult | None:
    """CRB of scenes with truth. Simulated scenes (their noise_var, powers and symbols
    known): ``kind``, for their true powers and noise. A file's scenes carry neither symbols
    nor powers: the stochastic bound for equal unit powers, with the noise that gives each
    scene its SNR (:func:`risloc.evaluation.crb.noise_var_for_snr`); a scene without an SNR
    at the noise and powers its measurements give at the true positions
    (:func:`risloc.evaluation.crb.noise_and_powers_at`). SingularFIMError where the bound
    cannot be computed in some scene. The noise and powers are found ``CRB_CHUNK`` scenes
    at a time, as the bound is (memory: about 0.75 MB a scene at once; a file without an
    SNR is one group of all its scenes). ``index``: the scenes' indices in their file, which
    a warning of a source the noise buries names (default their place in ``scenes``)."""
    if not scenes.has_truth or not len(scenes):  # (no scene: nothing to bound)
        return None
    if scenes.noise_var is not None:
        return crb_for_scenes(scenes, system, kind if scenes.symbols is not None
                              else "stochastic")
    noise, power, buried = [], [], []
    index = torch.arange(len(scenes)) if index is None else index
    for lo in range(0, len(scenes), CRB_CHUNK):
        sc = scenes[lo:lo + CRB_CHUNK]
        given = torch.isfinite(sc.snr_db)
        pos = (sc.azimuth, sc.elevation, sc.range_m)
        sigma2 = noise_var_for_snr(*pos, sc.H, sc.codes, torch.where(given, sc.snr_db, 0.0),
                                   system, sc.mask)
        powers = sc.mask.to(torch.float64)
        if not bool(given.all()):
            try:
                fitted, fitted_powers = noise_and_powers_at(*pos, sc.y, sc.H, sc.codes,
                                                            system, sc.mask, said=~given,
                                                            index=index[lo:lo + CRB_CHUNK],
                                                            buried=buried)
            except SingularFIMError as err:  # the scenes of the whole batch
                raise err.shifted(lo) from None
            sigma2 = torch.where(given, sigma2, fitted)
            powers = torch.where(given.unsqueeze(-1), powers, fitted_powers)
        noise.append(sigma2)
        power.append(powers)
    warn_buried(buried)  # once for the file's scenes, not once per chunk of them
    return crb_for_scenes(replace(scenes, noise_var=torch.cat(noise), powers=torch.cat(power)),
                          system, "stochastic", chunk_size=CRB_CHUNK)


CRB_CHUNK = 64  # scenes whose bound is computed at once (crb_for_scenes' default)


def _rows_for(name: str, m: Matching, scenes: SceneBatch, crb: CRBResult | None,
              seconds: float, snr_db: float, by_K: bool, extra: dict) -> list[ResultRow]:
    """The K = "all" row (its metrics plus ``extra``) and, if by_K, one row per true K."""
    ms = 1000 * seconds / max(len(scenes), 1)
    rows = [ResultRow(name, snr_db, "all", len(scenes), ms, asdict(summarize(m, crb)) | extra)]
    if by_K:
        for k in torch.unique(scenes.K).tolist():
            sel = scenes.K == k
            rows.append(ResultRow(name, snr_db, str(k), int(sel.sum()), ms,
                                  asdict(summarize(m[sel], crb[sel] if crb is not None else None))))
    return rows


def sweep_points(settings: SweepSettings, cfg: RislocConfig) -> Iterable[tuple[float, SceneBatch]]:
    """Simulated scenes per SNR point (K values concatenated), disjoint seed streams."""
    Ks = settings.K or (None,)
    scene = cfg.scene.model_copy(update={"power_spread_db": settings.power_spread_db})
    for i, snr in enumerate(settings.snr_db):
        parts = [simulate_range(0, settings.n_per_point, cfg.system, scene, settings.seed,
                                "test", stream=100 + i * 16 + (k or 0), snr_db=snr, K=k)
                 for k in Ks]
        yield snr, concat_batches(parts)


def file_points(scenes: SceneBatch, bin_db: float = 5.0, offset: int = 0
                ) -> Iterable[tuple[float, SceneBatch, torch.Tensor]]:
    """A user's file grouped by SNR (:func:`risloc.evaluation.metrics.snr_groups`): bins of
    ``bin_db`` dB, each labelled with the mean SNR of its scenes; the scenes without an SNR
    as one last group labelled NaN. No scene is left out. Yields (label, scenes, their
    indices in the file: ``offset`` + their index in ``scenes``, a slice from there)."""
    for label, sel in snr_groups(scenes.snr_db, bin_db):
        yield label, scenes[sel], sel.nonzero().flatten() + offset


def evaluate_points(points: Iterable[tuple], system: SystemConfig,
                    settings: SweepSettings, progress=None,
                    pooled: bool = False) -> list[ResultRow]:
    """Run every estimator on every point, (label, scenes) or (label, scenes, their indices
    in a file: :func:`file_points`, for the scenes left out); ``progress`` is a rich
    Progress or None.

    With the truth known, the first estimator is the reference: every other one's K = "all"
    row also holds ``reference`` and the standard errors of its differences to it on the
    same scenes (``se_f1_diff``, ``se_K_accuracy_diff``, ``se_<coordinate>_median_ratio``,
    ...; :func:`risloc.evaluation.metrics.paired_bootstrap_se`) and its medians over the
    reference's on the true sources both pair (``<coordinate>_median_ratio_common``,
    :func:`risloc.evaluation.metrics.common_median_ratios`). ``pooled`` (a file's SNR
    groups) adds, where there is more than one point, a row per estimator over every
    scene, K = "file" and SNR NaN (no CRB: its scenes' SNRs differ or are unknown).

    Scenes no estimator can localize (:func:`risloc.core.scene_problems`: all-zero or
    non-finite measurements) are left out of every estimator's metrics and counted as
    ``scenes_left_out`` in the K = "all" / "?" / "file" rows (``risloc localize`` counts them
    as scenes whose sources are all missed)."""
    rows: list[ResultRow] = []
    left_total = 0
    kept: dict[str, tuple[list[Matching], list[float]]] = {}  # per estimator, for pooling
    n_points = 0
    for snr, scenes, *where in points:  # where: the scenes' indices in a file, if given
        reasons, ok = left_out(scenes, system)
        if reasons:  # one check path for every estimator: bad scenes are left out
            for i, why in reasons[:20]:
                log.warning("scene %d left out: %s", int(where[0][i]) if where else i, why)
            log.warning("%d of the %d scenes%s left out (reasons above)", len(reasons),
                        len(scenes), f" of the {snr:g} dB bin" if where and not
                        math.isnan(snr) else " without an SNR" if where else "")
            scenes = scenes[ok]
        left = {"scenes_left_out": len(reasons)}
        left_total += len(reasons)
        if len(scenes) == 0:
            continue
        n_points += 1
        index = where[0][ok] if where else torch.arange(len(scenes))
        try:
            crb = scene_crb(scenes, system, settings.crb, index)
        except SingularFIMError as err:  # e.g. two true sources at one place, or > 100 dB
            log.warning("no CRB beside the metrics%s: the %s is singular in scene(s) %s: %s",
                        f" at {snr:g} dB" if not math.isnan(snr) else "", err.what,
                        [int(index[i]) for i in err.scenes], err.why)
            crb = None
        reference = None  # (name, matching) of the first estimator: the others' SEs are paired
        given = {g.name: g.estimates for g in settings.given}
        if given and not where:
            raise ValueError("estimates made elsewhere are scored on a scene file's scenes")
        for name in (*settings.estimators, *given):
            if name in given:  # (the file's scenes of this point, the bad ones left out)
                est, sec = given[name][where[0][ok]], math.nan
            else:
                est, sec = _run_point(name, scenes, system, settings, progress, snr)
            if scenes.has_truth:
                m = match_sources(est, scenes.azimuth, scenes.elevation, scenes.range_m,
                                  scenes.K)
                reference = reference or (name, m)
                extra = left if reference[0] == name else {
                    "reference": reference[0], **left, **common_median_ratios(m, reference[1]),
                    **{f"se_{k}": v for k, v in paired_bootstrap_se(m, reference[1]).items()}}
                rows.extend(_rows_for(name, m, scenes, crb, sec, snr, by_K=True, extra=extra))
                parts, seconds = kept.setdefault(name, ([], []))
                parts.append(m)
                seconds.append(sec)
            else:
                rows.append(ResultRow(name, snr, "?", len(scenes), 1000 * sec / len(scenes),
                                      dict(left)))
    if pooled and n_points > 1 and kept:
        rows.extend(_pooled_rows(kept, left_total))
    return rows


def _run_point(name: str, scenes: SceneBatch, system: SystemConfig, settings: SweepSettings,
               progress, snr: float) -> tuple[Estimates, float]:
    """One estimator on one point's scenes (the SNR withheld unless ``snr_given``), with
    its progress bar; (estimates, seconds)."""
    task = None
    if progress is not None:
        label = "unknown SNR" if math.isnan(snr) else f"{snr:g} dB"
        task = progress.add_task(f"{name} @ {label}", total=len(scenes))
    seen = scenes if settings.snr_given else replace(
        scenes, snr_db=torch.full_like(scenes.snr_db, math.nan))
    return run_estimator(
        name, seen, system, settings.known_K, settings.batch_size,
        (lambda n, t=task: progress.advance(t, n)) if task is not None else None,
        settings.checkpoint, fov=settings.fov)


def left_out(scenes: SceneBatch, system: SystemConfig
              ) -> tuple[list[tuple[int, str]], torch.Tensor]:
    """(scene, reason) for the scenes of a point that cannot be evaluated, and the mask of
    the others: measurements no estimator can localize (:func:`risloc.core.scene_problems`)
    or truth that cannot be scored (a file read with ``truth="unchecked"``:
    :func:`risloc.io.scenefile.batch_truth_problems`)."""
    check = scene_problems(scenes.y, scenes.H, scenes.codes)
    ok = check.ok.clone()
    reasons = list(check.reasons)
    if scenes.has_truth:
        for i, why in batch_truth_problems(scenes, system.K_max):
            if ok[i]:
                ok[i] = False
                reasons.append((i, f"truth that cannot be scored ({why})"))
    return sorted(reasons), ok


def _pooled_rows(kept: dict[str, tuple[list[Matching], list[float]]], left_out: int
                 ) -> list[ResultRow]:
    """One K = "file" row per estimator over all its points' scenes, the first estimator the
    reference of the paired standard errors (as in each point's rows)."""
    names = list(kept)
    whole = {n: concat_matchings(kept[n][0]) for n in names}
    rows = []
    for name in names:
        m = whole[name]
        extra = {"scenes_left_out": left_out} if name == names[0] else {
            "reference": names[0], "scenes_left_out": left_out,
            **common_median_ratios(m, whole[names[0]]),
            **{f"se_{k}": v for k, v in paired_bootstrap_se(m, whole[names[0]]).items()}}
        rows.append(ResultRow(name, math.nan, "file", len(m),
                              1000 * sum(kept[name][1]) / max(len(m), 1),
                              asdict(summarize(m)) | extra))
    return rows


def write_results(rows: list[ResultRow], out_dir: Path, meta: dict) -> tuple[Path, Path]:
    """metrics.csv (one row per estimator x SNR x K) and metrics.json (with meta)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = [r.flat() for r in rows]
    keys = list(dict.fromkeys(k for row in flat for k in row))
    csv_path, json_path = out_dir / "metrics.csv", out_dir / "metrics.json"
    write_csv_atomic(csv_path, keys, flat)
    write_json_atomic(json_path, {"meta": meta, "rows": flat}, default=str)
    return csv_path, json_path
