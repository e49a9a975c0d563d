"""Benchmark of scale-out: training on several processes (DDP) and a study on several
workers, against one, on this machine.

(a) Training: the default recipe for S1 and S2 optimizer steps (one epoch, a 32-scene
    validation set, no order head), run as whole `risloc train` commands; the seconds per
    step are (wall(S2) - wall(S1)) / (S2 - S1), free of start-up and validation. Compared:
    one process on 1 thread, one process on --threads threads, and --threads processes of
    1 thread each under torchrun (data.shards = processes, the same global batch of 32).
(b) Study: `risloc tune` on the tiny recipe, --trials trials in one shared study, by one
    worker, then by --threads workers started together (1 thread each); wall time to the
    finished study. Pruning is off (--startup-trials above --trials) so every trial costs
    the same.

    python benchmarks/bench_scaleout.py [--threads 2] [--steps 10 40] [--trials 8]
        [--storage URL] [--out reports/bench/scaleout.json]

The default storage is SQLite in a temporary folder; pass a PostgreSQL URL
(.ci/postgres.sh starts one) for the setting many machines would use.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from risloc.io.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "train_default.yaml"
TINY = ROOT / "configs" / "train_tiny.yaml"


def _run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return dt


def _train_cmd(out: Path, steps: int, threads: int, procs: int) -> list[str]:
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc_per_node={procs}", "-m", "risloc"] if procs > 1
            else [sys.executable, "-m", "risloc"])
    return [*head, "train", "--config", str(DEFAULT), "--out", str(out), "--no-progress",
            "--overwrite", "--set", "schedule.epochs=1",
            "--set", f"schedule.steps_per_epoch={steps}", "--set", "data.n_val=32",
            "--set", "order.scenes=0", "--set", f"threads={threads}",
            "--set", f"data.shards={procs}"]


def bench_training(tmp: Path, steps: tuple[int, int], threads: int) -> list[dict]:
    rows = []
    for label, th, procs in (("1 process x 1 thread", 1, 1),
                             (f"1 process x {threads} threads", threads, 1),
                             (f"{threads} processes x 1 thread (DDP)", 1, threads)):
        walls = [_run(_train_cmd(tmp / f"train{procs}_{th}_{s}", s, th, procs), th)
                 for s in steps]
        sec = (walls[1] - walls[0]) / (steps[1] - steps[0])
        if sec <= 0:  # (the runs' fixed costs vary more than the steps between them take)
            raise SystemExit(f"train {label}: {steps[1] - steps[0]} more steps took "
                             f"{walls[1] - walls[0]:+.2f} s: the timing noise exceeds them; "
                             "give --steps farther apart")
        rows.append({"setting": label, "threads": th, "processes": procs,
                     "wall_s": walls, "seconds_per_step": sec,
                     "scenes_per_s": 32 / sec})
        print(f"train  {label:32s} {sec:6.3f} s/step  {32 / sec:6.1f} scenes/s", flush=True)
    return rows


def bench_study(tmp: Path, trials: int, workers: int, storage: str | None) -> list[dict]:
    rows = []
    for n in (1, workers):
        name = f"bench{n}_{int(time.time())}"
        url = storage or f"sqlite:///{tmp / f'{name}.db'}"
        cmd = [sys.executable, "-m", "risloc", "tune", "--config", str(TINY), "--trials",
               str(trials), "--epochs", "2", "--storage", url, "--study-name", name,
               "--out", str(tmp / name), "--startup-trials", str(trials + 1),
               "--set", "threads=1"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        t0 = time.perf_counter()
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(n)]
        errs = [p.communicate()[1] for p in procs]
        dt = time.perf_counter() - t0
        if any(p.returncode for p in procs):
            raise RuntimeError("tune worker failed:\n" + "\n".join(e[-2000:] for e in errs))
        rows.append({"workers": n, "trials": trials, "wall_s": dt})
        print(f"study  {n} worker(s), {trials} trials: {dt:6.1f} s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="cores to spread over")
    ap.add_argument("--steps", type=int, nargs=2, default=(10, 40))
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--storage", default=None)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/scaleout.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train = bench_training(Path(tmp), tuple(a.steps), a.threads)
        study = bench_study(Path(tmp), a.trials, a.threads, a.storage)
    one = next(r for r in train if r["processes"] == 1 and r["threads"] == 1)
    multi_t = next(r for r in train if r["processes"] == 1 and r["threads"] == a.threads)
    ddp = next(r for r in train if r["processes"] == a.threads)
    summary = {
        "train_speedup_ddp_vs_1_thread": one["seconds_per_step"] / ddp["seconds_per_step"],
        "train_speedup_ddp_vs_threads": (multi_t["seconds_per_step"]
                                         / ddp["seconds_per_step"]),
        "study_speedup": study[0]["wall_s"] / study[1]["wall_s"],
    }
    for k, v in summary.items():
        print(f"{k}: {v:.2f}x")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(a.out, json.dumps({"cores": os.cpu_count(), "training": train,
                                         "study": study, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
