"""How far a right SNR lands from the noise level the data leave: the margin of the
classical localizer's SNR check.

    python benchmarks/bench_snr_check.py [--n 200] [--split test]
                                         [--out reports/bench/snr_check.json]

The classical localizer trusts a given SNR in its K decision, so it warns where the noise
level that SNR gives (:func:`risloc.estimators.order.noise_var_from_snr`) is more than 10
dB off the level its K_max-source fit leaves
(:func:`risloc.estimators.order.residual_noise_level`; the check is
:func:`risloc.estimators.order.snr_disagreement`). This measures that offset,
10 log10(sigma^2_given / level), for the true SNR of simulated scenes:

* the default scenes with each scene's source powers spread over 0-25 dB (K in 1..K_max),
  at SNR -10..30 dB;
* K = K_max in seven corners of the scene space (``bench_corners.py``: dense, near, edge,
  scattering, LoS, dft, 1-bit) at -10, 0, 10, 20 and 30 dB.

Per cell: the 0, 5, 50, 95 and 100 % points of the offset [dB] and the share of scenes the
check would wrongly flag (|offset| > 10 dB). Writes the JSON and a text copy of the table
(``<out>.txt``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_corners import CORNERS  # noqa: E402
from bench_versus import SEED  # noqa: E402

from risloc.config import RislocConfig, replace_scene_fields  # noqa: E402
from risloc.estimators.classical import ClassicalConfig, greedy_search  # noqa: E402
from risloc.estimators.order import noise_var_from_snr, residual_noise_level  # noqa: E402
from risloc.io.atomic import write_text_atomic  # noqa: E402
from risloc.simulation import simulate_range  # noqa: E402

STREAM = 1200  # scene streams 1200 and up (bench_versus 800+, bench_corners 900+)
BATCH = 32
SNRS = (-10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)
CORNER_SNRS = (-10.0, 0.0, 10.0, 20.0, 30.0)
CHECKED_CORNERS = ("dense", "near", "edge", "scattering", "LoS", "dft", "1-bit")
MARGIN_DB = 10.0


def offsets_db(sc, system) -> torch.Tensor:
    """10 log10(sigma^2 of the true SNR / the K_max-fit's level) per scene [B]."""
    out = []
    for i in range(0, sc.y.shape[0], BATCH):
        part = sc[i:i + BATCH]
        # the check's own inputs (classical_fit): the greedy search's nested costs and the
        # noise level of the SNR given (its final polish does not enter the check)
        costs = greedy_search(part.y, part.H, part.codes, system, system.K_max,
                              ClassicalConfig()).costs
        level = residual_noise_level(costs[:, -1], system.K_max, part.y.shape[1],
                                     part.y.shape[2])
        out.append(10 * torch.log10(noise_var_from_snr(part.y, part.snr_db) / level))
    return torch.cat(out)


def summary(name: str, snr: float, off: torch.Tensor) -> dict:
    q = torch.quantile(off, torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0], dtype=off.dtype))
    return {"cell": name, "snr_db": snr, "n": off.numel(),
            "quantiles_db": [round(float(v), 3) for v in q],
            "flagged": float((off.abs() > MARGIN_DB).double().mean())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="scenes per cell")
    ap.add_argument("--split", default="test", choices=sorted(SEED))
    ap.add_argument("--out", type=Path, default=Path("reports/bench/snr_check.json"))
    args = ap.parse_args(argv)
    logging.getLogger("risloc").setLevel(logging.ERROR)  # the check's own warning
    cfg = RislocConfig()
    rows, lines = [], []
    points = " ".join(f"{q:>6}" for q in ("min", "5%", "50%", "95%", "max"))
    head = f"{'cell':<24} {'SNR':>5}  {points}  flagged"
    print(head)
    lines.append(head)
    cells = [(f"spread 0-25 dB, K 1..{cfg.system.K_max}", s, None) for s in SNRS]
    cells += [(f"{c}, K = {cfg.system.K_max}", s, c) for c in CHECKED_CORNERS for s in CORNER_SNRS]
    for index, (name, snr, corner) in enumerate(cells):
        update = {"power_spread_db": (0.0, 25.0)} if corner is None else CORNERS[corner][0]
        scene = replace_scene_fields(cfg.scene, update, name)
        sc = simulate_range(0, args.n, cfg.system, scene, seed=SEED[args.split],
                            split=args.split, stream=STREAM + index, snr_db=snr,
                            K=None if corner is None else cfg.system.K_max)
        row = summary(name, snr, offsets_db(sc, cfg.system))
        rows.append(row)
        q = row["quantiles_db"]
        line = (f"{name:<24} {snr:>5g}  " + " ".join(f"{v:>+6.2f}" for v in q)
                + f"  {row['flagged']:.3f}")
        print(line, flush=True)
        lines.append(line)
    spread_rows = [r for r in rows if r["cell"].startswith("spread")]
    corner_rows = [r for r in rows if not r["cell"].startswith("spread")]
    for label, part in (("spread powers, -10..30 dB", spread_rows),
                        ("K = K_max in the corners", corner_rows)):
        lo = min(r["quantiles_db"][0] for r in part)
        hi = max(r["quantiles_db"][-1] for r in part)
        line = f"{label}: every offset within {lo:+.2f}..{hi:+.2f} dB"
        print(line)
        lines.append(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"n": args.n, "split": args.split,
                                            "margin_db": MARGIN_DB, "rows": rows}, indent=2))
    write_text_atomic(args.out.with_suffix(".txt"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
