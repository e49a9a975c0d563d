"""Speed of the learned pipeline, stage by stage, beside the classical localizer.

    python benchmarks/bench_pipeline.py [--checkpoint PATH] [--batch 256] [--repeats 5]
                                        [--threads 2] [--out reports/bench/pipeline.json]

(a) End to end as users run it: :class:`risloc.pipeline.Localizer` on one batch of
    test-split scenes (SNR withheld, K unknown, SNR uniform in -5..20 dB, equal powers),
    the batch split over one worker thread per core; learned and classical interleaved,
    median of ``--repeats`` after a warm-up. Peak RSS of the process.
(b) The stages of ``LearnedPipeline.localize`` (forward, propose, fit, decide order,
    polish) on the serial path, timed through its ``on_stage`` hook (no copy of the method).
Accuracy is measured by ``benchmarks/bench_versus.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from risloc.config import RislocConfig
from risloc.core.checks import normalise_scale
from risloc.pipeline import Localizer
from risloc.pipeline.learned import STAGES, load_learned_pipeline
from risloc.simulation import simulate_range


def test_batch(n: int, device: str = "cpu"):
    cfg = RislocConfig()
    sc = simulate_range(0, n, cfg.system, cfg.scene, seed=2026, split="test", stream=700,
                        device=device)
    y, H = normalise_scale(sc.y, sc.H)  # as the Localizer feeds the pipeline
    return y.to(torch.complex64), H.to(torch.complex64), sc.codes


@torch.no_grad()
def stage_split(pipe, y, H, codes, repeats: int, sync=lambda: None) -> dict[str, float]:
    """Median seconds of each stage of ``pipe.localize`` (first run = warm-up); ``sync``
    closes each stage (a device sync on a GPU)."""
    times: dict[str, list[float]] = {k: [] for k in (*STAGES, "total")}
    for _ in range(repeats + 1):
        sync()
        stamps = [("start", time.perf_counter())]

        def mark(name: str, stamps=stamps) -> None:
            sync()
            stamps.append((name, time.perf_counter()))

        pipe.localize(y, H, codes, on_stage=mark)
        for (_, t0), (name, t1) in zip(stamps, stamps[1:]):
            times[name].append(t1 - t0)
        times["total"].append(stamps[-1][1] - stamps[0][1])
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def end_to_end(learned: Localizer, classical: Localizer, y, H, codes, repeats: int) -> dict:
    runs = {"learned": [], "classical": []}
    for _ in range(repeats + 1):
        for name, loc in (("learned", learned), ("classical", classical)):
            t0 = time.perf_counter()
            loc.localize(y, H, codes)
            runs[name].append(time.perf_counter() - t0)
    n = y.shape[0]
    out = {f"{k}_scenes_per_s": n / statistics.median(v[1:]) for k, v in runs.items()}
    out["speedup"] = out["learned_scenes_per_s"] / out["classical_scenes_per_s"]
    out["runs_s"] = runs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/pipeline.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_learned_pipeline(args.checkpoint)
    y, H, codes = test_batch(args.batch)
    learned = Localizer(pipe.system, "learned", pipe)
    classical = Localizer(pipe.system, "classical")
    e2e = end_to_end(learned, classical, y, H, codes, args.repeats)
    print(f"end to end (batch {args.batch}, Localizer, one worker per core, median of "
          f"{args.repeats}): learned {e2e['learned_scenes_per_s']:.1f} scenes/s, classical "
          f"{e2e['classical_scenes_per_s']:.1f} scenes/s, ratio {e2e['speedup']:.2f}",
          flush=True)
    stages = stage_split(pipe, y, H, codes, args.repeats)
    print(f"stages (serial, {torch.get_num_threads()} torch threads, batch {args.batch}): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()), flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MB")
    res = {"checkpoint": args.checkpoint or "shipped", "batch": args.batch,
           "threads": args.threads, "end_to_end": e2e, "stages_s": stages,
           "peak_rss_MB": rss}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
