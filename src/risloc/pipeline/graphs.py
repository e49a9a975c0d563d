"""The learned call replayed as a CUDA graph, in passes of a fixed number of scenes.

On a GPU at a few thousand scenes the learned call launches ~11,000 kernels, most of them
small: the host's launches and the gaps between kernels take a share of its time
(docs/results.md "Speed"; 1.14x at 2,048 scenes on an H200). The call does not
synchronise with the host, so it can be captured once as a CUDA graph
(:class:`torch.cuda.CUDAGraph`) and replayed: the kernels are then launched by the driver
in one go. A graph is fixed to its input shapes, so the scenes run in passes of exactly
``batch`` scenes, the last one padded with copies of its last scene (each scene's
estimates depend on that scene only; the copies' are dropped).

A capture is made per input layout (shapes, whether an SNR or K is given, k_max, device)
and kept (:class:`risloc.core.graphs.GraphCache`); it costs a few eager calls once, so
graphs pay only where the same pass size is met again and again: a file read in chunks, a
stream of batches. Off CUDA the passes run eagerly (what the tests on the CPU check); a
layout whose capture fails (an operation that synchronises with the host) runs eagerly as
well, with a warning.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from risloc.core.graphs import GraphCache
from risloc.core.params import Estimates, concat_estimates
from risloc.pipeline.learned import LearnedPipeline


class GraphedLocalize:
    """``pipeline.localize`` in passes of ``batch`` scenes, each a CUDA graph's replay.

    Call it as :meth:`LearnedPipeline.localize` (y [B,L,M], H [B,M,N], codes [B,L,N]
    complex64 on one device; snr_db [B] or None and K [B] or None, on any device; k_max).
    Returns the same Estimates, owned by the caller (copied out of the graph's buffers). A
    captured call is the pipeline as it was then (its settings, its network's tensors):
    make another GraphedLocalize after changing the settings or replacing the network.
    """

    def __init__(self, pipeline: LearnedPipeline, batch: int = 2048):
        if batch < 1:
            raise ValueError(f"the graph's batch must be >= 1, got {batch}")
        self.pipeline, self.batch = pipeline, batch
        self.graphs = GraphCache(f"the learned call on {batch} scenes", raise_oom=True)

    def __call__(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                 snr_db: torch.Tensor | None = None, K: torch.Tensor | None = None,
                 k_max: int | None = None) -> Estimates:
        B = y.shape[0]
        if B == 0:
            return self.pipeline.localize(y, H, codes, snr_db, K, k_max=k_max)
        parts = []
        for lo in range(0, B, self.batch):
            rows = _padded_rows(lo, min(lo + self.batch, B), self.batch, y.device)
            args = tuple(None if t is None else t.to(y.device)[rows]  # snr_db, K: any device
                         for t in (y, H, codes, snr_db, K))
            parts.append(self._pass(args, k_max)[:min(self.batch, B - lo)])
        return parts[0] if len(parts) == 1 else concat_estimates(parts)

    def _pass(self, args: tuple[torch.Tensor | None, ...], k_max: int | None) -> Estimates:
        def call(*a: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
            est = self.pipeline.localize(*a, k_max=k_max)
            return tuple(getattr(est, f.name) for f in fields(est))

        return Estimates(*self.graphs(call, args, key=k_max))


def _padded_rows(lo: int, hi: int, size: int, device: torch.device) -> torch.Tensor:
    """Indices lo..hi-1, then hi-1 repeated up to ``size`` entries."""
    return torch.arange(lo, lo + size, device=device).clamp_max(hi - 1)
