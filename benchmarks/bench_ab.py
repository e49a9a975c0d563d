"""Throughput of the code as it is against an earlier revision, interleaved in one run.

    python benchmarks/bench_ab.py --base REV [--methods learned classical] [--batch 256]
                                  [--rounds 3] [--repeats 2] [--out reports/bench/ab.json]

The issue on speed asks for ratios to today's code measured in the same run, because this
machine's speed drifts by several per cent between runs. ``--base`` is checked out into a
temporary git worktree; each round runs, for each method, one fresh process on the base
and one on the working tree (same scenes, saved once: test split, SNR withheld, SNR uniform
in -5..20 dB, equal powers, K unknown), each timing ``Localizer.localize`` ``--repeats``
times after a warm-up with the default workers and passes. Printed: the median scenes/s of
each side over all its timings, and their ratio. Outputs are compared by
``bench_equivalence.py``, not here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import test_scenes  # noqa: E402

from risloc.io.atomic import write_text_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys, time
sys.path.insert(0, {src!r})
import torch
import risloc
assert risloc.__file__.startswith({src!r}), risloc.__file__
from risloc.config import RislocConfig
from risloc.pipeline import Localizer
d = torch.load({scenes!r})
loc = (Localizer.from_checkpoint() if {method!r} == "learned"
       else Localizer(RislocConfig().system, "classical"))
loc.localize(d["y"], d["H"], d["codes"])  # warm-up
ts = []
for _ in range({repeats}):
    t0 = time.perf_counter()
    loc.localize(d["y"], d["H"], d["codes"])
    ts.append(time.perf_counter() - t0)
print(json.dumps(ts))
"""


def _time(src: Path, scenes: Path, method: str, repeats: int) -> list[float]:
    code = _CHILD.format(src=str(src), scenes=str(scenes), method=method, repeats=repeats)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"timing {method} with {src} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--methods", nargs="+", default=["learned", "classical"],
                    choices=["learned", "classical"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/ab.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="risloc-ab-") as tmp:
        tmp = Path(tmp)
        tree = tmp / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), args.base],
                       cwd=ROOT, check=True)
        try:
            sc = test_scenes(args.batch)
            scenes = tmp / "scenes.pt"
            torch.save({"y": sc.y, "H": sc.H, "codes": sc.codes}, scenes)
            sides = {"base": tree / "src", "now": ROOT / "src"}
            times = {m: {s: [] for s in sides} for m in args.methods}
            for r in range(args.rounds):
                for m in args.methods:
                    for side, src in sides.items():
                        times[m][side] += _time(src, scenes, m, args.repeats)
                print(f"  round {r + 1} of {args.rounds} done", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           check=False)
    rev = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    out = {"base": rev, "batch": args.batch, "threads": torch.get_num_threads(),
           "methods": {}}
    print(f"\nbatch {args.batch}, {args.rounds} rounds x {args.repeats} timings per side, "
          "fresh processes, interleaved")
    for m, t in times.items():
        rate = {s: args.batch / statistics.median(v) for s, v in t.items()}
        out["methods"][m] = {"scenes_per_s": rate, "ratio": rate["now"] / rate["base"],
                             "runs_s": t}
        print(f"{m:10s} base ({rev}) {rate['base']:7.1f} scenes/s   now {rate['now']:7.1f} "
              f"scenes/s   ratio {rate['now'] / rate['base']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
