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

import hashlib
import os
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
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank)


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
