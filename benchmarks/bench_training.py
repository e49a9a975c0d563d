"""Benchmark of the learned covariance on a held-out test set, and of training speed.

(a) Accuracy: the trained network (EMA weights of a checkpoint) on test-split scenes at
    fixed SNRs, K unknown in 1..K_max: MUSIC on R_blend with the network's K ->
    Hungarian-matched median errors (beside the median square-root deterministic CRB of
    the paired sources), K accuracy, F1; covariance NMSE (R_blend, R_pred and,
    for reference, R_samp) and top-K subspace overlap with R_true, per SNR.
    Targets (issue 4): median angle error < 1 deg at SNR >= 5 dB, K accuracy >= 0.9 at
    SNR >= 10 dB.
    "learned only" repeats MUSIC with the ML refinement layer off (R_pred at the network's
    own slot positions): what the learned part alone achieves.
    "ML at the truth": a genie reference, not an estimator -- NF-MLE (10 Gauss-Newton
    steps, float64) started at the true positions with the true K. Its median angle error
    is about what any estimator that converges to the maximum-likelihood optimum can reach
    on these scenes, so it tells whether the angle target is reachable at all.
(b) Speed: seconds per optimizer step of the checkpoint's recipe on ``--time-threads``
    CPU threads (median of timed steps), and the implied seconds per training epoch.

    python benchmarks/bench_training.py --checkpoint runs/train_default/best.pt \
        [--n 200] [--threads 1] [--time-threads 1 2] [--out reports/bench/bench_training.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from risloc.covariance.tools import sample_covariance, subspace_overlap
from risloc.evaluation.crb import crb_for_scenes
from risloc.evaluation.metrics import summarize
from risloc.inference.checkpoint import load_checkpoint, load_model
from risloc.losses.covariance import covariance_nmse
from risloc.model.network import CovarianceNet
from risloc.simulation import scene_true_covariance, simulate_range
from risloc.training.config import TrainConfig
from risloc.training.evaluate import evaluate
from risloc.training.loop import Trainer

SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0)


def _evaluate(model, scenes, cfg: TrainConfig):
    return evaluate(model, scenes, cfg.system, cfg.blend.beta, cfg.blend, cfg.loss,
                    cfg.music_config(), cfg.data.val_batch_size, cfg.evaluation.f1_weight_deg)


def without_refinement(model: CovarianceNet) -> CovarianceNet:
    """The same weights with the ML refinement layer switched off (R_pred at the learned
    slot positions): what the learned part alone gives."""
    plain = CovarianceNet(model.system, replace(model.cfg, refine_iterations=0))
    plain.load_state_dict(model.state_dict())
    return plain.eval()


def ml_at_truth(scenes, cfg: TrainConfig):
    """Summary of NF-MLE started at the true positions with the true K (genie reference)."""
    from risloc.core.params import Estimates
    from risloc.estimators.nfmle import NFMLEConfig, nfmle_refine
    from risloc.evaluation.metrics import match_sources

    truth = Estimates(scenes.K, scenes.azimuth, scenes.elevation, scenes.range_m,
                      torch.ones_like(scenes.azimuth))
    nf = replace(NFMLEConfig(), azimuth_deg=cfg.scene.azimuth_deg,
                 elevation_deg=cfg.scene.elevation_deg, range_m=cfg.scene.range_m)
    est = nfmle_refine(scenes.y, scenes.H, scenes.codes, truth, cfg.system, nf)
    return summarize(match_sources(est, scenes.azimuth, scenes.elevation, scenes.range_m,
                                   scenes.K))


def accuracy(model, cfg: TrainConfig, n: int, seed: int, snrs=SNRS) -> list[dict]:
    """Part (a): one row per SNR."""
    rows, plain = [], without_refinement(model)
    for i, snr in enumerate(snrs):
        scenes = simulate_range(0, n, cfg.system, cfg.scene, seed, "test", stream=20 + i,
                                snr_db=snr)
        t0 = time.perf_counter()
        res = _evaluate(model, scenes, cfg)
        dt = time.perf_counter() - t0
        learned = _evaluate(plain, scenes, cfg).summary
        R_samp = sample_covariance(scenes.y, scenes.H, scenes.codes, cfg.blend.bp_alpha)
        R_true = scene_true_covariance(scenes, cfg.system)
        s = summarize(res.matching, crb_for_scenes(scenes, cfg.system, "deterministic"))
        rows.append({
            "snr_db": snr, "scenes": n, "angle_median_deg": s.angle_median_deg,
            "azimuth_median_deg": s.azimuth_median_deg,
            "elevation_median_deg": s.elevation_median_deg, "range_median_m": s.range_median_m,
            "K_accuracy": s.K_accuracy, "f1": s.f1,
            "crb_angle_median_deg": s.crb_angle_median_deg,
            "crb_range_median_m": s.crb_range_median_m,
            "angle_median_deg_learned_only": learned.angle_median_deg,
            "f1_learned_only": learned.f1,
            "nmse_blend": float(res.nmse.mean()), "nmse_pred": float(res.nmse_pred.mean()),
            "nmse_samp": float(covariance_nmse(R_samp, R_true).mean()),
            "overlap_blend": float(res.overlap.mean()),
            "overlap_samp": float(subspace_overlap(R_samp, R_true, scenes.K).mean()),
            "scenes_per_s": n / dt})
        genie = ml_at_truth(scenes, cfg)
        rows[-1].update({"angle_median_deg_ml_at_truth": genie.angle_median_deg,
                         "f1_ml_at_truth": genie.f1})
    return rows


def step_time(cfg: TrainConfig, threads: int, steps: int) -> dict:
    """Part (b): median seconds per optimizer step (after one warm-up step)."""
    torch.set_num_threads(threads)
    tr = Trainer(cfg.model_copy(update={"threads": threads, "progress": False}))
    times = []
    for k in range(steps + 1):
        t0 = time.perf_counter()
        for _ in range(cfg.optim.accumulation):
            tr.micro_step(tr.data.batch(k, 0), 0.3, tr.loss_config())
        tr.optimizer_step()
        if k:
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"threads": threads, "batch_size": cfg.optim.batch_size,
            "seconds_per_step": sec, "steps_per_epoch": cfg.schedule.steps_per_epoch,
            "train_seconds_per_epoch": sec * cfg.schedule.steps_per_epoch}


def _fmt(v: float) -> str:
    return f"{v:8.3f}" if math.isfinite(v) else "     nan"


def print_table(rows: list[dict]) -> None:
    cols = ("snr_db", "angle_median_deg", "crb_angle_median_deg", "range_median_m",
            "K_accuracy", "f1",
            "angle_median_deg_learned_only", "nmse_blend", "nmse_pred", "nmse_samp",
            "overlap_blend", "overlap_samp")
    print(" ".join(f"{c[:13]:>13}" for c in cols))  # 13-char headers
    for r in rows:
        print(" ".join(f"{_fmt(r[c]):>13}" for c in cols))
    print("ML at the truth (genie reference: NF-MLE started at the true positions, true K):")
    for r in rows:
        print(f"  {r['snr_db']:5.0f} dB  angle {r['angle_median_deg_ml_at_truth']:.3f} deg  "
              f"F1 {r['f1_ml_at_truth']:.3f}")


def targets(rows: list[dict]) -> dict:
    angle = all(r["angle_median_deg"] < 1.0 for r in rows if r["snr_db"] >= 5)
    kacc = all(r["K_accuracy"] >= 0.9 for r in rows if r["snr_db"] >= 10)
    return {"angle_below_1deg_at_5dB_and_above": angle, "K_accuracy_0.9_at_10dB_and_above": kacc}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=Path("runs/train_default/best.pt"))
    p.add_argument("--weights", choices=("ema", "swa", "raw"), default="ema")
    p.add_argument("--n", type=int, default=200, help="test scenes per SNR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="threads of the accuracy part")
    p.add_argument("--time-threads", type=int, nargs="+", default=[1, 2],
                   help="thread counts of the speed part")
    p.add_argument("--time-steps", type=int, default=5, help="timed optimizer steps (0 = skip)")
    p.add_argument("--out", type=Path, default=Path("reports/bench/bench_training.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, _ = load_model(a.checkpoint, a.weights)
    state = load_checkpoint(a.checkpoint)
    cfg = TrainConfig.from_json(state["config"])
    history = state.get("history", [])
    print(f"checkpoint {a.checkpoint} ({a.weights}): epoch {state['epoch']}, "
          f"{model.n_parameters()} parameters")
    rows = accuracy(model, cfg, a.n, a.seed)
    print_table(rows)
    result = {"checkpoint": str(a.checkpoint), "weights": a.weights, "epoch": state["epoch"],
              "parameters": model.n_parameters(), "rows": rows, "targets": targets(rows),
              "logged_seconds_per_epoch": (statistics.median([h["seconds"] for h in history])
                                           if history else None)}
    print("targets:", result["targets"])
    if a.time_steps:
        result["speed"] = [step_time(cfg, t, a.time_steps) for t in a.time_threads]
        for row in result["speed"]:
            print("speed:", row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
