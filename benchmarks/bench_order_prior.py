"""Would the network's prior help the SNR-free K decision? An order head that reads it.
Validation split only.

    python benchmarks/bench_order_prior.py [--train 16384] [--n 400]
                                           [--out reports/bench/order_prior.json]
    python benchmarks/bench_order_prior.py --separation [--n 400]
                                           [--out reports/bench/order_prior_auc.json]

With K unknown the order genie (``bench_order_genie.py``) finds 0.06-0.12 of F1 at 0-5 dB
above the classical localizer's on the learned nested fits, if the decision knew which of
the nested sources are real; the shipped head reads only the fits' costs, the powers and
the network's K head. This refits the head (the shipped fit settings) on ``--train``
training-split scenes (its own stream, the recipe's base scene distribution, SNR never
shown; the shipped head's scenes had power spreads of 0-25 dB, these 0-15 dB) twice:

* ``refit``: the shipped features (the control: the fit's own noise and scenes);
* ``+ prior``: the same plus, for each nested source k = 1..K_max, what the network says
  at its position, all SNR-free: the heat-map logit of the network's candidate grid at
  the nearest grid cell, the confidence of the nearest of the network's slots and the
  angle to it (log degrees);

and compares them with the shipped head and the genie on the validation scenes drawn as
``bench_versus.py`` draws them (the i-th SNR here on stream 800 + i) at 0-20 dB, equal and
spread powers, K unknown, SNR withheld. K accuracy and F1 of the nested sources before the
last polish; every head decides at its own balance, not the pipeline's ``low_snr_db`` rule.

``--separation`` fits nothing: per cell and input, how well it alone tells the nested
sources k >= 2 that add a detection from those that do not (the area under the ROC curve,
over all such sources of the cell; 0.5 is chance). An input that separates them as well as
the likelihood gain but adds nothing to the head says what the head already knew.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_order_genie import cat_chunks, genie_K  # noqa: E402
from bench_snr_head import compare_heads, order_training_set  # noqa: E402
from bench_versus import SPREAD_DB, count_arg, scenes_at  # noqa: E402

from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.pipeline.calibrate import order_stages  # noqa: E402
from risloc.pipeline.learned import load_learned_pipeline  # noqa: E402
from risloc.pipeline.order import (  # noqa: E402
    fit_order_head,
    nested_detections,
    prior_features,
)

SNRS = (0.0, 5.0, 10.0, 15.0, 20.0)
INPUTS = ("likelihood gain", "power", "heat", "slot confidence", "-angle to slot")


def auc(score: torch.Tensor, label: torch.Tensor) -> float:
    """Area under the ROC curve of ``score`` for the boolean ``label`` (Mann-Whitney, a tie
    counts one half: the slot confidence ties where nested sources share their nearest
    slot)."""
    s, y = score.flatten().double(), label.flatten().bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).to(s.dtype)  # midrank of each distinct value: ranks 1..n
    rank = (last - (counts.to(s.dtype) - 1) / 2)[inverse]
    return float((rank[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def separation_row(snr: float, spread: float, f, x, D: torch.Tensor) -> dict:
    """AUC of each input (:data:`INPUTS`) for "the k-th nested source adds a detection",
    k >= 2, printed as one line."""
    K_max = D.shape[1]
    adds = torch.diff(D, dim=1, prepend=torch.zeros(len(D), 1)) > 0.5
    inputs = dict(zip(INPUTS, (f[:, K_max:2 * K_max], f[:, 2 * K_max:3 * K_max],
                               x[:, :K_max], x[:, K_max:2 * K_max], -x[:, 2 * K_max:]),
                      strict=True))
    row = {"snr_db": snr, "power_spread_db": spread, "share_adding": float(adds[:, 1:].float()
                                                                            .mean()),
           "auc": {name: auc(v[:, 1:], adds[:, 1:]) for name, v in inputs.items()}}
    print(f"{snr:4.0f} {spread:6.0f} | {row['share_adding']:.2f} | " + " | ".join(
        f"{n}: {a:.3f}" for n, a in row["auc"].items()), flush=True)
    return row


@torch.no_grad()
def features(pipe, sc):
    """(order features [B, F], prior features [B, 3 K_max], nested theta [B, K_max, 3])."""
    def one(a: int, b: int):
        fwd, fit, f = order_stages(pipe, sc[a:b])
        return f, prior_features(fwd.out, fit.theta), fit.theta
    return cat_chunks(one, len(sc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=count_arg, default=16384, help="training scenes of the heads")
    ap.add_argument("--n", type=count_arg, default=400, help="validation scenes per cell")
    ap.add_argument("--separation", action="store_true",
                    help="fit no head: each input's AUC for the nested sources k >= 2")
    ap.add_argument("--out", type=Path, default=None,
                    help="default reports/bench/order_prior.json (order_prior_auc.json "
                         "with --separation)")
    args = ap.parse_args()
    pipe = load_learned_pipeline()
    if args.separation:
        print(f"{'SNR':>4} {'spread':>6} | share adding | AUC, validation, k >= 2")
        rows = []
        for i, snr in enumerate(SNRS):
            for spread in (0.0, SPREAD_DB):
                sc = scenes_at("validation", args.n, snr, spread, i)
                f, x, theta = features(pipe, sc)
                D = nested_detections(theta, sc.azimuth, sc.elevation, sc.range_m, sc.K)
                rows.append(separation_row(snr, spread, f, x, D))
        write_text_atomic(args.out or Path("reports/bench/order_prior_auc.json"),
                          json.dumps({"n": args.n, "rows": rows}, indent=2) + "\n")
        return
    (F, X), Ks, Ds = order_training_set(pipe, args.train, lambda sc: features(pipe, sc))
    K_max = pipe.system.K_max
    heads = {"refit": (fit_order_head(F, Ks, Ds, K_max), False),
             "+ prior": (fit_order_head(torch.cat([F, X], -1), Ks, Ds, K_max), True)}
    rows = compare_heads(pipe, heads, lambda sc: features(pipe, sc), args.n, SNRS,
                         lambda D, sc: {"genie": genie_K(D, sc.K)})
    write_text_atomic(args.out or Path("reports/bench/order_prior.json"),
                      json.dumps({"train": args.train, "n": args.n, "rows": rows},
                                           indent=2) + "\n")


if __name__ == "__main__":
    main()
