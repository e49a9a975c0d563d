"""Speed of the Cramer-Rao bounds: ms per scene for a batch of 256 default-system scenes
(K uniform in 1..5), one torch thread, median of 5 runs after a warm-up.

    python3 benchmarks/bench_crb.py [--out reports/bench/crb.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from risloc.config import RislocConfig
from risloc.evaluation.crb import crb_for_scenes
from risloc.io.atomic import write_text_atomic
from risloc.simulation import simulate_range


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("reports/bench/crb.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = RislocConfig()
    sc = simulate_range(0, 256, cfg.system, cfg.scene, seed=1, split="test")
    res = {}
    for kind in ("deterministic", "stochastic"):
        crb_for_scenes(sc[:8], cfg.system, kind)  # warm-up
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            crb_for_scenes(sc, cfg.system, kind)
            ts.append(time.perf_counter() - t0)
        res[kind] = 1000 * statistics.median(ts) / len(sc)
        print(f"{kind:>13} CRB: {res[kind]:.2f} ms/scene (batch 256, 1 thread)", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(a.out, json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
