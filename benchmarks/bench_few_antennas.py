"""The classical localizer with K close to M: its search, or the data? A genie from the truth.

    python benchmarks/bench_few_antennas.py [--n 32] [--seed 1] [--snr 120 30 20]
                                            [--out reports/bench/few_antennas.json]

With M base-station antennas, each snapshot of K sources leaves a residual of M - K
dimensions, and the per-snapshot amplitudes of the deterministic model leave few data per
unknown: 2 L M real numbers for K (3 + 2 L) unknowns (128 for 105 at M = 4, K = 3, L = 16).
Per system (the default RIS and L, M antennas, K = M - 2 and M - 1 given to the localizer)
and SNR, on test scenes:

* ``missed`` — scenes where the classical localizer puts no estimate within 1 deg of some
  true source;
* ``lower cost`` — of those, scenes whose reported positions explain the data better
  (least-squares amplitudes, cost ||y - B s||^2) than the local ML optimum started from the
  truth: there the ML criterion itself prefers the wrong answer and no search can help;
* ``genie off`` — scenes where that truth-started optimum (NF-MLE to convergence from the
  true positions, what a perfect search would return) is itself more than 1 deg from some
  true source: the data do not hold the positions to 1 deg at that SNR.

Where ``genie off`` is near ``missed`` the misses are the data's; where it is 0 (noise-free
scenes; at 30 dB most systems with K = M - 2) they are the search's. One thread. Writes the
JSON and a text copy of the table (``<out>.txt``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from risloc.config import SystemConfig
from risloc.core.params import pack, steering_at
from risloc.estimators.classical import classical_fit
from risloc.estimators.nfmle import NFMLEConfig, amplitude_fit, lm_solve
from risloc.io.atomic import write_text_atomic
from risloc.physics.geometry import angular_separation
from risloc.simulation import simulate_range

CASES = ((4, 3), (6, 4), (6, 5), (8, 6), (8, 7))


def missed(theta: torch.Tensor, scenes, K: int, deg: float = 1.0) -> torch.Tensor:
    """[B] bool: some true source has no estimate of theta [B, k, 3] within ``deg``."""
    d = angular_separation(scenes.azimuth[:, :K, None].double(),
                           scenes.elevation[:, :K, None].double(),
                           theta[:, None, :, 0].double(), theta[:, None, :, 1].double())
    return (torch.rad2deg(d).amin(-1) > deg).any(-1)


def run_case(M: int, K: int, snr: float, n: int, seed: int) -> dict:
    system = SystemConfig(M=M, K_max=K)
    sc = simulate_range(0, n, system, {"snr_db": (snr, snr)}, seed=seed, split="test", K=K)
    y, H, c = (t.to(torch.complex128) for t in (sc.y, sc.H, sc.codes))
    est = classical_fit(sc.y, sc.H, sc.codes, system, K=K).estimates
    found = torch.stack([est.azimuth[:, :K], est.elevation[:, :K],
                         1.0 / est.range_m[:, :K]], -1).double()
    every = torch.ones(n, K, dtype=torch.bool)
    found_cost = amplitude_fit(y, H, c, steering_at(found, system, y.dtype), every, 0.0).cost
    truth = pack(sc.azimuth[:, :K], sc.elevation[:, :K], sc.range_m[:, :K]).double()
    genie, fit, _ = lm_solve(y, H, c, truth, every, system,
                             NFMLEConfig(iterations=None, max_iterations=50))
    miss = missed(found, sc, K)
    return {"M": M, "K": K, "snr_db": snr, "scenes": n, "missed": int(miss.sum()),
            "lower_cost": int((miss & (found_cost < fit.cost * (1 - 1e-6))).sum()),
            "genie_off": int(missed(genie, sc, K).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--snr", type=float, nargs="+", default=[120.0, 30.0, 20.0])
    ap.add_argument("--out", type=Path, default=Path("reports/bench/few_antennas.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, lines = [], [f"{'M':>2} {'K':>2} {'SNR dB':>6} {'scenes':>6} {'missed':>6} "
                       f"{'lower cost':>10} {'genie off':>9}"]
    for M, K in CASES:
        for snr in args.snr:
            r = run_case(M, K, snr, args.n, args.seed)
            rows.append(r)
            lines.append(f"{M:>2} {K:>2} {snr:>6g} {args.n:>6} {r['missed']:>6} "
                         f"{r['lower_cost']:>10} {r['genie_off']:>9}")
            print(lines[-1], flush=True)
    write_text_atomic(args.out, json.dumps({"seed": args.seed, "rows": rows}, indent=2))
    write_text_atomic(args.out.with_suffix(".txt"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
