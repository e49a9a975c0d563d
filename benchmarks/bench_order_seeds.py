"""How much of the order head's K decision is its seed? Validation split only.

    python benchmarks/bench_order_seeds.py [--seeds 20] [--classical-cache DIR]
                                           [--out reports/bench/order_seeds.txt]

The order head (:mod:`risloc.pipeline.order`) is fitted as ``risloc fit-order`` fits the
shipped one (16,384 training-split scenes, powers spread over 0-25 dB, the shipped fit
stage) with ``--seeds`` members of seeds 0, 1, ...; member i alone is the one-MLP head of
seed i. Then the model's own head, each single member, and disjoint groups of 3, 5 and 10
of them averaged (the head's ``forward``) decide K on the 36 cells of ``bench_corners.py
--split validation --n 200`` (SNR withheld, K unknown; ``--classical-cache``: shared with
it). Printed per
head: the cells whose F1 and K accuracy are >= the classical localizer's - 0.01, and the
mean over the 36 cells of the learned minus classical F1 and K accuracy. The learned F1 and
K accuracy are those of the nested sources before the last polish (what the head is
trained on), so they differ a little from ``bench_corners.py``'s. 10 min on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_corners as bc  # noqa: E402
from bench_greedy_margin import scenes_and_classical  # noqa: E402

from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.pipeline import Localizer  # noqa: E402
from risloc.pipeline.calibrate import order_dataset, order_scenes, training_data  # noqa: E402
from risloc.pipeline.order import (  # noqa: E402
    OrderFitConfig,
    OrderHead,
    fit_order_head,
    nested_detections,
)

SNRS = (5.0, 10.0, 20.0)
SPREAD = {"power_spread_db": [0, 25]}  # the shipped head's --scene


def sub_head(head: OrderHead, members: list[int]) -> OrderHead:
    """The head made of ``members`` of ``head`` (same standardisation and decision rule)."""
    out = OrderHead(head.mean.shape[0], head.K_max, head.hidden, head.balance, len(members))
    out.mean.copy_(head.mean)
    out.std.copy_(head.std)
    for j, i in enumerate(members):
        out.nets[j] = head.nets[i]
    return out.eval()


def score(head: OrderHead, cells: dict) -> tuple[int, float, float, list[str]]:
    """(cells met, mean F1 margin, mean K-accuracy margin, the cells missed)."""
    met, df1, dk, missed = 0, [], [], []
    for cell, c in cells.items():
        K = head.decide(c["feats"])
        found = c["detections"].gather(1, (K - 1).unsqueeze(1)).sum()
        # (in float64: a share of the scenes exact enough for rounded_margin's ties)
        f1 = float(2 * found.double() / (K.sum() + c["K"].sum()))
        acc = float((K == c["K"]).double().mean())
        ok = (bc.rounded_margin(f1 - c["f1"] + 0.01) >= 0
              and bc.rounded_margin(acc - c["K_accuracy"] + 0.01) >= 0)
        met += ok
        df1.append(f1 - c["f1"])
        dk.append(acc - c["K_accuracy"])
        if not ok:
            missed.append(cell)
    return met, statistics.mean(df1), statistics.mean(dk), missed


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--checkpoint", default=None, help="learned model (default: shipped)")
    ap.add_argument("--classical-cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/order_seeds.txt"))
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    classical = Localizer(bc.RislocConfig().system, "classical")
    pipe = Localizer.from_checkpoint(args.checkpoint).pipeline
    cells = {}
    for corner in bc.CORNERS:
        for snr in SNRS:
            sc, cl = scenes_and_classical(classical, corner, snr, args.classical_cache)
            feats, theta, _ = order_dataset(pipe, sc)
            cells[f"{corner} {snr:g} dB"] = {
                "feats": feats, "K": sc.K, "f1": float(cl.f1), "K_accuracy": float(cl.K_accuracy),
                "detections": nested_detections(theta, sc.azimuth, sc.elevation, sc.range_m,
                                                sc.K)}
        print(f"{corner}: validation features done", flush=True)
    feats, K, det, _, _ = training_data(pipe, 16384, scenes=order_scenes(pipe, SPREAD))
    print("training features done", flush=True)
    head = fit_order_head(feats, K, det, pipe.system.K_max,
                          OrderFitConfig(members=args.seeds))
    rows = [("the model's head", None)] + [(f"seed {i}", [i]) for i in range(args.seeds)]
    for size in (3, 5, 10):
        rows += [(f"seeds {g * size}-{g * size + size - 1} averaged",
                  list(range(g * size, g * size + size))) for g in range(args.seeds // size)]
    lines = ["Order heads on the validation corners (36 cells x 200 scenes, SNR withheld, K "
             "unknown; nested sources before the last polish)", "",
             "| head | cells met | mean F1 - classical | mean K acc - classical | missed |",
             "| --- | ---: | ---: | ---: | --- |"]
    for name, members in rows:
        h = pipe.order_head if members is None else sub_head(head, members)
        met, f1, acc, missed = score(h, cells)
        lines.append(f"| {name} | {met} | {f1:+.4f} | {acc:+.4f} | {', '.join(missed)} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
