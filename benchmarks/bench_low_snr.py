"""The order head's F1-optimal rule where a scene's own fits say it is very weak
(``LearnedPipeline.low_snr_db``): chosen on the validation split, checked in the corners.

    python benchmarks/bench_low_snr.py [--n 400] [--stream 40] [--corner-n 300]
                                       [--out reports/bench/low_snr.json]

The order head decides K with ``balance`` 0.25, which leans toward the most probable K
(K accuracy) at some cost in F1. At a true -5 dB that cost made the learned localizer's F1
lower than the classical one's. Below an SNR estimated from the scene's nested fits
(:func:`risloc.pipeline.order.estimated_snr_db`, never the file's SNR) the pipeline now
decides with balance 0, the F1-optimal rule. Per cell: K accuracy and F1 with the switch
off (``low_snr_db=None``) and on (the default), SNR withheld, K unknown, and the share of
scenes whose estimate falls below the threshold.

* validation: every SNR of ``bench_versus.py`` with equal and spread powers, ``--n``
  scenes per cell, stream ``--stream`` + SNR index;
* corners: the corners of ``bench_corners.py`` at 5 dB (``--corner-n`` validation scenes
  per cell, its streams): the switch should leave them alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import bench_corners as bc
import bench_versus as bv
import torch

from risloc.core.checks import normalise_scale
from risloc.io.atomic import write_text_atomic
from risloc.pipeline import Localizer
from risloc.pipeline.order import estimated_snr_db


@torch.no_grad()
def _low_share(loc: Localizer, sc) -> float:
    """Share of scenes whose estimated SNR is below the pipeline's threshold."""
    p, low = loc.pipeline, []
    for lo in range(0, len(sc), bv.BATCH):
        s = sc[lo:lo + bv.BATCH]
        y, H = (t.to(torch.complex64) for t in normalise_scale(s.y, s.H))
        fit = p.fit(y, H, s.codes, p.propose(p.forward(y, H, s.codes)), check=False)
        low.append(estimated_snr_db(fit.costs, y.shape[1], y.shape[2]) < p.low_snr_db)
    return float(torch.cat(low).double().mean())


def _cell(loc: Localizer, sc, name: str, threshold: float) -> dict:
    row = {"cell": name}
    for key, value in (("off", None), ("on", threshold)):
        loc.pipeline.low_snr_db = value
        row[key] = bv._summary(bv._matching(bv.localize(loc, sc, False, False), sc))
    row["share_below"] = _low_share(loc, sc)
    off, on = row["off"], row["on"]
    print(f"{name:>22}: off K {off['K_accuracy']:.3f} F1 {off['f1']:.3f} | on K "
          f"{on['K_accuracy']:.3f} F1 {on['f1']:.3f} | below the threshold "
          f"{row['share_below']:.1%}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--stream", type=int, default=40)
    ap.add_argument("--corner-n", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/low_snr.json"))
    args = ap.parse_args()
    loc = Localizer.from_checkpoint()
    threshold = loc.pipeline.low_snr_db
    rows = [_cell(loc, bv.scenes_at("validation", args.n, snr, spread, args.stream + i),
                  f"{snr:g} dB spread {spread:g}", threshold)
            for i, snr in enumerate(bv.SNRS) for spread in (0.0, bv.SPREAD_DB)]
    rows += [_cell(loc, bc.corner_scenes(name, "validation", args.corner_n, 5.0,
                                         bc.cell_stream(name, 0)), f"{name} 5 dB", threshold)
             for name in bc.CORNERS]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"threshold_db": threshold, "rows": rows},
                                           indent=1) + "\n")


if __name__ == "__main__":
    main()
