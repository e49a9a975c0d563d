"""Would the SNR help the learned pipeline's K decision? An order head that reads it.

    python benchmarks/bench_snr_head.py [--train 8192] [--n 400] [--split validation]
                                        [--snrs 0 5 10 15 20]
                                        [--out reports/bench/snr_head.json]

The learned pipeline decides K without the SNR (:mod:`risloc.pipeline.order`); the
classical localizer uses it where given, which is where it leads on K accuracy with
unequal powers (``bench_versus.py``). This fits, on the features of ``--train``
training-split scenes (the order head's own stream and scene distribution), two heads with
the shipped head's settings:

* ``refit``: the shipped features (no SNR), a control for the fit's own noise;
* ``snr``: the same plus two blocks from the known noise level sigma^2 (from each scene's
  realised SNR, :func:`risloc.estimators.order.noise_var_from_snr`):
  log((C_{k-1} - C_k) / sigma^2) and log(C_k / (L M sigma^2)); decided with ``balance``
  0.25 (the shipped value) and 0.1.

and compares them, with the SNR given, on the validation scenes of ``bench_versus.py``
(SNR >= 0 dB, equal and spread powers, K unknown) with the shipped head and with the
classical penalised-likelihood rule fed the known sigma^2, all on the same nested fits.
K accuracy and F1 of the nested sources before the last polish. On the validation split
(the default) a question, not a result; ``--split test`` measures what such decisions
reach on the test scenes of ``bench_versus.py`` (``--n 2000 --snrs 5 10``: the scenes of
its ``versus_n2000`` run), a bound for the K-accuracy targets, not a choice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_order_genie import cat_chunks, pooled_f1  # noqa: E402
from bench_versus import SNRS, SPREAD_DB, scenes_at  # noqa: E402

from risloc.core.checks import normalise_scale  # noqa: E402
from risloc.estimators.order import noise_var_from_snr, residual_order  # noqa: E402
from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.pipeline.calibrate import ORDER_STREAM, order_stages  # noqa: E402
from risloc.pipeline.learned import load_learned_pipeline  # noqa: E402
from risloc.pipeline.order import (  # noqa: E402
    FLOOR,
    OrderFitConfig,
    fit_order_head,
    nested_detections,
)
from risloc.simulation import simulate_range  # noqa: E402
from risloc.simulation.streams import BLOCK  # noqa: E402


def noise_blocks(costs: torch.Tensor, y: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """[B, 2 K_max]: log((C_{k-1} - C_k) / sigma^2), log(C_k / (L M sigma^2)), k = 1..K_max."""
    C, s2 = costs.double(), sigma2.double().unsqueeze(-1)
    _, L, M = y.shape
    return torch.log(torch.cat([(C[:, :-1] - C[:, 1:]) / s2, C[:, 1:] / (s2 * L * M)], -1)
                     .clamp_min(FLOOR)).float()


@torch.no_grad()
def stages(pipe, sc, snr_db: torch.Tensor):
    """(shipped features, features + noise blocks, nested theta, nested costs, sigma^2)."""
    def one(a: int, b: int):
        _, fit, f = order_stages(pipe, sc[a:b])
        y = normalise_scale(sc.y[a:b], sc.H[a:b])[0]  # the units of fit.costs
        s2 = noise_var_from_snr(y, snr_db[a:b])
        return f, torch.cat([f, noise_blocks(fit.costs, y, s2)], -1), fit.theta, fit.costs, s2
    return cat_chunks(one, len(sc))


def order_training_set(pipe, n: int, run):
    """The order head's training scenes (training split, its own stream, the recipe's scene
    distribution), ``n`` of them, block by block: ``run(scenes)`` returns tensors [B, ...]
    and, last, the nested sources [B, K_max, 3]. Returns (the tensors, each concatenated),
    K [n] and the detections [n, K_max] of the nested sources."""
    r = pipe.recipe
    outs, Ks, dets = [], [], []
    for lo in range(0, n, BLOCK):
        sc = simulate_range(lo, min(n, lo + BLOCK), r.system, r.scene, seed=r.data.seed,
                            split="train", stream=ORDER_STREAM)
        *tensors, theta = run(sc)
        outs.append(tensors)
        Ks.append(sc.K)
        dets.append(nested_detections(theta, sc.azimuth, sc.elevation, sc.range_m, sc.K))
        print(f"training features: {min(n, lo + BLOCK)} of {n}", flush=True)
    return [torch.cat(t) for t in zip(*outs, strict=True)], torch.cat(Ks), torch.cat(dets)


def decision_row(snr: float, spread: float, sc, decisions: dict, D: torch.Tensor) -> dict:
    """K accuracy and F1 of each decision (name -> K [B]) on scenes ``sc`` with nested
    detections D [B, K_max], printed as one line."""
    row = {"snr_db": snr, "power_spread_db": spread, "scenes": len(sc)}
    for name, K in decisions.items():
        row[name] = {"K_accuracy": float((K == sc.K).float().mean()),
                     "f1": pooled_f1(K, D, sc.K)}
    print(f"{snr:4.0f} {spread:6.0f} | " + " | ".join(
        f"{n}: {row[n]['K_accuracy']:.3f} / {row[n]['f1']:.3f}" for n in decisions),
        flush=True)
    return row


def compare_heads(pipe, heads: dict, features, n: int, snrs, more=None) -> list[dict]:
    """Per SNR of ``snrs`` (the i-th on stream 800 + i of ``bench_versus.scenes_at``) and
    power spread: :func:`decision_row` of the shipped head and of each ``heads`` entry,
    name -> (head, reads the extra inputs), on ``n`` validation scenes, SNR withheld;
    ``features(scenes)`` -> (order features, extra inputs, nested theta); ``more(D, scenes)``
    -> further decisions (name -> K)."""
    rows = []
    print(f"{'SNR':>4} {'spread':>6} | K accuracy / F1, validation, SNR withheld")
    for i, snr in enumerate(snrs):
        for spread in (0.0, SPREAD_DB):
            sc = scenes_at("validation", n, snr, spread, i)
            f, x, theta = features(sc)
            D = nested_detections(theta, sc.azimuth, sc.elevation, sc.range_m, sc.K)
            decisions = {"shipped": pipe.order_head.decide(f),
                         **{name: h.decide(torch.cat([f, x], -1) if extra else f)
                            for name, (h, extra) in heads.items()},
                         **(more(D, sc) if more is not None else {})}
            rows.append(decision_row(snr, spread, sc, decisions, D))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=8192, help="training scenes of the heads")
    ap.add_argument("--n", type=int, default=400, help="scenes per SNR")
    ap.add_argument("--split", choices=("validation", "test"), default="validation")
    ap.add_argument("--snrs", type=float, nargs="+", default=None,
                    help="SNRs (default: those >= 0 dB of bench_versus's run, each with its "
                         "scene stream there); as in bench_versus, the i-th SNR listed gets "
                         "the i-th scene stream")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/snr_head.json"))
    args = ap.parse_args()
    pipe = load_learned_pipeline()
    (feats, ext), Ks, dets = order_training_set(
        pipe, args.train, lambda sc: stages(pipe, sc, sc.snr_db)[:3])
    K_max = pipe.system.K_max
    refit = fit_order_head(feats, Ks, dets, K_max)
    heads = {f"snr (balance {b:g})": fit_order_head(ext, Ks, dets, K_max,
                                                    OrderFitConfig(balance=b))
             for b in (0.25, 0.1)}
    rows = []
    print(f"{'SNR':>4} {'spread':>6} | K accuracy / F1 with the SNR given, {args.split}")
    cells = (list(enumerate(args.snrs)) if args.snrs is not None
             else [(i, snr) for i, snr in enumerate(SNRS) if snr >= 0])
    for i, snr in cells:
        for spread in (0.0, SPREAD_DB):
            sc = scenes_at(args.split, args.n, snr, spread, i)
            f, x, theta, costs, s2 = stages(pipe, sc, torch.full((len(sc),), float(snr)))
            D = nested_detections(theta, sc.azimuth, sc.elevation, sc.range_m, sc.K)
            decisions = {"shipped head": pipe.order_head.decide(f),
                         "refit head": refit.decide(f),
                         **{name: h.decide(x) for name, h in heads.items()},
                         "rule, sigma^2 known": residual_order(costs, sc.y.shape[1],
                                                               sc.y.shape[2], s2)}
            rows.append(decision_row(snr, spread, sc, decisions, D))
    write_text_atomic(args.out, json.dumps({"train": args.train, "n": args.n,
                                            "split": args.split, "rows": rows}, indent=2)
                      + "\n")


if __name__ == "__main__":
    main()
