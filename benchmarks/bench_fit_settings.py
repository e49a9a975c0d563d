"""Does the learned pipeline find more weak sources with more repair rounds, a longer
shortlist, or repair rounds on the chosen sources? Validation split only (a choice, not a
result).

    python benchmarks/bench_fit_settings.py [--n 400] [--snrs 0 5 10 15 20]
        [--variants fit|chosen] [--out reports/bench/fit_settings.json]

Per SNR, equal powers and powers spread over 12 dB, SNR withheld, K unknown and known:
K accuracy, F1, median azimuth error and seconds of the shipped pipeline with

* ``--variants fit``: its fit stage at (repairs, shortlist) = (2, 32) (the default),
  (3, 32), (4, 32) and (2, 64), without the repair of the chosen sources (as measured
  before it existed; ``fit_settings.txt``);
* ``--variants chosen``: 0, 1 (the default) or 2 repair rounds on the K chosen sources
  before the last NF-MLE (``LearnedPipeline.chosen_repairs``), with K given and with K
  decided by the order head (``repair_decided``; the shipped pipeline repairs with K given
  only; ``fit_settings_chosen.txt``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import bench_versus as bv

from risloc.io.atomic import write_text_atomic
from risloc.pipeline import Localizer

# name: (fit-stage settings, repair rounds on the chosen sources, with K decided too)
VARIANTS = {
    "fit": {"repairs 2, shortlist 32": ({"repairs": 2, "shortlist": 32}, 0, False),
            "repairs 3, shortlist 32": ({"repairs": 3, "shortlist": 32}, 0, False),
            "repairs 4, shortlist 32": ({"repairs": 4, "shortlist": 32}, 0, False),
            "repairs 2, shortlist 64": ({"repairs": 2, "shortlist": 64}, 0, False)},
    "chosen": {"chosen repairs 0": ({}, 0, True), "chosen repairs 1": ({}, 1, True),
               "chosen repairs 2": ({}, 2, True)},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--snrs", type=float, nargs="+", default=[0.0, 5.0, 10.0, 15.0, 20.0])
    ap.add_argument("--variants", choices=sorted(VARIANTS), default="fit")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/fit_settings.json"))
    args = ap.parse_args()
    locs = {}
    for name, (kw, chosen, decided) in VARIANTS[args.variants].items():
        loc = Localizer.from_checkpoint()
        loc.pipeline.fit_config = replace(loc.pipeline.fit_config, **kw)
        loc.pipeline.chosen_repairs = chosen
        loc.pipeline.repair_decided = decided
        locs[name] = loc
    rows = []
    for i, snr in enumerate(args.snrs):
        for spread in (0.0, bv.SPREAD_DB):
            sc = bv.scenes_at("validation", args.n, snr, spread, i)
            for known in (False, True):
                row = {"snr_db": snr, "power_spread_db": spread, "known_K": known}
                for name, loc in locs.items():
                    t0 = time.perf_counter()
                    row[name] = bv._summary(bv.localize(loc, sc, False, known), sc)
                    row[name]["seconds"] = time.perf_counter() - t0
                rows.append(row)
                print(f"{snr:4.0f} dB spread {spread:4.0f} {'K known  ' if known else 'K unknown'}"
                      + "".join(f" | {n}: K {row[n]['K_accuracy']:.3f} F1 {row[n]['f1']:.3f} "
                                f"az {row[n]['azimuth_median_deg']:.3f}" for n in locs),
                      flush=True)
    result = {"n": args.n, "split": "validation", "variants": args.variants, "rows": rows}
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
