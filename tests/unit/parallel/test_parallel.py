import threading
import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from risloc.parallel import (
    chunk_bounds,
    default_workers,
    read_ahead,
    run_in_chunks,
    torch_threads,
)


@given(n=st.integers(0, 5000), workers=st.integers(1, 16), min_chunk=st.integers(1, 64))
def test_chunk_bounds_cover_contiguously(n, workers, min_chunk):
    b = chunk_bounds(n, workers, min_chunk)
    assert b[0][0] == 0 and b[-1][1] == n
    assert all(hi == lo2 for (_, hi), (lo2, _) in zip(b, b[1:]))
    assert 1 <= len(b) <= workers
    if len(b) > 1:
        assert min(hi - lo for lo, hi in b) >= min_chunk


@given(n=st.integers(1, 5000), workers=st.integers(1, 16), max_chunk=st.integers(1, 300))
def test_chunk_bounds_with_max_chunk_cap_every_range(n, workers, max_chunk):
    b = chunk_bounds(n, workers, max_chunk=max_chunk)
    assert b[0][0] == 0 and b[-1][1] == n
    assert all(hi == lo2 for (_, hi), (lo2, _) in zip(b, b[1:]))
    sizes = [hi - lo for lo, hi in b]
    assert max(sizes) <= max_chunk and max(sizes) - min(sizes) <= 1  # near-equal
    assert len(b) == max(-(-n // max_chunk), len(chunk_bounds(n, workers)))


def test_chunk_bounds_rejects_bad_arguments():
    with pytest.raises(ValueError, match="workers >= 1"):
        chunk_bounds(10, 0)
    with pytest.raises(ValueError, match="max_chunk >= 1"):
        chunk_bounds(10, 2, max_chunk=0)
    for args in ((-1, 2), (10, 2, 0)):  # a negative count; min_chunk 0 (not a division
        with pytest.raises(ValueError, match="need n >= 0"):  # by zero, nor a range
            chunk_bounds(*args)  # (0, -1))


def test_run_in_chunks_with_max_chunk_runs_every_pass_in_order_on_the_workers():
    seen_threads = set()

    def fn(lo, hi):
        seen_threads.add(threading.get_ident())
        return list(range(lo, hi))

    parts = run_in_chunks(fn, 100, workers=2, max_chunk=16)
    assert [x for p in parts for x in p] == list(range(100))
    assert len(parts) == 7 and max(len(p) for p in parts) <= 16
    assert 1 <= len(seen_threads) <= 2
    assert run_in_chunks(fn, 100, workers=2, device="meta", max_chunk=16) == [
        list(range(100))]  # not on CPU: one pass


@pytest.mark.parametrize("workers,device", [(2, "cpu"), (1, "cpu"), (2, "meta")])
def test_an_error_in_a_chunk_reaches_the_caller(workers, device):
    """An estimator's error in any chunk, on a worker thread or inline, is raised to the
    caller, never a missing result (a mutation review: a swallowed error passed)."""
    def fn(lo, hi):
        if lo <= 50 < hi:
            raise RuntimeError("boom")
        return list(range(lo, hi))

    with pytest.raises(RuntimeError, match="boom"):
        run_in_chunks(fn, 100, workers=workers, device=device, max_chunk=16)


def test_run_in_chunks_keeps_order_uses_threads_and_restores_thread_count():
    before = torch.get_num_threads()
    seen_threads, seen_torch = set(), set()

    def fn(lo, hi):
        seen_threads.add(threading.get_ident())
        seen_torch.add(torch.get_num_threads())
        return list(range(lo, hi))

    parts = run_in_chunks(fn, 100, workers=4)
    assert [x for p in parts for x in p] == list(range(100))
    assert len(parts) == 4 and len(seen_threads) >= 1
    assert seen_torch == {1}  # one intra-op thread per worker
    assert torch.get_num_threads() == before
    assert run_in_chunks(fn, 10, workers=4) == [list(range(10))]  # too small to split


def test_torch_threads_restores_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(before + 1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_default_workers_is_a_small_positive_count(monkeypatch):
    assert 1 <= default_workers() <= 8
    import os

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("the cores this process may use: sched_getaffinity (Linux)")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert default_workers() == 8  # at most 8 on a machine of many cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5})
    assert default_workers() == 2


def test_off_the_cpu_one_pass_halved_while_out_of_device_memory(caplog):
    """A GPU gets the whole batch; where a pass runs out of device memory it is halved
    (results in order, covering every scene once); one scene that does not fit raises."""
    calls = []

    def fn(lo, hi):
        calls.append((lo, hi))
        if hi - lo > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")
        return (lo, hi)

    assert run_in_chunks(fn, 4, device="meta") == [(0, 4)]
    parts = run_in_chunks(fn, 23, device="meta")
    assert [lo for lo, _ in parts] == [0, *[hi for _, hi in parts[:-1]]] and parts[-1][1] == 23
    assert all(hi - lo <= 5 for lo, hi in parts) and calls[1] == (0, 23)
    assert all(hi > lo for lo, hi in calls)  # never an empty pass
    assert "out of device memory localizing 23 scenes" in caplog.text

    def never(lo, hi):
        calls.append((lo, hi))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    calls.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_in_chunks(never, 3, device="meta")
    assert calls == [(0, 3), (0, 1)]  # the first scene alone does not fit: raised


def test_read_ahead_produces_the_next_item_in_a_thread_in_order():
    """Items in order, each made in another thread while the caller holds the previous one
    (one ahead, never more); a producer's error comes where its item would have; stopping
    early closes the source."""
    made: list[tuple[int, str]] = []

    def source(n, fail_at=None):
        try:
            for i in range(n):
                if i == fail_at:
                    raise RuntimeError(f"item {i} failed")
                made.append((i, threading.current_thread().name))
                yield i
        finally:
            made.append(("closed", ""))

    it = read_ahead(source(5))
    assert next(it) == 0
    deadline = time.monotonic() + 5
    while len(made) < 2 and time.monotonic() < deadline:  # the next one is made meanwhile
        time.sleep(0.01)
    time.sleep(0.05)  # and no further
    assert [m[0] for m in made] == [0, 1]
    assert list(it) == [1, 2, 3, 4] and made[-1] == ("closed", "")
    assert all(name.startswith("risloc-ahead") for i, name in made if i != "closed")
    made.clear()
    it = read_ahead(source(5, fail_at=2))
    assert next(it) == 0 and next(it) == 1
    with pytest.raises(RuntimeError, match="item 2 failed"):
        next(it)
    made.clear()
    items = source(100)  # held by the caller too: closed by read_ahead, not the collector
    it = read_ahead(items)  # (a mutation review: left open, closed only when collected)
    assert next(it) == 0
    it.close()
    assert made[-1] == ("closed", "") and len(made) <= 3  # 0, 1 under way, closed
    assert items.gi_frame is None


def test_read_ahead_interrupted_while_waiting_for_its_thread_raises_the_interrupt_alone(
        monkeypatch):
    """A second Ctrl-C while read_ahead waits for the item under way (the pool's shutdown)
    raises KeyboardInterrupt, not "generator already executing" from closing the source
    its thread is still running; the thread finishes the item."""
    import concurrent.futures

    release, started = threading.Event(), threading.Event()
    made = []

    def source():
        yield 0
        started.set()
        release.wait(5)  # item 1 is slow: the caller stops while it is being made
        made.append(1)
        yield 1

    def interrupted_shutdown(self, wait=True, **kwargs):
        if wait:
            raise KeyboardInterrupt  # the second Ctrl-C, during the wait
        return original(self, wait=wait, **kwargs)

    original = concurrent.futures.ThreadPoolExecutor.shutdown
    it = read_ahead(source())
    assert next(it) == 0
    assert started.wait(5)
    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "shutdown", interrupted_shutdown)
    with pytest.raises(KeyboardInterrupt) as caught:
        it.throw(KeyboardInterrupt)  # the first Ctrl-C, where the caller holds item 0
    assert not isinstance(caught.value.__context__, ValueError)
    monkeypatch.undo()
    release.set()
    deadline = time.monotonic() + 5
    while not made and time.monotonic() < deadline:
        time.sleep(0.01)
    assert made == [1]


def test_one_worker_runs_every_pass_inline_with_the_callers_torch_threads():
    """workers=1: the passes run inline, in the caller's thread, one after another, with
    the caller's torch thread count (run_in_chunks' docstring)."""
    caller, seen = threading.get_ident(), []

    def fn(lo, hi):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return (lo, hi)

    with torch_threads(2):
        parts = run_in_chunks(fn, 100, workers=1, max_chunk=16)
    assert [lo for lo, _ in parts] == [0, *[hi for _, hi in parts[:-1]]] and len(parts) == 7
    assert seen == [(caller, 2)] * 7


def test_the_chunks_run_on_as_many_threads_at_once_as_workers():
    """workers=2: two chunks are under way at the same time, each on its own thread
    (run_in_chunks' docstring: run by ``workers`` threads; a pool of one thread passed the
    order and thread-count tests)."""
    both = threading.Barrier(2, timeout=5)
    seen = set()

    def fn(lo, hi):
        seen.add(threading.get_ident())
        both.wait()  # returns only once a second chunk runs beside this one
        return (lo, hi)

    assert run_in_chunks(fn, 64, workers=2, max_chunk=32) == [(0, 32), (32, 64)]
    assert len(seen) == 2


def test_a_batch_of_one_chunk_runs_inline_with_the_callers_torch_threads():
    """A batch too small to split (one chunk) runs in the caller's thread with its torch
    thread count, whatever ``workers`` is: not one pool thread with one intra-op thread."""
    caller, seen = threading.get_ident(), []

    def fn(lo, hi):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return (lo, hi)

    with torch_threads(2):
        assert run_in_chunks(fn, 10, workers=4) == [(0, 10)]
    assert seen == [(caller, 2)]


def test_off_the_cpu_an_error_other_than_out_of_memory_is_raised_at_once():
    """Only running out of device memory halves a pass; any other error of fn is the
    caller's at once, fn called once (not halved down to a single scene first)."""
    calls = []

    def fn(lo, hi):
        calls.append((lo, hi))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_in_chunks(fn, 16, device="meta")
    assert calls == [(0, 16)]


def test_read_ahead_whose_thread_cannot_start_raises_that_error_and_closes_the_source(
        monkeypatch):
    """Where the reading thread cannot be started (pool.submit raises, as at a thread
    limit), that error reaches the caller and ``items`` is still closed (a mutation review:
    an AttributeError on the missing future hid it and left the source open)."""
    import concurrent.futures

    class Source:
        closed = False

        def __iter__(self):
            return self

        def __next__(self):
            return 0

        def close(self):
            self.closed = True

    def no_thread(self, *args, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", no_thread)
    source = Source()
    with pytest.raises(RuntimeError, match="can't start new thread"):
        next(read_ahead(source))
    assert source.closed


def test_an_error_in_a_chunk_cancels_the_passes_not_yet_started():
    """An error in the first of many passes reaches the caller without the pool running
    every pass still queued first (400 here)."""
    calls = []

    def fn(lo, hi):
        calls.append(lo)
        if lo == 0:
            raise RuntimeError("boom")
        time.sleep(0.02)  # (100 passes: a second of a busy machine's delay, not a flake)
        return lo

    with pytest.raises(RuntimeError, match="boom"):
        run_in_chunks(fn, 6400, workers=2, max_chunk=16)
    assert len(calls) < 100


def test_default_workers_off_linux_counts_the_machine_s_cores(monkeypatch):
    """Without sched_getaffinity (not Linux): os.cpu_count, at most 8, 1 where unknown
    (a mutation review: this branch was never run)."""
    import os

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert default_workers() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert default_workers() == 8
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_workers() == 1


def test_a_pass_out_of_device_memory_frees_the_cache_before_its_halves(monkeypatch):
    """Where a GPU pass runs out of memory, torch's cached blocks are released before the
    halves run (a mutation review: dropping empty_cache passed)."""
    events = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("freed"))

    def fn(lo, hi):
        events.append((lo, hi))
        if hi - lo > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return (lo, hi)

    assert run_in_chunks(fn, 4, device="meta") == [(0, 2), (2, 4)]
    assert events == [(0, 4), "freed", (0, 2), (2, 4)]
