"""Calls replayed from CUDA graphs: for a GPU where the host's kernel launches, not the
arithmetic, bound a call of many small operations (docs/results.md "Speed").

A call that never synchronises with the host (no ``.item()``, no sizes read from the
device) can be captured once as a :class:`torch.cuda.CUDAGraph` and replayed: the driver
then launches all its kernels at once. A graph is fixed to its input tensors' shapes,
dtypes and device, and reads them from buffers of its own, so :class:`GraphCache` keeps
one capture per layout (and caller's key), copies each call's inputs into its buffers,
replays, and copies the outputs out (the next replay overwrites the graph's). Off CUDA it
simply calls.

Before a capture, the second of its warm-up calls runs with synchronisations raising
(``torch.cuda.set_sync_debug_mode``); a call that synchronises is then called directly
for that layout, with one warning, and is never captured: in torch <= 2.11 a capture that
fails leaves the memory allocator believing a capture is still under way (pytorch#180395).
A capture that fails for another reason turns graphs off for the rest of the process, the
call running eagerly (training's refinement), except where the cache was made with
``raise_oom`` and the capture itself ran out of memory, cleanly: that error is raised (the
localizer's graphs of a fixed batch, which only a smaller batch can fix). A capture whose
end failed, even for want of memory, turns graphs off (the allocator's state above).
Graphs read cached device tensors (the grids' steering, the elements' positions) by
address: the caches that feed them never evict (``functools.cache``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

_DISABLED = False  # set when a capture failed: no more captures in this process

Inputs = tuple[torch.Tensor | None, ...]


@dataclass
class _Capture:
    graph: torch.cuda.CUDAGraph
    inputs: Inputs  # the buffers the graph reads
    output: torch.Tensor | tuple[torch.Tensor, ...]  # the buffers it writes


class GraphCache:
    """``cache(fn, args, key)`` = ``fn(*args)``, replayed from a CUDA graph on CUDA.

    fn : returns a tensor or a tuple of tensors, reads no tensor that varies between calls
        other than ``args`` (tensors or None), and never synchronises with the host
    key : hashable, what else selects the graph (e.g. fn's settings): calls with equal
        keys and equal layouts of ``args`` must compute the same function of ``args``

    The outputs of a replay are the caller's own (copies). A copy of the cache (the models
    that training copies for EMA and SWA) is the cache itself: the captured calls are
    functions of their inputs only.
    """

    def __init__(self, name: str, raise_oom: bool = False):
        self.name, self.raise_oom = name, raise_oom
        self._captures: dict[Hashable, _Capture | None] = {}  # None: capture failed

    def __deepcopy__(self, memo: dict) -> GraphCache:
        return self

    def __len__(self) -> int:
        """The number of captured graphs."""
        return sum(c is not None for c in self._captures.values())

    def __call__(self, fn: Callable[..., Any], args: Inputs, key: Hashable = None):
        device = next(t.device for t in args if t is not None)
        if device.type != "cuda" or _DISABLED:
            return fn(*args)
        layout = (key, device, torch.is_grad_enabled(), torch.is_autocast_enabled("cuda"),
                  *(None if t is None else (tuple(t.shape), t.dtype) for t in args))
        if layout not in self._captures:
            self._captures[layout] = self._capture(fn, args, device)
        cap = self._captures[layout]
        if cap is None or _DISABLED:
            return fn(*args)
        with torch.cuda.device(device):
            for buf, t in zip(cap.inputs, args, strict=True):
                if buf is not None:
                    buf.copy_(t)
            cap.graph.replay()
            if isinstance(cap.output, torch.Tensor):
                return cap.output.clone()
            return tuple(t.clone() for t in cap.output)

    def _capture(self, fn: Callable[..., Any], args: Inputs, device: torch.device
                 ) -> _Capture | None:
        global _DISABLED
        shapes = [None if t is None else tuple(t.shape) for t in args]
        with torch.cuda.device(device):  # the current device: that of the streams below
            inputs = tuple(None if t is None else t.clone() for t in args)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                fn(*inputs)  # fills the caches the call reads (from host data)
                waits = _synchronises(fn, inputs)
            current = torch.cuda.current_stream(device)
            current.wait_stream(side)  # before the side stream's buffers are freed
            if waits:
                log.warning("%s: the call on inputs of shapes %s waits for the host; called "
                            "directly, not replayed from a CUDA graph", self.name, shapes)
                return None
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=torch.cuda.Stream(device),
                                      capture_error_mode="thread_local"):
                    output = fn(*inputs)
            except RuntimeError as err:  # after the check above: not expected
                torch.cuda.set_stream(current)  # a failed capture_end leaves its stream set
                torch.cuda.synchronize(device)
                if self.raise_oom and isinstance(err, torch.cuda.OutOfMemoryError):
                    raise  # too large a call (a clean failure: not a broken capture's end)
                _DISABLED = True
                cause = err.__context__ or err
                log.warning("%s: the CUDA graph capture on inputs of shapes %s failed (%s); "
                            "CUDA graphs are off for the rest of this process",
                            self.name, shapes, str(cause).splitlines()[0] if str(cause)
                            else type(cause).__name__)
                return None
        if not (isinstance(output, torch.Tensor) or (
                isinstance(output, tuple) and all(isinstance(t, torch.Tensor)
                                                  for t in output))):
            raise TypeError(f"{self.name}: a graphed call returns a tensor or a tuple of "
                            f"tensors, not {type(output).__name__}")
        return _Capture(graph, inputs, output)


def _synchronises(fn: Callable[..., Any], inputs: Inputs) -> bool:
    """Whether fn(*inputs) runs an operation that waits for the device (the sync debug
    mode raises on it: torch's own check, which finds what a capture would fail on)."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn(*inputs)
    except RuntimeError as err:
        if "synchroniz" not in str(err):
            raise
        return True
    finally:
        torch.cuda.set_sync_debug_mode(before)
    return False
