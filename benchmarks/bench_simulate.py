"""Simulator throughput: scenes/s in memory and scenes/s + MB/s written to HDF5; and the
host's share of a training batch.

    python benchmarks/bench_simulate.py [--n 20480] [--repeats 5] [--training-batch 512]
                                        [--device cpu] [--out FILE.json]

Target (issue 2): >= 2,000 default-system scenes/s in one process on 2 CPU cores.

``--training-batch B`` (0 = off) times one batch of B scenes of the default training
recipe's scenes (configs/train_default.yaml, on its 1 thread), interleaved, medians of 4 x
``--repeats``:
simulated on the host, and its draws alone (``draw_scenes``): what the host still does with
``simulate_on=device``, where the physics runs on the training device. With ``--device
cuda`` also the whole batch drawn on the host and computed on the GPU (synchronised).
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
from risloc.io.atomic import write_text_atomic
from risloc.simulation import BLOCK, simulate_range
from risloc.simulation.scenes import draw_scenes, simulate_batch
from risloc.simulation.streams import block_generator
from risloc.training.config import load_train_config


def training_batch(batch: int, repeats: int, device: str) -> dict:
    """Seconds per training batch: simulated on the host, its draws alone, and (off the
    CPU) drawn on the host and computed on ``device``; interleaved, medians."""
    cfg = load_train_config(Path(__file__).parents[1] / "configs" / "train_default.yaml")
    threads = torch.get_num_threads()
    if cfg.threads:  # as the recipe trains (1 thread)
        torch.set_num_threads(cfg.threads)
    runs = {"host_s": lambda g: simulate_batch(batch, cfg.system, cfg.scene, g),
            "draws_only_s": lambda g: draw_scenes(batch, cfg.system, cfg.scene, g)}
    if device != "cpu":
        def on_device(g):
            out = simulate_batch(batch, cfg.system, cfg.scene, g, compute=device)
            torch.cuda.synchronize()
            return out
        runs["host_draws_device_physics_s"] = on_device
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(4 * repeats + 1):
        for name, run in runs.items():
            gen = block_generator(0, "train", i)
            t0 = time.perf_counter()
            run(gen)
            times[name].append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    res = {"batch": batch, "device": device, "torch_threads": cfg.threads or threads,
           **{k: statistics.median(v[1:]) for k, v in times.items()}}
    res["draws_share"] = res["draws_only_s"] / res["host_s"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20480)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--training-batch", type=int, default=512)
    ap.add_argument("--device", default="cpu")
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
    if args.training_batch:
        res["training_batch"] = tb = training_batch(args.training_batch, args.repeats,
                                                    args.device)
        print(f"  a training batch of {tb['batch']}: {tb['host_s'] * 1e3:.1f} ms on the host, "
              f"its draws {tb['draws_only_s'] * 1e3:.1f} ms ({tb['draws_share']:.2f}x)"
              + (f", drawn on the host and computed on {args.device} "
                 f"{tb['host_draws_device_physics_s'] * 1e3:.1f} ms"
                 if args.device != "cpu" else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
