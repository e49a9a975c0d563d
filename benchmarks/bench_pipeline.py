"""End-to-end learned pipeline on a held-out default-system test set (issue 5 targets).

    python benchmarks/bench_pipeline.py [--checkpoint PATH] [--n 100] [--threads 2]
                                        [--no-order-check] [--unknown-snr]
                                        [--out reports/bench/pipeline.json]

Reports per SNR (K unknown, 1..5): median |error| of azimuth, elevation and range beside
the median sqrt(CRB) (deterministic) of the same paired sources and their ratio, K accuracy
and F1; the classical localizer's median angle error at 0 dB, K >= 3 (K unknown, and as a
diagnostic with the true K given to both); throughput at batch
256 end to end through the Localizer (the batch split over one worker thread per core,
risloc.parallel; with and without the order check, interleaved) and the per-stage split of
the serial path (network + blend, MUSIC, order head when the model has one, NF-MLE, order
check), and peak memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from risloc.config import RislocConfig
from risloc.core.params import concat_estimates
from risloc.estimators.classical import classical_localize
from risloc.estimators.music import music
from risloc.estimators.nfmle import nfmle_fit
from risloc.evaluation import crb_for_scenes, match_sources, summarize
from risloc.parallel import default_workers
from risloc.pipeline import Localizer
from risloc.pipeline.learned import load_learned_pipeline
from risloc.pipeline.order import order_features, order_statistics
from risloc.pipeline.order_check import check_order, check_selection
from risloc.simulation import simulate_range

SNRS = (-5.0, 0.0, 5.0, 10.0, 20.0)


def _run(pipe, sc, batch=64, known_K: bool = False, known_snr: bool = True):
    parts = []
    for lo in range(0, len(sc), batch):
        s = sc[lo:lo + batch]
        parts.append(pipe.localize(s.y, s.H, s.codes, s.snr_db if known_snr else None,
                                   K=s.K if known_K else None))
    return concat_estimates(parts)


def accuracy(pipe, cfg, n: int, known_snr: bool = True) -> list[dict]:
    rows = []
    for i, snr in enumerate(SNRS):
        sc = simulate_range(0, n, cfg.system, cfg.scene, seed=2026, split="test",
                            stream=500 + i, snr_db=snr)
        est = _run(pipe, sc, known_snr=known_snr)
        crb = crb_for_scenes(sc, cfg.system)
        s = summarize(match_sources(est, sc.azimuth, sc.elevation, sc.range_m, sc.K), crb)
        row = {"snr_db": snr, **asdict(s)}
        for p, u in (("azimuth", "deg"), ("elevation", "deg"), ("range", "m")):
            row[f"{p}_ratio_to_crb"] = s.__dict__[f"{p}_median_{u}"] / \
                s.__dict__[f"crb_{p}_median_{u}"]
        rows.append(row)
        print(f"{snr:5.0f} dB  K acc {s.K_accuracy:.3f}  F1 {s.f1:.3f}  "
              f"az {s.azimuth_median_deg:.3f} ({s.crb_azimuth_median_deg:.3f})  "
              f"el {s.elevation_median_deg:.3f} ({s.crb_elevation_median_deg:.3f})  "
              f"r {s.range_median_m:.3f} ({s.crb_range_median_m:.3f}) m   ratios "
              f"{row['azimuth_ratio_to_crb']:.2f} {row['elevation_ratio_to_crb']:.2f} "
              f"{row['range_ratio_to_crb']:.2f}", flush=True)
    return rows


def versus_classical(pipe, cfg, n: int) -> dict:
    out = {}
    parts = [simulate_range(0, n // 3 + 1, cfg.system, cfg.scene, seed=2026, split="test",
                            stream=600 + k, snr_db=0.0, K=k) for k in (3, 4, 5)]
    from risloc.simulation import concat_batches

    sc = concat_batches(parts)
    learned = _run(pipe, sc)
    classical = classical_localize(sc.y, sc.H, sc.codes, cfg.system, snr_db=sc.snr_db)
    for name, est in (("learned", learned), ("classical", classical)):
        s = summarize(match_sources(est, sc.azimuth, sc.elevation, sc.range_m, sc.K))
        out[name] = {"angle_median_deg": s.angle_median_deg, "K_accuracy": s.K_accuracy,
                     "f1": s.f1}
    out["ratio_classical_over_learned"] = (out["classical"]["angle_median_deg"]
                                           / out["learned"]["angle_median_deg"])
    print(f"0 dB, K >= 3 ({len(sc)} scenes): median angle learned "
          f"{out['learned']['angle_median_deg']:.3f} deg, classical "
          f"{out['classical']['angle_median_deg']:.3f} deg (ratio "
          f"{out['ratio_classical_over_learned']:.2f})", flush=True)
    # diagnostic: the same scenes with the true K given to both, so that the errors compare
    # the localization alone (the same number of sources paired per scene)
    known = {}
    est_l = _run(pipe, sc, known_K=True)
    est_c = classical_localize(sc.y, sc.H, sc.codes, cfg.system, K=sc.K, snr_db=sc.snr_db)
    for name, est in (("learned", est_l), ("classical", est_c)):
        s = summarize(match_sources(est, sc.azimuth, sc.elevation, sc.range_m, sc.K))
        known[name] = {"angle_median_deg": s.angle_median_deg, "f1": s.f1}
    out["known_K"] = known
    print(f"  with the true K given to both: median angle learned "
          f"{known['learned']['angle_median_deg']:.3f} deg (F1 {known['learned']['f1']:.2f}), "
          f"classical {known['classical']['angle_median_deg']:.3f} deg "
          f"(F1 {known['classical']['f1']:.2f})", flush=True)
    return out


@torch.no_grad()
def stage_split(pipe, sc, repeats: int, sync=lambda: None) -> dict[str, float]:
    """Median seconds of the learned pipeline's stages on the scenes ``sc`` (first run =
    warm-up), as LearnedPipeline.localize runs them with K unknown; ``sync`` closes each
    stage (a device sync on a GPU)."""
    system, nf = pipe.system, pipe.nfmle_config()
    names = ("network", "music", "order", "nfmle", "check")
    times = {k: [] for k in names + ("total",)}
    for _ in range(repeats + 1):
        stamps: list[float] = []

        def stamp(stamps=stamps):
            sync()
            stamps.append(time.perf_counter())

        stamp()
        fwd = pipe.forward(sc.y, sc.H, sc.codes, sc.snr_db)
        stamp()
        unsure = None
        if pipe.order_head is not None:
            cand = music(fwd.R_blend, torch.full((len(sc),), system.K_max, device=sc.y.device),
                         system, pipe.music_cfg)
            stamp()
            stats = order_statistics(sc.y, sc.H, sc.codes, cand, system)
            feats = order_features(stats, sc.y, fwd.out.K_logits, cand.score, sc.snr_db)
            prob = torch.softmax(pipe.order_head(feats), -1)
            est = cand.truncate(prob.argmax(-1) + 1)
            if pipe.order_check is not None:
                unsure = check_selection(prob, sc.snr_db, pipe.order_check)
        else:
            est = music(fwd.R_blend, fwd.out.K_hat, system, pipe.music_cfg)
            stamp()
        stamp()
        if pipe.nfmle_iterations:
            fit = nfmle_fit(sc.y, sc.H, sc.codes, est, system, nf)
        stamp()
        if pipe.nfmle_iterations and unsure is not None and bool(unsure.any()):
            check_order(sc.y, sc.H, sc.codes, fit.estimates, fit.cost, sc.snr_db, system, nf,
                        pipe.order_check, unsure)
        stamp()
        for k, a, b in zip(names, stamps, stamps[1:]):
            times[k].append(b - a)
        times["total"].append(stamps[-1] - stamps[0])
    return {k: statistics.median(v[1:]) for k, v in times.items()}


@torch.no_grad()
def throughput(pipe, cfg, repeats: int) -> dict:
    sc = simulate_range(0, 256, cfg.system, cfg.scene, seed=2026, split="test", stream=700)
    med = stage_split(pipe, sc, repeats)
    # end to end as users run it: Localizer, the batch split over one worker per core
    loc = Localizer(pipe.system, "learned", pipe, workers=None)
    check = pipe.order_check
    e2e = {True: [], False: []}  # with and without the order check, interleaved
    for _ in range(repeats + 1):
        for on in (True, False):
            pipe.order_check = check if on else None
            t0 = time.perf_counter()
            loc.localize(sc.y, sc.H, sc.codes, sc.snr_db)
            e2e[on].append(time.perf_counter() - t0)
    pipe.order_check = check
    res = {"batch": 256, "workers": default_workers(),
           "scenes_per_s": 256 / statistics.median(e2e[True][1:]),
           "scenes_per_s_without_check": 256 / statistics.median(e2e[False][1:]),
           "scenes_per_s_serial_stages": 256 / med["total"],
           **{f"{k}_s_median": v for k, v in med.items()},
           "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(f"throughput (batch 256, Localizer, {res['workers']} workers x 1 thread): "
          f"{res['scenes_per_s']:.1f} scenes/s (median of {repeats}); without the order check "
          f"{res['scenes_per_s_without_check']:.1f}", flush=True)
    print(f"stage split (serial, {torch.get_num_threads()} torch threads, "
          f"{res['scenes_per_s_serial_stages']:.1f} scenes/s): network {med['network']:.2f} s, "
          f"MUSIC {med['music']:.2f} s, order head {med['order']:.2f} s, "
          f"NF-MLE {med['nfmle']:.2f} s, order check {med['check']:.2f} s per batch; "
          f"peak RSS {res['peak_rss_MB']:.0f} MB", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--n", type=int, default=100, help="scenes per SNR point")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-order-check", action="store_true",
                    help="switch the pipeline's order check off (the A/B reference)")
    ap.add_argument("--unknown-snr", action="store_true",
                    help="accuracy table only, with the SNR withheld from the pipeline")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/pipeline.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_learned_pipeline(args.checkpoint)
    if args.no_order_check:
        pipe.order_check = None
    cfg = RislocConfig()
    if args.unknown_snr:
        if args.out == ap.get_default("out"):
            args.out = args.out.with_name("pipeline_unknown_snr.json")
        res = {"checkpoint": args.checkpoint or "shipped", "snr": "unknown",
               "order_check": pipe.order_check is not None,
               "per_snr": accuracy(pipe, cfg, args.n, known_snr=False)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
        return
    res = {"checkpoint": args.checkpoint or "shipped", "threads": args.threads,
           "order_check": pipe.order_check is not None,
           "per_snr": accuracy(pipe, cfg, args.n),
           "vs_classical_0dB_K3plus": versus_classical(pipe, cfg, args.n),
           "throughput": throughput(pipe, cfg, args.repeats)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
