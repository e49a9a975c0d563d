"""Per-call latency of the Python API for a tracker: one call per measurement.

    python benchmarks/bench_latency.py [--threads 1,2] [--batches 1,4,16,64]
                                       [--out benchmarks/results/latency.json]

For each localizer (the shipped learned model, Localizer.from_checkpoint(), and the
classical one on the default system), torch thread count and batch size: the wall time of
``Localizer.localize`` per call (median and p90 after two warm-up calls; fewer calls for
larger batches) and per scene. Also: the cost of building the Localizer and of its first
call (in this process, before any other call), RSS and call time over 200 one-scene calls
(leaks, slow-down), warnings logged per call, and the differences between scenes
localized alone and in one batch of 64. Simulated default scenes (test split, SNR drawn in
-5..20 dB, K in 1..5). Writes the JSON and a text copy (``<out>.txt``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from risloc.config import SystemConfig
from risloc.io.atomic import write_text_atomic
from risloc.pipeline import Localizer
from risloc.simulation import simulate_range

sys.path.insert(0, str(Path(__file__).parent))
from bench_versus import count_arg, machine  # noqa: E402

_SCENES = 128  # test scenes drawn; a batch takes its scenes from them


class _Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.n = 0

    def emit(self, record):
        self.n += 1


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def timed(loc: Localizer, sc, lo: int, hi: int) -> float:
    t = time.perf_counter()
    loc.localize(sc.y[lo:hi], sc.H[lo:hi], sc.codes[lo:hi])
    return time.perf_counter() - t


def latency(loc: Localizer, sc, batch: int, calls: int) -> dict:
    for i in range(2):  # warm-up
        timed(loc, sc, i * batch % len(sc), i * batch % len(sc) + batch)
    times = []
    for i in range(calls):
        lo = (i * batch) % (len(sc) - batch + 1)
        times.append(timed(loc, sc, lo, lo + batch))
    t = np.array(times) * 1e3
    return {"batch": batch, "calls": calls, "median_ms": float(np.median(t)),
            "p90_ms": float(np.percentile(t, 90)),
            "per_scene_ms": float(np.median(t) / batch)}


def drift(loc: Localizer, sc, calls: int, counter: _Count) -> dict:
    """RSS and call time over ``calls`` one-scene calls; warnings logged meanwhile."""
    counter.n = 0
    before = rss_mb()
    t = np.array([timed(loc, sc, i % len(sc), i % len(sc) + 1) for i in range(calls)]) * 1e3
    q = max(1, calls // 5)
    return {"calls": calls, "rss_before_mb": before, "rss_after_mb": rss_mb(),
            "median_first_ms": float(np.median(t[:q])), "median_last_ms": float(np.median(t[-q:])),
            "warnings": counter.n}


def alone_vs_batch(loc: Localizer, sc, n: int) -> dict:
    whole = loc.localize(sc.y[:n], sc.H[:n], sc.codes[:n]).to_numpy()
    alone = [loc.localize(sc.y[i], sc.H[i], sc.codes[i]).to_numpy() for i in range(n)]
    out = {"scenes": n, "K_differs": int(sum(int(a["K"][0]) != int(whole["K"][i])
                                             for i, a in enumerate(alone)))}
    for key in ("azimuth_deg", "elevation_deg", "range_m"):
        d = [np.nanmax(np.abs(a[key][0] - whole[key][i]), initial=0.0)
             for i, a in enumerate(alone) if int(a["K"][0]) == int(whole["K"][i])]
        out[f"max_abs_diff_{key}"] = float(np.max(d)) if d else math.nan
        if key == "azimuth_deg":  # the scenes beyond 0.01 deg, with their SNR
            same = [i for i, a in enumerate(alone) if int(a["K"][0]) == int(whole["K"][i])]
            far = [i for i, x in zip(same, d, strict=True) if x > 0.01]
            out["azimuth_over_0.01deg"] = [[i, round(float(sc.snr_db[i]), 1)] for i in far]
    return out




def main() -> None:
    p = argparse.ArgumentParser(description="Per-call latency of Localizer.localize for one "
                                "scene and small batches, first-call cost, memory and "
                                "warnings over repeated calls (a tracker's use).")
    p.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    p.add_argument("--batches", default="1,4,16,64", help="batch sizes, comma-separated")
    p.add_argument("--calls", type=count_arg, default=50, help="timed calls for a batch of one "
                   "(fewer for larger batches: at least 4)")
    p.add_argument("--drift-calls", type=count_arg, default=200, help="one-scene calls for RSS")
    p.add_argument("--methods", default="learned,classical")
    p.add_argument("--out", default="benchmarks/results/latency.json")
    args = p.parse_args()
    counter = _Count()
    logging.getLogger().addHandler(counter)
    try:
        threads = [count_arg(t) for t in args.threads.split(",")]
    except argparse.ArgumentTypeError as err:
        p.error(f"argument --threads: {err}")
    try:
        batches = [count_arg(b) for b in args.batches.split(",")]
    except argparse.ArgumentTypeError as err:
        p.error(f"argument --batches: {err}")
    if max(batches) > _SCENES:
        p.error(f"argument --batches: at most {_SCENES} scenes (the scenes drawn), got "
                f"{max(batches)}")
    torch.set_num_threads(threads[0])
    sc = simulate_range(0, _SCENES, SystemConfig(), seed=7, split="test")
    result = {**machine(), "methods": {}}
    for method in args.methods.split(","):
        torch.set_num_threads(threads[0])
        counter.n = 0
        t0 = time.perf_counter()
        loc = (Localizer.from_checkpoint() if method == "learned"
               else Localizer(SystemConfig(), "classical"))
        build = time.perf_counter() - t0
        first = timed(loc, sc, 0, 1)
        r = {"build_s": build, "first_call_s": first, "warnings_at_build_and_first": counter.n,
             "latency": []}
        for n in threads:
            torch.set_num_threads(n)
            for b in batches:
                calls = max(4, args.calls * 4 // (4 * max(1, b // 2))) if b > 1 else args.calls
                r["latency"].append({"threads": n, **latency(loc, sc, b, min(calls, args.calls))})
                print(method, r["latency"][-1], flush=True)
        torch.set_num_threads(threads[0])
        r["drift"] = drift(loc, sc, args.drift_calls, counter)
        r["alone_vs_batch64"] = alone_vs_batch(loc, sc, 64)
        print(method, r["drift"], r["alone_vs_batch64"], flush=True)
        result["methods"][method] = r
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=1))
    lines = [f"torch {result['torch']}, {result['cores']} cores of {result['cpu']}; per-call "
             "latency of Localizer.localize (default system, simulated test scenes)"]
    for method, r in result["methods"].items():
        lines.append(f"\n{method}: build {r['build_s']:.2f} s, first one-scene call "
                     f"{r['first_call_s'] * 1e3:.0f} ms, warnings "
                     f"{r['warnings_at_build_and_first']}")
        lines.append("threads batch calls median_ms p90_ms per_scene_ms")
        for x in r["latency"]:
            lines.append(f"{x['threads']:7d} {x['batch']:5d} {x['calls']:5d} {x['median_ms']:9.1f} "
                         f"{x['p90_ms']:6.1f} {x['per_scene_ms']:12.1f}")
        lines.append(f"drift: {json.dumps(r['drift'])}")
        lines.append(f"alone vs batch of 64: {json.dumps(r['alone_vs_batch64'])}")
    write_text_atomic(out.with_suffix(".txt"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
