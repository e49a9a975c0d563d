"""How good are the fit stage's nested sets, whoever decides K? Validation split.

    python benchmarks/bench_nested_sets.py [--variants NAME:KEY=VALUE,... ...]
                                           [--cells CORNER@SNR ...] [--n 200]
                                           [--classical-cache DIR] [--time-rounds 8]
                                           [--out reports/bench/nested_sets.json]

For each variant of the fit stage (``MLFitConfig`` fields, e.g. ``nested_repairs=1``;
``base`` is the shipped setting) and each cell of ``bench_corners.py`` (validation split,
SNR withheld), the learned pipeline's nested sets theta[:, :k] are scored with F1 under
four choices of k: the shipped order head (not refitted to the variant), the residual rule,
the true K, and the per-scene best k (an oracle: no K decision can do better on these
sets). "all in K-set" is the share of scenes whose true-size set holds every true source.
Where even the oracle is below the classical localizer's F1 (``--classical-cache``, shared
with ``bench_corners.py --split validation --n 200``), the sets, not the K decision, are
what loses. These are the nested sets before the last polish, so the head's F1 differs a
little from ``bench_corners.py``'s. Then the variants' speed: the whole learned localizer
on 128 test scenes, 2 threads, interleaved for ``--time-rounds`` rounds, median of all but
the first, as a ratio to the first variant. About 30 s per variant and 7 cells, plus 1 s
per variant and round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_corners as bc  # noqa: E402
from bench_pipeline import test_batch  # noqa: E402

from risloc.core.checks import normalise_scale  # noqa: E402
from risloc.estimators.order import residual_order  # noqa: E402
from risloc.evaluation import match_sources, summarize  # noqa: E402
from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.pipeline import Localizer  # noqa: E402
from risloc.pipeline.calibrate import order_stages  # noqa: E402
from risloc.pipeline.order import nested_detections  # noqa: E402

CELLS = ["dense@5", "dense@10", "edge@10", "dft@20", "LoS@20", "spread 25 dB@20", "default@5"]
SNRS = (5.0, 10.0, 20.0)  # bench_corners' list: a cell's stream depends on its index


def parse_variant(text: str, base) -> tuple[str, object]:
    """"name:key=value,key=value" (or "base") -> (name, MLFitConfig)."""
    name, _, body = text.partition(":")
    changes = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if not hasattr(base, key):
            raise SystemExit(f"--variants {text!r}: MLFitConfig has no field {key!r}")
        old = getattr(base, key)
        changes[key] = value == "True" if isinstance(old, bool) else type(old)(value)
    return name, replace(base, **changes)


def f1(det: torch.Tensor, K: torch.Tensor, k: torch.Tensor) -> float:
    """F1 of reporting the first k [S] nested sources; det [S, K_max] detections."""
    found = det.gather(1, (k - 1)[:, None])[:, 0]
    return float(2 * found.sum() / (k.sum() + K.sum()))


@torch.no_grad()
def score_cell(pipe, sc) -> dict:
    _, fit, x = order_stages(pipe, sc)
    y, _ = normalise_scale(sc.y, sc.H)
    det = nested_detections(fit.theta, sc.azimuth, sc.elevation, sc.range_m, sc.K)
    K = sc.K
    k_all = torch.arange(1, det.shape[1] + 1)
    choices = {"head": pipe.order_head.decide(x),
               "rule": residual_order(fit.costs, y.shape[1], y.shape[2]),
               "true K": K, "oracle": (2 * det / (k_all + K[:, None])).argmax(1) + 1}
    out = {f"F1 {name}": f1(det, K, k) for name, k in choices.items()}
    out["K acc head"] = float((choices["head"] == K).float().mean())
    out["all in K-set"] = float((det.gather(1, (K - 1)[:, None])[:, 0] == K).float().mean())
    return out


def timing(pipe, variants: dict, rounds: int) -> dict[str, float]:
    y, H, codes = test_batch(128)
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for _ in range(rounds):
            for name, cfg in variants.items():
                pipe.fit_config = cfg
                t0 = time.perf_counter()
                pipe.localize(y, H, codes)
                times[name].append(time.perf_counter() - t0)
    first = statistics.median(next(iter(times.values()))[1:])
    return {name: statistics.median(t[1:]) / first for name, t in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=[
        "base", "nested repairs:nested_repairs=1",
        "nested repairs, 1 repair, no greedy:nested_repairs=1,repairs=1,greedy_nested=False"])
    ap.add_argument("--cells", nargs="+", default=CELLS, help="CORNER@SNR")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--classical-cache", type=Path, default=None)
    ap.add_argument("--time-rounds", type=int, default=8, help="0: no timing")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/nested_sets.json"))
    args = ap.parse_args(argv)
    loc = Localizer.from_checkpoint(None)
    pipe = loc.pipeline
    variants = dict(parse_variant(v, pipe.fit_config) for v in args.variants)
    classical = Localizer(bc.RislocConfig().system, "classical")
    lines, rows = [], []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"{'cell':<18} {'variant':<38} {'F1 head':>7} {'rule':>6} {'true K':>6} "
        f"{'oracle':>6} {'classical':>9} {'K acc head':>10} {'all in K-set':>12}")
    torch.set_num_threads(2)
    for cell in args.cells:
        corner, _, snr = cell.partition("@")
        snr = float(snr)
        stream = bc.cell_stream(corner, SNRS.index(snr))
        sc = bc.corner_scenes(corner, "validation", args.n, snr, stream)
        est, _, _ = bc.classical_run(classical, sc, bc.cell_key(corner, snr, "validation",
                                                                 args.n, stream),
                                     args.classical_cache)
        cl = summarize(match_sources(est, sc.azimuth, sc.elevation, sc.range_m, sc.K))
        for name, cfg in variants.items():
            pipe.fit_config = cfg
            r = {"cell": cell, "variant": name, **score_cell(pipe, sc),
                 "F1 classical": float(cl.f1)}
            rows.append(r)
            say(f"{cell:<18} {name:<38} {r['F1 head']:7.3f} {r['F1 rule']:6.3f} "
                f"{r['F1 true K']:6.3f} {r['F1 oracle']:6.3f} {r['F1 classical']:9.3f} "
                f"{r['K acc head']:10.3f} {r['all in K-set']:12.3f}")
    speed = timing(pipe, variants, args.time_rounds) if args.time_rounds > 1 else {}
    for name, ratio in speed.items():
        say(f"time of the learned localizer, {name}: {ratio:.3f}x the first variant's")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"rows": rows, "time_ratio": speed,
                                            "variants": args.variants}, indent=1))
    write_text_atomic(args.out.with_suffix(".txt"), "\n".join(lines) + "\n")
    print(f"wrote {args.out} (+ .txt)")


if __name__ == "__main__":
    main()
