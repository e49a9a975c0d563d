"""Overfit check (full size): fit a small fixed scene set and validate on the same set.

Pass when the validation loss (the weighted total of all terms) falls below 0.5 and MUSIC
on R_blend reaches a median angle error below 1 deg on the set. Stops at the first epoch
meeting both, or after --epochs.

    python benchmarks/overfit.py [--n 256] [--snr 10 15] [--epochs 60] [--threads 1]
        [--out reports/bench/overfit.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from risloc.config import SceneConfig, SystemConfig
from risloc.io import write_scenes
from risloc.io.atomic import write_text_atomic
from risloc.simulation import simulate_range
from risloc.training import load_train_config, train


class _Done(Exception):
    pass


def overfit(n: int, snr: tuple[float, float], epochs: int, threads: int, out_dir: Path,
            extra: list[str]) -> dict:
    system = SystemConfig()
    scene = SceneConfig(snr_db=snr)
    path = out_dir / "scenes.npz"
    write_scenes(path, simulate_range(0, n, system, scene, seed=0, split="train"), system)
    batch = min(32, n)
    cfg = load_train_config(None, [
        f"data.train_file={path}", f"data.val_file={path}", f"optim.batch_size={batch}",
        f"schedule.steps_per_epoch={max(n // batch, 1)}", f"schedule.epochs={epochs}",
        "schedule.patience=1000", "schedule.swa_frac=0", "schedule.ema_decay=0.99",
        "optim.warmup_steps=20", f"scene.snr_db=[{snr[0]}, {snr[1]}]",
        f"out_dir={out_dir / 'run'}", f"threads={threads}", "progress=false", *extra])
    history: list[dict] = []

    def check(epoch: int, m: dict) -> None:
        history.append({"epoch": epoch, "val_loss": m["loss_total"],
                        "angle_median_deg": m["angle_median_deg"],
                        "K_accuracy": m["K_accuracy"]})
        print(f"epoch {epoch:3d}  val loss {m['loss_total']:.3f}  angle "
              f"{m['angle_median_deg']:.3f} deg  K acc {m['K_accuracy']:.3f}", flush=True)
        if m["loss_total"] < 0.5 and m["angle_median_deg"] < 1.0:
            raise _Done

    t0 = time.perf_counter()
    try:
        train(cfg, callback=check)
        passed = False
    except _Done:
        passed = True
    return {"scenes": n, "snr_db": list(snr), "passed": passed, "epochs": len(history),
            "seconds": time.perf_counter() - t0, "final": history[-1] if history else None,
            "history": history}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--snr", type=float, nargs=2, default=(10.0, 15.0))
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", dest="extra", action="append", default=[],
                   help="extra recipe override, e.g. --set model.width=32")
    p.add_argument("--out", type=Path, default=Path("reports/bench/overfit.json"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = overfit(a.n, tuple(a.snr), a.epochs, a.threads, Path(tmp), a.extra)
    print(f"passed={res['passed']} after {res['epochs']} epochs ({res['seconds']:.0f} s): "
          f"{res['final']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(a.out, json.dumps(res, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
