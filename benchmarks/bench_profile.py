"""Where the time of the fit stage and of the classical localizer goes, by function, and
whether the classical localizer's chunk size is right.

    python benchmarks/bench_profile.py [--scenes 64] [--repeats 3]
                                       [--out reports/bench/profile.json]

One thread, ``--scenes`` test-split scenes (as ``bench_roofline.py``):

* **By function**: the inclusive seconds of the main functions of
  :mod:`risloc.estimators.mlfit` (the learned pipeline's fit stage) and of
  :mod:`risloc.estimators.classical`, each wrapped for the timed runs (calls nested in
  another timed function count in both: the shares overlap), median of ``--repeats`` after
  a warm-up, with the share of the whole.
* **Classical chunk size**: the classical localizer with 16, 32 (the default) and 64 scenes
  per pass, interleaved, median of ``--repeats``; the largest position difference to 16
  scenes per pass and whether K is identical.
* **By operation** (``--ops N``, 0 = off): the N PyTorch operations of largest self time in
  one more run of each, by input shapes (``torch.profiler``): where a product takes several
  times what it takes in isolation, or an elementwise step over a few MB takes
  milliseconds, the time goes to fresh buffers, not arithmetic (how the classical
  localizer's buffers were found, docs/results.md "Speed").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from bench_pipeline import test_batch

from risloc.estimators import classical, mlfit
from risloc.io.atomic import write_text_atomic
from risloc.pipeline.learned import load_learned_pipeline

FUNCTIONS = {
    mlfit: ("lm_solve", "_repair", "residual_proposal", "_nested", "_fit", "removal_gains"),
    classical: ("_relax", "_search", "ols_statistic", "lm_solve", "_grid_columns",
                "nfmle_fit", "separate_cancelling"),
}


@contextmanager
def timed(module, names: tuple[str, ...], totals: dict[str, float]):
    """Wrap ``module.<name>`` for each name so that its inclusive seconds add up in
    ``totals``; restored on exit."""
    saved = {n: getattr(module, n) for n in names}

    def wrap(name: str, fn: Callable):
        def inner(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - t0
        return inner

    try:
        for n, fn in saved.items():
            setattr(module, n, wrap(n, fn))
        yield
    finally:
        for n, fn in saved.items():
            setattr(module, n, fn)


def by_function(module, run: Callable[[], object], repeats: int) -> dict:
    """Median total seconds of ``run`` and of each wrapped function of ``module``."""
    run()  # warm-up (grid steering caches, allocator)
    totals, per_fn = [], {n: [] for n in FUNCTIONS[module]}
    for _ in range(repeats):
        acc: dict[str, float] = {}
        with timed(module, FUNCTIONS[module], acc):
            t0 = time.perf_counter()
            run()
            totals.append(time.perf_counter() - t0)
        for n in per_fn:
            per_fn[n].append(acc.get(n, 0.0))
    total = statistics.median(totals)
    return {"total_s": total,
            "functions": {n: {"s": statistics.median(v), "share": statistics.median(v) / total}
                          for n, v in per_fn.items()}}


def chunk_sweep(pipe, y, H, codes, repeats: int, chunks=(16, 32, 64)) -> dict:
    base = classical.ClassicalConfig().with_fov(pipe.fov)
    times: dict[int, list[float]] = {c: [] for c in chunks}
    outs = {}
    for r in range(repeats + 1):
        for c in chunks:
            t0 = time.perf_counter()
            outs[c] = classical.classical_localize(y, H, codes, pipe.system,
                                                   config=replace(base, chunk=c))
            if r > 0:
                times[c].append(time.perf_counter() - t0)
    ref = outs[chunks[0]]
    return {c: {"s": statistics.median(times[c]),
                "K_identical": bool(torch.equal(outs[c].K, ref.K)),
                "max_azimuth_difference_rad": float(
                    (outs[c].azimuth - ref.azimuth).abs().nan_to_num().max())}
            for c in chunks}


def by_operation(run: Callable[[], object], n: int) -> list[dict]:
    """The ``n`` operations of largest self CPU time in one run of ``run`` (after the
    warm-ups above), grouped by name and input shapes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    rows = sorted(prof.key_averages(group_by_input_shape=True),
                  key=lambda e: -e.self_cpu_time_total)[:n]
    return [{"op": e.key, "shapes": str(e.input_shapes), "calls": e.count,
             "self_s": e.self_cpu_time_total / 1e6,
             "ms_per_call": e.self_cpu_time_total / 1e3 / max(e.count, 1)} for e in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ops", type=int, default=12,
                    help="operations of largest self time to list per part (0: none)")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/profile.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_learned_pipeline()
    y, H, codes = test_batch(args.scenes)
    codes = codes.to(torch.complex64)
    with torch.no_grad():
        starts = pipe.propose(pipe.forward(y, H, codes))
        runs = {"fit stage": (mlfit, lambda: pipe.fit(y, H, codes, starts, check=False)),
                "classical": (classical, lambda: classical.classical_localize(
                    y, H, codes, pipe.system,
                    config=classical.ClassicalConfig().with_fov(pipe.fov)))}
        report = {"scenes": args.scenes, "threads": 1}
        report.update({part: by_function(module, run, args.repeats)
                       for part, (module, run) in runs.items()})
        report["classical chunk"] = chunk_sweep(pipe, y, H, codes, args.repeats)
        if args.ops > 0:
            report["operations"] = {part: by_operation(run, args.ops)
                                    for part, (_, run) in runs.items()}
    for part in ("fit stage", "classical"):
        r = report[part]
        print(f"{part}: {r['total_s']:.3f} s per {args.scenes} scenes (inclusive, shares "
              "overlap)")
        for n, v in sorted(r["functions"].items(), key=lambda kv: -kv[1]["s"]):
            print(f"  {n:18s} {v['s']:7.3f} s  {100 * v['share']:5.1f} %")
    print("classical localizer by scenes per pass:")
    for c, v in report["classical chunk"].items():
        print(f"  chunk {c:3d}: {v['s']:.2f} s, K identical {v['K_identical']}, largest "
              f"azimuth difference {v['max_azimuth_difference_rad']:.1e} rad")
    for part, rows in report.get("operations", {}).items():
        print(f"{part}: operations of largest self time (one run, profiler overhead included)")
        for r in rows:
            print(f"  {r['self_s']:6.3f} s {r['calls']:6d} x {r['ms_per_call']:8.3f} ms  "
                  f"{r['op']:22s} {r['shapes'][:70]}")
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
