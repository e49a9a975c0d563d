"""How much F1 the likelihood itself allows with K known: a maximum-likelihood genie. Test split.

    python benchmarks/bench_ml_genie.py [--n 400] [--snrs 0 5 10] [--classical-cache DIR]
                                        [--corner NAME] [--out reports/bench/ml_genie.json]

On ``bench_versus.py``'s test scenes (the same scenes, SNR withheld, the true K given), per
SNR with equal and spread powers, four answers:

* ``classical``, ``learned`` — the two localizers, K given;
* ``ML from truth`` — NF-MLE to convergence started at the true positions: the local
  optimum of the likelihood in the truth's basin. A genie (it knows where to look), and
  not the maximum-likelihood estimate: the noise makes other optima deeper;
* ``ML genie`` — per scene, of the three fits above the one with the lowest concentrated
  ML cost ||y - B s||^2 (ties, as where the classical localizer found the truth's basin,
  go to the first in this list; the learned fits, polished by 5 float32 iterations, are
  rarely the deepest). The maximum-likelihood estimate has a cost at most that low, so
  where another fit is deeper than the truth's basin the likelihood itself points away
  from the truth. Its F1 is about the most an estimator that returns the likelihood's
  deepest optimum can reach (the true ML estimate may be deeper still, and wrong).

Both localizers end in an ML polish and the learned one judges its candidates by the same
likelihood, so the ML genie's margin over the classical F1 is about what the issue's
"F1 >= classical + 0.05 at 0 and 5 dB" can ask of them with K given; more needs an
estimator that prefers a less likely answer. ``--classical-cache`` reuses the classical
estimates that ``bench_versus.py --classical-cache`` stored (same key). ``--corner NAME``:
instead, a corner of ``bench_corners.py`` (its scenes, validation split, ``--n`` per SNR;
no cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_corners as bc  # noqa: E402
import bench_versus as bv  # noqa: E402
from bench_search_gap import relative_cost  # noqa: E402

from risloc.core.params import Estimates  # noqa: E402
from risloc.estimators.classical import ClassicalConfig  # noqa: E402
from risloc.estimators.nfmle import nfmle_refine  # noqa: E402
from risloc.evaluation import match_sources, summarize  # noqa: E402
from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.pipeline import Localizer  # noqa: E402

FIELDS = ("K", "azimuth", "elevation", "range_m", "score")


def f1(est: Estimates, sc) -> float:
    return summarize(match_sources(est, sc.azimuth, sc.elevation, sc.range_m, sc.K)).f1


def ml_from_truth(sc, system) -> Estimates:
    """NF-MLE to convergence (the classical localizer's final polish) from the truth."""
    truth = Estimates(sc.K, *(t.double() for t in (sc.azimuth, sc.elevation, sc.range_m)),
                      torch.zeros_like(sc.azimuth, dtype=torch.float64))
    return nfmle_refine(sc.y, sc.H, sc.codes, truth, system, ClassicalConfig().final)


def deepest(fits: list[Estimates], costs: list[torch.Tensor]) -> tuple[Estimates, torch.Tensor]:
    """Per scene the fit of lowest cost; returns it and the index of the chosen fit [B]."""
    which = torch.stack(costs, -1).argmin(-1)
    rows = torch.arange(which.shape[0])
    out = [torch.stack([getattr(f, name).to(torch.float64 if name != "K" else torch.int64)
                        for f in fits])[which, rows] for name in FIELDS]
    return Estimates(*out), which


def run(args) -> list[dict]:
    learned = Localizer.from_checkpoint(args.checkpoint)
    classical = Localizer(learned.system, "classical")
    system = learned.system
    rows = []
    for i, snr in enumerate(bv.SNRS):
        if snr not in args.snrs:
            continue
        for spread in (0.0, bv.SPREAD_DB) if args.corner is None else (None,):
            if args.corner is None:
                sc = bv.scenes_at("test", args.n, snr, spread, i)
            else:  # the corner's scenes at this SNR, as bench_corners.py draws them
                sc = bc.corner_scenes(args.corner, "validation", args.n, snr,
                                      bc.cell_stream(args.corner, args.snrs.index(snr)))
            key = {"split": "test", "n": args.n, "snr": snr, "spread": spread, "given": 0,
                   "knownK": 1}
            est_c, cached = bv.classical_estimates(
                classical, sc, key, args.classical_cache if args.corner is None else None,
                False, True)
            est_l = bv.localize(learned, sc, False, True)
            est_t = ml_from_truth(sc, system)
            fits = [est_c, est_l, est_t]
            costs = [relative_cost(f, sc, system) for f in fits]
            genie, which = deepest(fits, costs)
            row = {"snr_db": snr, "power_spread_db": spread, "scenes": len(sc),
                   "classical_from_cache": cached,
                   "f1": {"classical": f1(est_c, sc), "learned": f1(est_l, sc),
                          "ML from truth": f1(est_t, sc), "ML genie": f1(genie, sc)},
                   "deepest_scenes": {name: int((which == j).sum()) for j, name in
                                      enumerate(("classical", "learned", "ML from truth"))}}
            rows.append(row)
            f, d = row["f1"], row["deepest_scenes"]
            kind = (args.corner if spread is None else "equal powers" if spread == 0
                    else f"spread {spread:g} dB")
            print(f"{snr:4.0f} dB  {kind:15s}"
                  f"  F1 classical {f['classical']:.3f}  learned {f['learned']:.3f}  "
                  f"ML from truth {f['ML from truth']:.3f}  ML genie {f['ML genie']:.3f} "
                  f"(classical + 0.05 = {f['classical'] + 0.05:.3f})  deepest fit: "
                  f"classical {d['classical']}, learned {d['learned']}, from truth "
                  f"{d['ML from truth']} of {len(sc)}", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="learned model (default: shipped)")
    ap.add_argument("--n", type=int, default=400, help="scenes per SNR and power spread")
    ap.add_argument("--snrs", type=float, nargs="+", default=[0.0, 5.0, 10.0],
                    choices=bv.SNRS, metavar="DB")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classical-cache", type=Path, default=None)
    ap.add_argument("--corner", choices=list(bc.CORNERS), default=None,
                    help="a corner of bench_corners.py instead (validation split)")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/ml_genie.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run(args)
    res = {"command": " ".join(sys.argv), "checkpoint": args.checkpoint or "shipped",
           "scenes_per_cell": args.n, "rows": rows, "wall_s": time.perf_counter() - t0}
    write_text_atomic(args.out, json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
