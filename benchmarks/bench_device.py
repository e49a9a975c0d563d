"""Training-step and inference timings on one device (made for a GPU; runs on the CPU too).

(a) Seconds per optimizer step of a recipe at several batch sizes (median of timed steps
    after three warm-up steps, which also let an AMP scaler settle its scale; a step
    includes simulating its batch on the CPU, reported alone as simulate_batch_s, and ends
    in a host sync; then the same on batches simulated before, and as an epoch of training
    runs them, simulating ahead in a thread), the time of one (cold) validation pass at the
    first batch size, the operator calls of one step and a profiler table of the heaviest
    operators.
(b) The learned pipeline's stages (forward, propose, fit, decide order, polish) on the
    shipped model at several batch sizes, each stage closed by a device sync; medians.
(c) ``--classical-batches``: the classical localizer and the learned pipeline end to end
    (no stage syncs) on the same scenes, interleaved, medians, with their K agreement.
(d) On CUDA, at the first inference batch: the host synchronisations of one call
    (``torch.cuda.set_sync_debug_mode``: each synchronising operation warns; counted by
    the line of risloc that caused it), and at the last inference batch a profiler table
    of the heaviest CUDA kernels with the GPU's busy time over an unprofiled call's wall
    time (a low share: launch- or host-bound).
(e) ``--graph-batches`` on CUDA: the learned call captured as a CUDA graph and replayed
    (``risloc.pipeline.graphs.GraphedLocalize``: the host's launches gone), against the
    eager call, interleaved.
(f) ``--localizer-batches``: the user's path, ``Localizer.localize`` on 8 host-held
    batches of each size, with ``graph_batch`` and without (on the CPU both are eager).
(g) ``--step-ab``: training steps on ready batches of AMP and FP32, with and without the
    refinement's CUDA graphs, interleaved step by step in one process; medians.

    python benchmarks/bench_device.py --device cuda [--batch-sizes 32 128 256] \
        [--set model.width=64 ...] [--inference-batches 256 2048] \
        [--classical-batches 256] [--no-diagnostics] [--lm-route auto|masked|shrinking]
        [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

# sibling script: python3 benchmarks/...
from bench_pipeline import stage_split, test_batch, test_scenes

from risloc.estimators import nfmle
from risloc.estimators.classical import classical_localize
from risloc.io.atomic import write_text_atomic
from risloc.pipeline import Localizer
from risloc.pipeline.graphs import GraphedLocalize
from risloc.pipeline.learned import load_learned_pipeline
from risloc.training.config import load_train_config
from risloc.training.data import validation_set
from risloc.training.loop import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(cfg, steps: int, profile: bool, validate: bool) -> dict:
    """Part (a) for one recipe: median seconds per optimizer step (and of one validation
    pass when ``validate``): with its batch simulated in line (seconds_per_step), on batches
    simulated before (step_on_ready_batch_s), and as training runs them
    (epoch_s_per_step: ``Trainer.train_epoch`` of ``steps`` steps after a warm-up epoch,
    the next batch simulated in a background thread while the device works)."""
    cfg = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(
        update={"steps_per_epoch": steps})})
    tr = Trainer(cfg)
    times, warmup = [], 3
    for k in range(steps + warmup):
        t0 = time.perf_counter()
        tr.micro_step(tr.data.batch(k, 0), cfg.blend.beta, tr.loss_config())
        tr.optimizer_step()  # ends in float(grad norm): a host sync
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    data_s = [tr.data.batch(k, 0) for k in range(3)]
    _sync(tr.device)  # simulate_on=device: the physics queued on the GPU counts too
    sim = (time.perf_counter() - t0) / 3
    ready = []
    for k in range(steps):
        t0 = time.perf_counter()
        tr.micro_step(data_s[k % 3], cfg.blend.beta, tr.loss_config())
        tr.optimizer_step()
        ready.append(time.perf_counter() - t0)
    tr.train_epoch(None)  # warm-up: the prefetching thread's first batch is not ahead
    _sync(tr.device)
    t0 = time.perf_counter()
    tr.train_epoch(None)
    _sync(tr.device)
    res = {"batch_size": cfg.optim.batch_size, "parameters": tr.model.n_parameters(),
           "seconds_per_step": statistics.median(times), "simulate_batch_s": sim,
           "step_on_ready_batch_s": statistics.median(ready),
           "epoch_s_per_step": (time.perf_counter() - t0) / steps}
    if validate:
        val = validation_set(cfg)
        t0 = time.perf_counter()
        tr.validate(tr.ema.module, val)
        _sync(tr.device)
        res.update(validation_s=time.perf_counter() - t0, n_val=len(val))
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                         if tr.device.type == "cuda" else [])
        with prof(activities=acts) as p:
            tr.micro_step(data_s[0], cfg.blend.beta, tr.loss_config())
            tr.optimizer_step()
        key = "self_cuda_time_total" if tr.device.type == "cuda" else "self_cpu_time_total"
        res["operator_calls"] = sum(e.count for e in p.key_averages())
        res["profile"] = p.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=40)
    return res


STEP_VARIANTS = {"amp": ["cuda_graphs=false"], "fp32": ["optim.amp=false", "cuda_graphs=false"],
                 "amp_graphs": ["cuda_graphs=true"],
                 "fp32_graphs": ["optim.amp=false", "cuda_graphs=true"]}


def step_ab(config: Path, overrides: list[str], device: torch.device, batch: int,
            steps: int) -> dict:
    """Part (g): a training step of each recipe variant of :data:`STEP_VARIANTS` on the same
    ready batches, the variants interleaved step by step in one process (so a change of
    the machine's state hits all of them alike); medians after three warm-up steps each
    (the graphs' captures among them). On the CPU, AMP is off in every variant."""
    trainers = {}
    for name, extra in STEP_VARIANTS.items():
        cfg = load_train_config(config, [*overrides, *extra, f"device={device.type}",
                                         f"optim.batch_size={batch}", "progress=false"])
        trainers[name] = Trainer(cfg)
    first = next(iter(trainers.values()))
    ready = [first.data.batch(k, 0) for k in range(3)]
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for k in range(steps + 3):
        for name, tr in trainers.items():
            t0 = time.perf_counter()
            tr.micro_step(ready[k % 3], tr.cfg.blend.beta, tr.loss_config())
            tr.optimizer_step()  # ends in float(grad norm): a host sync
            if k >= 3:
                times[name].append(time.perf_counter() - t0)
    return {"batch_size": batch, "steps": steps,
            **{f"{k}_step_s": statistics.median(v) for k, v in times.items()}}


@torch.no_grad()
def inference_times(device: torch.device, batch: int, repeats: int) -> dict:
    """Part (b): the learned pipeline's stages on ``batch`` test-split scenes."""
    pipe = load_learned_pipeline().to(device)
    y, H, codes = test_batch(batch, str(device))
    med = stage_split(pipe, y, H, codes, repeats, sync=lambda: _sync(device))
    return {"batch": batch, **{f"{k}_s": v for k, v in med.items()},
            "scenes_per_s": batch / med["total"]}


@torch.no_grad()
def versus_classical(device: torch.device, batch: int, repeats: int) -> dict:
    """Part (c): both localizers end to end on the same ``batch`` scenes, interleaved."""
    pipe = load_learned_pipeline().to(device)
    y, H, codes = test_batch(batch, str(device))
    runs: dict[str, list[float]] = {"learned": [], "classical": []}
    out = {}
    for _ in range(repeats + 1):
        for name in runs:
            _sync(device)
            t0 = time.perf_counter()
            out[name] = (pipe.localize(y, H, codes) if name == "learned"
                         else classical_localize(y, H, codes, pipe.system))
            _sync(device)
            runs[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[1:]) for k, v in runs.items()}
    return {"batch": batch, **{f"{k}_scenes_per_s": batch / v for k, v in med.items()},
            "learned_over_classical": med["classical"] / med["learned"],
            "K_agreement": float((out["learned"].K == out["classical"].K).float().mean())}


@torch.no_grad()
def host_syncs(device: torch.device, batch: int) -> dict:
    """Part (d): the synchronising operations of one learned call (after a warm-up call),
    by the risloc source line that issued them."""
    pipe = load_learned_pipeline().to(device)
    y, H, codes = test_batch(batch, str(device))
    pipe.localize(y, H, codes)
    where: Counter[str] = Counter()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.localize(y, H, codes)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        where[f"{Path(w.filename).name}:{w.lineno}"] += 1
    return {"batch": batch, "syncs": sum(where.values()), "by_line": dict(where.most_common())}


@torch.no_grad()
def kernel_profile(device: torch.device, batch: int, rows: int = 20) -> dict:
    """Part (d): one profiled learned call: the heaviest kernels, the GPU's time (kernels
    and copies, summed as the profiler's table does) and its share of the wall time of an
    unprofiled call (the profiler slows the host several times over)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    pipe = load_learned_pipeline().to(device)
    y, H, codes = test_batch(batch, str(device))
    walls = []
    for _ in range(3):  # a warm-up, then two unprofiled calls
        _sync(device)
        t0 = time.perf_counter()
        pipe.localize(y, H, codes)
        _sync(device)
        walls.append(time.perf_counter() - t0)
    wall = statistics.median(walls[1:])
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        pipe.localize(y, H, codes)
        _sync(device)
    ka = p.key_averages()
    gpu = [e for e in ka if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    busy = sum(e.self_device_time_total for e in gpu) / 1e6
    return {"batch": batch, "wall_s": wall, "gpu_busy_s": busy, "busy_share": busy / wall,
            "kernel_launches": sum(e.count for e in gpu),
            "table": ka.table(sort_by="self_cuda_time_total", row_limit=rows,
                              max_name_column_width=50)}


@torch.no_grad()
def graph_replay(device: torch.device, batch: int, repeats: int) -> dict:
    """Part (e): :class:`GraphedLocalize` (the learned call captured as a CUDA graph once,
    then replayed: inputs copied in, estimates copied out) against the eager call on the
    same ``batch`` test scenes, interleaved; medians of ``repeats`` after one round, the
    one-off capture's time, and the estimates' agreement."""
    pipe = load_learned_pipeline().to(device)
    y, H, codes = test_batch(batch, str(device))
    graphed = GraphedLocalize(pipe, batch)
    _sync(device)
    t0 = time.perf_counter()
    captured = graphed(y, H, codes)
    _sync(device)
    first_call = time.perf_counter() - t0
    times: dict[str, list[float]] = {"eager": [], "graph": []}
    for _ in range(repeats + 1):
        for name, call in (("eager", pipe.localize), ("graph", graphed)):
            _sync(device)
            t0 = time.perf_counter()
            out = call(y, H, codes)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            if name == "eager":
                eager = out
            else:
                captured = out
    both = (eager.K == captured.K).unsqueeze(-1) & eager.mask
    moved = max(float((getattr(eager, f) - getattr(captured, f)).abs()[both].max())
                if both.any() else 0.0 for f in ("azimuth", "elevation"))
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    return {"batch": batch, "eager_scenes_per_s": batch / med["eager"],
            "graph_scenes_per_s": batch / med["graph"], "speedup": med["eager"] / med["graph"],
            "eager_s": times["eager"][1:], "graph_s": times["graph"][1:],
            "capture_call_s": first_call,
            "captured": len(graphed.graphs) == 1,
            "K_identical": float((eager.K == captured.K).float().mean()),
            "largest_angle_change_deg": moved * 57.29577951308232}


@torch.no_grad()
def localizer_stream(device: torch.device, batch: int, passes: int, repeats: int) -> dict:
    """Part (f): the user's path, :class:`risloc.pipeline.Localizer` on ``passes`` batches
    of ``batch`` test scenes held on the host (each copied to the device, checked, scaled,
    localized, its estimates copied back, as ``risloc localize`` does), with
    ``graph_batch=batch`` (CUDA graphs) and without, interleaved; medians."""
    sc = test_scenes(batch * passes, "cpu")
    locs = {"eager": Localizer.from_checkpoint(), "graph": Localizer.from_checkpoint(
        graph_batch=batch)}
    for loc in locs.values():
        loc.pipeline.to(device)
    times: dict[str, list[float]] = {k: [] for k in locs}
    K: dict[str, torch.Tensor] = {}
    for _ in range(repeats + 1):
        for name, loc in locs.items():
            _sync(device)
            t0 = time.perf_counter()
            K[name] = torch.cat([loc.localize(*(t[i:i + batch].to(device) for t in (
                sc.y, sc.H, sc.codes))).estimates.K for i in range(0, len(sc), batch)])
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    return {"batch": batch, "passes": passes,
            **{f"{k}_scenes_per_s": batch * passes / v for k, v in med.items()},
            "speedup": med["eager"] / med["graph"], "first_round_s": {
                k: v[0] for k, v in times.items()},
            "K_identical": float((K["eager"] == K["graph"]).float().mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--config", type=Path, default=Path("configs/train_default.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="recipe override section.field=value (repeatable)")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 128, 256])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--inference-batches", type=int, nargs="*", default=[256, 2048])
    p.add_argument("--classical-batches", type=int, nargs="*", default=[])
    p.add_argument("--no-diagnostics", action="store_true",
                   help="leave out part (d): the host syncs and the kernel profile")
    p.add_argument("--lm-route", choices=("auto", "masked", "shrinking"), default="auto",
                   help="the LM loop's route (NFMLEConfig.masked; auto: masked off the CPU)")
    p.add_argument("--graph-batches", type=int, nargs="*", default=[],
                   help="part (e) on CUDA: the learned call replayed as a CUDA graph")
    p.add_argument("--localizer-batches", type=int, nargs="*", default=[],
                   help="part (f): the Localizer on host-held batches, with and without "
                        "CUDA graphs (8 batches of each size)")
    p.add_argument("--step-ab", type=int, nargs="*", default=[],
                   help="part (g): at these batch sizes, training steps of AMP / FP32, with "
                        "and without cuda_graphs, interleaved in one process (--steps each)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("reports/bench/bench_device.json"))
    a = p.parse_args()
    device = torch.device(a.device)
    if a.lm_route != "auto":
        nfmle.masked_route = lambda cfg, dev: a.lm_route == "masked"
    info = {"device": str(device), "torch": torch.__version__, "lm_route": a.lm_route,
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "overrides": a.overrides, "training": [], "inference": []}
    print(info, flush=True)
    for i, bs in enumerate(a.batch_sizes):
        cfg = load_train_config(a.config, [*a.overrides, f"device={device.type}",
                                           f"optim.batch_size={bs}", "progress=false"])
        row = step_times(cfg, a.steps, profile=not a.no_profile and i == len(a.batch_sizes) - 1,
                         validate=i == 0)
        table = row.pop("profile", None)
        info["training"].append(row)
        print("train step:", row, flush=True)
        if table:
            print(table, flush=True)
    for bs in a.step_ab:
        row = step_ab(a.config, a.overrides, device, bs, a.steps)
        info.setdefault("step_ab", []).append(row)
        print("step a/b:", row, flush=True)
    for bs in a.inference_batches:
        row = inference_times(device, bs, a.repeats)
        info["inference"].append(row)
        print("inference:", row, flush=True)
    for bs in a.classical_batches:
        row = versus_classical(device, bs, a.repeats)
        info.setdefault("versus_classical", []).append(row)
        print("versus classical:", row, flush=True)
    if device.type == "cuda" and a.inference_batches and not a.no_diagnostics:
        for part, fn in (("host_syncs", lambda: host_syncs(device, a.inference_batches[0])),
                         ("kernels", lambda: kernel_profile(device, a.inference_batches[-1]))):
            try:  # diagnostics: a failure here must not cost the timings above
                info[part] = fn()
            except Exception:  # noqa: BLE001
                info[part] = {"error": traceback.format_exc()}
            table = info[part].pop("table", None)
            print(f"{part}:", info[part], flush=True)
            if table:
                print(table, flush=True)
    for bs in a.graph_batches if device.type == "cuda" else []:
        try:  # a call that cannot be captured reports why
            row = graph_replay(device, bs, a.repeats)
        except Exception:  # noqa: BLE001
            row = {"batch": bs, "error": traceback.format_exc(limit=6)}
        info.setdefault("cuda_graph", []).append(row)
        print("cuda graph:", row, flush=True)
    for bs in a.localizer_batches:
        try:
            row = localizer_stream(device, bs, 8, a.repeats)
        except Exception:  # noqa: BLE001
            row = {"batch": bs, "error": traceback.format_exc(limit=6)}
        info.setdefault("localizer", []).append(row)
        print("localizer:", row, flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(a.out, json.dumps(info, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
