"""Variants of the fit stage, each with its own order head, on the corners' validation cells.

    python benchmarks/bench_fit_variants.py [--variants NAME:KEY=VALUE,... ...]
                                            [--checkpoint PATH] [--classical-cache DIR]
                                            [--out reports/bench/fit_variants.json]

For each variant (``MLFitConfig`` fields as in ``bench_nested_sets.py``; ``base`` is the
fit stage of this package) the order head of the model is refitted on the fit stage it
will read (16,384 training-split scenes of the distribution the model's head was fitted on,
as ``risloc fit-order``, with its ``--scene``; 3-10 min on 2 cores), then
the learned localizer runs on all 36 cells of ``bench_corners.py`` on the **validation**
split (200 scenes each, SNR withheld, K unknown; 2 min). A cell counts as met when the
learned F1 and K accuracy are >= the classical ones - 0.01 on the same scenes
(``--classical-cache``: shared with ``bench_corners.py --split validation --n 200``); the
medians, which ``bench_corners.py`` judges too, are not. Prints and writes both localizers'
numbers per cell and variant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_corners as bc  # noqa: E402
from bench_greedy_margin import SNRS, refit_order_head, scenes_and_classical  # noqa: E402
from bench_nested_sets import parse_variant  # noqa: E402

from risloc.evaluation import match_sources, summarize  # noqa: E402
from risloc.inference.checkpoint import load_checkpoint  # noqa: E402
from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.pipeline import Localizer  # noqa: E402
from risloc.pipeline.learned import DEFAULT_MODEL  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["base"])
    ap.add_argument("--checkpoint", default=None, help="learned model (default: shipped)")
    ap.add_argument("--classical-cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/fit_variants.json"))
    args = ap.parse_args(argv)
    classical = Localizer(bc.RislocConfig().system, "classical")
    loc = Localizer.from_checkpoint(args.checkpoint)
    pipe = loc.pipeline
    # the head is refitted on the scenes the model's head was fitted on (risloc fit-order
    # --scene, recorded in its report)
    report = load_checkpoint(args.checkpoint or DEFAULT_MODEL).get("order_report") or {}
    scene = report.get("scene") or None
    variants = dict(parse_variant(v, pipe.fit_config) for v in args.variants)
    cells = {(corner, snr): scenes_and_classical(classical, corner, snr, args.classical_cache)
             for corner in bc.CORNERS for snr in SNRS}
    lines, rows = [], []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    for name, cfg in variants.items():
        pipe.fit_config = cfg
        say(f"{name}: order head refitted in {refit_order_head(pipe, scene):.0f} s "
            f"(scenes: the recipe's{f' with {scene}' if scene else ''})")
        met = []
        for (corner, snr), (sc, cl) in cells.items():
            est, _ = bc.run(loc, sc)
            s = summarize(match_sources(est, sc.azimuth, sc.elevation, sc.range_m, sc.K))
            ok = (bc.rounded_margin(s.f1 - cl.f1 + bc.F1_TOL) >= 0
                  and bc.rounded_margin(s.K_accuracy - cl.K_accuracy + bc.K_TOL) >= 0)
            met.append(ok)
            rows.append({"variant": name, "corner": corner, "snr_db": snr, "met": ok,
                         "K_accuracy": [s.K_accuracy, cl.K_accuracy], "F1": [s.f1, cl.f1]})
            say(f"  {corner:>12} {snr:4.0f} dB  K acc {s.K_accuracy:.3f} / {cl.K_accuracy:.3f}"
                f"  F1 {s.f1:.3f} / {cl.f1:.3f}{'' if ok else '  MISSED'}")
        say(f"{name}: {sum(met)} of {len(met)} cells with F1 and K accuracy >= classical - "
            f"0.01 (learned / classical above)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"variants": args.variants, "rows": rows},
                                           indent=1))
    write_text_atomic(args.out.with_suffix(".txt"), "\n".join(lines) + "\n")
    print(f"wrote {args.out} (+ .txt)")


if __name__ == "__main__":
    main()
