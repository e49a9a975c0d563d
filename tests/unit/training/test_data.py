"""Training batches: identical to the simulator's scene_stream; file batches cover the file."""

import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.io import write_scenes
from risloc.simulation import scene_stream, simulate_range
from risloc.training.config import load_train_config
from risloc.training.data import TrainData, validation_set


def test_stream_batches_are_scene_stream_batches():
    cfg = load_train_config(None, ["optim.batch_size=4", "data.seed=3"])
    stream = scene_stream(4, cfg.system, cfg.scene, seed=3, split="train", stream=1)
    data = TrainData(cfg)
    for i in range(2):
        ref = next(stream)
        assert torch.equal(data.batch(i, epoch=0).y, ref.y)


def test_file_batches_visit_every_scene_once_per_pass(tmp_path):
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
    val = validation_set(cfg)
    assert len(val) == 10 and val.azimuth.dtype == torch.float32


def test_sharded_batches_interleave_the_ranks_shards():
    """One process with data.shards 2 trains on both ranks' shards, interleaved, so the
    first n scenes (the spectral terms' share) are the first n / 2 of each rank's."""
    cfg = load_train_config(None, ["optim.batch_size=6", "data.shards=2",
                                   "loss.spectral_scenes=2"])
    both = TrainData(cfg).batch(5, epoch=0)
    ranks = [TrainData(cfg, shards_here=(r,)).batch(5, epoch=0) for r in (0, 1)]
    assert torch.equal(both.y[0::2], ranks[0].y) and torch.equal(both.y[1::2], ranks[1].y)
    assert not torch.equal(ranks[0].y, ranks[1].y)
