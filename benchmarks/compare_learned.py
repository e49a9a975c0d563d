"""Two learned models side by side from two ``bench_versus.py`` outputs (same scenes).

    python benchmarks/compare_learned.py A.json B.json [--names A B]

Per SNR and condition: K accuracy, F1 and median azimuth / elevation / range error of the
learned localizer in each run, and the difference B - A of K accuracy and F1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _key(row: dict) -> tuple:
    return (row["snr_db"], row["power_spread_db"], row["snr_given"], row["known_K"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--names", nargs=2, default=["A", "B"])
    args = ap.parse_args()
    runs = [{_key(r): r for r in json.loads(p.read_text())["rows"]} for p in (args.a, args.b)]
    if set(runs[0]) != set(runs[1]):
        raise SystemExit("the two runs do not hold the same conditions")
    na, nb = args.names
    print(f"{'SNR':>4} {'spread':>6} {'SNR':>8} {'K':>7} | {na + ' K acc / F1':>18} | "
          f"{nb + ' K acc / F1':>18} | dK acc    dF1 | median az deg {na} / {nb}")
    for key in sorted(runs[0]):
        a, b = (r[key]["learned"] for r in runs)
        snr, spread, given, known = key
        print(f"{snr:4.0f} {spread:6.0f} {'given' if given else 'withheld':>8} "
              f"{'known' if known else 'unknown':>7} | {a['K_accuracy']:8.3f} / {a['f1']:.3f} | "
              f"{b['K_accuracy']:8.3f} / {b['f1']:.3f} | {b['K_accuracy'] - a['K_accuracy']:+.3f} "
              f"{b['f1'] - a['f1']:+.3f} | {a['azimuth_median_deg']:.3g} / "
              f"{b['azimuth_median_deg']:.3g}")


if __name__ == "__main__":
    main()
