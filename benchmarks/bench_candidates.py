"""Are the true sources among the learned pipeline's candidates? (validation split)

For each SNR: the share of scenes in which every true source lies within ``--tol`` degrees
(in both azimuth and elevation) of one of the K_max candidates of MUSIC on R_blend, of
the network's own K_max slots (after its ML refinement layer), and of their union; per K
and overall. Then the same coverage and the order head's K accuracy for other blend
weights beta at inference (the model was trained and its head fitted at the recipe's
beta). A K decision cannot count a source that no candidate explains.

    python benchmarks/bench_candidates.py [--n 400] [--snrs 0 10] [--betas 0.1 0.3 0.5 0.8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from risloc.config import SceneConfig
from risloc.pipeline.learned import load_learned_pipeline
from risloc.simulation import simulate_range


def all_covered(sc, azimuth, elevation, tol_deg: float) -> torch.Tensor:
    """[B] bool: every true source within tol of some candidate (azimuth [B, C] rad, ...)."""
    d = torch.maximum((sc.azimuth.unsqueeze(-1) - azimuth.unsqueeze(1)).abs(),
                      (sc.elevation.unsqueeze(-1) - elevation.unsqueeze(1)).abs())
    near = (torch.rad2deg(d.nan_to_num(1e9)) < tol_deg).any(-1)  # (B, Kt)
    real = torch.arange(sc.azimuth.shape[1]) < sc.K.unsqueeze(-1)
    return (near | ~real).all(-1)


@torch.no_grad()
def run(pipe, sc, tol: float) -> dict:
    fwd = pipe.forward(sc.y, sc.H, sc.codes, sc.snr_db)
    inp = pipe.order_inputs(fwd, sc.y, sc.H, sc.codes, sc.snr_db)
    c, o, S = inp.candidates, fwd.out, pipe.system.K_max
    sets = {"music": (c.azimuth[:, :S], c.elevation[:, :S]),
            "network": (o.slot_azimuth, o.slot_elevation)}
    sets["union"] = tuple(torch.cat([m, n], 1) for m, n in zip(sets["music"], sets["network"]))
    cov = {k: all_covered(sc, *v, tol) for k, v in sets.items()}
    K_hat = pipe.order_head.decide(inp.features)
    row = {f"covered_{k}": float(v.float().mean()) for k, v in cov.items()}
    for K in range(1, S + 1):
        m = sc.K == K
        row.update({f"covered_{k}_K{K}": float(v[m].float().mean()) for k, v in cov.items()})
    row["K_accuracy_order_head"] = float((K_hat == sc.K).float().mean())
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=400, help="validation scenes per SNR")
    p.add_argument("--snrs", type=float, nargs="+", default=[0.0, 10.0])
    p.add_argument("--betas", type=float, nargs="*", default=[0.1, 0.3, 0.5, 0.8])
    p.add_argument("--tol", type=float, default=2.0, help="degrees")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("reports/bench/bench_candidates.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pipe = load_learned_pipeline()
    trained_beta, rows = pipe.beta, []
    for snr in a.snrs:
        sc = simulate_range(0, a.n, pipe.system, SceneConfig(), a.seed, "validation",
                            snr_db=snr)
        for beta in [trained_beta] + [b for b in a.betas if b != trained_beta]:
            pipe.beta = beta
            row = {"snr_db": snr, "beta": beta, **run(pipe, sc, a.tol)}
            rows.append(row)
            ks = " ".join(f"K{K} {row[f'covered_music_K{K}']:.2f}"
                          for K in range(1, pipe.system.K_max + 1))
            print(f"{snr:5.1f} dB beta {beta:.2f}{' (trained)' if beta == trained_beta else ''}"
                  f": all sources within {a.tol:g} deg of a candidate: MUSIC "
                  f"{row['covered_music']:.3f} ({ks}), network slots "
                  f"{row['covered_network']:.3f}, union {row['covered_union']:.3f}; "
                  f"order-head K accuracy {row['K_accuracy_order_head']:.3f}", flush=True)
        pipe.beta = trained_beta
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"n": a.n, "tol_deg": a.tol, "rows": rows}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
