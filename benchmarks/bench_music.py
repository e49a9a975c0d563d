"""Benchmark of near-field MUSIC and the Ramezani et al. (2024) baseline.

(a) Oracle MUSIC on the exact covariance R_true (K known, default system, K ~ U{1..5}):
    median great-circle angle error [deg], median |range error| [m], the share of
    sources outside 0.02 deg / 1 cm, and ms per scene (batch 64, median over repeats).
    Targets (issue 3): median angle <= 0.02 deg, range <= 1 cm, <= 20 ms/scene on 2 cores.
(b) Accuracy vs ms for a few coarse-grid sizes (justifies the MusicConfig defaults).
(c) MUSIC and Ramezani on the back-projected sample covariance R_samp at 10 and 20 dB,
    K known (expected to be poor: R_samp has rank <= L and a weak subspace), and
    Ramezani on R_true for reference.

Errors are paired by risloc.evaluation.metrics.match_sources (Hungarian); a source
counts as detected when its paired angle error is within 5 deg.

Timings: wall ms per scene of one batch of 64, median over repeats, for each thread
count in --threads (on a shared machine two threads can be slower than one).

    python benchmarks/bench_music.py [--quick] [--threads 1,2]
                                     [--out reports/bench/bench_music.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.core.params import Estimates
from risloc.covariance.tools import sample_covariance
from risloc.estimators.music import MusicConfig, music
from risloc.estimators.ramezani import ramezani_music
from risloc.evaluation.metrics import match_sources
from risloc.io.atomic import write_text_atomic
from risloc.simulation import SceneBatch, scene_true_covariance, simulate_range

SYSTEM, SCENE = SystemConfig(), SceneConfig()
GRIDS = [(41, 21, 16, 4.0), (61, 31, 8, 4.0), (61, 31, 16, 0.0), (61, 31, 16, 4.0),
         (61, 31, 24, 4.0), (81, 41, 16, 4.0)]


def _concat(parts: list[Estimates]) -> Estimates:
    return Estimates(*(torch.cat([getattr(p, f) for p in parts])
                       for f in ("K", "azimuth", "elevation", "range_m", "score")))


def run_batched(fn, R: torch.Tensor, K: torch.Tensor, batch: int) -> Estimates:
    return _concat([fn(R[i:i + batch], K[i:i + batch]) for i in range(0, len(K), batch)])


def ms_per_scene(fn, R: torch.Tensor, K: torch.Tensor, batch: int, repeats: int,
                 threads: list[int]) -> dict:
    """Wall time per scene of one batch: median and min over repeats, per thread count."""
    Rb, Kb = R[:batch], K[:batch]
    out = {}
    for n in threads:
        torch.set_num_threads(n)
        fn(Rb, Kb)  # warm-up (grid cache, allocator)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(Rb, Kb)
            times.append((time.perf_counter() - t0) * 1e3 / len(Kb))
        out[f"ms_per_scene_median_{n}t"] = statistics.median(times)
        out[f"ms_per_scene_min_{n}t"] = min(times)
    torch.set_num_threads(1)
    return out


def accuracy(est: Estimates, scenes: SceneBatch) -> dict:
    """Median / p90 errors over paired sources, outlier shares, detection rate."""
    m = match_sources(est, scenes.azimuth, scenes.elevation, scenes.range_m, scenes.K)
    ang = torch.rad2deg(m.angle_error[m.paired])
    rng = m.range_error[m.paired].abs()
    n_true = int(m.truth_mask.sum())
    return {
        "sources": n_true,
        "median_angle_deg": float(ang.median()), "p90_angle_deg": float(ang.quantile(0.9)),
        "median_range_m": float(rng.median()), "p90_range_m": float(rng.quantile(0.9)),
        "share_angle_gt_0.02deg": float((ang > 0.02).sum()) / n_true,
        "share_range_gt_1cm": float((rng > 0.01).sum()) / n_true,
        "detected_within_5deg": float(m.detected.sum()) / n_true,
    }


def oracle_grid_table(scenes: SceneBatch, R: torch.Tensor, args) -> list[dict]:
    """Parts (a) and (b): MUSIC on R_true for several coarse grids."""
    rows = []
    for na, ne, nr, valley in GRIDS:
        cfg = MusicConfig(n_azimuth=na, n_elevation=ne, n_range=nr, valley_step_deg=valley)
        fn = lambda R_, K_, c=cfg: music(R_, K_, SYSTEM, c)  # noqa: E731
        row = {"grid": f"{na}x{ne}x{nr}", "valley_step_deg": valley,
               "default": cfg == MusicConfig()}
        row.update(accuracy(run_batched(fn, R, scenes.K, args.batch), scenes))
        row.update(ms_per_scene(fn, R, scenes.K, args.batch, args.repeats, args.threads))
        rows.append(row)
    return rows


def sample_rows(args) -> list[dict]:
    """Part (c): MUSIC / Ramezani on R_samp at 10 and 20 dB, Ramezani on R_true."""
    estimators = {"music": lambda R_, K_: music(R_, K_, SYSTEM),
                  "ramezani": lambda R_, K_: ramezani_music(R_, K_, SYSTEM)}
    rows = []
    for snr in (10.0, 20.0):
        scenes = simulate_range(0, args.scenes, SYSTEM, SCENE, seed=args.seed, split="test",
                                stream=1, snr_db=snr)
        R = sample_covariance(scenes.y, scenes.H, scenes.codes)
        for name, fn in estimators.items():
            row = {"estimator": name, "covariance": "R_samp", "snr_db": snr}
            row.update(accuracy(run_batched(fn, R, scenes.K, args.batch), scenes))
            row.update(ms_per_scene(fn, R, scenes.K, args.batch, args.repeats, args.threads))
            rows.append(row)
    scenes = simulate_range(0, args.scenes, SYSTEM, SCENE, seed=args.seed, split="test")
    R = scene_true_covariance(scenes, SYSTEM)
    row = {"estimator": "ramezani", "covariance": "R_true", "snr_db": None}
    row.update(accuracy(run_batched(estimators["ramezani"], R, scenes.K, args.batch), scenes))
    row.update(ms_per_scene(estimators["ramezani"], R, scenes.K, args.batch, args.repeats,
                            args.threads))
    return rows + [row]


def print_tables(grid_rows: list[dict], samp_rows: list[dict], threads: list[int]) -> None:
    ms_head = " ".join(f"{f'ms@{n}t':>7}" for n in threads)
    ms = lambda r: " ".join(f"{r[f'ms_per_scene_median_{n}t']:7.2f}" for n in threads)  # noqa: E731
    print("MUSIC on R_true (K known), accuracy vs grid (ms: median over repeats, batch):")
    print(f"{'grid':>10} {'valley':>6} {'med deg':>9} {'med m':>9} {'>0.02deg':>9} "
          f"{'>1cm':>7} {ms_head}")
    for r in grid_rows:
        mark = " *" if r["default"] else ""
        print(f"{r['grid']:>10} {r['valley_step_deg']:6.1f} {r['median_angle_deg']:9.2e} "
              f"{r['median_range_m']:9.2e} {100 * r['share_angle_gt_0.02deg']:8.3f}% "
              f"{100 * r['share_range_gt_1cm']:6.3f}% {ms(r)}{mark}")
    print("\nOn R_samp / R_true (K known):")
    print(f"{'estimator':>9} {'cov':>6} {'snr':>5} {'med deg':>9} {'p90 deg':>8} {'med m':>7} "
          f"{'det<5deg':>8} {ms_head}")
    for r in samp_rows:
        snr = "-" if r["snr_db"] is None else f"{r['snr_db']:.0f}"
        print(f"{r['estimator']:>9} {r['covariance']:>6} {snr:>5} {r['median_angle_deg']:9.3f} "
              f"{r['p90_angle_deg']:8.2f} {r['median_range_m']:7.3f} "
              f"{r['detected_within_5deg']:8.3f} {ms(r)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=None, help="default 384 (--quick: 128)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=None, help="default 5 (--quick: 3)")
    p.add_argument("--threads", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2],
                   help="comma-separated thread counts to time (accuracy runs use 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="128 scenes, 3 repeats, unless --scenes / --repeats say otherwise")
    p.add_argument("--out", type=Path, default=Path("reports/bench/bench_music.json"))
    args = p.parse_args()
    if args.scenes is None:
        args.scenes = 128 if args.quick else 384
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    torch.set_num_threads(1)  # accuracy runs; timings set their own thread counts
    scenes = simulate_range(0, args.scenes, SYSTEM, SCENE, seed=args.seed, split="test")
    R = scene_true_covariance(scenes, SYSTEM)
    grid_rows = oracle_grid_table(scenes, R, args)
    samp_rows = sample_rows(args)
    print_tables(grid_rows, samp_rows, args.threads)
    default = next(r for r in grid_rows if r["default"])
    best_ms = min(default[f"ms_per_scene_median_{n}t"] for n in args.threads)
    out = {"benchmark": "bench_music", "scenes": args.scenes, "batch": args.batch,
           "threads": args.threads, "repeats": args.repeats, "load_average": os.getloadavg(),
           "system": SYSTEM.model_dump(), "music_config": asdict(MusicConfig()),
           "oracle_default": default,
           "targets": {"median_angle_deg": 0.02, "median_range_m": 0.01, "ms_per_scene": 20.0},
           "targets_met": {"angle": default["median_angle_deg"] <= 0.02,
                           "range": default["median_range_m"] <= 0.01,
                           "ms": best_ms <= 20.0},
           "ms_per_scene_best_thread_count": best_ms,
           "grid_table": grid_rows, "sample_covariance": samp_rows,
           "angle_unit": "deg (great-circle)", "range_unit": "m",
           "notes": "timings on a shared CPU (see load_average); medians over repeats"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
