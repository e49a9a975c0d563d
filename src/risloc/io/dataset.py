"""A PyTorch Dataset over a scene file (HDF5 opened lazily per worker, or NPZ in memory)."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from risloc.io.scenefile import (
    SceneFileError,
    SceneFileInfo,
    SceneReader,
    check_truth,
    inspect_scene_file,
    is_npz,
    read_scenes,
)
from risloc.simulation.scenes import SceneBatch
from risloc.simulation.streams import concat_batches


class SceneDataset(Dataset):
    """Scenes of a file; item ``i`` is a one-scene SceneBatch.

    Use :func:`collate_scenes` as the DataLoader's ``collate_fn``. For throughput on
    large HDF5 files prefer :meth:`batches`, which reads contiguous slices.
    """

    def __init__(self, path: str | Path, in_memory: bool | None = None):
        self.path = Path(path)
        self.info: SceneFileInfo = inspect_scene_file(self.path)
        check_truth(self.info)  # unusable truth: an error now, not at the first batch
        in_memory = is_npz(self.path) if in_memory is None else in_memory
        self._cache: SceneBatch | None = read_scenes(self.path)[0] if in_memory else None
        self._reader: tuple[int, SceneReader] | None = None  # (pid, reader): per process

    def _read(self, lo: int, hi: int) -> SceneBatch:
        """Scenes lo..hi-1 through this process's open file (a DataLoader's worker opens its
        own: an HDF5 handle does not survive a fork)."""
        if self._reader is None or self._reader[0] != os.getpid():
            self._reader = (os.getpid(), SceneReader(self.path))
        return self._reader[1].read(lo, hi)

    def __getstate__(self) -> dict:  # to spawned workers: without the open file
        return {**self.__dict__, "_reader": None}

    def __del__(self) -> None:
        if getattr(self, "_reader", None) is not None and self._reader[0] == os.getpid():
            self._reader[1].close()

    @property
    def system(self):
        return self.info.system

    def __len__(self) -> int:
        return self.info.n_scenes

    def __getitem__(self, i: int) -> SceneBatch:
        if not -len(self) <= i < len(self):
            raise IndexError(f"scene {i} out of range 0..{len(self) - 1}")
        i = i % len(self)
        if self._cache is not None:
            return self._cache[i:i + 1]
        return self._read(i, i + 1)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None):
        """Yield contiguous SceneBatches of ``batch_size`` scenes."""
        if batch_size < 1:
            raise SceneFileError(f"batch_size must be >= 1, got {batch_size}")
        stop = len(self) if stop is None else min(stop, len(self))
        if not 0 <= start <= stop:  # (in memory, a negative start sliced from the end)
            raise SceneFileError(f"{self.path}: bad scene range {start}..{stop} of "
                                 f"{len(self)}")
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            yield self._cache[lo:hi] if self._cache is not None else self._read(lo, hi)


def collate_scenes(items: list[SceneBatch]) -> SceneBatch:
    """DataLoader collate function: concatenate one-scene batches."""
    if not items:
        raise ValueError("collate_scenes: no scenes to collate (an empty list)")
    return concat_batches(items)


__all__ = ["SceneDataset", "collate_scenes"]
