"""How well do the learned nested fits tell the noise level without the SNR?
Validation split only.

    python benchmarks/bench_noise_estimate.py [--n 400] [--snrs 0 10]
                                              [--out reports/bench/noise_estimate.json]

A decision given the SNR knows sigma^2 = mean |y|^2 / (1 + SNR) exactly
(:func:`risloc.estimators.order.noise_var_from_snr`); without it the order head reads the
level its nested fits leave, C_{K_max} / (L (M - K_max))
(:func:`risloc.pipeline.order.residual_noise`). Per true K, on validation scenes as
``bench_versus.py --split validation`` draws them (each SNR on its stream there; equal and
spread powers), this prints the ratio of that estimate to the true level in dB (median and
5-95 %), and of C_K / (L (M - K)) at the true K, the best a decision that knew K could read
from the same fits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_order_genie import cat_chunks  # noqa: E402
from bench_versus import SNRS, SPREAD_DB, count_arg, scenes_at  # noqa: E402

from risloc.core.checks import normalise_scale  # noqa: E402
from risloc.estimators.order import noise_var_from_snr  # noqa: E402
from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.pipeline.calibrate import order_stages  # noqa: E402
from risloc.pipeline.learned import load_learned_pipeline  # noqa: E402
from risloc.pipeline.order import residual_noise  # noqa: E402


def spread_db(ratio: torch.Tensor) -> dict:
    """Median and 5-95 % of 10 log10(ratio) [dB]."""
    db = 10 * torch.log10(ratio.double())
    return {"median": float(db.median()), "p5": float(db.quantile(0.05)),
            "p95": float(db.quantile(0.95))}


def noise_rows(costs: torch.Tensor, true: torch.Tensor, K: torch.Tensor, L: int, M: int
               ) -> dict:
    """Per true K: the K_max-source estimate and C_K / (L (M - K)) over the true level."""
    est = residual_noise(costs, L, M)
    at_K = costs.double().gather(1, K.unsqueeze(1)).squeeze(1) / (L * (M - K))
    return {int(k): {"scenes": int((K == k).sum()),
                     "K_max fit": spread_db(est[K == k] / true[K == k]),
                     "true K fit": spread_db(at_K[K == k] / true[K == k])}
            for k in K.unique()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=count_arg, default=400, help="validation scenes per cell")
    ap.add_argument("--snrs", type=float, nargs="+", default=[0.0, 10.0],
                    help="SNRs, among bench_versus' (each keeps its scene stream there)")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/noise_estimate.json"))
    args = ap.parse_args()
    if unknown := [s for s in args.snrs if s not in SNRS]:
        ap.error(f"--snrs {unknown}: not among bench_versus' {list(SNRS)}")
    pipe = load_learned_pipeline()
    rows = []
    for snr in args.snrs:
        for spread in (0.0, SPREAD_DB):
            sc = scenes_at("validation", args.n, snr, spread, SNRS.index(snr))
            (costs,) = cat_chunks(lambda a, b, sc=sc: (order_stages(pipe, sc[a:b])[1].costs,),
                                  len(sc))
            y = normalise_scale(sc.y, sc.H)[0]  # (the units of the costs)
            true = noise_var_from_snr(y, sc.snr_db)
            per_K = noise_rows(costs, true, sc.K, y.shape[1], y.shape[2])
            rows.append({"snr_db": snr, "power_spread_db": spread, "per_K": per_K})
            print(f"{snr:4.0f} dB, spread {spread:4.0f} dB | estimate / true, dB: median "
                  "[5 %, 95 %]", flush=True)
            for k, r in per_K.items():
                a, b = r["K_max fit"], r["true K fit"]
                print(f"  K = {k}: K_max fit {a['median']:+.2f} [{a['p5']:+.2f}, "
                      f"{a['p95']:+.2f}] | true-K fit {b['median']:+.2f} [{b['p5']:+.2f}, "
                      f"{b['p95']:+.2f}]", flush=True)
    write_text_atomic(args.out, json.dumps({"n": args.n, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
