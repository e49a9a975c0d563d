"""Operations that would make the host wait for a GPU, counted on any device.

On CUDA, ``torch.cuda.set_sync_debug_mode`` reports every host synchronisation; that needs a
GPU. :class:`SyncCounter` counts the operations that synchronise there as PyTorch dispatches
them, which it does on the CPU as well (a ``TorchDispatchMode``), by the line of risloc
that issued each one, so a CPU-only machine can find them and a test can forbid them:

* ``aten._local_scalar_dense``: a tensor read as a Python number (``bool(t)``, ``int(t)``,
  ``t.item()``);
* ``aten.nonzero``, ``aten.masked_select``, ``aten.unique*``: outputs whose size depends on
  the data; indexing or assigning with a boolean mask (``aten.index`` / ``index_put_`` with a
  bool index) runs nonzero first;
* ``aten._linalg_check_errors``: the singularity check of ``torch.linalg.solve``, ``inv``,
  ``cholesky`` (reads the LAPACK info on the host);
* ``aten.repeat_interleave`` with a tensor of repeats and no ``output_size``;
* ``Tensor.tolist`` (wrapped while counting: it does not dispatch on the CPU);
* apart, ``aten.lift_fresh``: a tensor built from Python data, on a GPU a copy from pageable
  memory that the debug mode counts too.

Operations inside a CPU kernel (its own reads of a LAPACK info, say) are below the dispatch
mode and not counted: they do not exist on a GPU. Operations in a branch that only the CPU
takes are tagged "(CPU route)" where their function is in ``CPU_ROUTE``. Checked against the
H200's count of one learned call at 90a8322: 1,144 operations + 54 tensors from host data
here, 1,184 synchronisations there, line by line within the LM loop's data-dependent spread
(``benchmarks/bench_syncs.py``, docs/results.md "Speed").
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ALWAYS = frozenset({"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select",
                    "aten._linalg_check_errors", "aten._unique2", "aten.unique_dim",
                    "aten.unique_consecutive"})
BOOL_INDEXED = frozenset({"aten.index", "aten.index_put_", "aten._index_put_impl_",
                          "aten.index_put"})
# functions whose synchronising branch only the CPU takes
CPU_ROUTE = frozenset({"orthonormal_basis", "_check_host_counts"})


def _origin() -> str:
    """file:line of the innermost risloc frame of the current stack ("?" if none), tagged
    " (CPU route)" where that frame is in a function of ``CPU_ROUTE``."""
    for frame in reversed(traceback.extract_stack()):
        if "/risloc/" in frame.filename and not frame.filename.endswith("syncs.py"):
            tag = " (CPU route)" if frame.name in CPU_ROUTE else ""
            return f"{Path(frame.filename).name}:{frame.lineno}{tag}"
    return "?"


def _waits(func, args, kwargs) -> bool:
    name = func.overloadpacket._qualified_op_name.replace("::", ".")
    if name in ALWAYS:
        return True
    if name in BOOL_INDEXED:
        return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)
                   for t in (args[1] if len(args) > 1 and args[1] is not None else ()))
    return (name == "aten.repeat_interleave" and func._overloadname == "Tensor"
            and (kwargs or {}).get("output_size") is None)


class SyncCounter(TorchDispatchMode):
    """Counts, while active, the operations that would wait for a GPU (module docstring).

    syncs : Counter of "file:line op" -> count;  from_host : Counter of "file:line" -> count
    operations : all dispatched operations that are not views (on a GPU, roughly the kernels
        the host launches: its work where a call is bound by launching, not by arithmetic);
        ``by_part`` splits them by the label in ``part`` when they ran (set it between parts)
    """

    def __init__(self) -> None:
        super().__init__()
        self.syncs: Counter[str] = Counter()
        self.from_host: Counter[str] = Counter()
        self.operations = 0
        self.part = ""
        self.by_part: Counter[str] = Counter()
        self._tolist = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.operations += 1
            self.by_part[self.part] += 1
        if _waits(func, args, kwargs):
            self.syncs[f"{_origin()} {func.overloadpacket._qualified_op_name}"] += 1
        elif func.overloadpacket._qualified_op_name == "aten::lift_fresh":
            self.from_host[_origin()] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist = tolist = torch.Tensor.tolist

        def counted(t):
            self.syncs[f"{_origin()} Tensor.tolist"] += 1
            return tolist(t)

        torch.Tensor.tolist = counted
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.syncs.values())

    def by_line(self) -> Counter[str]:
        """Counts by "file:line" (all ops of a line together)."""
        out: Counter[str] = Counter()
        for key, n in self.syncs.items():
            out[key.rsplit(" ", 1)[0]] += n
        return out
