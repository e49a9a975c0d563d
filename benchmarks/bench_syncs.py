"""The operations of one learned call that would wait for a GPU, counted on any device.

    python benchmarks/bench_syncs.py [--batch 256] [--device cpu] [--method learned]
                                     [--route auto|masked|shrinking]
                                     [--out reports/bench/syncs.json]

On CUDA, ``bench_device.py`` counts the host synchronisations of a call with
``torch.cuda.set_sync_debug_mode``; that needs a GPU. This counts the operations of one call
that would synchronise there as PyTorch dispatches them, on any device
(:class:`risloc.core.syncs.SyncCounter`: what it counts and what it cannot see), by the line
of risloc that issued each one, and the tensors built from host data apart; and all its
operations that are not views (a GPU's host launches about as many kernels: its work where
the call is launch-bound). With ``--device
cuda`` it runs the debug mode as well and prints both (the debug mode is the measurement).
Checked against the H200's count of 90a8322 (``device_h200_base_diag.json``): 1,144
operations + 54 tensors from host data here, 1,184 syncs there
(``benchmarks/results/syncs_*``, docs/results.md "Speed").
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
from bench_pipeline import test_batch  # sibling script: python3 benchmarks/...

from risloc.core.syncs import SyncCounter
from risloc.estimators import nfmle
from risloc.estimators.classical import classical_localize
from risloc.io.atomic import write_text_atomic
from risloc.pipeline.learned import STAGES, load_learned_pipeline
from risloc.training.config import load_train_config
from risloc.training.loop import Trainer

DEG = 57.29577951308232


def count(run) -> dict:
    """Synchronising operations of ``run(on_stage)`` (one call, after a warm-up call);
    on_stage(name) is called at the end of each stage (the operations by stage)."""
    run(None)
    with SyncCounter() as counter:
        order = list(STAGES)
        counter.part = order[0]

        def next_stage(name: str) -> None:
            i = order.index(name)
            counter.part = order[i + 1] if i + 1 < len(order) else "after"

        run(next_stage)
    by_line = counter.by_line()
    cpu_route = sum(v for k, v in by_line.items() if k.endswith("(CPU route)"))
    return {"syncs": counter.total, "cpu_route": cpu_route, "operations": counter.operations,
            "operations_by_stage": dict(counter.by_part),
            "by_line": dict(by_line.most_common()),
            "by_line_and_op": dict(counter.syncs.most_common()),
            "from_host": sum(counter.from_host.values()),
            "from_host_by_line": dict(counter.from_host.most_common())}


def training_step(device: str, batch: int):
    """run() taking one optimizer step of the default recipe on one fixed batch."""
    cfg = load_train_config(Path(__file__).parents[1] / "configs" / "train_default.yaml",
                            [f"device={torch.device(device).type}",
                             f"optim.batch_size={batch}", "progress=false"])
    tr = Trainer(cfg)
    scenes = tr.data.batch(0, 0)

    def run(on_stage=None):
        with torch.enable_grad():  # main() runs without gradients
            tr.micro_step(scenes, cfg.blend.beta, tr.loss_config())
            return tr.optimizer_step()

    run()
    return run


def debug_mode_count(run) -> dict:
    """On CUDA: the syncs ``torch.cuda.set_sync_debug_mode`` reports for ``run()``."""
    import warnings

    run()
    where: Counter[str] = Counter()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        where[f"{Path(w.filename).name}:{w.lineno}"] += 1
    return {"syncs": sum(where.values()), "by_line": dict(where.most_common())}


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--method", choices=("learned", "classical", "training"), default="learned",
                    help="training: one step of the default recipe at --batch (micro-batch, "
                         "backward, optimizer step) after two warm-up steps")
    ap.add_argument("--route", choices=("auto", "masked", "shrinking"), default="auto",
                    help="the LM loop's route (NFMLEConfig.masked): auto = the device's "
                         "default; masked on the CPU runs a GPU's route there, and its "
                         "estimates are compared with the CPU's own route")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/syncs.json"))
    a = ap.parse_args()
    torch.manual_seed(0)
    pipe = load_learned_pipeline().to(a.device)
    y, H, codes = test_batch(a.batch, a.device)
    if a.method == "learned":
        def run(on_stage=None):
            return pipe.localize(y, H, codes, on_stage=on_stage)
    elif a.method == "training":
        run = training_step(a.device, a.batch)
    else:
        def run(on_stage=None):
            return classical_localize(y, H, codes, pipe.system)
    default_route = nfmle.masked_route
    out = {"batch": a.batch, "device": a.device, "method": a.method, "route": a.route,
           "torch": torch.__version__}
    if a.route != "auto":
        reference = run()  # the device's own route
        nfmle.masked_route = lambda cfg, device: a.route == "masked"
    try:
        out["dispatched"] = count(run)
        if a.method != "learned":  # stages are the learned call's
            del out["dispatched"]["operations_by_stage"]
        if a.route != "auto" and a.method != "training":
            est = run()
            same = {f: bool(torch.equal(getattr(est, f).nan_to_num(), getattr(
                reference, f).nan_to_num())) for f in ("K", "azimuth", "elevation", "range_m")}
            out["same_estimates_as_auto_route"] = same
            both = (est.K == reference.K).unsqueeze(-1) & est.mask
            moved = {f: float((getattr(est, f) - getattr(reference, f)).abs()[both].max())
                     if both.any() else 0.0 for f in ("azimuth", "elevation", "range_m")}
            out["largest_position_change_where_K_agrees"] = moved
            print(f"estimates of the {a.route} route bit for bit those of the device's "
                  f"default route: {same}; largest change where K agrees: az "
                  f"{moved['azimuth'] * DEG:.2g} deg, el {moved['elevation'] * DEG:.2g} deg, "
                  f"range {moved['range_m']:.2g} m")
    finally:
        nfmle.masked_route = default_route
    if a.device.startswith("cuda"):
        out["debug_mode"] = debug_mode_count(run)
    d = out["dispatched"]
    print(f"{a.method}, {a.batch} scenes on {a.device} ({a.route} LM route): {d['syncs']} "
          "synchronising operations "
          f"dispatched ({d['cpu_route']} of them on the CPU's route only), {d['from_host']} "
          f"tensors from host data; {d['operations']} operations that are not views"
          + (f", by stage {d['operations_by_stage']}" if a.method == "learned" else ""))
    for line, n in list(d["by_line_and_op"].items())[:30]:
        print(f"  {n:6d}  {line}")
    if "debug_mode" in out:
        print(f"debug mode (the measurement): {out['debug_mode']['syncs']}")
        for line, n in list(out["debug_mode"]["by_line"].items())[:30]:
            print(f"  {n:6d}  {line}")
    write_text_atomic(a.out, json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
