"""Is the SNR-free K decision limited by its training data, its width or its inputs?
Validation split only.

    python benchmarks/bench_order_capacity.py [--train 32768] [--n 400]
                                              [--out reports/bench/order_capacity.json]

Without the SNR the learned pipeline's K accuracy at 10 dB with powers spread over 12 dB
stays near 0.80, while a decision that knows the noise level reaches 0.83 on the same fits
(``bench_snr_head.py``, ``bench_fit_gap.py``). This refits the order head (the shipped
settings unless named) on ``--train`` training-split scenes of the recipe's distribution
(its own stream, SNR never shown) and compares, on the validation scenes of
``bench_versus.py`` at 0-20 dB, equal and spread powers, K unknown, SNR withheld:

* ``shipped``: the head in the model file (16,384 scenes, 64 wide);
* ``16k``: refitted on the first 16,384 scenes (the control: the fit's own noise);
* ``32k`` / ``32k, 128 wide``: twice the scenes, and twice the width too;
* ``16k + peak/mean``: the 16,384 scenes with one more input per k = 0..K_max-1, scale-free
  and SNR-free: log(max / mean) over the search grid of the residual's matched-field power
  sum_l |b_l(g)^H r_l|^2 after the first k nested sources (a source left in the residual
  raises the peak above the noise's, whatever the noise level).

K accuracy and F1 of the nested sources before the last polish.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_order_genie import cat_chunks  # noqa: E402
from bench_snr_head import compare_heads, order_training_set  # noqa: E402

from risloc.core.checks import normalise_scale  # noqa: E402
from risloc.core.params import steering_at  # noqa: E402
from risloc.estimators.classical import search_grid  # noqa: E402
from risloc.estimators.grids import grid_power  # noqa: E402
from risloc.estimators.nfmle import amplitude_fit  # noqa: E402
from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.pipeline.calibrate import order_stages  # noqa: E402
from risloc.pipeline.learned import load_learned_pipeline  # noqa: E402
from risloc.pipeline.order import (  # noqa: E402
    OrderFitConfig,
    fit_order_head,
)

SNRS = (0.0, 5.0, 10.0, 15.0, 20.0)


def peak_to_mean(pipe, fit, y, H, codes) -> torch.Tensor:
    """[B, K_max]: log(max / mean) over the grid of sum_l |b_l(g)^H r_l|^2, r the residual
    after the first k = 0..K_max-1 nested sources (bfloat16 products where native, as the
    repair's shortlist)."""
    grid = search_grid(pipe.system, pipe.fit_config.search, y.dtype, str(y.device), True)
    out = []
    for k in range(fit.theta.shape[1]):
        if k == 0:
            r = y
        else:
            mask = torch.ones(y.shape[0], k, dtype=torch.bool, device=y.device)
            A = steering_at(fit.theta[:, :k], pipe.system, y.dtype)
            r = amplitude_fit(y, H, codes, A, mask, pipe.fit_config.polish.tikhonov).r
        power = grid_power(codes.conj() * (r @ H.conj()), grid.A, grid.A_bf16)  # (B, G)
        out.append(torch.log(power.amax(-1) / power.mean(-1)))
    return torch.stack(out, -1).float()


@torch.no_grad()
def features(pipe, sc):
    """(order features [B, F], peak/mean inputs [B, K_max], nested theta [B, K_max, 3])."""
    def one(a: int, b: int):
        part = sc[a:b]
        _, fit, f = order_stages(pipe, part)
        y, H = (t.to(torch.complex64) for t in normalise_scale(part.y, part.H))
        return f, peak_to_mean(pipe, fit, y, H, part.codes.to(torch.complex64)), fit.theta
    return cat_chunks(one, len(sc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=32768, help="training scenes (>= 16384)")
    ap.add_argument("--n", type=int, default=400, help="validation scenes per cell")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/order_capacity.json"))
    args = ap.parse_args()
    if args.train < 16384:
        ap.error("--train must be >= 16384 (the control is refitted on 16,384 scenes)")
    pipe = load_learned_pipeline()
    (F, X), Ks, Ds = order_training_set(pipe, args.train, lambda sc: features(pipe, sc))
    K_max, half = pipe.system.K_max, 16384
    heads = {
        "16k": (fit_order_head(F[:half], Ks[:half], Ds[:half], K_max), False),
        "32k": (fit_order_head(F, Ks, Ds, K_max), False),
        "32k, 128 wide": (fit_order_head(F, Ks, Ds, K_max, OrderFitConfig(hidden=128)), False),
        "16k + peak/mean": (fit_order_head(torch.cat([F, X], -1)[:half], Ks[:half], Ds[:half],
                                           K_max), True)}
    rows = compare_heads(pipe, heads, lambda sc: features(pipe, sc), args.n, SNRS)
    write_text_atomic(args.out, json.dumps({"train": args.train, "n": args.n, "rows": rows},
                                           indent=2) + "\n")


if __name__ == "__main__":
    main()
