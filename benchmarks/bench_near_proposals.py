"""Do near sources at low SNR need other proposals than the network's slots?

    python benchmarks/bench_near_proposals.py [--n 400] [--corners near default]
        [--snrs 0 5] [--modes slots samp ...] [--near-m 1.5] [--recall | --grid-gain]
        [--out reports/bench/near_proposals.json]

At 0 dB the learned localizer's F1 falls 0.095 behind the classical one's on sources at
0.5-1.5 m (``bench_corners.py --snrs 0``), ahead or level in the other corners; with K
given its fits are the deeper (lower cost) in 49 of 300 scenes, the classical ones in 183
(``bench_ml_genie.py --corner near``), and more search from its own proposals gains at
most 0.008 (``bench_fit_settings.py --variants search --corner near``). So: does the fit
stage do better from other starting points? Validation split only (a choice, not a result),
the scenes of ``bench_corners.py --split validation`` (the same streams), SNR withheld; per
corner and SNR, K decided by the order head and K given, F1, K accuracy and seconds of the
shipped pipeline proposing from

* ``slots``: the network's source slots (the shipped pipeline);
* ``samp``: near-field MUSIC (the proposal grid of ``inference_music_config``) on the
  sample covariance R_samp (``forward_blend`` with beta 1);
* ``union_cost``: both fits, keeping per scene the one with the lower S-source cost C_S
  (the measurement-domain likelihood judging the candidates);
* ``union_sum``: both, keeping the one with the lower sum of its nested costs C_1..C_S;
* ``union_k``: both, keeping the one with the lower cost C_K at K sources: the given K, or
  the K the order head decides on the slots' fit (the likelihood judging fits of the same
  size, as an ML genie with K given does);
* ``gated_near``: R_samp's proposals only in the scenes where every one of the K sources
  the order head decides on the slots' fit lies nearer than ``--near-m`` (1.5 m), the
  slots' elsewhere (the share of such scenes, ``gated``, sets what it would cost: this
  script fits both everywhere).

The order head and the source ranker are the shipped ones, fitted on the slots' fits.
``--grid-gain``: instead, whether the network's candidate grid (its beamformer bank) covers
near sources as well as others: for 2,000 random sources per range band, the largest
normalised gain |a(g)^H a|^2 / (||a(g)||^2 ||a||^2) over the grid points g (median and 10 %).
``--recall``: instead, per corner and SNR, the share of the true sources that the network's
slots and the S-source fit from them pair within the detection gate (angle within 5 deg)
when all K_max are reported, and the median |range error| of those pairs [m].
Writes the JSON and the printed table beside it (``<out>.txt``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import bench_corners as bc
import torch

from risloc.core.params import Estimates, concat_estimates
from risloc.estimators.music import music
from risloc.evaluation.metrics import match_sources, summarize
from risloc.inference.forward import forward_blend
from risloc.io.atomic import write_text_atomic
from risloc.physics import steering
from risloc.pipeline.learned import LearnedPipeline, inference_music_config, load_learned_pipeline
from risloc.pipeline.order import rank_sources

MODES = ("slots", "samp", "union_cost", "union_sum", "union_k", "gated_near")
BATCH = 128


def samp_candidates(pipe: LearnedPipeline, y, H, codes, slots: torch.Tensor) -> torch.Tensor:
    """[B, K_max, 3] MUSIC peaks on R_samp; a slot where MUSIC finds fewer peaks."""
    fwd = forward_blend(pipe.network, y, H, codes, None, 1.0, pipe.recipe.blend, check=False)
    K = torch.full((y.shape[0],), pipe.system.K_max, device=y.device)
    peaks = music(fwd.R_blend, K, pipe.system,
                  inference_music_config(pipe.fov)).theta[:, :pipe.system.K_max]
    return torch.where(torch.isfinite(peaks), peaks.to(slots.dtype), slots)


def _take(a, b, use_b: torch.Tensor):
    """The NamedTuple of tensors a, with b's rows where use_b [B]."""
    return type(a)(*(torch.where(use_b.view(-1, *([1] * (x.ndim - 1))), v, x)
                     for x, v in zip(a, b, strict=True)))


@torch.no_grad()
def localize(pipe: LearnedPipeline, y, H, codes, K, mode: str, near_m: float = 1.5
             ) -> tuple[Estimates, torch.Tensor]:
    """The pipeline's stages (``LearnedPipeline.localize``) with ``mode``'s proposals, and
    which scenes [B] took R_samp's fit."""
    known = K is not None
    fwd = pipe.forward(y, H, codes)
    slots = pipe.propose(fwd)
    fit = pipe.fit(y, H, codes, slots, known, check=False) if mode != "samp" else None
    took = torch.zeros(y.shape[0], dtype=torch.bool) if mode == "slots" else \
        torch.ones(y.shape[0], dtype=torch.bool)
    if mode != "slots":
        other = pipe.fit(y, H, codes, samp_candidates(pipe, y, H, codes, slots), known,
                         check=False)
        if fit is None:
            fit = other
        else:
            if mode == "union_k":
                k = K if known else pipe.decide_order(fwd, fit, y, None, check=False).K
                at = k.view(-1, 1).long()
                took = other.costs.gather(1, at).squeeze(1) < fit.costs.gather(1, at).squeeze(1)
            elif mode == "gated_near":
                d = pipe.decide_order(fwd, fit, y, K, check=False)
                theta = fit.theta if d.ranking is None else rank_sources(fit.theta, d.ranking)
                k = torch.arange(theta.shape[1])
                took = ((theta[..., 2] > 1 / near_m) | (k >= d.K.unsqueeze(-1))).all(-1)
            else:
                cost = (lambda f: f.costs[:, -1]) if mode == "union_cost" \
                    else (lambda f: f.costs[:, 1:].sum(-1))
                took = cost(other) < cost(fit)
            fit = _take(fit, other, took)
    d = pipe.decide_order(fwd, fit, y, K, check=False)
    return pipe.polish(y, H, codes, fit, d.K, repair=known, known=known, check=False,
                       ranking=d.ranking).float(), took


@torch.no_grad()
def recall(pipe: LearnedPipeline, sc) -> dict:
    """Share of the true sources the slots and the S-source fit pair within the gate (all
    K_max reported), and the median |range error| [m] of those pairs."""
    fwd = pipe.forward(sc.y, sc.H, sc.codes)
    slots = pipe.propose(fwd)
    fit = pipe.fit(sc.y, sc.H, sc.codes, slots, check=False)
    out = {}
    for what, theta in (("slots", slots), ("fit", fit.theta)):
        K = torch.full((len(sc),), theta.shape[1])
        m = match_sources(Estimates.from_theta(K, theta.double()), sc.azimuth, sc.elevation,
                          sc.range_m, sc.K)
        out[what] = {"recall": float(m.detected.sum() / sc.K.sum()),
                     "median_range_error_m": float(m.range_error[m.detected].abs().median())}
    return out


def grid_gain(pipe: LearnedPipeline, r_lo: float, r_hi: float, n: int = 2000,
              seed: int = 0) -> torch.Tensor:
    """[n] the best normalised gain over the network's candidate grid of n sources drawn
    uniformly in its field of view's angles and in r_lo..r_hi [m] (float64)."""
    gen = torch.Generator().manual_seed(seed)
    fov, g = pipe.fov, pipe.network.grid

    def draw(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)

    az = torch.deg2rad(draw(*fov.azimuth_deg))
    el = torch.deg2rad(draw(*fov.elevation_deg))
    a = steering(az, el, draw(r_lo, r_hi), pipe.system, torch.complex128)  # (n, N)
    A, E, inv = torch.meshgrid(g.azimuth.double(), g.elevation.double(),
                               g.inv_range.double(), indexing="ij")
    G = steering(A.flatten(), E.flatten(), 1 / inv.flatten(), pipe.system, torch.complex128)
    G = G / G.norm(dim=-1, keepdim=True)
    a = a / a.norm(dim=-1, keepdim=True)
    return (G.conj() @ a.T).abs().square().amax(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="scenes per corner and SNR")
    ap.add_argument("--corners", nargs="+", choices=list(bc.CORNERS), default=["near", "default"])
    ap.add_argument("--snrs", type=float, nargs="+", default=[0.0, 5.0],
                    help="SNRs [dB]; each draws the stream of its place in bench_corners.py's "
                         "--snrs, so pass them in that order for its scenes")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--near-m", type=float, default=1.5,
                    help="gated_near: R_samp's fit where every decided source is nearer [m]")
    ap.add_argument("--grid-gain", action="store_true",
                    help="the network's candidate grid's gain on near and other sources "
                         "instead")
    ap.add_argument("--recall", action="store_true",
                    help="the slots' and their fit's recall and range errors instead")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/near_proposals.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_learned_pipeline()
    rows, lines = [], []
    bands = ((0.5, 1.5), (1.5, 10.0), (5.0, 10.0)) if args.grid_gain else ()
    for lo, hi in bands:
        gain = grid_gain(pipe, lo, hi)
        rows.append({"range_m": [lo, hi], "median": float(gain.median()),
                     "q10": float(gain.quantile(0.1))})
        lines.append(f"grid {tuple(len(ax) for ax in pipe.network.grid)} (az, el, 1/r), "
                     f"sources at {lo:g}-{hi:g} m: best cell's gain median "
                     f"{rows[-1]['median']:.3f}, 10 % {rows[-1]['q10']:.3f}")
        print(lines[-1], flush=True)
    for name in args.corners if not args.grid_gain else ():
        for i, snr in enumerate(args.snrs):
            sc = bc.corner_scenes(name, "validation", args.n, snr, bc.cell_stream(name, i))
            if args.recall:
                row = {"corner": name, "snr_db": snr, **recall(pipe, sc)}
                rows.append(row)
                lines.append(f"{name:>8s} {snr:4.0f} dB  " + "   ".join(
                    f"{w}: recall {row[w]['recall']:.3f}, median |range error| "
                    f"{row[w]['median_range_error_m']:.3f} m" for w in ("slots", "fit")))
                print(lines[-1], flush=True)
                continue
            for mode in args.modes:
                row = {"corner": name, "snr_db": snr, "mode": mode}
                for known in (False, True):
                    t0 = time.perf_counter()
                    parts, took = zip(*(localize(pipe, sc.y[j:j + BATCH], sc.H[j:j + BATCH],
                                                 sc.codes[j:j + BATCH],
                                                 sc.K[j:j + BATCH] if known else None, mode,
                                                 args.near_m)
                                        for j in range(0, len(sc), BATCH)), strict=True)
                    seconds = time.perf_counter() - t0
                    est = concat_estimates(list(parts))
                    s = summarize(match_sources(est, sc.azimuth, sc.elevation, sc.range_m,
                                                sc.K))
                    row["K_given" if known else "K_decided"] = {
                        "f1": s.f1, "K_accuracy": s.K_accuracy, "seconds": seconds,
                        "gated": float(torch.cat(took).float().mean())}
                rows.append(row)
                d, g = row["K_decided"], row["K_given"]
                lines.append(f"{name:>8s} {snr:4.0f} dB  {mode:10s}  K decided: F1 {d['f1']:.3f} "
                             f"K acc {d['K_accuracy']:.3f} {d['seconds']:5.1f} s   K given: "
                             f"F1 {g['f1']:.3f} {g['seconds']:5.1f} s" + (
                                 f"   R_samp's fit kept in {d['gated']:.1%} / {g['gated']:.1%}"
                                 if mode != "slots" else ""))
                print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"n": args.n, "split": "validation",
                                            "rows": rows}, indent=1))
    write_text_atomic(args.out.with_suffix(".txt"), "\n".join(lines) + "\n")
    print(f"wrote {args.out} (+ .txt)")


if __name__ == "__main__":
    main()
