"""Checkpoints: atomic writes, loading, and rebuilding a trained model for inference.

A checkpoint is a dict holding the model weights, the EMA (and SWA) averaged weights, the
optimizer / scheduler / scaler state, epoch and step counters, RNG state, the metric
history and the full recipe as JSON, so that ``--resume`` continues exactly and
evaluation rebuilds the network without the recipe file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from risloc.model.network import CovarianceNet
from risloc.training.config import TrainConfig

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, fsync,
    os.replace): a crash never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save({"format_version": FORMAT_VERSION, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain Python values only: weights_only loading)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a risloc training checkpoint (format "
                         f"{FORMAT_VERSION})")
    return state


def averaged_weights(state: dict[str, Any], which: str) -> dict[str, torch.Tensor]:
    """The network weights of an AveragedModel state dict ('ema' or 'swa')."""
    avg = state.get(which)
    if avg is None:
        raise ValueError(f"the checkpoint holds no {which!r} weights")
    return {k[len("module."):]: v for k, v in avg.items() if k.startswith("module.")}


def model_from_state(state: dict[str, Any], weights: str = "ema"
                     ) -> tuple[CovarianceNet, TrainConfig]:
    """Rebuild the trained network of a loaded checkpoint, in eval mode.

    weights : 'ema' (default, what validation selected), 'swa' or 'raw'.
    """
    cfg = TrainConfig.from_json(state["config"])
    model = CovarianceNet(cfg.system, cfg.network_config())
    sd = state["model"] if weights == "raw" else averaged_weights(state, weights)
    model.load_state_dict(sd)
    return model.eval(), cfg


def load_model(path: str | Path, weights: str = "ema",
               map_location: str | torch.device = "cpu") -> tuple[CovarianceNet, TrainConfig]:
    """Rebuild the trained network of a checkpoint file (see :func:`model_from_state`)."""
    return model_from_state(load_checkpoint(path, map_location), weights)
