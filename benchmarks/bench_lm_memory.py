"""Peak memory and time of the NF-MLE LM loop on its two routes, one large batch in one pass.

    python benchmarks/bench_lm_memory.py [--batch 2048] [--repeats 3] [--iterations 3]

A GPU runs the fit stage in passes of up to ``NFMLEConfig.device_chunk`` scenes (8,192) on
the masked route (``NFMLEConfig.masked``), whose iterations evaluate several candidate sets
per scene at once: its memory, not the CPU's 256-scene chunks, bounds the batch a device
takes in one pass. This runs :func:`risloc.estimators.nfmle.lm_solve` on ``--batch``
test-split scenes (K = 5, 10 dB, starts 0.01 rad off the truth in azimuth, float32 as the
learned localizer's polish) in a fresh process per measurement, on the CPU, and prints the
growth of the process's peak resident memory during the call, its seconds and the final
mean cost (the routes reach the same point up to rounding). Runs alternate between routes.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from risloc.config import RislocConfig
from risloc.core.params import pack
from risloc.estimators import nfmle
from risloc.io.atomic import write_text_atomic
from risloc.simulation.streams import simulate_range


def measure(batch: int, masked: bool, iterations: int) -> dict:
    """One lm_solve in this process; peak RSS growth [MB], seconds, mean final cost."""
    torch.set_num_threads(2)
    cfg = RislocConfig()
    sc = simulate_range(0, batch, cfg.system, cfg.scene, 0, "test", snr_db=10.0, K=5)
    cplx = torch.complex64
    mask = torch.ones(batch, 5, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    theta = pack(sc.azimuth.float() + 0.01 * torch.randn(batch, 5, generator=gen),
                 sc.elevation.float(), sc.range_m.float())
    y, H, codes = sc.y.to(cplx), sc.H.to(cplx), sc.codes.to(cplx)
    conf = nfmle.NFMLEConfig(iterations=iterations, double=False, masked=masked)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    _, _, history = nfmle.lm_solve(y, H, codes, theta, mask, cfg.system, conf)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_mb": (peak - base) / 1024, "seconds": seconds,
            "cost": float(history[-1].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/lm_memory.json"))
    ap.add_argument("--one", choices=["masked", "shrinking"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:  # a child: one measurement
        print(json.dumps(measure(a.batch, a.one == "masked", a.iterations)))
        return
    runs: dict[str, list[dict]] = {"masked": [], "shrinking": []}
    for _ in range(a.repeats):
        for route in runs:
            out = subprocess.run([sys.executable, __file__, "--one", route, "--batch",
                                  str(a.batch), "--iterations", str(a.iterations)],
                                 capture_output=True, text=True, check=True).stdout
            runs[route].append(json.loads(out.strip().splitlines()[-1]))
    lines = [f"lm_solve, {a.batch} scenes in one pass, K = 5, {a.iterations} iterations, "
             f"float32, CPU ({a.repeats} runs per route, medians)"]
    for route, rs in runs.items():
        mb = statistics.median(r["peak_mb"] for r in rs)
        sec = statistics.median(r["seconds"] for r in rs)
        lines.append(f"{route:10s} peak RSS growth {mb:7.0f} MB  {sec:6.2f} s  "
                     f"mean cost {rs[0]['cost']:.6g}")
    print("\n".join(lines))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(a.out, json.dumps({"batch": a.batch, "iterations": a.iterations,
                                         "runs": runs}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
