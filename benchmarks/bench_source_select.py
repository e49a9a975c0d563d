"""Would choosing which nested sources to report, not only how many, help the K decision?
Validation split only.

    python benchmarks/bench_source_select.py [--train 8192] [--n 400] [--seed 0]
                                             [--scene-set 0]
                                             [--out reports/bench/source_select.json]

The order head reports a prefix of the nested sources: the first K. Here a per-source
classifier, "realness", is fitted on ``--train`` training-split scenes (the head's stream,
the recipe's base scene distribution, SNR never shown) to predict whether each of the K_max
nested sources is paired with a true source within the gate when all K_max are reported,
from the head's scene features, the source's likelihood gain and power, the network's view
of its position (``risloc.pipeline.order.prior_features``) and its place k (the package's
:class:`risloc.pipeline.order.SourceRanker`, its default fit with seed ``--seed``). Compared
on the validation scenes drawn as ``bench_versus.py`` draws them (the i-th SNR here on
stream 800 + i) (``--scene-set`` k > 0: another set of them, streams 800 + 16 k + i) at 0-20
dB, equal and spread powers, K unknown, SNR withheld (K accuracy and F1 of the nested
sources before the last polish; the shipped ranker: ``bench_source_rank.py``):

* ``shipped``: the head, its balance 0.25, on the nested order (the pipeline before its
  source ranker); ``head b=0``: its F1-optimal rule;
* ``reranked``: the head's K, the sources ranked by realness (K accuracy unchanged);
* ``hybrid b``: the head's rule (:meth:`risloc.pipeline.order.OrderHead.decide`) with its
  expected detections replaced by the summed realness of the k highest-ranked sources, at
  balance b, on the sources ranked by realness;
* ``prefix genie``: the best count per scene on the nested order (``bench_order_genie.py``);
  ``subset genie``: the same on the sources ranked real first (any subset of the K_max).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_order_genie import genie_K, pooled_f1  # noqa: E402
from bench_order_prior import SNRS, features  # noqa: E402
from bench_snr_head import order_training_set  # noqa: E402
from bench_versus import SPREAD_DB, count_arg, scenes_at  # noqa: E402

from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.pipeline.learned import load_learned_pipeline  # noqa: E402
from risloc.pipeline.order import (  # noqa: E402
    RankerFitConfig,
    fit_source_ranker,
    nested_detections,
    rank_sources,
    real_sources,
    source_inputs,
)

BALANCES = (0.0, 0.1, 0.25, 0.5)


def hybrid_K(head, f: torch.Tensor, p_sorted: torch.Tensor, balance: float) -> torch.Tensor:
    """The head's rule, argmax_k 2 E[D_k] - F k + balance log P(K = k), with E[D_k] the
    summed realness of the k highest-ranked sources (p_sorted [B, K_max], descending)."""
    P = head(f).probabilities.double()
    k = torch.arange(1, P.shape[1] + 1, dtype=P.dtype)
    det = p_sorted.double().cumsum(-1)
    F = (2 * det / (k + (P * k).sum(-1, True))).amax(-1, keepdim=True)
    return (2 * det - F * k + balance * torch.log(P.clamp_min(1e-9))).argmax(-1) + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=count_arg, default=8192, help="training scenes of realness")
    ap.add_argument("--n", type=count_arg, default=400, help="validation scenes per cell")
    ap.add_argument("--seed", type=int, default=0, help="seed of the realness classifier")
    ap.add_argument("--scene-set", type=int, default=0,
                    help="validation scenes: 0 those of bench_versus, k > 0 another set")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/source_select.json"))
    args = ap.parse_args()
    if args.scene_set < 0:
        ap.error(f"--scene-set must be >= 0, got {args.scene_set}")
    pipe = load_learned_pipeline()
    head = pipe.order_head

    def training(sc):
        f, x, theta = features(pipe, sc)
        return (source_inputs(f, x), real_sources(theta, sc.azimuth, sc.elevation, sc.range_m,
                                                  sc.K), theta)

    (inputs, real), _, _ = order_training_set(pipe, args.train, training)
    realness = fit_source_ranker(inputs, real, RankerFitConfig(seed=args.seed))
    rows = []
    print(f"{'SNR':>4} {'spread':>6} | K accuracy / F1, validation, SNR withheld")
    for i, snr in enumerate(SNRS):
        for spread in (0.0, SPREAD_DB):
            sc = scenes_at("validation", args.n, snr, spread, 16 * args.scene_set + i)
            f, x, theta = features(pipe, sc)
            truth = (sc.azimuth, sc.elevation, sc.range_m, sc.K)
            D = nested_detections(theta, *truth)
            p = realness(source_inputs(f, x))
            p_sorted, order = p.sort(-1, descending=True)
            D_ranked = nested_detections(rank_sources(theta, order), *truth)
            by_truth = real_sources(theta, *truth).float().sort(dim=-1, descending=True,
                                                             stable=True).indices
            D_subset = nested_detections(rank_sources(theta, by_truth), *truth)
            K_head = head.decide(f)
            decisions = {
                "shipped": (K_head, D),
                "head b=0": (head.decide(f, balance=torch.zeros(len(sc))), D),
                "reranked": (K_head, D_ranked),
                **{f"hybrid b={b:g}": (hybrid_K(head, f, p_sorted, b), D_ranked)
                   for b in BALANCES},
                "prefix genie": (genie_K(D, sc.K), D),
                "subset genie": (genie_K(D_subset, sc.K), D_subset)}
            row = {"snr_db": snr, "power_spread_db": spread, "scenes": len(sc)}
            for name, (K, Dk) in decisions.items():
                row[name] = {"K_accuracy": float((K == sc.K).float().mean()),
                             "f1": pooled_f1(K, Dk, sc.K)}
            print(f"{snr:4.0f} {spread:6.0f} | " + " | ".join(
                f"{n}: {row[n]['K_accuracy']:.3f} / {row[n]['f1']:.3f}" for n in decisions),
                flush=True)
            rows.append(row)
    write_text_atomic(args.out, json.dumps({"train": args.train, "n": args.n,
                                            "seed": args.seed, "scene_set": args.scene_set,
                                            "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
