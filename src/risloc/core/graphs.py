"""Calls replayed from CUDA graphs: for a GPU where the host's kernel launches, not the
arithmetic, bound a call of many small operations (docs/results.md "Speed").

A call that never synchronises with the host (no ``.item()``, no sizes read from the
device) can be captured once as a :class:`torch.cuda.CUDAGraph` and replayed: the driver
then launches all its kernels at once. A graph is fixed to its input tensors' shapes,
dtypes and device, and reads them from buffers of its own, so :class:`GraphCache` keeps
one capture per layout (and caller's key), copies each call's inputs into its buffers,
replays, and copies the outputs out (the next replay overwrites the graph's). Off CUDA it
simply calls. A layout whose capture fails (an operation that synchronises or that capture
forbids) is called directly from then on, with one warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

WARMUP = 2  # direct calls on a side stream before a capture, as torch.cuda.graph wants

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

    def __init__(self, name: str):
        self.name = name
        self._captures: dict[Hashable, _Capture | None] = {}  # None: capture failed

    def __deepcopy__(self, memo: dict) -> GraphCache:
        return self

    def __len__(self) -> int:
        """The number of captured graphs."""
        return sum(c is not None for c in self._captures.values())

    def __call__(self, fn: Callable[..., Any], args: Inputs, key: Hashable = None):
        device = next(t.device for t in args if t is not None)
        if device.type != "cuda":
            return fn(*args)
        layout = (key, device, *(None if t is None else (tuple(t.shape), t.dtype)
                                 for t in args))
        if layout not in self._captures:
            self._captures[layout] = self._capture(fn, args, device)
        cap = self._captures[layout]
        if cap is None:
            return fn(*args)
        for buf, t in zip(cap.inputs, args, strict=True):
            if buf is not None:
                buf.copy_(t)
        cap.graph.replay()
        if isinstance(cap.output, torch.Tensor):
            return cap.output.clone()
        return tuple(t.clone() for t in cap.output)

    def _capture(self, fn: Callable[..., Any], args: Inputs, device: torch.device
                 ) -> _Capture | None:
        inputs = tuple(None if t is None else t.clone() for t in args)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP):
                    fn(*inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: another thread's CUDA calls (none are expected) do not void it
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                output = fn(*inputs)
        except RuntimeError as err:  # an operation the capture does not allow
            log.warning("%s: no CUDA graph for inputs of shapes %s (%s); called directly",
                        self.name, [None if t is None else tuple(t.shape) for t in args],
                        str(err).splitlines()[0] if str(err) else type(err).__name__)
            torch.cuda.synchronize(device)
            return None
        if not (isinstance(output, torch.Tensor) or (
                isinstance(output, tuple) and all(isinstance(t, torch.Tensor)
                                                  for t in output))):
            raise TypeError(f"{self.name}: a graphed call returns a tensor or a tuple of "
                            f"tensors, not {type(output).__name__}")
        return _Capture(graph, inputs, output)
