"""Scene and estimate files."""

from risloc.io.dataset import SceneDataset, collate_scenes
from risloc.io.scenefile import (
    SceneFileError,
    SceneFileInfo,
    SceneFileWriter,
    SceneReader,
    inspect_scene_file,
    read_scenes,
    write_scenes,
)

__all__ = [
    "SceneDataset", "SceneFileError", "SceneFileInfo", "SceneFileWriter", "SceneReader",
    "collate_scenes", "inspect_scene_file", "read_scenes", "write_scenes",
]
