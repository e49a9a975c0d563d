"""The operations of one learned call that would wait for a GPU, counted on any device.

    python benchmarks/bench_syncs.py [--batch 256] [--device cpu] [--method learned]
                                     [--out reports/bench/syncs.json]

On CUDA, ``bench_device.py`` counts the host synchronisations of a call with
``torch.cuda.set_sync_debug_mode`` (each one warns). That needs a GPU. This benchmark counts
the same call's synchronising operations as PyTorch dispatches them, which it does on the
CPU as well (a ``TorchDispatchMode``), by the line of risloc that issued each one:

* ``aten._local_scalar_dense``: a tensor read as a Python number (``bool(t)``, ``int(t)``,
  ``t.item()``): the host waits for the value;
* ``aten.nonzero``, ``aten.masked_select``, ``aten.unique*``: outputs whose size depends on
  the data; indexing or assigning with a boolean mask (``aten.index`` / ``aten.index_put_``
  with a bool index) runs nonzero first;
* ``aten._linalg_check_errors``: the singularity check of ``torch.linalg.solve``, ``inv``
  and ``cholesky`` (reads the LAPACK info on the host);
* ``aten.repeat_interleave`` with a tensor of repeats and no ``output_size``;
* ``aten.lift_fresh`` (reported apart): a tensor built from Python data; with a CUDA
  device that is a copy from pageable memory, which the debug mode counts as well.

``tolist()`` and ``.cpu()`` of a device tensor also wait, but do not dispatch on the CPU:
``Tensor.tolist`` is wrapped and counted. Operations in a branch that only the CPU takes
(``CPU_ROUTE``: LAPACK's QR in ``orthonormal_basis``) are listed apart. What this cannot
see: a copy to the host that only exists on a GPU. The count is a proxy (on the GPU the
debug mode is the measurement; ``--device cuda`` runs both and prints them side by side).
Checked against the H200's count of 90a8322 (``device_h200_base_diag.json``): 1,144
operations + 54 tensors from host data here against 1,184 syncs there, line by line within
the data-dependent LM loop's spread (``benchmarks/results/syncs_*``, docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import traceback
from collections import Counter
from pathlib import Path

import torch
from bench_pipeline import test_batch  # sibling script: python3 benchmarks/...
from torch.utils._python_dispatch import TorchDispatchMode

from risloc.estimators.classical import classical_localize
from risloc.io.atomic import write_text_atomic
from risloc.pipeline.learned import load_learned_pipeline

ALWAYS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select",
          "aten._linalg_check_errors", "aten._unique2", "aten.unique_dim",
          "aten.unique_consecutive"}
BOOL_INDEXED = {"aten.index", "aten.index_put_", "aten._index_put_impl_", "aten.index_put"}
CPU_ROUTE = {"orthonormal_basis"}  # functions whose synchronising branch only the CPU takes


def _origin() -> str:
    """file:line of the innermost risloc frame of the current stack ("?" if none), with
    " (CPU route)" where that frame is in a function of ``CPU_ROUTE``."""
    for frame in reversed(traceback.extract_stack()):
        if "/risloc/" in frame.filename:
            tag = " (CPU route)" if frame.name in CPU_ROUTE else ""
            return f"{Path(frame.filename).name}:{frame.lineno}{tag}"
    return "?"


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)
               for t in (indices or ()))


class SyncCounter(TorchDispatchMode):
    """Counts the synchronising operations dispatched inside it (module docstring), by
    (kind, risloc line)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: Counter[str] = Counter()
        self.from_host: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket._qualified_op_name.replace("::", ".")
        if name in ALWAYS or (name in BOOL_INDEXED and _has_bool_index(args)) or (
                name == "aten.repeat_interleave" and isinstance(args[0], torch.Tensor)
                and len(args) == 1 and (kwargs or {}).get("output_size") is None
                and args[0].dtype != torch.bool and args[0].ndim == 1
                and func._overloadname == "Tensor"):
            self.syncs[f"{_origin()}|{name}"] += 1
        elif name == "aten.lift_fresh":
            self.from_host[_origin()] += 1
        return func(*args, **(kwargs or {}))


def count(run) -> dict:
    """Synchronising operations of ``run()`` (one call, after a warm-up call)."""
    run()
    counter = SyncCounter()
    tolist = torch.Tensor.tolist

    def counted_tolist(t):
        counter.syncs[f"{_origin()}|Tensor.tolist"] += 1
        return tolist(t)

    torch.Tensor.tolist = counted_tolist
    try:
        with counter:
            run()
    finally:
        torch.Tensor.tolist = tolist
    by_line: Counter[str] = Counter()
    for k, v in counter.syncs.items():
        by_line[k.split("|")[0]] += v
    cpu_route = sum(v for k, v in by_line.items() if k.endswith("(CPU route)"))
    return {"syncs": sum(counter.syncs.values()), "cpu_route": cpu_route,
            "by_line": dict(by_line.most_common()),
            "by_line_and_op": {k.replace("|", " "): v for k, v in counter.syncs.most_common()},
            "from_host": sum(counter.from_host.values()),
            "from_host_by_line": dict(counter.from_host.most_common())}


def debug_mode_count(run) -> dict:
    """On CUDA: the syncs ``torch.cuda.set_sync_debug_mode`` reports for ``run()``."""
    import warnings

    run()
    where: Counter[str] = Counter()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        where[f"{Path(w.filename).name}:{w.lineno}"] += 1
    return {"syncs": sum(where.values()), "by_line": dict(where.most_common())}


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--method", choices=("learned", "classical"), default="learned")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/syncs.json"))
    a = ap.parse_args()
    torch.manual_seed(0)
    pipe = load_learned_pipeline().to(a.device)
    y, H, codes = test_batch(a.batch, a.device)
    run = (lambda: pipe.localize(y, H, codes)) if a.method == "learned" else \
        (lambda: classical_localize(y, H, codes, pipe.system))
    out = {"batch": a.batch, "device": a.device, "method": a.method,
           "torch": torch.__version__, "dispatched": count(run)}
    if a.device.startswith("cuda"):
        out["debug_mode"] = debug_mode_count(run)
    d = out["dispatched"]
    print(f"{a.method}, {a.batch} scenes on {a.device}: {d['syncs']} synchronising operations "
          f"dispatched ({d['cpu_route']} of them on the CPU's route only), {d['from_host']} "
          "tensors from host data")
    for line, n in list(d["by_line_and_op"].items())[:30]:
        print(f"  {n:6d}  {line}")
    if "debug_mode" in out:
        print(f"debug mode (the measurement): {out['debug_mode']['syncs']}")
        for line, n in list(out["debug_mode"]["by_line"].items())[:30]:
            print(f"  {n:6d}  {line}")
    write_text_atomic(a.out, json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
