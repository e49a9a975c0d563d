"""Simulator throughput: scenes/s in memory and scenes/s + MB/s written to HDF5.

    python benchmarks/bench_simulate.py [--n 20480] [--repeats 5] [--out FILE.json]

Target (issue 2): >= 2,000 default-system scenes/s in one process on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from risloc import __version__
from risloc.config import RislocConfig
from risloc.io import SceneFileWriter
from risloc.simulation import BLOCK, simulate_range


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20480)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/simulate.json"))
    args = ap.parse_args()
    cfg = RislocConfig()
    simulate_range(0, BLOCK, cfg.system, cfg.scene)  # warm-up
    mem, disk, mbps = [], [], []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        simulate_range(0, args.n, cfg.system, cfg.scene, seed=rep)
        mem.append(args.n / (time.perf_counter() - t0))
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "s.h5"
            t0 = time.perf_counter()
            with SceneFileWriter(path, args.n, cfg.system, {"config": cfg.to_json()}) as w:
                for lo in range(0, args.n, 4 * BLOCK):
                    hi = min(lo + 4 * BLOCK, args.n)
                    w.write(lo, simulate_range(lo, hi, cfg.system, cfg.scene, seed=rep))
            dt = time.perf_counter() - t0
            disk.append(args.n / dt)
            mbps.append(path.stat().st_size / 1e6 / dt)
    res = {
        "n_scenes": args.n, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "median_scenes_per_s_in_memory": statistics.median(mem),
        "median_scenes_per_s_to_hdf5": statistics.median(disk),
        "median_MB_per_s_to_hdf5": statistics.median(mbps),
        "risloc_version": __version__,
    }
    print(f"simulate, default system, {args.n} scenes x {args.repeats} repeats "
          f"({torch.get_num_threads()} threads)")
    print(f"  in memory : {res['median_scenes_per_s_in_memory']:8.0f} scenes/s (median)")
    print(f"  to HDF5   : {res['median_scenes_per_s_to_hdf5']:8.0f} scenes/s, "
          f"{res['median_MB_per_s_to_hdf5']:.0f} MB/s (median)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
