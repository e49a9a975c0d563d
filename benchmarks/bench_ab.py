"""Throughput of the code as it is against an earlier revision (or against itself with
extra environment variables), interleaved in one run.

    python benchmarks/bench_ab.py --base REV [--env NAME=VALUE ...]
                                  [--methods learned classical training] [--batch 256]
                                  [--rounds 3] [--repeats 2] [--out reports/bench/ab.json]
    python benchmarks/bench_ab.py --env THP_MEM_ALLOC_ENABLE=1   # the same code, two settings

The issue on speed asks for ratios to today's code measured in the same run, because this
machine's speed drifts by several per cent between runs. ``--base`` is checked out into a
temporary git worktree; each round runs, for each method, one fresh process on the base
and one on the working tree, in an order that alternates by round (same scenes, saved
once: test split, SNR withheld, SNR uniform in -5..20 dB, equal powers, K unknown), each
timing ``Localizer.localize`` ``--repeats`` times after a warm-up with the default workers
and passes. Printed: the median scenes/s of
each side over all its timings, and their ratio, with the kernel CPU seconds and minor page
faults of each side's timed runs (medians per process). ``--env`` sets variables in the
"now" side's processes only (the "base" side runs without them); without ``--base`` both
sides run the working tree, so the variables are the only difference. Outputs are compared
by ``bench_equivalence.py``, not here. ``--methods training`` times optimizer steps
(micro-batch, backward, step) of the default recipe on one fixed batch of its own size, on
its one thread (the recipe file of the working tree on both sides); ``--methods
validation`` its validation pass (MUSIC on R_blend, the subspace overlap, the loss terms)
with the shipped model on its validation scenes; ``--methods simulate``
draws the recipe's training batches of ``--batch`` scenes (a GPU's training step waits for
them where the device is faster than their simulation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import test_scenes  # noqa: E402

from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.training.config import load_train_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "train_default.yaml"  # --methods training: its steps, both sides

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {src!r})
import torch
import risloc
assert risloc.__file__.startswith({src!r}), risloc.__file__
from risloc.config import RislocConfig
from risloc.pipeline import Localizer
if {method!r} == "training":  # optimizer steps of the default recipe on one fixed batch
    import tempfile
    from risloc.training.config import load_train_config
    from risloc.training.loop import Trainer
    cfg = load_train_config({recipe!r}, ["device=cpu", "progress=false",
                                         "out_dir=" + tempfile.mkdtemp()])
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    tr = Trainer(cfg)
    batch = tr.data.batch(0, 0)
    def run():
        with torch.enable_grad():
            tr.micro_step(batch, cfg.blend.beta, tr.loss_config())
            tr.optimizer_step()
elif {method!r} == "validation":  # the recipe's validation pass on the shipped model
    import tempfile
    from risloc.inference.checkpoint import load_model
    from risloc.pipeline.learned import DEFAULT_MODEL
    from risloc.training.config import load_train_config
    from risloc.training.data import validation_set
    from risloc.training.loop import Trainer
    cfg = load_train_config({recipe!r}, ["device=cpu", "progress=false",
                                         "out_dir=" + tempfile.mkdtemp()])
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    tr, val = Trainer(cfg), validation_set(cfg)
    model = load_model(DEFAULT_MODEL)[0]
    def run():
        tr.validate(model, val)
elif {method!r} == "simulate":  # the default recipe's training batches, {batch} scenes
    from risloc.training.config import load_train_config
    from risloc.training.data import TrainData
    data = TrainData(load_train_config({recipe!r}, ["optim.batch_size={batch}"]))
    index = iter(range(10**6))
    def run():
        data.batch(next(index), 0)
else:
    d = torch.load({scenes!r})
    loc = (Localizer.from_checkpoint() if {method!r} == "learned"
           else Localizer(RislocConfig().system, "classical"))
    def run():
        loc.localize(d["y"], d["H"], d["codes"])
run()  # warm-up
run()
ts = []
r0 = resource.getrusage(resource.RUSAGE_SELF)
for _ in range({repeats}):
    t0 = time.perf_counter()
    run()
    ts.append(time.perf_counter() - t0)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"times": ts, "sys_s": r1.ru_stime - r0.ru_stime,
                  "minflt": r1.ru_minflt - r0.ru_minflt}}))
"""


def _time(src: Path, scenes: Path, method: str, repeats: int, env: dict[str, str],
          batch: int) -> dict:
    """One fresh process's timings of ``method`` (its seconds per run, kernel seconds and
    minor faults over the timed runs) with the package at ``src`` and environment ``env``."""
    code = _CHILD.format(src=str(src), scenes=str(scenes), method=method, repeats=repeats,
                         recipe=str(RECIPE), batch=batch)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env)
    if out.returncode:
        raise SystemExit(f"timing {method} with {src} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    """NAME=VALUE strings as a dict (a clear error for anything else)."""
    out = {}
    for p in pairs:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env takes NAME=VALUE, got {p!r}")
        out[name] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="git revision to compare against (without it, the "
                    "working tree against itself, --env then the only difference: give "
                    "--base, --env or both)")
    ap.add_argument("--env", nargs="+", default=[], metavar="NAME=VALUE",
                    help="environment variables of the 'now' side only")
    ap.add_argument("--methods", nargs="+", default=["learned", "classical"],
                    choices=["learned", "classical", "training", "validation", "simulate"],
                    help="training: optimizer steps of configs/train_default.yaml (its "
                         "batch and threads; 'scenes/s' = its batch / step seconds); "
                         "validation: its validation pass on the shipped model; "
                         "simulate: drawing its training batches of --batch scenes")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/ab.json"))
    args = ap.parse_args()
    extra = _env_pairs(args.env)
    if args.base is None and not extra:
        raise SystemExit("give --base REV, --env NAME=VALUE or both")
    base_env = {k: v for k, v in os.environ.items() if k not in extra}
    envs = {"base": base_env, "now": {**base_env, **extra}}
    with tempfile.TemporaryDirectory(prefix="risloc-ab-") as tmp:
        tmp = Path(tmp)
        tree = tmp / "base"
        if args.base is not None:
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), args.base],
                           cwd=ROOT, check=True)
        try:
            sc = test_scenes(args.batch)
            scenes = tmp / "scenes.pt"
            torch.save({"y": sc.y, "H": sc.H, "codes": sc.codes}, scenes)
            sides = {"base": ROOT / "src" if args.base is None else tree / "src",
                     "now": ROOT / "src"}
            runs = {m: {s: [] for s in sides} for m in args.methods}
            for r in range(args.rounds):
                for m in args.methods:  # the sides' order alternates by round
                    for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                        runs[m][side].append(_time(sides[side], scenes, m, args.repeats,
                                                   envs[side], args.batch))
                print(f"  round {r + 1} of {args.rounds} done", flush=True)
        finally:
            if args.base is not None:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                               check=False)
    rev = "working tree" if args.base is None else subprocess.run(
        ["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True,
        text=True).stdout.strip()
    out = {"base": rev, "env": extra, "batch": args.batch,
           "threads": torch.get_num_threads(), "methods": {}}
    own = sorted({"training", "validation"} & runs.keys())
    print(f"\nbatch {args.batch}" + (f" ({' and '.join(own)}: the recipe's)" if own else "")
          + f", {args.rounds} rounds x {args.repeats} timings per side, "
          "fresh processes, interleaved" + (f"; now = base + {extra}" if extra else ""))
    for m, per_side in runs.items():
        t = {s: [x for run in v for x in run["times"]] for s, v in per_side.items()}
        n = {"training": load_train_config(RECIPE).optim.batch_size,  # scenes per timed run
             "validation": load_train_config(RECIPE).data.n_val}.get(m, args.batch)
        rate = {s: n / statistics.median(v) for s, v in t.items()}
        sys_s = {s: statistics.median(run["sys_s"] for run in v) for s, v in per_side.items()}
        faults = {s: statistics.median(run["minflt"] for run in v) for s, v in per_side.items()}
        out["methods"][m] = {"scenes_per_s": rate, "ratio": rate["now"] / rate["base"],
                             "runs_s": t, "sys_s": sys_s, "minor_faults": faults}
        print(f"{m:10s} base ({rev}) {rate['base']:7.1f} scenes/s   now {rate['now']:7.1f} "
              f"scenes/s   ratio {rate['now'] / rate['base']:.3f}   kernel s {sys_s['base']:.1f}"
              f" / {sys_s['now']:.1f}, minor faults {faults['base']:.0f} / {faults['now']:.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
