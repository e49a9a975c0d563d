"""MUSIC settings of the learned pipeline at inference, on the VALIDATION split (never the
test split), and their throughput.

    python3 benchmarks/bench_inference_grid.py [--set grid|refine] [--checkpoint PATH]
                                               [--n 100] [--out reports/bench/...json]

--set grid: the recipe's validation grid against smaller ones (how the default grid was
chosen); --set refine: MUSIC's Gauss-Newton refinement (candidates, iterations) before
the NF-MLE polish (how the pipeline's refinement settings were chosen).

(a) Accuracy: 4 x n validation-split scenes at 0/5/10/20 dB, K unknown in 1..5, the
    whole pipeline (network -> R_blend -> MUSIC -> NF-MLE) through the Localizer:
    median angle / range error, K accuracy and F1 per SNR for each grid.
(b) Speed: end-to-end scenes/s at batch 256 (Localizer, one worker per core), median of
    6 timed runs after a warm-up, each grid measured twice in alternation.
This is how risloc.pipeline.learned.inference_music_config's settings were chosen.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from risloc.config import RislocConfig
from risloc.evaluation.metrics import match_sources, summarize
from risloc.pipeline import Localizer
from risloc.simulation import simulate_range

VARIANTS = {
    "grid": {"81x41x16": {"n_azimuth": 81, "n_elevation": 41, "n_range": 16},
             "61x31x16": {"n_azimuth": 61, "n_elevation": 31, "n_range": 16},
             "61x31x12": {"n_azimuth": 61, "n_elevation": 31, "n_range": 12}},
    "refine": {"10 cand x 6 it": {"n_candidates": 10, "refine_iterations": 6},
               "10 cand x 3 it": {"n_candidates": 10, "refine_iterations": 3},
               "6 cand x 6 it": {"n_candidates": 6, "refine_iterations": 6},
               "6 cand x 3 it": {"n_candidates": 6, "refine_iterations": 3}},
}
SNRS = (0.0, 5.0, 10.0, 20.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="which", choices=sorted(VARIANTS), default="grid")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--n", type=int, default=100, help="validation scenes per SNR")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/inference_grid.json"))
    a = ap.parse_args()
    cfg = RislocConfig()
    loc = Localizer.from_checkpoint(a.checkpoint)
    base = loc.model.music_cfg
    val = [simulate_range(0, a.n, cfg.system, cfg.scene, seed=31, split="validation",
                          stream=950 + i, snr_db=s) for i, s in enumerate(SNRS)]
    timing = simulate_range(0, 256, cfg.system, cfg.scene, seed=31, split="validation",
                            stream=960)
    res = {"checkpoint": a.checkpoint or "shipped", "n_per_snr": a.n, "accuracy": [],
           "speed": []}
    variants = VARIANTS[a.which]
    for name, over in variants.items():
        loc.model.music_cfg = replace(base, **over)
        for snr, sc in zip(SNRS, val):
            est = loc.localize(sc.y, sc.H, sc.codes, sc.snr_db).estimates
            s = summarize(match_sources(est, sc.azimuth, sc.elevation, sc.range_m, sc.K))
            row = {"variant": name, "snr_db": snr,
                   "angle_median_deg": s.angle_median_deg, "range_median_m": s.range_median_m,
                   "K_accuracy": s.K_accuracy, "f1": s.f1}
            res["accuracy"].append(row)
            print(f"{name:>14} {snr:4.0f} dB  angle {s.angle_median_deg:.3f} deg  range "
                  f"{s.range_median_m:.3f} m  K acc {s.K_accuracy:.2f}  F1 {s.f1:.3f}",
                  flush=True)
    for name in list(variants) * 2:  # alternate, twice
        loc.model.music_cfg = replace(base, **variants[name])
        ts = []
        for _ in range(7):
            t0 = time.perf_counter()
            loc.localize(timing.y, timing.H, timing.codes, timing.snr_db)
            ts.append(time.perf_counter() - t0)
        rate = 256 / statistics.median(ts[1:])
        res["speed"].append({"variant": name, "scenes_per_s": rate, "seconds": ts})
        print(f"{name:>14} batch 256: {rate:.1f} scenes/s", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
