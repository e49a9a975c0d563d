"""The repairs' margin where the caller gives K (``LearnedPipeline.known_K_margin``):
chosen on the validation split, checked in the corners, then measured on the test split.

    python benchmarks/bench_known_margin.py validation [--n 400] [--margins 0 0.25 0.5 0.75]
        [--cells 0:12 5:0 5:12 10:0 10:12 15:12 20:12] [--stream 10] [--unknown]
        [--out reports/bench/known_margin.json] (every mode)
    python benchmarks/bench_known_margin.py corners [--n 300] [--snrs 5 10]
    python benchmarks/bench_known_margin.py test --against benchmarks/results/versus.json
        [--n 400] [--snrs -5 0 5 10 15 20] [--out reports/bench/known_margin.json]
    python benchmarks/bench_known_margin.py heads --checkpoints A.pt B.pt [--n 400]
        [--snrs -5 0 5 10 15 20] [--stream 10] [--corners]
    python benchmarks/bench_known_margin.py stages [--n 300]

A repair round (:mod:`risloc.estimators.mlfit`) swaps a source for the best grid point of
the residual and keeps the swap where the cost falls. With a margin m it must fall by more
than m L sigma^2 (sigma^2 estimated from the current fit), the energy one more source
removes from noise alone: at 0-5 dB a noise peak lowers the cost a little too, and the swap
then loses a true source that the network proposed.

* ``validation``: F1 (and K accuracy) of the learned localizer with each margin, K given
  (``--unknown``: K decided by the shipped order head, which was fitted without a margin),
  400 validation scenes per cell "SNR:spread", stream ``--stream`` + cell index.
* ``corners``: K given, 300 validation scenes per corner of ``bench_corners.py`` and SNR,
  margins 0 and 0.5.
* ``test``: K given, the test scenes of a ``bench_versus.py`` run (its scene streams), the
  learned localizer with margins 0 and 0.5 against the classical rows of that run's JSON
  (the classical localizer is not rerun: it has no margin). A full ``bench_versus.py``
  run gives the targets and their standard errors.
* ``heads``: K decided by the order head, the learned localizers of several checkpoints
  (each runs its fit stage with the margin its head was fitted on, ``risloc fit-order
  --margin``), on the same validation scenes: per SNR with equal and spread powers, stream
  ``--stream`` + cell index (``--corners``: the corners of ``bench_corners.py`` instead).
* ``stages``: K given, the margin 0.5 in no stage, in both, in the fit stage only and in
  the repair of the chosen sources only, on the near-source corner and the default one at
  5 dB (300 validation scenes each, the ``corners`` scenes) and on 400 validation scenes
  with equal powers at 5 dB (the ``validation`` mode's cell 5:0, stream ``--stream`` + 1)
  and at 0 dB (stream ``--stream`` + 70).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import bench_corners as bc
import bench_versus as bv
import torch

from risloc.core.checks import normalise_scale
from risloc.core.params import Estimates
from risloc.io.atomic import write_text_atomic
from risloc.pipeline import Localizer


def _score(loc: Localizer, sc, known: bool) -> dict:
    return bv._summary(bv._matching(bv.localize(loc, sc, False, known), sc))


def _fmt(s: dict) -> str:
    return (f"K {s['K_accuracy']:.3f} F1 {s['f1']:.3f} az {s['azimuth_median_deg']:.3f} "
            f"el {s['elevation_median_deg']:.3f} r {s['range_median_m']:.3f}")


def validation(loc: Localizer, args) -> list[dict]:
    rows = []
    for i, cell in enumerate(args.cells):
        snr, spread = (float(v) for v in cell.split(":"))
        sc = bv.scenes_at("validation", args.n, snr, spread, args.stream + i)
        row = {"snr_db": snr, "power_spread_db": spread, "known_K": not args.unknown}
        for m in args.margins:
            loc.pipeline.known_K_margin = m
            loc.pipeline.fit_config = replace(loc.pipeline.fit_config, repair_margin=(
                m if args.unknown else 0.0))  # K decided: the margin set on the fit stage
            row[f"margin {m:g}"] = _score(loc, sc, not args.unknown)
        rows.append(row)
        print(f"{snr:4.0f} dB spread {spread:4.0f}: " + " | ".join(
            f"m={m:g} {_fmt(row[f'margin {m:g}'])}" for m in args.margins), flush=True)
    return rows


def corners(loc: Localizer, args) -> list[dict]:
    rows = []
    for name in bc.CORNERS:
        for j, snr in enumerate(args.snrs):
            sc = bc.corner_scenes(name, "validation", args.n, snr, bc.cell_stream(name, j))
            row = {"corner": name, "snr_db": snr}
            for m in (0.0, 0.5):
                loc.pipeline.known_K_margin = m
                row[f"margin {m:g}"] = _score(loc, sc, True)
            rows.append(row)
            print(f"{name:>12} {snr:4.0f} dB: m=0 {_fmt(row['margin 0'])} | m=0.5 "
                  f"{_fmt(row['margin 0.5'])}", flush=True)
    return rows


def test(loc: Localizer, args) -> list[dict]:
    ref = json.loads(args.against.read_text())
    if ref.get("scenes_per_snr") != args.n:  # (the classical numbers are the file's)
        raise SystemExit(f"--n {args.n}: {args.against} scored {ref.get('scenes_per_snr')} "
                         "scenes per SNR; give the same --n, so both sides score the same "
                         "scenes")
    streams = sorted({r["snr_db"] for r in ref["rows"]})  # bench_versus: stream per SNR index
    rows = []
    for snr in args.snrs:
        for spread in (0.0, bv.SPREAD_DB):
            sc = bv.scenes_at("test", args.n, snr, spread, streams.index(snr))
            row = {"snr_db": snr, "power_spread_db": spread, "classical": {
                r["snr_given"]: r["classical"] for r in ref["rows"] if r["snr_db"] == snr
                and r["power_spread_db"] == spread and r["known_K"]}}
            for m in (0.0, 0.5):
                loc.pipeline.known_K_margin = m
                row[f"margin {m:g}"] = _score(loc, sc, True)
            rows.append(row)
            cl = row["classical"]
            print(f"{snr:4.0f} dB spread {spread:4.0f}: m=0 {_fmt(row['margin 0'])} | m=0.5 "
                  f"{_fmt(row['margin 0.5'])} | classical, SNR withheld "
                  f"{_fmt(cl[False])}, F1 given {cl[True]['f1']:.3f}", flush=True)
    return rows


def heads(_, args) -> list[dict]:
    locs = {str(p): Localizer.from_checkpoint(p) for p in args.checkpoints}
    if args.corners:
        cells = [(f"{name} {snr:g} dB", lambda name=name, j=j, snr=snr: bc.corner_scenes(
            name, "validation", args.n, snr, bc.cell_stream(name, j)))
            for name in bc.CORNERS for j, snr in enumerate(args.snrs)]
    else:
        cells = [(f"{snr:g} dB spread {spread:g}", lambda i=i, snr=snr, spread=spread:
                  bv.scenes_at("validation", args.n, snr, spread, args.stream + i))
                 for i, (snr, spread) in enumerate(
                     (snr, spread) for snr in args.snrs for spread in (0.0, bv.SPREAD_DB))]
    rows = []
    for name, make in cells:
        sc = make()
        row = {"cell": name}
        for path, loc in locs.items():
            row[path] = _score(loc, sc, False)
        rows.append(row)
        print(f"{name:>22}: " + " | ".join(
            f"{Path(p).stem} {_fmt(row[p])}" for p in locs), flush=True)
    return rows


STAGE_VARIANTS = {"none": (False, False), "both": (True, True), "fit only": (True, False),
                  "chosen only": (False, True)}  # margin in (fit stage, chosen repairs)


@torch.no_grad()
def _stages_score(pipe, sc, fit_known: bool, chosen_known: bool) -> dict:
    """K given; the stages run one by one as LearnedPipeline.localize runs them, with the
    margin (``known``) set per stage."""
    parts = []
    for lo in range(0, len(sc), bv.BATCH):
        s = sc[lo:lo + bv.BATCH]
        y, H = (t.to(torch.complex64) for t in normalise_scale(s.y, s.H))
        fwd = pipe.forward(y, H, s.codes)
        fit = pipe.fit(y, H, s.codes, pipe.propose(fwd), known=fit_known, check=False)
        parts.append(pipe.polish(y, H, s.codes, fit, s.K, repair=True,
                                 known=chosen_known).float())
    est = Estimates(*(torch.cat([getattr(p, f) for p in parts])
                      for f in ("K", "azimuth", "elevation", "range_m", "score")))
    return bv._summary(bv._matching(est, sc))


def stages(loc: Localizer, args) -> list[dict]:
    pipe = loc.pipeline
    pipe.known_K_margin = 0.5
    cells = [(f"{name} 5 dB", bc.corner_scenes(name, "validation", args.n, 5.0,
                                               bc.cell_stream(name, 0)))
             for name in ("near", "default")]
    cells += [(f"validation {snr:g} dB equal", bv.scenes_at("validation", 400, snr, 0.0,
                                                            args.stream + i))
              for i, snr in ((1, 5.0), (70, 0.0))]
    rows = []
    for name, sc in cells:
        row = {"cell": name, **{v: _stages_score(pipe, sc, *flags)
                                for v, flags in STAGE_VARIANTS.items()}}
        rows.append(row)
        print(f"{name:>26}: " + " | ".join(f"{v} F1 {row[v]['f1']:.3f}"
                                           for v in STAGE_VARIANTS), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("validation", "corners", "test", "heads", "stages"))
    ap.add_argument("--n", type=int, default=None,
                    help="scenes per cell (400; corners: 300)")
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    ap.add_argument("--cells", nargs="+",
                    default=["0:12", "5:0", "5:12", "10:0", "10:12", "15:12", "20:12"])
    ap.add_argument("--stream", type=int, default=10)
    ap.add_argument("--unknown", action="store_true", help="K decided by the order head")
    ap.add_argument("--snrs", type=float, nargs="+", default=None)
    ap.add_argument("--against", type=Path, default=Path("benchmarks/results/versus.json"))
    ap.add_argument("--out", type=Path, default=Path("reports/bench/known_margin.json"))
    ap.add_argument("--checkpoints", type=Path, nargs="+", default=[None],
                    help="heads: models to compare (default: the shipped one)")
    ap.add_argument("--corners", action="store_true", help="heads: the corner cells")
    args = ap.parse_args()
    if args.n is None:
        args.n = 300 if args.mode in ("corners", "stages") or args.corners else 400
    if args.snrs is None:
        args.snrs = [5.0, 10.0] if args.mode == "corners" or args.corners else list(bv.SNRS)
    loc = None if args.mode == "heads" else Localizer.from_checkpoint()
    rows = {"validation": validation, "corners": corners, "test": test,
            "heads": heads, "stages": stages}[args.mode](loc, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"mode": args.mode, "n": args.n, "rows": rows},
                                           indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
