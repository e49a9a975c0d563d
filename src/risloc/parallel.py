"""Scene-parallel execution on CPU cores.

Every estimator in risloc treats the scenes of a batch independently, and much of its
time goes into small batched LAPACK calls (eigh, solves) and elementwise ops that gain
little from torch's intra-op threads. Splitting a batch into contiguous chunks run by
``workers`` Python threads (torch releases the GIL inside its kernels), each with one
intra-op thread, uses the cores better (benchmarks/bench_pipeline.py measures it). With
``max_chunk`` a large batch becomes many passes of at most that many scenes, which the
threads take one after another: memory stays flat in the batch size.

On a GPU the batch runs in one pass; where it does not fit in the device's memory, it is
halved until it does (:func:`run_in_chunks`): each scene's result does not depend on the
others of its pass.

The torch intra-op thread count is process-global: :func:`run_in_chunks` sets it to one
for its duration and restores it afterwards, so do not call it concurrently from several
of your own threads with different thread settings.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
log = logging.getLogger(__name__)

MIN_CHUNK = 16  # scenes per worker below which splitting costs more than it gains
MAX_CHUNK = 64  # scenes per pass of the Localizer on CPU: memory flat in the batch size, at
#                 the throughput of one pass per worker (benchmarks/bench_pipeline.py)


def default_workers() -> int:
    """CPU cores this process may use (at most 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Set torch's intra-op thread count for the enclosed block, then restore it."""
    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def chunk_bounds(n: int, workers: int, min_chunk: int = MIN_CHUNK,
                 max_chunk: int | None = None) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) ranges of near-equal size covering 0..n: one per worker, each of
    at least ``min_chunk`` items (one range when n is small); with ``max_chunk``, as many
    more as keep every range within max_chunk items."""
    if n < 0 or workers < 1 or min_chunk < 1 or (max_chunk is not None and max_chunk < 1):
        raise ValueError(f"need n >= 0, workers >= 1, min_chunk >= 1, max_chunk >= 1; got "
                         f"{n}, {workers}, {min_chunk}, {max_chunk}")
    k = max(1, min(workers, n // min_chunk))
    if max_chunk is not None:
        k = max(k, -(-n // max_chunk))
    edges = [round(i * n / k) for i in range(k + 1)]
    return [(edges[i], edges[i + 1]) for i in range(k)]


def run_in_chunks(fn: Callable[[int, int], T], n: int, workers: int | None = None,
                  device: torch.device | str = "cpu", max_chunk: int | None = None) -> list[T]:
    """[fn(lo, hi) for each chunk of 0..n (:func:`chunk_bounds`)], in order, run by
    ``workers`` threads on CPU (None: one per available core), each taking the next chunk
    when it is done with one. With one worker the chunks run inline, one after another;
    on other devices fn(0, n) runs inline (a GPU wants large batches: ``max_chunk``
    applies on CPU only) and is halved where it runs out of the device's memory."""
    workers = default_workers() if workers is None else workers
    if torch.device(device).type != "cpu":
        return _halving(fn, 0, n)
    bounds = chunk_bounds(n, workers, max_chunk=max_chunk)
    if workers == 1 or len(bounds) == 1:  # inline, with the caller's torch threads
        return [fn(lo, hi) for lo, hi in bounds]
    with torch_threads(1), ThreadPoolExecutor(min(workers, len(bounds))) as pool:
        return list(pool.map(lambda b: fn(*b), bounds))


def _halving(fn: Callable[[int, int], T], lo: int, hi: int) -> list[T]:
    """[fn(lo, hi)], or the results of its halves (recursively, in order) where fn runs out
    of device memory; one scene that does not fit re-raises the error."""
    try:
        return [fn(lo, hi)]
    except torch.cuda.OutOfMemoryError:
        if hi - lo <= 1:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mid = (lo + hi) // 2
    log.warning("out of device memory localizing %d scenes at once: in passes of %d",
                hi - lo, mid - lo)
    return _halving(fn, lo, mid) + _halving(fn, mid, hi)


def read_ahead(items: Iterable[T], name: str = "risloc-ahead") -> Iterator[T]:
    """The items of ``items`` in order, each next one produced in a background thread while
    the caller works on the current one: a file's next chunk read while this one is
    localized, the next training batch simulated while this one trains (torch releases the
    GIL in its kernels; reading 16,384 scenes of a file in a thread here overlapped a
    loop of small torch operations almost fully). An error of the producer is raised where its
    item would have come; when the caller stops early, the item under way is finished and
    ``items`` closed (a generator's files with it). Where that wait is itself interrupted
    (a second Ctrl-C), ``items`` is left to its thread, which finishes the item under way,
    and to the garbage collector: closing a generator another thread is running would add
    a "generator already executing" error to the interrupt. ``name`` prefixes the thread's
    name."""
    it = iter(items)
    end = object()
    upcoming = None
    try:
        with ThreadPoolExecutor(1, thread_name_prefix=name) as pool:
            upcoming = pool.submit(next, it, end)
            while (item := upcoming.result()) is not end:
                upcoming = pool.submit(next, it, end)
                yield item
    finally:
        close = getattr(it, "close", None)
        if close is not None and (upcoming is None or upcoming.done()):
            close()
