"""How often the classical localizer reports a source too many at high SNR, given the SNR
or not.

    python benchmarks/bench_false_alarms.py [--n 200] [--out reports/bench/false_alarms.json]

Given the SNR, the classical K decision adds a source where the fit's cost falls by more
than a penalty (:func:`risloc.estimators.order.default_penalty`, L + 6 sqrt(L) nats) that
puts a false alarm per step at a few percent whatever the SNR: a Neyman-Pearson-like test
on the residual noise, whose false alarms do not vanish as the sources get stronger.
Without the SNR it estimates the noise level from the fit itself. Per SNR and true K
(equal powers, the test split): the share of scenes with K over- and under-counted, each
way, and the largest score (the localizer's confidence) of the weakest source of a scene
where K is over; and the shipped learned localizer's shares beside them (it reads no
SNR). Writes the JSON and a text copy of the table (``<out>.txt``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_versus import SEED, add_row, write_table  # noqa: E402

from risloc.config import SystemConfig  # noqa: E402
from risloc.pipeline import Localizer  # noqa: E402
from risloc.simulation import simulate_range  # noqa: E402

STREAM = 1300  # scene streams 1300 and up (bench_snr_check 1200+)
SNRS = (20.0, 30.0, 40.0)
KS = (1, 2, 3, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="scenes per SNR and K")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/false_alarms.json"))
    args = ap.parse_args()
    system = SystemConfig()
    classical, learned = Localizer(system, "classical"), Localizer.from_checkpoint()
    assert learned.method == "learned"  # (the constructor's default method is classical)
    rows, lines = [], []
    head = (f"{'SNR dB':>6} {'K':>2} {'over, SNR given':>16} {'over, withheld':>15} "
            f"{'under, given':>13} {'under, withheld':>16} {'largest extra score':>20} "
            f"{'learned over':>13} {'learned under':>14}")
    print(head)
    lines.append(head)
    for i, snr in enumerate(SNRS):
        for K in KS:
            sc = simulate_range(0, args.n, system, seed=SEED["test"], split="test",
                                stream=STREAM + 16 * i + K, snr_db=snr, K=K)
            given = classical.localize(sc.y, sc.H, sc.codes, snr_db=sc.snr_db).to_numpy()
            withheld = classical.localize(sc.y, sc.H, sc.codes).to_numpy()
            ours = learned.localize(sc.y, sc.H, sc.codes).to_numpy()  # (reads no SNR)
            extra = [float(np.nanmin(given["score"][s][:given["K"][s]]))
                     for s in np.flatnonzero(given["K"] > K)]
            row = {"snr_db": snr, "K": K, "n": args.n,
                   "over_given": float(np.mean(given["K"] > K)),
                   "over_withheld": float(np.mean(withheld["K"] > K)),
                   "under_given": float(np.mean(given["K"] < K)),
                   "under_withheld": float(np.mean(withheld["K"] < K)),
                   "largest_extra_score": max(extra, default=float("nan")),
                   "learned_over": float(np.mean(ours["K"] > K)),
                   "learned_under": float(np.mean(ours["K"] < K))}
            line = (f"{snr:>6g} {K:>2} {row['over_given']:>16.3f} {row['over_withheld']:>15.3f} "
                    f"{row['under_given']:>13.3f} {row['under_withheld']:>16.3f} "
                    f"{row['largest_extra_score']:>20.3f} {row['learned_over']:>13.3f} "
                    f"{row['learned_under']:>14.3f}")
            add_row(rows, lines, row, line)
    write_table(args.out, {"rows": rows, "seed": SEED["test"]}, lines)


if __name__ == "__main__":
    main()
