"""Training batches: identical to the simulator's scene_stream; file batches cover the file."""

import math
import multiprocessing
import sys
from dataclasses import fields, replace

import pytest
import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.io import write_scenes
from risloc.simulation import scene_stream, simulate_range
from risloc.training.config import load_train_config
from risloc.training.data import TrainData, _to_slots, prefetched, validation_set


def test_stream_batches_are_scene_stream_batches():
    cfg = load_train_config(None, ["optim.batch_size=4", "data.seed=3"])
    stream = scene_stream(4, cfg.system, cfg.scene, seed=3, split="train", stream=1)
    data = TrainData(cfg)
    for i in range(2):
        ref = next(stream)
        assert torch.equal(data.batch(i, epoch=0).y, ref.y)


def test_file_batches_visit_every_scene_once_per_pass(tmp_path, caplog):
    system = SystemConfig()
    path = tmp_path / "s.npz"
    scenes = simulate_range(0, 10, system, SceneConfig(), seed=1, split="train")
    write_scenes(path, scenes, system)
    cfg = load_train_config(None, [f"data.train_file={path}", "optim.batch_size=5",
                                   f"data.val_file={path}"])
    data = TrainData(cfg)
    seen = torch.cat([data.batch(i, 0).y for i in range(2)])  # one pass
    key = lambda y: sorted(y[:, 0, 0].real.tolist())  # noqa: E731
    assert key(seen) == key(scenes.y)
    assert not torch.equal(data.batch(2, 0).y, data.batch(0, 0).y)  # reshuffled next pass
    with caplog.at_level("WARNING", logger="risloc.training.data"):
        val = validation_set(cfg)
    assert len(val) == 10 and val.azimuth.dtype == torch.float32
    assert "data.val_file is data.train_file" in caplog.text  # the same file: said so


def test_sharded_batches_interleave_the_ranks_shards():
    """One process with data.shards 2 trains on both ranks' shards, interleaved, so the
    first n scenes (the spectral terms' share) are the first n / 2 of each rank's."""
    cfg = load_train_config(None, ["optim.batch_size=6", "data.shards=2",
                                   "loss.spectral_scenes=2"])
    both = TrainData(cfg).batch(5, epoch=0)
    ranks = [TrainData(cfg, shards_here=(r,)).batch(5, epoch=0) for r in (0, 1)]
    assert torch.equal(both.y[0::2], ranks[0].y) and torch.equal(both.y[1::2], ranks[1].y)
    assert not torch.equal(ranks[0].y, ranks[1].y)
    # the global batch is optim.batch_size scenes, batch_size / shards per rank
    assert len(both) == 6 and [len(r) for r in ranks] == [3, 3]


def test_scene_mix_reaches_training_validation_and_the_stored_recipe():
    """A recipe's scene_mix: the training batches are the mixture's (seeded, so a resumed
    run sees the same), the validation scenes too, and a checkpoint's recipe gives the
    order-head fit the same mixture; a kind outside the field of view fails at load."""
    import pytest

    from risloc.config import ConfigError
    from risloc.inference.recipe import InferenceRecipe
    from risloc.simulation import block_generator, simulate_mixture

    mix = ["data.scene_mix=[{name: near, share: 0.5, scene: {range_m: [0.5, 0.6]}}]",
           "optim.batch_size=64", "data.n_val=64"]
    cfg = load_train_config(None, mix)
    scenes = cfg.scenes()
    assert len(scenes) == 2 and scenes[1][1].range_m == (0.5, 0.6)
    batch = TrainData(cfg).batch(3, epoch=0)
    ref = simulate_mixture(64, cfg.system, scenes, block_generator(0, "train", 3, 1))
    assert torch.equal(batch.y, ref.y) and torch.equal(TrainData(cfg).batch(3, 0).y, batch.y)
    near = lambda s: torch.where(s.mask, s.range_m <= 0.6, True).all(1).float().mean()  # noqa: E731
    assert 0.35 < near(batch) < 0.7 and 0.35 < near(validation_set(cfg)) < 0.7
    assert InferenceRecipe.from_json(cfg.to_json()).scenes() == scenes
    # the order head's scenes: the mixture, or the base scene alone (order.scene_mix false)
    from types import SimpleNamespace

    from risloc.config import SceneConfig
    from risloc.pipeline.calibrate import order_scenes

    pipe = SimpleNamespace(recipe=InferenceRecipe.from_json(cfg.to_json()))
    assert cfg.order.scene_mix and order_scenes(pipe) == scenes
    base = order_scenes(pipe, {"power_spread_db": [0, 25]}, mix=False)
    assert isinstance(base, SceneConfig) and base.range_m == cfg.scene.range_m
    assert base.power_spread_db == (0, 25)
    assert not load_train_config(None, [*mix, "order.scene_mix=false"]).order.scene_mix
    with pytest.raises(ConfigError, match="range_m"):
        load_train_config(None, ["data.scene_mix=[{share: 0.5, scene: {range_m: [0.1, 1]}}]"])
    with pytest.raises(ConfigError,
                       match=r"data\.scene_mix\[0\]\.scene\.K=7 exceeds system\.K_max=5"):
        load_train_config(None, ["data.scene_mix=[{share: 0.5, scene: {K: 7}}]"])


def test_prefetched_in_a_process_gives_the_same_scene_batches():
    """The process route: the batches of a worker process are the in-line ones, field for
    field, and stopping early stops the worker."""
    import os

    cfg = load_train_config(None, ["optim.batch_size=8", "data.snr_shown=0.5"])
    data = TrainData(cfg)
    got = list(prefetched(lambda i: (os.getpid(), data.batch(i, 0)), range(2, 5), "process"))
    assert all(pid != os.getpid() for pid, _ in got)
    for i, (_, b) in zip(range(2, 5), got, strict=True):
        want = data.batch(i, 0)
        assert bool(b.snr_db.isnan().any())  # the hidden SNRs came through as well
        for f in fields(want):
            if getattr(want, f.name) is not None:
                torch.testing.assert_close(getattr(b, f.name), getattr(want, f.name),
                                           rtol=0, atol=0, equal_nan=True, msg=f.name)
    rng = torch.get_rng_state()
    it = prefetched(lambda i: torch.full((2,), float(i)), range(100), "process")
    assert int(next(it)[0]) == 0
    it.close()
    assert not multiprocessing.active_children()  # the workers stopped with it
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG as the other routes


_SIGNAL_DURING_THE_FORK = """
import os, signal, time
import torch
from risloc.training import data

def interrupt(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, interrupt)  # as risloc's CLI takes SIGTERM
leave = data._leave_signals_to_the_parent
def slow_to_leave(worker, **kwargs):  # the window between a fork and leaving the group
    time.sleep(1.0)
    leave(worker, **kwargs)
data._leave_signals_to_the_parent = slow_to_leave
sent = []
def preempted():  # a batch system's preemption, to the whole job, as a worker is forked
    if not sent:
        sent.append(os.killpg(0, signal.SIGTERM))
os.register_at_fork(after_in_parent=preempted)
try:
    for _ in data.prefetched(lambda i: torch.full((2,), float(i)), range(40), "process"):
        time.sleep(0.05)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_signal_to_the_job_while_the_workers_are_forked_is_neither_lost_nor_fatal():
    """A review: a SIGTERM (or Ctrl-C) to the whole process group while an epoch's
    workers were forked, before they left the group, was lost in the parent (raised in
    os.fork's at-fork hooks) or killed a worker with a traceback ("DataLoader worker
    exited unexpectedly"). The workers are now forked with both signals blocked and drop
    the group's on leaving it; the parent takes its own once they are forked."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", _SIGNAL_DURING_THE_FORK], capture_output=True,
                       text=True, timeout=120, start_new_session=True)  # (a group of its own)
    assert p.returncode == 0 and p.stdout.split() == ["interrupted"], p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr


_PARENT_KILLED = """
import multiprocessing, os, signal, sys, time
import torch
from risloc.training import data

batches = data.prefetched(lambda i: torch.full((2,), float(i)), range(100), "process")
next(batches)
print(" ".join(str(w.pid) for w in multiprocessing.active_children()), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the whole job killed; the workers out of its group
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_workers_die_with_their_parent():
    """A review: out of the parent's process group, the workers outlived a SIGKILL to the
    group (torchrun's escalation, a container's stop) by up to 5 s, until the DataLoader's
    own check of its parent; they now die with it."""
    import subprocess
    import time

    p = subprocess.Popen([sys.executable, "-c", _PARENT_KILLED], stdout=subprocess.PIPE,
                         text=True)  # (the workers hold its pipe: read a line, not to its end)
    workers = [int(w) for w in p.stdout.readline().split()]
    assert p.wait(timeout=120) == -9 and len(workers) == 2, workers
    t0 = time.perf_counter()
    p.stdout.close()

    def alive(pid: int) -> bool:  # (a zombie has ended: its state Z)
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    while any(map(alive, workers)) and time.perf_counter() - t0 < 10:
        time.sleep(0.02)
    # (SIGKILL at the parent's death takes milliseconds; the DataLoader's own check of its
    # parent, every 5 s, is what a missing death signal leaves; 2.5 s spares a loaded CI)
    assert time.perf_counter() - t0 < 2.5, "the workers outlived their parent"

@pytest.mark.parametrize("ahead", [False, True])
def test_prefetched_gives_every_batch_once_in_order(ahead):
    """With ``ahead`` one fetch runs in a thread while the caller holds the previous batch;
    closing early leaves no fetch behind."""
    import threading

    threads = []

    def fetch(i):
        threads.append(threading.current_thread().name)
        return torch.full((2,), float(i))

    got = list(prefetched(fetch, range(3, 9), ahead))
    assert [int(t[0]) for t in got] == list(range(3, 9))
    assert all(n.startswith("risloc-data") for n in threads) == ahead
    it = prefetched(fetch, range(100), ahead)
    assert int(next(it)[0]) == 0
    it.close()
    assert len(threads) <= 6 + 2  # at most the next one was fetched ahead


def test_batches_computed_on_another_device_are_the_host_ones():
    """TrainData(compute=...) (TrainConfig.simulate_on=device): the same draws, the
    physics on ``compute``; on the CPU bit for bit the host's batches, and every field on
    the compute device (the meta device stands in for a GPU), with hidden SNRs and shards
    too; prefetch=process cannot take it (CUDA in forked workers)."""
    from risloc.config import ConfigError

    cfg = load_train_config(None, ["optim.batch_size=8", "data.snr_shown=0.5",
                                   "data.shards=2", "loss.spectral_scenes=4"])
    host, cpu = TrainData(cfg).batch(3, 0), TrainData(cfg, compute="cpu").batch(3, 0)
    for f in fields(host):
        if getattr(host, f.name) is not None:
            torch.testing.assert_close(getattr(cpu, f.name), getattr(host, f.name), rtol=0,
                                       atol=0, equal_nan=True, msg=f.name)
    meta = TrainData(cfg, compute="meta").batch(3, 0)
    assert {getattr(meta, f.name).device.type for f in fields(meta)
            if getattr(meta, f.name) is not None} == {"meta"}
    with pytest.raises(ConfigError, match="simulate_on=device"):
        load_train_config(None, ["simulate_on=device", "prefetch=process"])


def test_a_training_file_is_checked_before_the_first_step(tmp_path):
    """A file of another system, or with a scene the localizers refuse, is named when the
    data is set up, not as a batch index mid-epoch."""
    system = SystemConfig()
    scenes = simulate_range(0, 6, system, SceneConfig(), seed=1, split="train")
    other = system.model_copy(update={"wavelength": 0.5})
    write_scenes(tmp_path / "other.h5", scenes, other)
    cfg = load_train_config(None, [f"data.train_file={tmp_path / 'other.h5'}"])
    with pytest.raises(ValueError, match=r"training file .*other.h5.*wavelength"):
        TrainData(cfg)
    bad = scenes.y.clone()
    bad[4, 0, 0] = complex(math.nan, 0.0)
    write_scenes(tmp_path / "nan.h5", replace(scenes, y=bad), system)
    cfg = load_train_config(None, [f"data.val_file={tmp_path / 'nan.h5'}"])
    with pytest.raises(ValueError, match=r"validation file .*1 scene\(s\).*scene 4: non-finite"):
        validation_set(cfg)


def test_file_truth_is_fitted_to_the_recipes_slots(tmp_path):
    """A file of a smaller K_max (truth 2 slots wide) or with truth arrays wider than
    K_max (NaN beyond K) trains in the recipe's K_max slots (the losses' shapes: a
    traceback in the first step before)."""
    import numpy as np

    from risloc.io.scenefile import batch_to_arrays

    small = SystemConfig(K_max=2)
    scenes = simulate_range(0, 6, small, SceneConfig(K=2), seed=1, split="train")
    write_scenes(tmp_path / "k2.h5", scenes, small)
    cfg = load_train_config(None, [f"data.train_file={tmp_path / 'k2.h5'}",
                                   "optim.batch_size=3"])
    batch = TrainData(cfg).batch(0, 0)
    assert batch.azimuth.shape == (3, 5) and bool(batch.azimuth[:, 2:].isnan().all())
    assert batch.powers is None  # a file carries none: R_true takes unit powers
    assert {t.dtype for t in (batch.snr_db, batch.azimuth, batch.elevation,
                              batch.range_m)} == {torch.float32}  # the losses' dtype
    system = SystemConfig()
    arr = batch_to_arrays(simulate_range(0, 6, system, SceneConfig(), seed=1,
                                         split="train"), 5)
    for k in ("azimuth_deg", "elevation_deg", "range_m"):
        arr[k] = np.pad(arr[k], ((0, 0), (0, 2)), constant_values=np.nan)
    np.savez(tmp_path / "wide.npz", **arr, system=np.array(system.model_dump_json()))
    cfg = load_train_config(None, [f"data.val_file={tmp_path / 'wide.npz'}"])
    val = validation_set(cfg)
    assert val.azimuth.shape == (6, 5) and torch.equal(val.K, torch.as_tensor(arr["K"]).long())


def test_the_snr_is_shown_in_the_share_of_scenes_snr_shown_says():
    """data.snr_shown is the share of training scenes whose SNR the network sees: 0.25 of
    512 scenes shown, 0 none, 1 all (a mutation review: hiding the complement passed)."""
    for share, lo, hi in ((0.25, 0.19, 0.31), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)):
        cfg = load_train_config(None, ["optim.batch_size=512", f"data.snr_shown={share}"])
        shown = (~TrainData(cfg).batch(0, 0).snr_db.isnan()).double().mean().item()
        assert lo <= shown <= hi, (share, shown)


def test_truth_of_a_smaller_K_max_is_padded_with_nan_positions_and_zero_power():
    """A file of K_max 2 trained with K_max 4: the new slots hold no source (power 0,
    NaN position), so R_true and the losses see only the file's sources."""
    scenes = simulate_range(0, 3, SystemConfig(M=8, K_max=2), SceneConfig(power_spread_db=6.0))
    wide = _to_slots(scenes, 4)
    assert wide.azimuth.shape == wide.powers.shape == (3, 4)
    assert torch.equal(wide.powers[:, :2], scenes.powers)
    assert torch.equal(wide.powers[:, 2:], torch.zeros(3, 2))
    assert torch.isnan(wide.range_m[:, 2:]).all()
