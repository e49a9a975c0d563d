"""Learned against classical localizer, side by side, under the conditions users have.

    python benchmarks/bench_versus.py [--n 400] [--split test] [--snrs -5 0 5 10 15 20]
                                      [--checkpoint PATH] [--no-known-K] [--repeats 5]
                                      [--classical-cache DIR] [--out reports/bench/versus.json]

Four conditions, each on the same scenes per SNR (the power spread changes the source
powers only; sources, channel, codes, symbols' phases and noise are shared):

* SNR given / withheld (``snr_db=None``, as for files without an ``snr_db`` dataset);
* equal powers / powers spread over 12 dB (``scene.power_spread_db``).

For each condition and SNR (K unknown, uniform in 1..5; and, unless ``--no-known-K``, with
the true K given to both localizers): K accuracy, F1, median |error| of azimuth,
elevation, range, and the learned/classical ratio of each median. Each localizer's medians
are over the true sources it pairs with an estimate, so a localizer that reports more weak
sources takes harder ones into its median; the ratio over the true sources *both* pair
(``ratio_common``) compares the two on the same sources and is printed beside it. Both
localizers run through :class:`risloc.pipeline.Localizer` (the batch split over one worker
per core). Throughput of both is timed in the same run, interleaved, on one 256-scene batch (SNR
withheld, equal powers, SNR uniform in -5..20 dB), median of ``--repeats``.

At the end the targets of the issue on the learned localizer are checked and printed, each
with its margin (positive: met) and the standard error of that margin: a paired bootstrap
over the scenes (:func:`risloc.evaluation.paired_bootstrap_se`, 1,000 resamples), so a
miss within noise reads differently from a real one. The tables of docs/results.md and the
list of missed targets are written beside the JSON (``<out>.md``).

``--classical-cache DIR`` stores the classical estimates (they do not depend on the
model) and reuses them in later runs while the classical localizer's code is unchanged (the
file names carry a digest of it); each row of the JSON says whether its classical estimates
came from the cache (``classical_from_cache``). With K given the classical localizer does
not read the SNR, so its SNR-withheld rows reuse the estimates of the SNR-given ones. The
committed ``versus.json`` (757cbdf) read
them from the cache written by the full run before it, whose tables it reproduced exactly.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from risloc.config import RislocConfig
from risloc.core.params import Estimates
from risloc.evaluation import (
    common_median_ratios,
    match_sources,
    paired_bootstrap_se,
    summarize,
)
from risloc.io.atomic import write_text_atomic
from risloc.parallel import default_workers
from risloc.pipeline import Localizer
from risloc.simulation import simulate_range

SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0)
SPREAD_DB = 12.0
SEED = {"test": 2026, "validation": 2027}
CONDITIONS = [(snr_given, spread) for spread in (0.0, SPREAD_DB) for snr_given in (True, False)]
BATCH = 256


def add_row(rows: list[dict], lines: list[str], row: dict, line: str) -> None:
    """Keep a benchmark's row and its table line, and print the line as it comes."""
    rows.append(row)
    lines.append(line)
    print(line, flush=True)


def write_table(out: Path, record: dict, lines: list[str]) -> None:
    """A benchmark's JSON record at ``out`` and its printed table at ``<out>.txt``, each
    written atomically (the folder made where missing)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(record, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".txt"), "\n".join(lines) + "\n")


def condition_name(snr_given: bool, spread: float) -> str:
    return (f"SNR {'given' if snr_given else 'withheld'}, "
            f"{'equal powers' if spread == 0 else f'powers spread {spread:g} dB'}")


def scenes_at(split: str, n: int, snr: float, spread: float, index: int):
    cfg = RislocConfig()
    scene = cfg.scene.model_copy(update={"power_spread_db": spread})
    return simulate_range(0, n, cfg.system, scene, seed=SEED[split], split=split,
                          stream=800 + index, snr_db=snr)


def localize(loc: Localizer, sc, snr_given: bool, known_K: bool) -> Estimates:
    parts = []
    for lo in range(0, len(sc), BATCH):
        s = sc[lo:lo + BATCH]
        parts.append(loc.localize(s.y, s.H, s.codes, s.snr_db if snr_given else None,
                                  K=s.K if known_K else None).estimates)
    return Estimates(*(torch.cat([getattr(p, f) for p in parts])
                       for f in ("K", "azimuth", "elevation", "range_m", "score")))


# every module the classical estimates and the scenes depend on (what importing
# risloc.estimators.classical and risloc.simulation loads, and the Localizer's path); a review
# found the key missed config.py (scene and classical defaults), simulation/streams.py, the
# channel and codebooks, so a cache could pair old classical estimates with new scenes
CLASSICAL_SOURCES = (
    "__init__.py", "config.py", "parallel.py", "core/__init__.py", "core/checks.py",
    "core/operator.py", "core/params.py", "covariance/__init__.py", "covariance/tools.py",
    "estimators/__init__.py", "estimators/classical.py", "estimators/grids.py",
    "estimators/nfmle.py", "estimators/order.py", "physics/__init__.py", "physics/channel.py",
    "physics/codebooks.py", "physics/geometry.py", "physics/rng.py", "physics/steering.py",
    "pipeline/localizer.py", "simulation/__init__.py", "simulation/scenes.py",
    "simulation/streams.py")


@functools.cache  # (the sources do not change within a run: read once, not per cell)
def _classical_key() -> str:
    """Digest of the sources the classical estimates depend on (cache invalidation)."""
    import risloc

    root = Path(risloc.__file__).parent
    h = hashlib.sha256()
    for rel in CLASSICAL_SOURCES:
        h.update((root / rel).read_bytes())
    h.update(Path(__file__).read_bytes())  # (its own scene settings: SEED, SPREAD_DB, ...)
    return h.hexdigest()[:12]


def classical_estimates(loc, sc, key: dict, cache: Path | None, snr_given, known_K):
    if cache is None:
        return localize(loc, sc, snr_given, known_K), False
    name = "_".join(f"{k}{v}" for k, v in key.items()) + f"_{_classical_key()}.pt"
    path = cache / name
    if path.exists():
        return Estimates(**torch.load(path)), True
    est = localize(loc, sc, snr_given, known_K)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(asdict(est), path)
    return est, False


def _matching(est: Estimates, sc):
    return match_sources(est, sc.azimuth, sc.elevation, sc.range_m, sc.K)


def _summary(matching) -> dict:
    s = summarize(matching)
    return {"K_accuracy": s.K_accuracy, "f1": s.f1, "azimuth_median_deg": s.azimuth_median_deg,
            "elevation_median_deg": s.elevation_median_deg, "range_median_m": s.range_median_m,
            "n_detected": s.n_detected, "n_false_alarms": s.n_false_alarms,
            "n_missed": s.n_missed}


MEDIANS = ("azimuth_median_deg", "elevation_median_deg", "range_median_m")


def common_ratio(learned, classical) -> dict:
    """learned / classical median |error| over the true sources both pair with an estimate
    (the same sources for both; keys of :data:`MEDIANS`, plus ``n`` such sources)."""
    ratios = common_median_ratios(learned, classical)
    out: dict = {"n": int((learned.paired & classical.paired).sum())}
    for key in MEDIANS:
        out[key] = ratios[f"{key.split('_')[0]}_median_ratio_common"]
    return out


def accuracy(learned, classical, args) -> list[dict]:
    rows = []
    print("each pair: learned / classical; median ratios: learned over classical",
          flush=True)
    for i, snr in enumerate(args.snrs):  # the i-th SNR listed gets the i-th scene stream
        for spread in (0.0, SPREAD_DB):
            sc = scenes_at(args.split, args.n, snr, spread, i)
            learned_given, known_K_estimates = {}, None
            for snr_given in (True, False):
                for known_K in ((False, True) if args.known_K else (False,)):
                    # (the stream: an SNR listed at another place gets other scenes)
                    key = {"split": args.split, "n": args.n, "snr": snr, "stream": i,
                           "spread": spread, "given": int(snr_given), "knownK": int(known_K)}
                    if known_K and known_K_estimates is not None:
                        # with K given the classical localizer does not read the SNR (it
                        # uses it only to decide K): the estimates of the SNR-given run
                        est_c, cached = known_K_estimates
                    else:
                        est_c, cached = classical_estimates(classical, sc, key,
                                                            args.classical_cache, snr_given,
                                                            known_K)
                    if known_K:
                        known_K_estimates = (est_c, cached)
                    est_l = localize(learned, sc, snr_given, known_K)
                    m_l, m_c = _matching(est_l, sc), _matching(est_c, sc)
                    row = {"snr_db": snr, "snr_given": snr_given, "power_spread_db": spread,
                           "known_K": known_K, "scenes": len(sc),
                           "learned": _summary(m_l), "classical": _summary(m_c),
                           "classical_from_cache": cached}
                    row["ratio"] = {m: row["learned"][m] / row["classical"][m] for m in MEDIANS}
                    row["ratio_common"] = common_ratio(m_l, m_c)
                    row["se"] = paired_bootstrap_se(m_l, m_c)
                    if snr_given:
                        learned_given[known_K] = m_l
                    else:  # the learned localizer against itself given the SNR
                        row["se_withheld_vs_given"] = paired_bootstrap_se(
                            m_l, learned_given[known_K])
                    rows.append(row)
                    print_row(row)
    return rows


def print_row(r: dict) -> None:
    lr, cl, q, c = r["learned"], r["classical"], r["ratio"], r["ratio_common"]
    print(f"{r['snr_db']:5.0f} dB  {condition_name(r['snr_given'], r['power_spread_db']):42s}"
          f" {'K known' if r['known_K'] else 'K unknown':9s}  K acc {lr['K_accuracy']:.3f} / "
          f"{cl['K_accuracy']:.3f}  F1 {lr['f1']:.3f} / {cl['f1']:.3f}  median ratio az "
          f"{q['azimuth_median_deg']:.2f} el {q['elevation_median_deg']:.2f} r "
          f"{q['range_median_m']:.2f}  (az {lr['azimuth_median_deg']:.3f} / "
          f"{cl['azimuth_median_deg']:.3f} deg)  on sources both pair "
          f"{c['azimuth_median_deg']:.2f} {c['elevation_median_deg']:.2f} "
          f"{c['range_median_m']:.2f}", flush=True)


@torch.no_grad()
def throughput(learned, classical, repeats: int) -> dict:
    sc = scenes_at("test", BATCH, None, 0.0, 99)
    times = {"learned": [], "classical": []}
    pair = (("learned", learned), ("classical", classical))
    for i in range(repeats + 1):  # first round = warm-up; the order alternates by round
        for name, loc in (pair if i % 2 else pair[::-1]):
            t0 = time.perf_counter()
            loc.localize(sc.y, sc.H, sc.codes, None)
            times[name].append(time.perf_counter() - t0)
    out = {f"{k}_scenes_per_s": BATCH / statistics.median(v[1:]) for k, v in times.items()}
    out["speedup"] = out["learned_scenes_per_s"] / out["classical_scenes_per_s"]
    out["runs_s"] = times
    out["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"throughput (batch {BATCH}, SNR withheld, Localizer with {torch.get_num_threads()} "
          f"torch threads / {default_workers()} workers, median of {repeats}): learned "
          f"{out['learned_scenes_per_s']:.1f} scenes/s, classical "
          f"{out['classical_scenes_per_s']:.1f} scenes/s, ratio {out['speedup']:.2f}",
          flush=True)
    return out


def worst_median(ratios: dict) -> str:
    """The median (of MEDIANS) with the largest learned / classical ratio; a NaN one, a
    median neither localizer pairs, is the worst (max() skipped it unless it came first).
    The benchmarks' median targets share it."""
    return max(MEDIANS, key=lambda m: ratios[m] if math.isfinite(ratios[m]) else math.inf)


def rounded_margin(margin: float) -> float:
    """A target's margin (observed - threshold; met where >= 0) to 12 decimals: a
    difference of exactly the tolerance, e.g. 3 of 300 scenes, is met, not short by a
    float's -8.7e-18 (bench_corners.py's dft cell was). The benchmarks' checks share it."""
    return round(margin, 12)


def check_targets(rows: list[dict], speed: dict | None) -> list[dict]:
    """The issue's targets, one line per (condition, SNR, K given or not). ``margins``:
    per target (observed - threshold, its bootstrap standard error); positive is met."""
    out = []
    by = {(r["snr_db"], r["snr_given"], r["power_spread_db"], r["known_K"]): r for r in rows}
    for r in rows:
        snr, lr, cl, se = r["snr_db"], r["learned"], r["classical"], r.get("se", {})
        if snr < 0:
            continue
        f1_diff = lr["f1"] - cl["f1"]
        margins = {"F1 >= classical - 0.01": (f1_diff + 0.01, se.get("f1_diff"))}
        if not r["known_K"]:
            margins["K acc >= classical - 0.01"] = (
                lr["K_accuracy"] - cl["K_accuracy"] + 0.01, se.get("K_accuracy_diff"))
        if snr >= 5:
            worst = worst_median(r["ratio"])
            margins["medians <= 1.05x classical"] = (
                1.05 - r["ratio"][worst], se.get(worst.split("_")[0] + "_median_ratio"))
        if snr in (0.0, 5.0):
            margins["F1 >= classical + 0.05"] = (f1_diff - 0.05, se.get("f1_diff"))
        given = by.get((snr, True, r["power_spread_db"], r["known_K"]))
        if snr >= 10 and not r["snr_given"] and not r["known_K"] and given is not None:
            margins["withholding SNR costs <= 0.02 K acc"] = (
                lr["K_accuracy"] - given["learned"]["K_accuracy"] + 0.02,
                r.get("se_withheld_vs_given", {}).get("K_accuracy_diff"))
        margins = {k: (rounded_margin(m), se_) for k, (m, se_) in margins.items()}
        out.append({"snr_db": snr, "condition": condition_name(r["snr_given"],
                                                               r["power_spread_db"]),
                    "known_K": r["known_K"],
                    "checks": {k: m >= 0 for k, (m, _) in margins.items()},
                    "margins": margins, "ratio_common": r["ratio_common"]})
    if speed is not None:
        out.append({"condition": "throughput", "checks": {">= 5x classical":
                                                           speed["speedup"] >= 5.0}})
    return out


def missed_targets(targets: list[dict]) -> list[str]:
    """One line per missed target: where, by how much, and that in standard errors."""
    lines = []
    for t in targets:
        for k, ok in t["checks"].items():
            if ok:
                continue
            where = t["condition"] if "snr_db" not in t else (
                f"{t['snr_db']:.0f} dB, {t['condition']}, "
                f"{'K known' if t['known_K'] else 'K unknown'}")
            note = ""
            margin, se = t.get("margins", {}).get(k, (None, None))
            if margin is not None:
                note = f"; short by {-margin:.4f}" + (
                    f" (SE {se:.3f}: {-margin / se:.1f} SE)" if se else "")
            if k.startswith("medians"):
                c = t["ratio_common"]
                note += ("; on the true sources both pair: " +
                         " ".join(f"{m.split('_')[0][:2]} {c[m]:.2f}" for m in MEDIANS))
            lines.append(f"missed: {k} ({where}){note}")
    return lines


def print_targets(targets: list[dict]) -> None:
    n = sum(len(t["checks"]) for t in targets)
    lines = missed_targets(targets)
    print(f"\ntargets: {n - len(lines)} of {n} met")
    for line in lines:
        print("  " + line)
    # (margin, SE); a miss of SE 0 (the same on every scene) is counted, never within
    misses = [t["margins"][k] for t in targets for k, ok in t["checks"].items()
              if not ok and t.get("margins", {}).get(k, (0, None))[1] is not None]
    if misses:
        print(f"  of these, {sum(-m < 2 * se for m, se in misses)} of {len(misses)} within 2 "
              "standard errors of their threshold")


def markdown_tables(rows: list[dict]) -> str:
    """One markdown table per (K mode, condition), as in docs/results.md."""
    head = ("| SNR dB | K acc learned / classical | F1 learned / classical | median az ° learned "
            "/ classical | median ratio az / el / r | on sources both pair az / el / r |\n"
            "| ---: | ---: | ---: | ---: | ---: | ---: |")
    out = []
    for known_K in (False, True):
        for spread, snr_given in [(0.0, False), (0.0, True), (SPREAD_DB, False),
                                  (SPREAD_DB, True)]:
            sel = [r for r in rows if (r["known_K"], r["power_spread_db"], r["snr_given"])
                   == (known_K, spread, snr_given)]
            if not sel:
                continue
            out += [f"#### K {'known' if known_K else 'unknown'}, "
                    f"{condition_name(snr_given, spread)}", "", head]
            for r in sorted(sel, key=lambda r: r["snr_db"]):
                lr, cl = r["learned"], r["classical"]
                kacc = "—" if known_K else f"{lr['K_accuracy']:.3f} / {cl['K_accuracy']:.3f}"
                ratios = [" / ".join(f"{q[m]:.2f}" for m in MEDIANS)
                          for q in (r["ratio"], r["ratio_common"])]
                out.append(f"| {r['snr_db']:.0f} | {kacc} | {lr['f1']:.3f} / {cl['f1']:.3f} | "
                           f"{lr['azimuth_median_deg']:.3g} / {cl['azimuth_median_deg']:.3g} | "
                           f"{ratios[0]} | {ratios[1]} |")
            out.append("")
    return "\n".join(out)


def count_arg(text: str) -> int:
    """An argparse type: a whole number >= 1, refused before any work (0 failed late);
    the benchmarks' counts share it."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return n


def revision() -> str:
    """The commit checked out, ``+changes`` where src/ differs from it ("unknown" outside
    git): what a stored benchmark result was measured on."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=root).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True,
                               text=True, cwd=root).stdout.strip()
        return rev + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """What a speed depends on beside the code: the CPU, the cores this process may use
    (off Linux, the machine's), torch, Python, OMP_NUM_THREADS and the commit
    (:func:`revision`)."""
    info = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                if line.startswith("model name")), None) if info.exists() else None
    return {"cpu": cpu or platform.processor() or "unknown",
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "commit": revision()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="learned model (default: shipped)")
    ap.add_argument("--n", type=count_arg, default=400, help="scenes per SNR")
    ap.add_argument("--split", choices=sorted(SEED), default="test")
    ap.add_argument("--snrs", type=float, nargs="+", default=list(SNRS),
                    help="SNRs in dB; the i-th listed draws the i-th scene stream, so a "
                         "shorter list (--snrs 10) draws other scenes than the full run's "
                         "10 dB row")
    ap.add_argument("--no-known-K", dest="known_K", action="store_false")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (0: no timing)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--propose", choices=("music", "slots"), default="slots",
                    help="the learned pipeline's proposal stage (an ablation: 'music' proposes "
                         "MUSIC peaks on R_blend instead of the network's slots)")
    ap.add_argument("--classical-cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/versus.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    learned = Localizer.from_checkpoint(args.checkpoint)
    if args.propose == "music":
        from risloc.pipeline.learned import inference_music_config

        learned.pipeline.music = inference_music_config(learned.pipeline.fov)
    classical = Localizer(learned.system, "classical")
    t0 = time.perf_counter()
    rows = accuracy(learned, classical, args)
    speed = throughput(learned, classical, args.repeats) if args.repeats else None
    targets = check_targets(rows, speed)
    print_targets(targets)
    res = {"command": " ".join(sys.argv), "checkpoint": args.checkpoint or "shipped",
           "propose": args.propose,
           "split": args.split, "scenes_per_snr": args.n, "power_spread_db": SPREAD_DB,
           "threads": args.threads, "workers": default_workers(), "machine": machine(),
           "rows": rows,
           "throughput": speed, "targets": targets,
           "wall_s": time.perf_counter() - t0}
    write_text_atomic(args.out, json.dumps(res, indent=2, default=lambda x: None if isinstance(
        x, float) and math.isnan(x) else str(x)) + "\n")
    write_text_atomic(args.out.with_suffix(".md"), markdown_tables(rows) + "\n#### Missed "
                      "targets\n\n" + "".join(f"- {line}\n" for line in missed_targets(targets)))


if __name__ == "__main__":
    main()
