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


def _rank_value(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        d = distributed.Distributed(rank, 2, rank)
        got = distributed.main_value(d, 0.5 + rank * 1e-7)  # validations a few bits apart
        torch.save(got, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_rank_decides_from_rank_0s_validation(tmp_path):
    """Two gloo processes whose objectives differ in the last bits both take rank 0's."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_value, args=(f"file://{tmp_path}/init", str(tmp_path)), nprocs=2)
    assert [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)] == [0.5, 0.5]
    assert distributed.main_value(distributed.Distributed(), 0.25) == 0.25
