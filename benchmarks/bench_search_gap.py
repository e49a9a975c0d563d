"""Where the learned localizer loses F1 to the classical one: search or data? Validation.

    python benchmarks/bench_search_gap.py [--n 400] [--snr 10] [--spread 12]
                                          [--out reports/bench/search_gap.json]

On validation scenes (``bench_versus.py``'s generator, SNR withheld), K given and K
unknown, the classical localizer and three learned variants run side by side:

* ``no chosen repair`` — the pipeline without the repair of the chosen sources;
* ``shipped`` — the shipped pipeline (one repair round on the chosen sources, K given);
* ``exhaustive`` — K_max repair rounds on the chosen sources, with K given or decided, and
  every repair proposal (the fit stage's too) searched over the whole grid instead of a
  32-point shortlist: what a much costlier search of the same likelihood would give.

For each: F1, detections, false alarms, seconds, and the number of scenes in which the
classical final fit explains the data better (lower concentrated ML cost ||y - B s||^2 at
the reported positions, by more than 1e-4 relative) or worse. Where the classical fit has
the lower cost, the learned search stopped in a worse local optimum of the same likelihood:
a search failure, not a limit of the data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_versus as bv  # noqa: E402

from risloc.core.params import Estimates, steering_at  # noqa: E402
from risloc.estimators.nfmle import amplitude_fit  # noqa: E402
from risloc.evaluation import match_sources, summarize  # noqa: E402
from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.pipeline import Localizer  # noqa: E402


def relative_cost(est: Estimates, sc, system) -> torch.Tensor:
    """||y - B s||^2 / ||y||^2 at the reported positions (least-squares amplitudes): [B]."""
    theta = torch.stack([est.azimuth, est.elevation, 1.0 / est.range_m], -1).double()
    mask = est.mask
    theta = torch.where(mask.unsqueeze(-1), theta, torch.zeros_like(theta) + 0.2)
    y, H, c = (t.to(torch.complex128) for t in (sc.y, sc.H, sc.codes))
    fit = amplitude_fit(y, H, c, steering_at(theta, system, y.dtype), mask, 0.0)
    return fit.cost / y.abs().square().sum((-1, -2))


def variants() -> dict[str, Localizer]:
    out = {}
    for name in ("no chosen repair", "shipped", "exhaustive"):
        loc = Localizer.from_checkpoint()
        pipe = loc.pipeline
        if name == "no chosen repair":
            pipe.chosen_repairs = 0
        elif name == "exhaustive":
            grid = pipe.fit_config.search
            whole = grid.grid_azimuth * grid.grid_elevation * grid.grid_inv_range
            pipe.chosen_repairs, pipe.repair_decided = pipe.system.K_max, True
            pipe.fit_config = replace(pipe.fit_config, shortlist=whole)
        out[name] = loc
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--snr", type=float, default=10.0)
    ap.add_argument("--spread", type=float, default=bv.SPREAD_DB)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/search_gap.json"))
    args = ap.parse_args()
    sc = bv.scenes_at("validation", args.n, args.snr, args.spread, 1)
    learned = variants()
    system = learned["shipped"].system
    classical = Localizer(system, "classical")
    rows = []
    for known in (True, False):
        results = {}
        for name, loc in {"classical": classical, **learned}.items():
            t0 = time.perf_counter()
            est = bv.localize(loc, sc, False, known)
            seconds = time.perf_counter() - t0
            summary = summarize(match_sources(est, sc.azimuth, sc.elevation, sc.range_m, sc.K))
            detected = summary.n_detected
            results[name] = {"f1": summary.f1, "detections": detected,
                             "false_alarms": int(est.K.sum()) - detected,
                             "seconds": seconds, "cost": relative_cost(est, sc, system)}
        c = results["classical"]["cost"]
        for name, r in results.items():
            cost = r.pop("cost")
            r["classical_lower_cost"] = int((c < cost * (1 - 1e-4)).sum())
            r["classical_higher_cost"] = int((c > cost * (1 + 1e-4)).sum())
            print(f"{'K given  ' if known else 'K unknown'} {name:17s} F1 {r['f1']:.3f}  "
                  f"detections {r['detections']:4d}  false alarms {r['false_alarms']:3d}  "
                  f"classical cost lower / higher in {r['classical_lower_cost']:3d} / "
                  f"{r['classical_higher_cost']:3d} scenes  {r['seconds']:6.1f} s", flush=True)
        rows.append({"known_K": known, "results": results})
    result = {"split": "validation", "n": args.n, "snr_db": args.snr,
              "power_spread_db": args.spread, "rows": rows}
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
