"""Data-parallel training over several processes (PyTorch DistributedDataParallel).

Started by torchrun (``torchrun --nproc_per_node=N -m risloc train ...``), which sets
RANK / WORLD_SIZE / MASTER_ADDR; one process per CPU worker or GPU, gloo on CPU, NCCL on
CUDA. Each global batch is ``data.shards`` = N shards simulated from disjoint seeded
streams (:class:`risloc.training.data.TrainData`); rank r trains on shard r and DDP
averages the gradients, so N processes follow the trajectory of one process with the same
recipe (``data.shards`` N) up to floating-point reduction order. Every rank validates
(the weights are identical); the decisions taken from it are rank 0's
(:func:`main_value`); rank 0 alone writes checkpoints and logs.
Multi-node: the same command on each node with ``--nnodes``, ``--node_rank`` and
``--rdzv_endpoint`` / ``--master_addr`` of torchrun.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """rank, world (number of processes), local_rank (the process's device index)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def world_size() -> int:
    """Processes torchrun started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device) -> Distributed:
    """Join the process group torchrun prepared (nothing when run as one process)."""
    world = world_size()
    if world <= 1:
        return Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":  # NCCL's collectives and "cuda" tensors: this rank's own GPU
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        with _sigterm_ends_the_wait():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank)


@contextlib.contextmanager
def _sigterm_ends_the_wait() -> Iterator[None]:
    """SIGTERM's default action (the process ends) while joining the group. A rank waits
    there, inside torch, for the others: where one of them stopped before joining (rank 0
    refusing an output folder locked by another run, or not writable), torchrun's SIGTERM
    found the Python handler of `risloc` (cli/entry.py), which never runs in that wait, and
    the rank hung until torchrun's SIGKILL 30 s later. Nothing is written before the join,
    so no message or output is lost; the handler is back once the group is joined."""
    if threading.current_thread() is not threading.main_thread():
        yield  # (signal handlers are the main thread's to set)
        return
    held = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        if held is not None:  # (None: a handler not set from Python, left as found)
            signal.signal(signal.SIGTERM, held)


def barrier(d: Distributed) -> None:
    if d.active:
        dist.barrier()


def main_value(d: Distributed, value: T) -> T:
    """Rank 0's ``value`` (any picklable object: a number, a dict of metrics) on every rank
    (``value`` itself when not distributed): the decisions every rank takes from its own
    validation (a better epoch, early stopping, a pruning callback) are taken from rank
    0's, so ranks whose validations differ in the last bits (GPU kernels need not be
    deterministic) never part ways, one leaving the loop while the others wait in a
    collective."""
    if not d.active:
        return value
    held: list[Any] = [value]
    dist.broadcast_object_list(held, src=0)
    return held[0]


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the parameters' bytes (ranks compare them to prove they agree)."""
    h = hashlib.sha256()
    for p in model.state_dict().values():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def all_digests(model: torch.nn.Module, d: Distributed) -> list[str]:
    """Every rank's :func:`weights_digest` (one element when not distributed)."""
    mine = weights_digest(model)
    if not d.active:
        return [mine]
    out: list[str | None] = [None] * d.world
    dist.all_gather_object(out, mine)
    return [str(x) for x in out]


def teardown(d: Distributed) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
