"""A PyTorch Dataset over a scene file (HDF5 opened lazily per worker, or NPZ in memory)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from risloc.io.scenefile import SceneFileInfo, check_truth, inspect_scene_file, read_scenes
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
        in_memory = self.path.suffix == ".npz" if in_memory is None else in_memory
        self._cache: SceneBatch | None = read_scenes(self.path)[0] if in_memory else None

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
        return read_scenes(self.path, i, i + 1)[0]

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None):
        """Yield contiguous SceneBatches of ``batch_size`` scenes."""
        stop = len(self) if stop is None else min(stop, len(self))
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            yield self._cache[lo:hi] if self._cache is not None else \
                read_scenes(self.path, lo, hi)[0]


def collate_scenes(items: list[SceneBatch]) -> SceneBatch:
    """DataLoader collate function: concatenate one-scene batches."""
    return concat_batches(items)


__all__ = ["SceneDataset", "collate_scenes"]
