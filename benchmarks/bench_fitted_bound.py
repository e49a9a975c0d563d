"""How close the bound of a file without an SNR is to the true one.

    python benchmarks/bench_fitted_bound.py [--n 200] [--out reports/bench/fitted_bound.json]

A scene file carries no source powers, symbols or noise level, and most users' files no
SNR either. `risloc evaluate` bounds their scenes with the stochastic CRB at the noise and
source powers the measurements give at the true positions
(:func:`risloc.evaluation.noise_and_powers_at`); a scene with an SNR at equal powers and the
noise that gives that SNR. On simulated test scenes, whose true powers and noise are known,
per SNR and true K, with powers spread over 12 dB and equal: the median over scenes of the
fitted noise over the true one, and for each bound the median over sources of its ratio to
the stochastic bound at the true powers and noise (azimuth and range; 1 is exact), with
the 10 % and 90 % quantiles of the azimuth's. A source the noise buries (its fitted power
at the floor, 1e-6 times the noise its estimate holds) gets a bound far above the true
one: the tail of the fitted bound at low SNR; equal powers at the SNR miss spread ones both
ways. Writes the JSON and a text copy of the table (``<out>.txt``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_versus import SEED, add_row, write_table  # noqa: E402

from risloc.config import SceneConfig, SystemConfig  # noqa: E402
from risloc.evaluation.crb import (  # noqa: E402
    crb_for_scenes,
    noise_and_powers_at,
    noise_var_for_snr,
)
from risloc.simulation import simulate_range  # noqa: E402

STREAM = 1400  # scene streams 1400 and up (bench_false_alarms 1300+)
SNRS = (-5.0, 0.0, 10.0, 20.0)
KS = (1, 3, 5)
SPREADS = (12.0, 0.0)


def _q(x: torch.Tensor, q: float) -> float:
    return float(torch.quantile(x, q))


def _cell(row: dict, bound: str) -> str:
    return (f"{row[f'azimuth_{bound}_median']:.3f} ({row[f'azimuth_{bound}_q10']:.2f}.."
            f"{row[f'azimuth_{bound}_q90']:.3g})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="scenes per SNR, K and power spread")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/fitted_bound.json"))
    args = ap.parse_args()
    system = SystemConfig()
    rows, lines = [], []
    head = (f"{'spread dB':>9} {'SNR dB':>6} {'K':>2} {'noise':>6} "
            f"{'az fitted (q10..q90)':>24} {'az equal@SNR (q10..q90)':>24} "
            f"{'range fitted':>12} {'range equal@SNR':>15}")
    print(head)
    lines.append(head)
    for spread in SPREADS:
        for i, snr in enumerate(SNRS):
            for K in KS:
                sc = simulate_range(0, args.n, system, SceneConfig(power_spread_db=spread),
                                    seed=SEED["test"], split="test",
                                    stream=STREAM + 64 * (spread > 0) + 8 * i + K,
                                    snr_db=snr, K=K)
                pos = (sc.azimuth, sc.elevation, sc.range_m)
                truth = crb_for_scenes(sc, system, "stochastic")
                sigma2, powers = noise_and_powers_at(*pos, sc.y, sc.H, sc.codes, system,
                                                     sc.mask)
                fitted = crb_for_scenes(replace(sc, noise_var=sigma2, powers=powers), system,
                                        "stochastic")
                at_snr = noise_var_for_snr(*pos, sc.H, sc.codes, sc.snr_db, system, sc.mask)
                equal = crb_for_scenes(replace(sc, noise_var=at_snr, powers=None), system,
                                       "stochastic")
                m = sc.mask
                ratio = {f"{c}_{b}": getattr(bound, c)[m] / getattr(truth, c)[m]
                         for c in ("azimuth", "range_m")
                         for b, bound in (("fitted", fitted), ("equal", equal))}
                row = {"power_spread_db": spread, "snr_db": snr, "K": K, "n": args.n,
                       "noise_ratio_median": float((sigma2 / sc.noise_var.double()).median()),
                       **{f"{k}_median": _q(v, 0.5) for k, v in ratio.items()},
                       **{f"azimuth_{b}_q{q}": _q(ratio[f"azimuth_{b}"], q / 100)
                          for b in ("fitted", "equal") for q in (10, 90)}}
                line = (f"{spread:>9g} {snr:>6g} {K:>2} {row['noise_ratio_median']:>6.3f} "
                        f"{_cell(row, 'fitted'):>24} {_cell(row, 'equal'):>24} "
                        f"{row['range_m_fitted_median']:>12.3f} "
                        f"{row['range_m_equal_median']:>15.3f}")
                add_row(rows, lines, row, line)
    write_table(args.out, {"rows": rows, "seed": SEED["test"]}, lines)


if __name__ == "__main__":
    main()
