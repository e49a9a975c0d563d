"""SceneDataset: scenes of a file by index and in batches, for training and evaluation."""
import pickle

import h5py
import pytest
import torch

import risloc.io.dataset as dataset_module
from risloc.config import SceneConfig
from risloc.io import SceneDataset, SceneFileError, collate_scenes, write_scenes
from risloc.simulation import simulate_range


@pytest.fixture(scope="module")
def batch(system):
    return simulate_range(0, 50, system, SceneConfig(), seed=0, split="test")


def test_dataset(tmp_path, batch, system):
    path = write_scenes(tmp_path / "s.h5", batch, system)
    ds = SceneDataset(path)
    assert len(ds) == 50
    assert torch.equal(ds[7].y[0], batch.y[7])
    assert torch.equal(ds[-1].H[0], batch.H[49])
    parts = list(ds.batches(16))
    assert [len(p) for p in parts] == [16, 16, 16, 2]
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_scenes)
    first = next(iter(loader))
    assert torch.equal(first.y, batch.y[:8])
    with pytest.raises(IndexError):
        ds[50]
    # worker processes open the file for themselves (the parent's handle is open here)
    workers = torch.utils.data.DataLoader(ds, batch_size=10, num_workers=2,
                                          collate_fn=loader.collate_fn)
    assert torch.equal(torch.cat([b.y for b in workers]), batch.y)
    again = pickle.loads(pickle.dumps(ds))  # as a spawned worker receives it
    assert again._reader is None and torch.equal(again[3].codes[0], batch.codes[3])
    with pytest.raises(ValueError, match="no scenes to collate"):  # not a bare IndexError
        collate_scenes([])
    # truth that cannot be scored is refused when the dataset is made, not at a batch
    # (a mutation review)
    noise = write_scenes(tmp_path / "k0.h5", batch[:6], system)
    with h5py.File(noise, "a") as f:
        f["K"][4] = 0
    with pytest.raises(SceneFileError, match="cannot be scored"):
        SceneDataset(noise, in_memory=False)


def test_dataset_index_stop_and_reader_per_process(tmp_path, batch, system, monkeypatch):
    """A second mutation review: an index one below -len is out of range (not wrapped to
    the last scene), a stop past the end ends at the last scene (no empty batches), and a
    process other than the one that opened the file (a forked worker) opens its own."""
    path = write_scenes(tmp_path / "s.h5", batch[:10], system)
    for in_memory in (True, False):
        ds = SceneDataset(path, in_memory=in_memory)
        with pytest.raises(IndexError, match=r"scene -11 out of range 0..9"):
            ds[-11]
        assert torch.equal(ds[-10].y[0], batch.y[0])
        got = list(ds.batches(4, 6, 100))
        assert [len(b) for b in got] == [4] and torch.equal(got[0].y, batch.y[6:10])
        # a stop inside the file ends the last batch there, not a whole batch_size later
        # (a dataset builder's review)
        got = list(ds.batches(4, 1, 7))
        assert [len(b) for b in got] == [4, 2] and torch.equal(got[1].y, batch.y[5:7])
        # a bad range or size is named whether the scenes are in memory or not (in memory,
        # start -2 gave an empty batch and skipped scenes 0 and 1 without a word)
        with pytest.raises(SceneFileError, match=r"bad scene range -2\.\.10 of 10"):
            next(ds.batches(4, -2))
        with pytest.raises(SceneFileError, match=r"bad scene range 8\.\.3 of 10"):
            next(ds.batches(4, 8, 3))
        for size in (0, -4):
            with pytest.raises(SceneFileError, match=rf"batch_size must be >= 1, got {size}"):
                next(ds.batches(size))
    ds = SceneDataset(path, in_memory=False)
    ds[0]
    parent = ds._reader
    monkeypatch.setattr(dataset_module.os, "getpid", lambda: parent[0] + 1)
    assert torch.equal(ds[1].y[0], batch.y[1])
    assert ds._reader[0] == parent[0] + 1 and ds._reader[1] is not parent[1]
    monkeypatch.undo()
    parent[1].close()
    ds._reader[1].close()  # (opened as another process: not closed by __del__)


def test_dataset_items_are_one_scene_and_only_its_own_process_closes_the_file(
        tmp_path, batch, system, monkeypatch):
    """A third mutation review: an in-memory item of two scenes, an .h5 read into memory
    (or an .npz lazily) by default, and __del__ closing a file another process opened (a
    forked worker's copy of the parent's reader) all passed."""
    h5 = write_scenes(tmp_path / "s.h5", batch[:10], system)
    npz = write_scenes(tmp_path / "s.npz", batch[:10], system)
    assert SceneDataset(h5)._cache is None and SceneDataset(npz)._cache is not None
    for path in (h5, npz):
        for in_memory in (True, False):
            ds = SceneDataset(path, in_memory=in_memory)
            for i in (0, 4, -1):
                item = ds[i]
                assert len(item) == 1 and torch.equal(item.y[0], batch.y[i % 10])
    ds = SceneDataset(h5, in_memory=False)
    ds[0]
    reader = ds._reader[1]
    monkeypatch.setattr(dataset_module.os, "getpid", lambda: ds._reader[0] + 1)
    ds.__del__()  # as in a worker: the parent's reader is not this process's to close
    monkeypatch.undo()
    assert torch.equal(reader.read(2, 3).y[0], batch.y[2])
    ds.__del__()  # in the process that opened it: closed
    with pytest.raises(SceneFileError, match="the reader is closed"):
        reader.read(0, 1)


def test_dataset_batches_of_an_empty_scene_range_are_none_and_no_error(tmp_path, batch, system):
    """A mutation review: ``start <= stop`` made ``start < stop`` (an empty range refused)
    passed."""
    path = write_scenes(tmp_path / "s.h5", batch[:10], system)
    for in_memory in (True, False):
        ds = SceneDataset(path, in_memory=in_memory)
        assert list(ds.batches(4, 10)) == [] and list(ds.batches(4, 3, 3)) == []
