"""The process-group set-up (the runs themselves: tests/integration/test_training.py, gloo
on the CPU)."""

import torch

from risloc.training import distributed
from risloc.training.distributed import Distributed, all_digests, weights_digest


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
    monkeypatch.delenv("WORLD_SIZE")  # run directly, without torchrun: one process
    assert distributed.world_size() == 1
    calls.clear()
    assert distributed.setup(torch.device("cpu")) == distributed.Distributed() and calls == []


def _rank_value(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        d = distributed.Distributed(rank, 2, rank)
        got = distributed.main_value(d, 0.5 + rank * 1e-7)  # validations a few bits apart
        torch.save((got, all_digests(_ranked_model(rank), d)), f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def _ranked_model(rank: int) -> torch.nn.Module:
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(rank)  # weights that differ by rank
    return model


def _spawn_within(fn, args: tuple, seconds: float, hang: str) -> None:
    """Two processes of ``fn(rank, *args)``, failing with ``hang`` (not hanging the suite)
    where they have not finished within ``seconds``."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.spawn(fn, args=args, nprocs=2, join=False)
    deadline = time.time() + seconds
    try:
        while not ctx.join(timeout=1):
            assert time.time() < deadline, hang
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def test_every_rank_decides_from_rank_0s_validation(tmp_path):
    """Two gloo processes whose objectives differ in the last bits both take rank 0's;
    each gets every rank's weights digest, in rank order (a mutation review: its own
    digest repeated passed, and ranks whose weights differ were reported identical)."""

    _spawn_within(_rank_value, (f"file://{tmp_path}/init", str(tmp_path)), 120,
                  "the ranks hang in main_value's broadcast")
    got = [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]
    assert [value for value, _ in got] == [0.5, 0.5]
    digests = [weights_digest(_ranked_model(r)) for r in (0, 1)]
    assert digests[0] != digests[1] and [d for _, d in got] == [digests, digests]
    assert distributed.main_value(distributed.Distributed(), 0.25) == 0.25


def _rank_trains(rank: int, port: int, out: str) -> None:
    """One rank of a 2-process run whose validations disagree: rank 0's objective falls
    every epoch, rank 1's rises (patience 1 would stop rank 1 after its second epoch)."""
    import dataclasses
    import gc
    import os

    from risloc.training import load_train_config, train
    from risloc.training.loop import Trainer

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    real, seen = Trainer.validate, []

    def disagreeing(self, model, scenes):
        seen.append(1)
        got = real(self, model, scenes)
        return dataclasses.replace(got, objective=10.0 + (1 if rank else -1) * len(seen))

    Trainer.validate = disagreeing
    cfg = load_train_config(_tiny(), [
        f"out_dir={out}", "data.shards=2", "schedule.epochs=3", "schedule.steps_per_epoch=1",
        "schedule.patience=1", "order.scenes=0", "threads=1", "data.n_val=4",
        "data.val_batch_size=4", "schedule.swa_frac=0"])
    told = []  # what a pruning callback is told each epoch
    metrics = train(cfg, callback=lambda epoch, m: told.append(m["objective"]))
    ddp = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
    torch.save((metrics["epochs_run"], told, ddp), f"{out}/epochs_{rank}.pt")


def _tiny():
    from pathlib import Path

    import risloc

    return Path(risloc.__file__).parent / "recipes" / "train_tiny.yaml"


def test_ranks_whose_validations_disagree_decide_alike(tmp_path):
    """Two gloo ranks whose validation objectives part ways (as GPU kernels may make them in
    the last bits) take rank 0's decisions: both train the same 3 epochs, and a pruning
    callback is told rank 0's metrics on both. Each deciding on its own, rank 1 stopped
    after its second epoch and rank 0 waited in the third's all-reduce until the process
    group timed out."""
    import socket


    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _spawn_within(_rank_trains, (port, str(tmp_path)), 240,
                  "the ranks hang: they decided apart")
    (epochs_0, told_0, ddp_0), (epochs_1, told_1, ddp_1) = (
        torch.load(tmp_path / f"epochs_{r}.pt") for r in (0, 1))
    assert epochs_0 == epochs_1 == 3
    assert told_0 == told_1 == [9.0, 8.0, 7.0]  # rank 0's objectives, told to both
    # train() freed the DDP wrapper, which holds gloo's process group: left to the
    # interpreter's finalisation, the group's threads aborted a finished rank now and then
    assert ddp_0 == ddp_1 == 0


def test_only_rank_0_is_the_main_process():
    """Rank 0 alone writes checkpoints and logs (the CLI reports from rank 0 too)."""
    assert Distributed().main and Distributed(0, 2, 0).main
    assert not Distributed(1, 2, 1).main and not Distributed(3, 4, 0).main
    assert not Distributed().active and Distributed(1, 2, 1).active


def test_the_weights_digest_covers_buffers_as_well_as_parameters():
    """Ranks prove they agree by the digest: a buffer that differs (running statistics)
    must show in it, as a parameter does."""
    a, b = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    assert weights_digest(a) == weights_digest(b) == all_digests(a, Distributed())[0]
    b.running_mean += 1
    assert weights_digest(a) != weights_digest(b)
    with torch.no_grad():
        b.running_mean -= 1
        b.weight += 1
    assert weights_digest(a) != weights_digest(b)


def test_a_group_already_joined_is_kept_and_barriers_and_teardown_reach_it(monkeypatch):
    """setup joins no group twice (a caller that initialised it); barrier waits for every
    rank and teardown leaves the group, of a distributed run only (a mutation review: a
    barrier or a teardown that did nothing passed)."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend: calls.append("init"))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group",
                        lambda: calls.append("destroy"))
    d = distributed.setup(torch.device("cpu"))
    assert d == Distributed(1, 2, 0) and calls == []
    distributed.barrier(Distributed())
    distributed.teardown(Distributed())
    assert calls == []  # one process: nothing to wait for (a barrier of a lone process
    distributed.barrier(d)  # passed, and one that skipped the ranks' barrier too)
    distributed.teardown(d)
    assert calls == ["barrier", "destroy"]


def test_sigterm_ends_a_rank_waiting_to_join_and_the_handler_is_back_after(monkeypatch):
    """While init_process_group waits for the other ranks, SIGTERM has its default action
    (a Python handler never runs inside that wait: the rank hung until torchrun's SIGKILL);
    the handler found is back once the group is joined, and a teardown of a group never
    joined (or already left) does nothing (a mutation review: all of these passed)."""
    import signal
    import threading

    seen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend: seen.append(signal.getsignal(signal.SIGTERM)))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "destroy_process_group",
                        lambda: seen.append("destroy"))

    def handler(signum, frame):
        pass

    saved = signal.signal(signal.SIGTERM, handler)
    try:
        d = distributed.setup(torch.device("cpu"))
        assert seen == [signal.SIG_DFL] and signal.getsignal(signal.SIGTERM) is handler
        # a non-main thread may not set handlers: it joins with the handler untouched
        thread = threading.Thread(target=lambda: distributed.setup(torch.device("cpu")))
        thread.start()
        thread.join()
        assert seen == [signal.SIG_DFL, handler]
    finally:
        signal.signal(signal.SIGTERM, saved)
    distributed.teardown(d)  # is_initialized() is False: nothing to leave
    assert seen == [signal.SIG_DFL, handler]
