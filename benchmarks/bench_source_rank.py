"""Does the model's source ranker help, and where should the pipeline use it?
Validation split only.

    python benchmarks/bench_source_rank.py [--checkpoint M.pt] [--n 400] [--report-n 256]
                                           [--out reports/bench/source_rank.json]

Where the order head decides K, the pipeline reports the K nested sources its source ranker
(:class:`risloc.pipeline.order.SourceRanker`) ranks first, in the scenes whose SNR estimated
from their own nested fits is below ``LearnedPipeline.rank_below_db``; elsewhere the first K
of the nested order. Per cell, the F1 of the nested sources before the last polish with the
head's K (as the pipeline decides it: :meth:`LearnedPipeline.head_balance`), in the nested
order and in the ranked order under each gate (none: the ranker's order everywhere), on
three validation sets, SNR withheld, equal and spread powers:

* ``set 0`` / ``set 1``: the scenes ``bench_versus.py --split validation`` draws at 0-20 dB
  (``--n`` per cell; set 1: ``bench_source_select.py --scene-set 1``'s);
* ``report``: those of the model's ``fit-order`` report at -5 to 20 dB (``--report-n``).

K accuracy is the same in every column (the ranker never changes K).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_order_genie import cat_chunks, pooled_f1  # noqa: E402
from bench_versus import SPREAD_DB, count_arg, scenes_at  # noqa: E402

from risloc.core.checks import normalise_scale  # noqa: E402
from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.pipeline.calibrate import REPORT_SNRS, REPORT_STREAM, order_stages  # noqa: E402
from risloc.pipeline.learned import load_learned_pipeline  # noqa: E402
from risloc.pipeline.order import nested_detections, rank_sources  # noqa: E402
from risloc.simulation import simulate_range  # noqa: E402

GATES = (None, 12.0, 9.0, 7.5)
SET_SNRS = (0.0, 5.0, 10.0, 15.0, 20.0)


def gate_name(gate: float | None) -> str:
    return "ranked everywhere" if gate is None else f"ranked below {gate:g} dB"


@torch.no_grad()
def cell(pipe, sc) -> dict:
    """F1 of the head's K on the nested order and on the ranked one under each gate."""
    head = pipe.order_head

    def one(a: int, b: int):
        fwd, fit, f = order_stages(pipe, sc[a:b])
        y, _ = normalise_scale(sc.y[a:b], sc.H[a:b])
        K = head.decide(f, balance=pipe.head_balance(fit, y, head))
        orders = [replace(pipe, rank_below_db=g).ranking(fwd, fit, y, f, pipe.source_ranker)
                  for g in GATES]
        return K, fit.theta, *orders

    K, theta, *orders = cat_chunks(one, len(sc))
    truth = (sc.azimuth, sc.elevation, sc.range_m, sc.K)
    row = {"K_accuracy": float((K == sc.K).float().mean()),
           "nested": pooled_f1(K, nested_detections(theta, *truth), sc.K)}
    for g, order in zip(GATES, orders, strict=True):
        row[gate_name(g)] = pooled_f1(K, nested_detections(rank_sources(theta, order), *truth),
                                      sc.K)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="model (default: the shipped one)")
    ap.add_argument("--n", type=count_arg, default=400, help="scenes per cell of sets 0, 1")
    ap.add_argument("--report-n", type=count_arg, default=256,
                    help="scenes per cell of the fit-order report's set")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/source_rank.json"))
    args = ap.parse_args()
    pipe = load_learned_pipeline(args.checkpoint)
    if pipe.order_head is None or pipe.source_ranker is None:
        ap.error("the model has no order head and source ranker: risloc fit-order fits them")
    r = pipe.recipe
    cells = []
    for name in ("set 0", "set 1", "report"):
        snrs = REPORT_SNRS if name == "report" else SET_SNRS
        for i, snr in enumerate(snrs):
            for spread in (0.0, SPREAD_DB):
                if name == "report":
                    scene = r.scene.model_copy(update={"power_spread_db": spread})
                    sc = simulate_range(0, args.report_n, r.system, scene, seed=r.data.seed,
                                        split="validation", stream=REPORT_STREAM + 16 * i,
                                        snr_db=snr)
                else:
                    sc = scenes_at("validation", args.n, snr, spread,
                                   16 * (name == "set 1") + i)
                row = {"set": name, "snr_db": snr, "power_spread_db": spread,
                       "scenes": len(sc), **cell(pipe, sc)}
                print(f"{name:6} {snr:4.0f} {spread:4.0f} | K acc {row['K_accuracy']:.3f} | "
                      f"F1 nested {row['nested']:.4f} | " + " | ".join(
                          f"{gate_name(g)} {row[gate_name(g)] - row['nested']:+.4f}"
                          for g in GATES), flush=True)
                cells.append(row)
    print("\nF1 change against the nested order, mean (min) over the cells:")
    summary = {}
    for g in GATES:
        bands = {"-5 dB": [c for c in cells if c["snr_db"] < 0],
                 "0-5 dB": [c for c in cells if 0 <= c["snr_db"] <= 5],
                 "10-20 dB": [c for c in cells if c["snr_db"] >= 10]}
        summary[gate_name(g)] = {
            band: {"mean": sum(c[gate_name(g)] - c["nested"] for c in cs) / len(cs),
                   "min": min(c[gate_name(g)] - c["nested"] for c in cs)}
            for band, cs in bands.items()}
        print(f"  {gate_name(g):22} " + " | ".join(
            f"{band} {v['mean']:+.4f} ({v['min']:+.4f})"
            for band, v in summary[gate_name(g)].items()))
    write_text_atomic(args.out, json.dumps({"n": args.n, "report_n": args.report_n,
                                            "cells": cells, "summary": summary},
                                           indent=2) + "\n")


if __name__ == "__main__":
    main()
