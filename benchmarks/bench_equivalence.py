"""Does a speed change keep the outputs? Estimates of this code against saved ones.

    python benchmarks/bench_equivalence.py --save REF.pt [--n 64] [--methods learned classical]
    python benchmarks/bench_equivalence.py --against REF.pt [--lm-route masked] [--out ...]

The issue on speed accepts a change when, on the test split, K is identical on >= 99.5 % of
the scenes and the median errors (against the truth) move by at most 1 %. This script holds
a fixed set of test-split scenes under the conditions users have — SNR 0, 5, 10, 20 dB,
equal powers and powers spread over 12 dB, SNR withheld, K unknown and K given — and runs
each localizer on them through :class:`risloc.pipeline.Localizer` (one worker per core).
``--save`` stores the estimates and the code revision; ``--against`` runs the same scenes
with the code as it is now and prints, per localizer and K mode: K identical, the largest
and median position change where K agrees, F1 and the median az / el / range errors before
and after, and whether the issue's tolerance holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_versus import SPREAD_DB, localize, revision, scenes_at  # noqa: E402

from risloc.config import RislocConfig  # noqa: E402
from risloc.core.params import Estimates  # noqa: E402
from risloc.estimators import nfmle  # noqa: E402
from risloc.evaluation import match_sources, summarize  # noqa: E402
from risloc.io.atomic import atomic_path, write_text_atomic  # noqa: E402
from risloc.pipeline import Localizer  # noqa: E402

SNRS = (0.0, 5.0, 10.0, 20.0)
K_IDENTICAL = 0.995  # the tolerances
MEDIAN_REL = 0.01
DEG = 57.29577951308232


def _scenes(n: int):
    """(label, scenes) of every condition, in a fixed order."""
    for i, snr in enumerate(SNRS):
        for spread in (0.0, SPREAD_DB):
            yield f"{snr:g} dB, spread {spread:g}", scenes_at("test", n, snr, spread, i)


def run(methods, n: int) -> tuple[dict[str, Estimates], dict[str, torch.Tensor]]:
    """Estimates per (method, K mode) over all conditions, concatenated, and the truth of
    the same scenes (K, azimuth, elevation, range_m)."""
    locs = {"learned": Localizer.from_checkpoint(),
            "classical": Localizer(RislocConfig().system, "classical")}
    est: dict[str, list[Estimates]] = {}
    scenes = []
    for label, sc in _scenes(n):
        scenes.append(sc)
        for m in methods:
            for known in (False, True):
                est.setdefault(f"{m}, K {'given' if known else 'unknown'}", []).append(
                    localize(locs[m], sc, False, known))
        print(f"  {label}: done", flush=True)
    fields = ("K", "azimuth", "elevation", "range_m", "score")
    res = {k: Estimates(*(torch.cat([getattr(e, f) for e in v]) for f in fields))
           for k, v in est.items()}
    truth = {f: torch.cat([getattr(sc, f) for sc in scenes]) for f in fields[:4]}
    return res, truth


def _accuracy(est: Estimates, truth) -> dict:
    s = summarize(match_sources(est, truth["azimuth"], truth["elevation"], truth["range_m"],
                                truth["K"]))
    return {"K_accuracy": s.K_accuracy, "f1": s.f1, "az": s.azimuth_median_deg,
            "el": s.elevation_median_deg, "range": s.range_median_m}


def compare(ref: Estimates, new: Estimates, truth) -> dict:
    same = ref.K == new.K
    row = {"K_identical": float(same.float().mean())}
    for name, scale in (("azimuth", DEG), ("elevation", DEG), ("range_m", 1.0)):
        d = ((getattr(ref, name) - getattr(new, name)).abs()[same] * scale).nan_to_num(0.0)
        row[f"{name}_change_max"] = float(d.max()) if d.numel() else 0.0
        row[f"{name}_change_median"] = float(d.flatten().median()) if d.numel() else 0.0
    a, b = _accuracy(ref, truth), _accuracy(new, truth)
    row["before"], row["after"] = a, b
    row["median_ratio"] = {k: b[k] / a[k] for k in ("az", "el", "range")}
    row["within_tolerance"] = bool(
        row["K_identical"] >= K_IDENTICAL
        and all(abs(r - 1) <= MEDIAN_REL for r in row["median_ratio"].values()))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", type=Path)
    mode.add_argument("--against", type=Path)
    ap.add_argument("--n", type=int, default=64, help="scenes per condition")
    ap.add_argument("--methods", nargs="+", default=["learned", "classical"],
                    choices=["learned", "classical"])
    ap.add_argument("--out", type=Path, default=Path("reports/bench/equivalence.json"))
    ap.add_argument("--lm-route", choices=["auto", "masked", "shrinking"], default="auto",
                    help="the NF-MLE LM loop's route (NFMLEConfig.masked; auto: the "
                         "device's own, the shrinking one on the CPU)")
    args = ap.parse_args()
    if args.lm_route != "auto":
        nfmle.masked_route = lambda cfg, device: args.lm_route == "masked"
    if args.save:
        res, _ = run(args.methods, args.n)
        with atomic_path(args.save) as tmp:
            torch.save({"n": args.n, "revision": revision(),
                        "runs": {k: asdict(v) for k, v in res.items()}}, tmp)
        print(f"saved {', '.join(res)} ({args.n} scenes x {2 * len(SNRS)} conditions) of "
              f"{revision()} to {args.save}")
        return
    if not args.against.is_file():
        raise SystemExit(f"no reference estimates at {args.against}: make them with --save on "
                         "the code to compare against")
    ref = torch.load(args.against)
    methods = sorted({k.split(",")[0] for k in ref["runs"]} & set(args.methods))
    res, truth = run(methods, ref["n"])
    rows = {}
    route = "" if args.lm_route == "auto" else f" ({args.lm_route} LM route)"
    print(f"\n{ref['revision']} -> {revision()}{route}: {ref['n']} test scenes x {2 * len(SNRS)} "
          f"conditions (SNR {', '.join(f'{s:g}' for s in SNRS)} dB; equal / spread powers; "
          "SNR withheld)")
    for key, v in res.items():
        r = compare(Estimates(**ref["runs"][key]), v, truth)
        rows[key] = r
        a, b, q = r["before"], r["after"], r["median_ratio"]
        print(f"{key:22s} K identical {r['K_identical']:.4f}  position change max "
              f"{r['azimuth_change_max']:.2g} / {r['elevation_change_max']:.2g} deg, "
              f"{r['range_m_change_max']:.2g} m  F1 {a['f1']:.3f} -> {b['f1']:.3f}  median "
              f"ratio az {q['az']:.4f} el {q['el']:.4f} r {q['range']:.4f}  "
              f"{'within' if r['within_tolerance'] else 'OUTSIDE'} the tolerance")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"reference": ref["revision"],
                                            "revision": revision(), "n": ref["n"],
                                            "lm_route": args.lm_route,
                                            "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
