"""Does the learned pipeline find more weak sources with more repair rounds, a longer
shortlist, or repair rounds on the chosen sources? And what does it lose with less work?
Validation split only (a choice, not a result).

    python benchmarks/bench_fit_settings.py [--n 400] [--snrs 0 5 10 15 20]
        [--variants fit|chosen|cheaper|precision|polish|shortlist|search] [--corner NAME]
        [--out reports/bench/fit_settings.json]

Per SNR, equal powers and powers spread over 12 dB, SNR withheld, K unknown and known:
K accuracy, F1, median azimuth, elevation and range errors and seconds of the shipped pipeline with

* ``--variants fit``: its fit stage at (repairs, shortlist) = (2, 32) (the default),
  (3, 32), (4, 32) and (2, 64), without the repair of the chosen sources (as measured
  before it existed; ``fit_settings.txt``);
* ``--variants chosen``: 0, 1 (the default) or 2 repair rounds on the K chosen sources
  before the last NF-MLE (``LearnedPipeline.chosen_repairs``), with K given and with K
  decided by the order head (``repair_decided``; the shipped pipeline repairs with K given
  only; ``fit_settings_chosen.txt``);
* ``--variants cheaper``: the pipeline as shipped before 2026-12-02 (3 LM iterations in the
  fit stage's polish, 5 in the last polish; printed as "shipped" in
  ``fit_settings_cheaper.txt``, which that version of this script wrote) beside ones doing
  less: one repair round instead of two, one LM iteration per nested set instead of two,
  2 LM iterations in the fit stage's polish, 3 in the last polish (the order head is the
  one of the model loaded); and the last two together, the defaults since (``--only "fit
  LM 3, last polish 5" "fit LM 2, last polish 3"``; ``fit_settings_combined.txt``);
* ``--variants precision``: the products that rank the repair's shortlist and form the
  network's beamformer spectrum in complex64 (as before 2026-12-02), the shortlist's in
  bfloat16 (the default since, where the hardware runs bfloat16 natively), and both in
  bfloat16 (``BeamformerBank.bf16``, not the default; ``fit_settings_precision.txt``);
* ``--variants polish``: the last polish with 3 LM iterations (the default), 5, up to 5
  with converged scenes dropping out (relative cost decrease below 1e-4 in an iteration)
  and to convergence in float64 (up to 30, as the classical localizer's last polish;
  ``fit_settings_polish.txt``: none lowers the medians, the default stays);
* ``--variants shortlist``: the repair's shortlist of 32 grid points (the default) against
  128, and 128 with 3 or 4 repair rounds that move on to the next-weakest source after a
  round that failed (``MLFitConfig.next_on_failure``; ``fit_settings_shortlist.txt``);
* ``--variants search``: more search or polish, each alone: the last polish to convergence
  in float64, 2 repair rounds on the chosen sources, 3 repair rounds in the fit stage, a
  shortlist of 96, 2 repair rounds on each nested set, the greedy nested selection (for
  the near-source corner, ``--corner near``: does the learned localizer fall short of the
  classical one there for want of search? ``fit_settings_search_near.txt``).

``--corner NAME``: the scenes of a corner of ``bench_corners.py`` (validation split, its
streams by the SNR's index in ``--snrs``) instead of equal and spread powers.
Each variant's seconds are summed over the cells and printed at the end (the variants run
one after another on each cell's scenes, so the machine's drift reaches them alike).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import bench_corners as bc
import bench_versus as bv

from risloc.io.atomic import write_text_atomic
from risloc.pipeline import Localizer


class Variant(NamedTuple):
    """One setting of the learned pipeline (None: the model's default)."""

    fit: dict  # MLFitConfig fields
    chosen: int = 1  # repair rounds on the chosen sources (LearnedPipeline.chosen_repairs)
    decided: bool = False  # ... also when the order head decides K (repair_decided)
    fit_lm: int | None = None  # LM iterations of the fit stage's polish
    last_lm: int | None = None  # LM iterations of the last polish
    bank_bf16: bool | None = None  # the network's beamformer bank in bfloat16
    last: dict | None = None  # NFMLEConfig fields of the last polish (after last_lm)


VARIANTS = {
    "fit": {"repairs 2, shortlist 32": Variant({"repairs": 2, "shortlist": 32}, 0),
            "repairs 3, shortlist 32": Variant({"repairs": 3, "shortlist": 32}, 0),
            "repairs 4, shortlist 32": Variant({"repairs": 4, "shortlist": 32}, 0),
            "repairs 2, shortlist 64": Variant({"repairs": 2, "shortlist": 64}, 0)},
    "chosen": {"chosen repairs 0": Variant({}, 0, True),
               "chosen repairs 1": Variant({}, 1, True),
               "chosen repairs 2": Variant({}, 2, True)},
    "cheaper": {"fit LM 3, last polish 5": Variant({}, fit_lm=3, last_lm=5),
                "repairs 1": Variant({"repairs": 1}, fit_lm=3, last_lm=5),
                "nested LM 1": Variant({"select_iterations": 1}, fit_lm=3, last_lm=5),
                "fit LM 2": Variant({}, fit_lm=2, last_lm=5),
                "last polish 3": Variant({}, fit_lm=3, last_lm=3),
                "fit LM 2, last polish 3": Variant({}, fit_lm=2, last_lm=3)},
    "precision": {"complex64": Variant({"shortlist_bf16": False}, bank_bf16=False),
                  "bfloat16 shortlist": Variant({"shortlist_bf16": True}, bank_bf16=False),
                  "bfloat16 shortlist and bank": Variant({"shortlist_bf16": True},
                                                         bank_bf16=True)},
    "polish": {"last polish 3": Variant({}, last={"iterations": 3}),
               "last polish 5": Variant({}, last={"iterations": 5}),
               "last polish up to 5, tol 1e-4": Variant({}, last={
                   "iterations": None, "max_iterations": 5, "tolerance": 1e-4}),
               "last polish converged, float64": Variant({}, last={
                   "iterations": None, "max_iterations": 30, "tolerance": 1e-8,
                   "double": True})},
    "shortlist": {"shortlist 32": Variant({}),
                  "shortlist 128": Variant({"shortlist": 128}),
                  "shortlist 128, next on failure, repairs 3": Variant(
                      {"shortlist": 128, "next_on_failure": True, "repairs": 3}),
                  "shortlist 128, next on failure, repairs 4": Variant(
                      {"shortlist": 128, "next_on_failure": True, "repairs": 4})},
    "search": {"shipped": Variant({}),
               "last polish converged, float64": Variant({}, last={
                   "iterations": None, "max_iterations": 30, "tolerance": 1e-8,
                   "double": True}),
               "chosen repairs 2": Variant({}, 2),
               "repairs 3": Variant({"repairs": 3}),
               "shortlist 96": Variant({"shortlist": 96}),
               "nested repairs 2": Variant({"nested_repairs": 2}),
               "greedy nested": Variant({"greedy_nested": True})},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--snrs", type=float, nargs="+", default=[0.0, 5.0, 10.0, 15.0, 20.0])
    ap.add_argument("--variants", choices=sorted(VARIANTS), default="fit")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="run only these variants of the group (names as printed)")
    ap.add_argument("--corner", choices=list(bc.CORNERS), default=None,
                    help="a corner of bench_corners.py instead of equal and spread powers")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/fit_settings.json"))
    args = ap.parse_args()
    group = VARIANTS[args.variants]
    unknown = set(args.only or ()) - set(group)
    if unknown:
        ap.error(f"--only: no variant {sorted(unknown)} in {args.variants!r}: {sorted(group)}")
    locs = {}
    for name, (kw, chosen, decided, fit_lm, last_lm, bank_bf16, last) in group.items():
        if args.only is not None and name not in args.only:
            continue
        loc = Localizer.from_checkpoint()
        fit = loc.pipeline.fit_config
        if fit_lm is not None:
            kw = {**kw, "polish": replace(fit.polish, iterations=fit_lm)}
        loc.pipeline.fit_config = replace(fit, **kw)
        if last_lm is not None:
            loc.pipeline.polish_config = replace(loc.pipeline.polish_config,
                                                 iterations=last_lm)
        if last is not None:
            loc.pipeline.polish_config = replace(loc.pipeline.polish_config, **last)
        loc.pipeline.chosen_repairs = chosen
        loc.pipeline.repair_decided = decided
        if bank_bf16 is not None:
            loc.pipeline.network.bank.bf16 = bank_bf16
        locs[name] = loc
    rows = []
    for i, snr in enumerate(args.snrs):
        for spread in (0.0, bv.SPREAD_DB) if args.corner is None else (None,):
            if args.corner is None:
                sc = bv.scenes_at("validation", args.n, snr, spread, i)
            else:
                sc = bc.corner_scenes(args.corner, "validation", args.n, snr,
                                      bc.cell_stream(args.corner, i))
            for known in (False, True):
                row = {"snr_db": snr, "power_spread_db": spread, "known_K": known}
                for name, loc in locs.items():
                    t0 = time.perf_counter()
                    row[name] = bv._summary(bv._matching(bv.localize(loc, sc, False, known), sc))
                    row[name]["seconds"] = time.perf_counter() - t0
                rows.append(row)
                kind = args.corner if spread is None else f"spread {spread:4.0f}"
                print(f"{snr:4.0f} dB {kind} {'K known  ' if known else 'K unknown'}"
                      + "".join(f" | {n}: K {row[n]['K_accuracy']:.3f} F1 {row[n]['f1']:.3f} "
                                f"az {row[n]['azimuth_median_deg']:.3f} "
                                f"el {row[n]['elevation_median_deg']:.3f} "
                                f"r {row[n]['range_median_m']:.3f}" for n in locs),
                      flush=True)
    total = {n: sum(r[n]["seconds"] for r in rows) for n in locs}
    print("seconds, all cells: " + ", ".join(f"{n} {t:.0f}" for n, t in total.items()))
    result = {"n": args.n, "split": "validation", "variants": args.variants,
              "corner": args.corner, "rows": rows,
              "seconds": total}
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
