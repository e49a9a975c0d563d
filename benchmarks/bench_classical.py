"""Benchmark of the measurement-domain NF-MLE and the classical localizer.

(a) NF-MLE started within 2 deg / 20 % range of the truth, K = 1..5, SNR 5, 10, 20 dB:
    per-parameter RMSE beside the RMS of the square-root deterministic CRB
    (risloc.evaluation.crb.crb_deterministic); target RMSE <= 1.2 sqrt(CRB) at >= 5 dB.
(b) The classical localizer with K unknown (and the SNR not given), K = 1, 3, 5 at
    SNR -5, 0, 5, 10, 20 dB: median errors, K accuracy, F1, scenes/s.
(c) Model order on the scenes of (b): the residual test (sigma^2 estimated / from the
    SNR) and Wax-Kailath MDL / AIC on the back-projected sample covariance R_samp.

    python benchmarks/bench_classical.py [--quick] [--out reports/bench/bench_classical.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.core.params import Estimates
from risloc.covariance.tools import sample_covariance
from risloc.estimators.classical import classical_fit
from risloc.estimators.nfmle import NFMLEConfig, nfmle_refine
from risloc.estimators.order import aic_order, mdl_order, noise_var_from_snr, residual_order
from risloc.evaluation.metrics import match_sources, summarize
from risloc.io.atomic import write_text_atomic
from risloc.simulation import simulate_range

SYSTEM, SCENE = SystemConfig(), SceneConfig()
DEG = math.degrees(1.0)


def perturbed_start(b, generator: torch.Generator, deg: float = 2.0, rel: float = 0.2):
    """The truth moved uniformly by up to +-deg in both angles and +-rel in range."""
    u = lambda: 2 * torch.rand(b.azimuth.shape, generator=generator, dtype=torch.float64) - 1  # noqa: E731
    return Estimates(b.K, b.azimuth.double() + math.radians(deg) * u(),
                     b.elevation.double() + math.radians(deg) * u(),
                     b.range_m.double() * (1 + rel * u()), torch.zeros_like(b.azimuth.double()))


def _rms(x: torch.Tensor) -> float:
    return float(x.double().square().mean().sqrt())


def nfmle_vs_crb(n: int, seed: int) -> list[dict]:
    """Part (a): one row per (K, SNR)."""
    from risloc.evaluation.crb import crb_deterministic  # written in parallel: import lazily

    rows, gen = [], torch.Generator().manual_seed(seed)
    for K in range(1, SYSTEM.K_max + 1):
        for snr in (5.0, 10.0, 20.0):
            b = simulate_range(0, n, SYSTEM, SCENE, seed=seed, split="test", stream=10 + K,
                               snr_db=snr, K=K)
            t0 = time.perf_counter()
            est = nfmle_refine(b.y, b.H, b.codes, perturbed_start(b, gen), SYSTEM,
                               NFMLEConfig(iterations=None))
            dt = time.perf_counter() - t0
            crb = crb_deterministic(b.azimuth, b.elevation, b.range_m, b.symbols, b.H, b.codes,
                                    b.noise_var, SYSTEM)
            m = b.mask
            row = {"K": K, "snr_db": snr, "scenes": n, "ms_per_scene": 1e3 * dt / n}
            for name, truth, bound, scale in (
                    ("azimuth", b.azimuth, crb.azimuth, DEG),
                    ("elevation", b.elevation, crb.elevation, DEG),
                    ("range", b.range_m, crb.range_m, 1.0)):
                attr = "range_m" if name == "range" else name
                err = (getattr(est, attr).double() - truth.double())[m]
                row[f"{name}_rmse"] = scale * _rms(err)
                row[f"{name}_crb_rms"] = scale * _rms(bound[m])
                row[f"{name}_ratio"] = row[f"{name}_rmse"] / row[f"{name}_crb_rms"]
                row[f"{name}_median_z"] = float((err.abs() / bound[m]).median())
            rows.append(row)
    return rows


def classical_blind(n: int, seed: int) -> tuple[list[dict], list[dict], float]:
    """Parts (b) and (c): rows per (K, SNR), order rows per SNR, scenes/s overall."""
    rows, per_snr, t_total, n_total = [], {}, 0.0, 0
    for snr in (-5.0, 0.0, 5.0, 10.0, 20.0):
        for K in (1, 3, 5):
            b = simulate_range(0, n, SYSTEM, SCENE, seed=seed, split="test", stream=20 + K,
                               snr_db=snr, K=K)
            t0 = time.perf_counter()
            res = classical_fit(b.y, b.H, b.codes, SYSTEM)
            t_total += time.perf_counter() - t0
            n_total += n
            s = summarize(match_sources(res.estimates, b.azimuth, b.elevation, b.range_m, b.K))
            rows.append({"K": K, "snr_db": snr, "scenes": n, "K_accuracy": s.K_accuracy,
                         "f1": s.f1, "azimuth_median_deg": s.azimuth_median_deg,
                         "elevation_median_deg": s.elevation_median_deg,
                         "angle_median_deg": s.angle_median_deg,
                         "range_median_m": s.range_median_m})
            R = sample_covariance(b.y, b.H, b.codes)
            sigma2 = noise_var_from_snr(b.y, b.snr_db)
            ks = {"residual (sigma2 estimated)": res.estimates.K,
                  "residual (sigma2 from SNR)": residual_order(res.costs, SYSTEM.L, SYSTEM.M,
                                                               sigma2),
                  "MDL on R_samp": mdl_order(R, SYSTEM.L, SYSTEM.K_max),
                  "AIC on R_samp": aic_order(R, SYSTEM.L, SYSTEM.K_max)}
            acc = per_snr.setdefault(snr, {})
            for name, k in ks.items():
                acc.setdefault(name, []).append((k == b.K).double())
    order = [{"snr_db": snr, "scenes": int(sum(len(v) for v in next(iter(a.values())))),
              **{name: float(torch.cat(v).mean()) for name, v in a.items()}}
             for snr, a in per_snr.items()]
    return rows, order, n_total / t_total


def _print_table(title: str, rows: list[dict], cols: list[str]) -> None:
    print(f"\n{title}")
    width = [max(12, len(c)) for c in cols]  # whole column names: two began alike
    print("  ".join(f"{c:>{w}s}" for c, w in zip(cols, width, strict=True)))
    for r in rows:
        print("  ".join(f"{r[c]:{w}.4g}" if isinstance(r[c], float) else f"{r[c]!s:>{w}s}"
                        for c, w in zip(cols, width, strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (~1 min)")
    ap.add_argument("--out", default="reports/bench/bench_classical.json")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: the small batched ops here are latency "
                         "bound; 2 threads on a busy 2-core machine were ~10x slower)")
    ap.add_argument("--n-nfmle", type=int, default=None, help="scenes per (K, SNR) in (a)")
    ap.add_argument("--n-classical", type=int, default=None,
                    help="scenes per (K, SNR) in (b); (c) uses 3x this many per SNR")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_a, n_b = (16, 8) if args.quick else (100, 67)
    n_a, n_b = args.n_nfmle or n_a, args.n_classical or n_b
    t0 = time.perf_counter()
    a = nfmle_vs_crb(n_a, args.seed)
    _print_table("(a) NF-MLE from 2 deg / 20 % starts: RMSE / RMS sqrt(CRB) [deg, deg, m]", a,
                 ["K", "snr_db", "azimuth_rmse", "azimuth_ratio", "elevation_rmse",
                  "elevation_ratio", "range_rmse", "range_ratio", "azimuth_median_z",
                  "ms_per_scene"])
    b, c, rate = classical_blind(n_b, args.seed)
    _print_table(f"(b) classical localizer, K and SNR unknown ({rate:.1f} scenes/s)", b,
                 ["K", "snr_db", "K_accuracy", "f1", "azimuth_median_deg",
                  "elevation_median_deg", "angle_median_deg", "range_median_m"])
    _print_table("(c) K accuracy on the scenes of (b) (K in {1, 3, 5})", c,
                 ["snr_db", "scenes", *[k for k in c[0] if k not in ("snr_db", "scenes")]])
    out = {"system": json.loads(SYSTEM.model_dump_json()), "quick": args.quick,
           "threads": torch.get_num_threads(), "seconds": time.perf_counter() - t0,
           "nfmle_vs_crb": a, "classical": b, "classical_scenes_per_s": rate, "order": c}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(out, indent=1))
    print(f"\nwrote {path} ({out['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
