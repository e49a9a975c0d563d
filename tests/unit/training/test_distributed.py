"""The process-group set-up (the runs themselves: tests/integration/test_training.py, gloo
on the CPU)."""

import torch

from risloc.training import distributed


def test_each_cuda_rank_takes_its_own_gpu_before_joining_the_group(monkeypatch):
    """NCCL uses the current device: without set_device every rank would sit on GPU 0."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    d = distributed.setup(torch.device("cuda"))
    assert calls == [("set_device", 1), ("init", "nccl")]
    assert (d.rank, d.world, d.local_rank) == (1, 2, 1)
    calls.clear()
    distributed.setup(torch.device("cpu"))
    assert calls == [("init", "gloo")]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.setup(torch.device("cuda")) == distributed.Distributed()
