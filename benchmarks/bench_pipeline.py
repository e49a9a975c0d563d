"""Speed of the learned pipeline, stage by stage, beside the classical localizer.

    python benchmarks/bench_pipeline.py [--checkpoint PATH] [--batch 256] [--repeats 5]
                                        [--threads 2] [--out reports/bench/pipeline.json]
                                        [--rss-batches 256 1024] [--known-K]

(a) End to end as users run it: :class:`risloc.pipeline.Localizer` on one batch of
    test-split scenes (SNR withheld, K unknown, SNR uniform in -5..20 dB, equal powers),
    the batch split over ``--threads`` worker threads (one per core), in passes of at most 64
    scenes (the default ``chunk``) and, for comparison in the same run, in one pass per worker
    (``chunk=None``, the behaviour before passes existed); all four interleaved, median of
    ``--repeats`` after a warm-up. The two learned settings' outputs are compared (K
    agreement, largest position difference).
(b) The stages of ``LearnedPipeline.localize`` (forward, propose, fit, decide order,
    polish) on the serial path, timed through its ``on_stage`` hook (no copy of the method).
(c) Peak RSS of a fresh process during one call localizing ``--rss-batches`` scenes, with
    and without passes (the peak is reset after the scenes are simulated: Linux
    /proc/self/clear_refs).
``--known-K`` gives both localizers the true K of each scene (the learned pipeline then also
repairs the chosen sources; ``LearnedPipeline.chosen_repairs``) in (a) and (b).
Accuracy is measured by ``benchmarks/bench_versus.py``.
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
from risloc.core.checks import normalise_scale
from risloc.io.atomic import write_text_atomic
from risloc.parallel import MAX_CHUNK
from risloc.pipeline import Localizer
from risloc.pipeline.learned import STAGES, load_learned_pipeline
from risloc.simulation import simulate_range

sys.path.insert(0, str(Path(__file__).parent))
from bench_versus import count_arg, machine  # noqa: E402


def test_scenes(n: int, device: str = "cpu"):
    cfg = RislocConfig()
    return simulate_range(0, n, cfg.system, cfg.scene, seed=2026, split="test", stream=700,
                          device=device)


def test_batch(n: int, device: str = "cpu"):
    sc = test_scenes(n, device)
    y, H = normalise_scale(sc.y, sc.H)  # as the Localizer feeds the pipeline
    return y.to(torch.complex64), H.to(torch.complex64), sc.codes


@torch.no_grad()
def stage_split(pipe, y, H, codes, repeats: int, sync=lambda: None, K=None
                ) -> dict[str, float]:
    """Median seconds of each stage of ``pipe.localize`` (first run = warm-up); ``sync``
    closes each stage (a device sync on a GPU); K [B] known counts or None."""
    times: dict[str, list[float]] = {k: [] for k in (*STAGES, "total")}
    for _ in range(repeats + 1):
        sync()
        stamps = [("start", time.perf_counter())]

        def mark(name: str, stamps=stamps) -> None:
            sync()
            stamps.append((name, time.perf_counter()))

        pipe.localize(y, H, codes, K=K, on_stage=mark)
        for (_, t0), (name, t1) in zip(stamps, stamps[1:]):
            times[name].append(t1 - t0)
        times["total"].append(stamps[-1][1] - stamps[0][1])
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def end_to_end(localizers: dict[str, Localizer], y, H, codes, repeats: int, K=None
               ) -> tuple[dict, dict]:
    """Scenes/s of each localizer (interleaved, median after a warm-up) and its results;
    K [B] known counts or None."""
    runs: dict[str, list[float]] = {k: [] for k in localizers}
    results = {}
    for _ in range(repeats + 1):
        for name, loc in localizers.items():
            t0 = time.perf_counter()
            results[name] = loc.localize(y, H, codes, K=K).estimates
            runs[name].append(time.perf_counter() - t0)
    n = y.shape[0]
    out = {f"{k}_scenes_per_s": n / statistics.median(v[1:]) for k, v in runs.items()}
    out["runs_s"] = runs
    return out, results


def agreement(a, b) -> dict:
    """K agreement and the largest position difference where K agrees."""
    same = a.K == b.K
    d = {"K_identical": float(same.float().mean())}
    for name, scale in (("azimuth", 57.29577951308232), ("elevation", 57.29577951308232),
                        ("range_m", 1.0)):
        diff = (getattr(a, name) - getattr(b, name)).abs()[same] * scale
        d[f"max_{name}_diff"] = float(diff.nan_to_num(0.0).max()) if diff.numel() else 0.0
    return d


_RSS_CHILD = """
import sys
sys.path.insert(0, {here!r})
from bench_pipeline import test_batch
from risloc.pipeline import Localizer
y, H, codes = test_batch({batch})
loc = Localizer.from_checkpoint({checkpoint!r})
loc.chunk = {chunk}
loc.localize(y[:8], H[:8], codes[:8])  # warm-up: lazy imports, caches


def hwm():
    for line in open("/proc/self/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            yield float(line.split()[1]) / 1024


open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
before = min(hwm())
loc.localize(y, H, codes)
print(before, max(hwm()))
"""


def peak_rss(batch: int, chunk: int | None, checkpoint: str | None) -> dict:
    """Peak RSS [MB] of a fresh process before and after localizing ``batch`` scenes."""
    code = _RSS_CHILD.format(here=str(Path(__file__).parent), batch=batch, chunk=chunk,
                             checkpoint=checkpoint)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    return {"batch": batch, "chunk": chunk, "before_MB": float(out[0]),
            "peak_MB": float(out[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--batch", type=count_arg, default=256)
    ap.add_argument("--repeats", type=count_arg, default=5)
    ap.add_argument("--threads", type=count_arg, default=2)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/pipeline.json"))
    ap.add_argument("--rss-batches", type=count_arg, nargs="*", default=[256, 1024])
    ap.add_argument("--known-K", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_learned_pipeline(args.checkpoint)
    y, H, codes = test_batch(args.batch)
    K = test_scenes(args.batch).K if args.known_K else None
    w = args.threads  # one worker per core: --threads cores, not every core of the machine
    locs = {"learned": Localizer(pipe.system, "learned", pipe, workers=w),
            "learned_one_pass": Localizer(pipe.system, "learned", pipe, workers=w, chunk=None),
            "classical": Localizer(pipe.system, "classical", workers=w),
            "classical_one_pass": Localizer(pipe.system, "classical", workers=w, chunk=None)}
    e2e, results = end_to_end(locs, y, H, codes, args.repeats, K)
    rate = {k: e2e[f"{k}_scenes_per_s"] for k in locs}
    e2e["speedup"] = rate["learned"] / rate["classical"]
    e2e["passes_gain_learned"] = rate["learned"] / rate["learned_one_pass"]
    e2e["passes_gain_classical"] = rate["classical"] / rate["classical_one_pass"]
    e2e["agreement_learned"] = agreement(results["learned"], results["learned_one_pass"])
    e2e["agreement_classical"] = agreement(results["classical"],
                                           results["classical_one_pass"])
    print(f"end to end (batch {args.batch}, K {'given' if args.known_K else 'unknown'}, "
          f"Localizer, one worker per core, median of "
          f"{args.repeats}, scenes/s): " + ", ".join(f"{k} {v:.1f}" for k, v in rate.items())
          + f"; learned/classical {e2e['speedup']:.2f}; passes of <= {MAX_CHUNK} scenes vs "
          f"one pass "
          f"per worker: learned {e2e['passes_gain_learned']:.2f}x, classical "
          f"{e2e['passes_gain_classical']:.2f}x", flush=True)
    for k in ("learned", "classical"):
        a = e2e[f"agreement_{k}"]
        print(f"  {k} outputs, passes vs one pass: K identical {a['K_identical']:.4f}, max "
              f"diff az {a['max_azimuth_diff']:.2e} deg, el {a['max_elevation_diff']:.2e} "
              f"deg, range {a['max_range_m_diff']:.2e} m", flush=True)
    stages = stage_split(pipe, y, H, codes, args.repeats, K=K)
    print(f"stages (serial, {torch.get_num_threads()} torch threads, batch {args.batch}): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()), flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process {rss:.0f} MB")
    rss_runs = [peak_rss(b, c, args.checkpoint) for b in args.rss_batches
                for c in (MAX_CHUNK, None)]
    for r in rss_runs:
        print(f"  learned Localizer, fresh process, {r['batch']} scenes in one call, "
              f"{'passes of <= ' + str(r['chunk']) if r['chunk'] else 'one pass per worker'}"
              f": peak RSS {r['peak_MB']:.0f} MB (before the call {r['before_MB']:.0f} MB)",
              flush=True)
    res = {"checkpoint": args.checkpoint or "shipped", "batch": args.batch,
           "known_K": args.known_K,
           "threads": args.threads, "machine": machine(), "end_to_end": e2e,
           "stages_s": stages,
           "peak_rss_MB": rss, "rss_by_batch": rss_runs}
    write_text_atomic(args.out, json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
