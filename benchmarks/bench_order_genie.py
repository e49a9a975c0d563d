"""How much F1 can any K decision get from the learned pipeline's fits? A genie bound.

    python benchmarks/bench_order_genie.py [--n 400] [--split test] [--checkpoint PATH]

On the scenes of ``bench_versus.py`` (same split, seeds and streams; SNR withheld), the
learned pipeline runs its forward, propose and fit stages; then K is decided by
* the shipped order head (the pipeline's decision),
* the classical penalised-likelihood rule on the same nested fits,
* the true K,
* a genie that knows which reported sources are detections and picks, per scene, the
  number of nested sources that maximises the pooled F1 (Dinkelbach iteration on
  2 D_k - F k): no decision rule on these fits can exceed its F1.
F1 here counts the nested sources before the last polish (the polish moves positions by
far less than the 5 deg gate). Output: one row per SNR and power spread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_versus import SEED, SNRS, SPREAD_DB, scenes_at  # noqa: E402

from risloc.estimators.order import residual_order  # noqa: E402
from risloc.io.atomic import write_text_atomic
from risloc.parallel import run_in_chunks  # noqa: E402
from risloc.pipeline.calibrate import order_stages  # noqa: E402
from risloc.pipeline.learned import load_learned_pipeline  # noqa: E402
from risloc.pipeline.order import nested_detections  # noqa: E402


def cat_chunks(one, n: int) -> list[torch.Tensor]:
    """``run_in_chunks(one, n)`` with each of one's outputs concatenated over the chunks."""
    parts = run_in_chunks(one, n)
    return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]


def pooled_f1(K: torch.Tensor, D: torch.Tensor, K_true: torch.Tensor) -> float:
    found = D.gather(1, (K - 1).unsqueeze(1)).sum()
    return float(2 * found / (K.sum() + K_true.sum()))


def genie_K(D: torch.Tensor, K_true: torch.Tensor, rounds: int = 50) -> torch.Tensor:
    """Per-scene k maximising the pooled F1 given the detections D [S, K_max]: Dinkelbach's
    iteration, each K maximising 2 sum D - F sum k at the F of the K before; it stops where
    the F does not rise (then no K has a larger one) and says so if it never does."""
    k = torch.arange(1, D.shape[1] + 1, dtype=D.dtype)
    F, best = 0.0, None
    for _ in range(rounds):
        K = (2 * D - F * k).argmax(-1) + 1
        F_new = pooled_f1(K, D, K_true)
        if best is not None and F_new <= F:
            return best
        F, best = F_new, K
    raise RuntimeError(f"genie_K: the pooled F1 still rose after {rounds} rounds")


@torch.no_grad()
def run(pipe, sc):
    def one(a: int, b: int):
        _, fit, feats = order_stages(pipe, sc[a:b])
        return (pipe.order_head.decide(feats), residual_order(fit.costs, sc.y.shape[1],
                                                               sc.y.shape[2]), fit.theta)
    return cat_chunks(one, len(sc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--split", choices=sorted(SEED), default="test")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/order_genie.json"))
    args = ap.parse_args()
    pipe = load_learned_pipeline(args.checkpoint)
    rows = []
    print(f"{'SNR':>5} {'spread':>6}  F1: head  rule  true K  genie | K acc: head  rule  genie")
    for i, snr in enumerate(SNRS):
        for spread in (0.0, SPREAD_DB):
            sc = scenes_at(args.split, args.n, snr, spread, i)
            head, rule, theta = run(pipe, sc)
            D = nested_detections(theta, sc.azimuth, sc.elevation, sc.range_m, sc.K)
            genie = genie_K(D, sc.K)
            row = {"snr_db": snr, "power_spread_db": spread, "scenes": len(sc)}
            for name, K in (("head", head), ("rule", rule), ("true_K", sc.K),
                            ("genie", genie)):
                row[f"f1_{name}"] = pooled_f1(K, D, sc.K)
                row[f"K_accuracy_{name}"] = float((K == sc.K).float().mean())
            rows.append(row)
            print(f"{snr:5.0f} {spread:6.0f}  {row['f1_head']:.3f} {row['f1_rule']:.3f} "
                  f"{row['f1_true_K']:.3f} {row['f1_genie']:.3f} | "
                  f"{row['K_accuracy_head']:.3f} {row['K_accuracy_rule']:.3f} "
                  f"{row['K_accuracy_genie']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"split": args.split, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
