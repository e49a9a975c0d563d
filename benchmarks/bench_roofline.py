"""How far each stage is from this machine's limit: FLOP/scene, ms/scene, achieved GFLOP/s
beside the measured roof of one core.

    python benchmarks/bench_roofline.py [--checkpoint PATH] [--chunk 64] [--repeats 5]
                                        [--out reports/bench/roofline.json]

* **Roof** (one thread, as each worker of the Localizer runs): a large float32 matmul, a
  large complex64 matmul (a complex multiply-add = 8 flops) and the memory bandwidth of a
  large copy (bytes read + written per second).
* **Work**: the FLOPs of every matrix product, batched product and convolution of a stage,
  counted by dispatching through torch (``torch.utils.flop_counter``'s formulas, x4 for
  complex operands). Elementwise ops, solves and factorisations are not counted: the
  achieved GFLOP/s is a lower bound of the work done, and a stage far below the roof with
  few counted FLOPs is bound by memory traffic or per-op overhead, not arithmetic.
* **Time**: each stage of ``LearnedPipeline.localize`` on one pass of ``--chunk`` test-split
  scenes (the Localizer's pass size), one thread, median of ``--repeats`` after a warm-up;
  the classical localizer on the same scenes as one stage.
* **Fixed cost**: the torch operations one pass dispatches and the time of a pass of one
  scene (what a pass costs whatever its size: Python and dispatch overhead).
* **Page faults**: minor page faults of the process during each stage (median over the
  timed runs): each is a page of memory the kernel hands out afresh, i.e. temporaries the
  allocator took from and gave back to the system instead of reusing.
* **Operator routes**: :func:`risloc.core.apply_operator` on per-scene rows both ways
  (c_l (.) v_p times H^T, or the stacked operators times V^T) for P = 5, 15, 32 rows, the
  measurement behind its choice of route.
The 2-core throughput of the Localizer is ``bench_pipeline.py``'s.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
from bench_pipeline import test_batch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from risloc.core.operator import operators
from risloc.estimators.classical import classical_localize
from risloc.io.atomic import write_text_atomic
from risloc.parallel import MAX_CHUNK
from risloc.pipeline.learned import STAGES, load_learned_pipeline


class CountFlops(TorchDispatchMode):
    """Adds up the FLOPs of the matrix products and convolutions dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            complex_ = any(isinstance(a, torch.Tensor) and a.is_complex() for a in args)
            self.flops += formula(*args, **kwargs, out_val=out) * (4 if complex_ else 1)
        return out


def _median_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def roof(repeats: int) -> dict:
    """One-thread roof: float32 and complex64 matmul GFLOP/s, copy bandwidth GB/s."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    sgemm = 2 * 2048**3 / _median_time(lambda: a @ b, repeats) / 1e9
    ca, cb = (torch.randn(1024, 1024, dtype=torch.complex64) for _ in range(2))
    cgemm = 8 * 1024**3 / _median_time(lambda: ca @ cb, repeats) / 1e9
    src = torch.randn(64 * 2**20)  # 256 MB
    dst = torch.empty_like(src)
    bw = 2 * src.numel() * 4 / _median_time(lambda: dst.copy_(src), repeats) / 1e9
    return {"sgemm_GFLOPs": sgemm, "cgemm_GFLOPs": cgemm, "copy_GBs": bw}


def operator_routes(H, codes, repeats: int) -> dict[int, dict[str, float]]:
    """Milliseconds of both routes of apply_operator on per-scene rows, P = 5, 15, 32."""
    B, L, N = codes.shape
    out = {}
    for P in (5, 15, 32):
        V = torch.randn(B, P, N, dtype=H.dtype)
        rows = lambda V=V: (codes.unsqueeze(2) * V.unsqueeze(1)).view(B, -1, N) @ H.mT  # noqa: E731
        stacked = lambda V=V: operators(H, codes).flatten(1, 2) @ V.mT  # noqa: E731
        ref = stacked().view(B, L, -1, P)  # the operators are formed inside each timed call
        assert torch.allclose(rows().view(B, L, P, -1).mT, ref,
                              atol=1e-4 * float(ref.abs().max()))
        out[P] = {"rows_ms": 1e3 * _median_time(rows, repeats),
                  "operators_ms": 1e3 * _median_time(stacked, repeats)}
    return out


@torch.no_grad()
def stage_costs(pipe, y, H, codes, repeats: int) -> dict[str, dict]:
    """FLOPs and median seconds of each stage on one pass of scenes."""
    flops: dict[str, int] = {}
    ops: dict[str, int] = {}
    with CountFlops() as counter:
        last = [0, 0]

        def count(name: str) -> None:
            flops[name], ops[name] = counter.flops - last[0], counter.ops - last[1]
            last[:] = [counter.flops, counter.ops]

        pipe.localize(y, H, codes, on_stage=count)
    times: dict[str, list[float]] = {k: [] for k in STAGES}
    faults: dict[str, list[int]] = {k: [] for k in STAGES}

    def stamp() -> tuple[float, int]:
        return time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    for i in range(repeats + 1):
        stamps = [stamp()]
        pipe.localize(y, H, codes, on_stage=lambda name, s=stamps: s.append(stamp()))
        if i:  # the first run is a warm-up
            for name, (t0, f0), (t1, f1) in zip(STAGES, stamps, stamps[1:]):
                times[name].append(t1 - t0)
                faults[name].append(f1 - f0)
    return {k: {"flops": flops[k], "ops": ops[k], "seconds": statistics.median(times[k]),
                "page_faults": statistics.median(faults[k])} for k in STAGES}


def classical_cost(system, y, H, codes, repeats: int) -> dict:
    with CountFlops() as counter:
        classical_localize(y, H, codes, system)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    sec = _median_time(lambda: classical_localize(y, H, codes, system), repeats)
    flt = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / (repeats + 1)
    return {"flops": counter.flops, "ops": counter.ops, "seconds": sec, "page_faults": flt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--chunk", type=int, default=MAX_CHUNK)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/roofline.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    r = roof(args.repeats)
    print(f"roof, one core: float32 matmul {r['sgemm_GFLOPs']:.1f} GFLOP/s, complex64 matmul "
          f"{r['cgemm_GFLOPs']:.1f} GFLOP/s, copy {r['copy_GBs']:.1f} GB/s", flush=True)
    pipe = load_learned_pipeline(args.checkpoint)
    y, H, codes = test_batch(args.chunk)
    rows = stage_costs(pipe, y, H, codes, args.repeats)
    rows["learned (all)"] = {k: sum(v[k] for v in rows.values())
                             for k in ("flops", "ops", "seconds", "page_faults")}
    rows["classical (all)"] = classical_cost(pipe.system, y, H, codes, args.repeats)
    n = args.chunk
    print(f"\none thread, passes of {n} test-split scenes (median of {args.repeats}); "
          "counted FLOPs: matrix products and convolutions (complex x4)")
    print(f"{'stage':<16} {'MFLOP/scene':>12} {'ms/scene':>9} {'GFLOP/s':>8} "
          f"{'% of cgemm roof':>16} {'torch ops/pass':>15} {'page faults/pass':>17}")
    for name, v in rows.items():
        gf = v["flops"] / v["seconds"] / 1e9 if v["seconds"] > 0 else 0.0
        v.update(mflop_per_scene=v["flops"] / n / 1e6, ms_per_scene=1e3 * v["seconds"] / n,
                 gflops=gf, pct_roof=100 * gf / r["cgemm_GFLOPs"])
        print(f"{name:<16} {v['mflop_per_scene']:>12.1f} {v['ms_per_scene']:>9.2f} "
              f"{gf:>8.1f} {v['pct_roof']:>15.0f}% {v['ops']:>15,} {v['page_faults']:>17,.0f}")
    one = _median_time(lambda: pipe.localize(y[:1], H[:1], codes[:1]), args.repeats)
    print(f"\nfixed cost: a pass of one scene takes {1e3 * one:.1f} ms "
          f"({100 * one / rows['learned (all)']['seconds']:.0f} % of a pass of {n})")
    routes = operator_routes(H, codes, args.repeats)
    print(f"apply_operator on per-scene rows, {n} scenes (ms): "
          + "; ".join(f"P = {P}: rows {v['rows_ms']:.2f}, operators {v['operators_ms']:.2f}"
                      for P, v in routes.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"roof": r, "chunk": n, "stages": rows,
                                            "one_scene_pass_s": one,
                                            "operator_routes_ms": routes}, indent=2) + "\n")


if __name__ == "__main__":
    main()
