"""Checkpoint files: atomic writing, reading, rebuilding the trained network, exporting
the inference-only model.

A checkpoint is a dict holding the model weights, the EMA (and SWA) averaged weights, the
optimizer / scheduler / scaler state, epoch and step counters, RNG state, the metric
history and the full recipe as JSON, so that ``--resume`` continues exactly and
evaluation and inference rebuild the network without the recipe file.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import statistics
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import risloc
from risloc.inference.recipe import InferenceRecipe
from risloc.io.atomic import atomic_path, check_writable, write_json_atomic
from risloc.model.network import CovarianceNet

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`risloc.io.atomic.atomic_path`): a
    crash never leaves a truncated checkpoint behind. The file holds a SHA-256 digest of
    its content, checked on every load."""
    path = Path(path)
    body = {"format_version": FORMAT_VERSION, **state}
    body.pop("sha256", None)
    payload = _serialise(body)
    try:
        with atomic_path(path) as tmp:
            torch.save({"payload": payload, "sha256": hashlib.sha256(payload).hexdigest(),
                        "format_version": FORMAT_VERSION}, tmp)
    except RuntimeError as err:  # torch's writer: "[enforce fail ...] unexpected pos ..."
        raise OSError(f"cannot write the checkpoint {path} ({len(payload) / 1e6:.1f} MB; is "
                      f"the disk full?): {' '.join(str(err).split())[:200]}") from None
    return path


def _serialise(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


_FOREIGN_OBJECTS = ("{path} is not a risloc checkpoint: it holds Python objects other than "
                    "tensors and plain values, and is not loaded (for safety)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain Python values only: weights_only loading).

    FileNotFoundError when absent; ValueError when it is not a readable risloc checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        files = sorted(p.name for p in path.glob("*.pt") if p.is_file())
        pick = "model.pt" if "model.pt" in files else (files[0] if files else None)
        raise ValueError(f"{path} is a folder, not a checkpoint: "
                         + (f"give a file in it, e.g. {path / pick}" if pick
                            else "give the checkpoint file (it holds no .pt file)"))
    with path.open("rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch files are zip archives
        card = (f": it is a model card, give the model beside it, "
                f"{path.with_suffix('.pt').name}" if path.suffix.lower() == ".json" else "")
        raise ValueError(f"{path} is not a risloc checkpoint (not a file torch writes"
                         f"{': it is empty' if not head else card})")
    if not zipfile.is_zipfile(path):  # a zip archive's directory is at its end
        raise ValueError(f"{path} is a truncated checkpoint (its end is missing: an "
                         "incomplete copy or download?)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused an object: not one of ours
        raise ValueError(_FOREIGN_OBJECTS.format(path=path)) from None
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise ValueError(f"{path} is not a risloc checkpoint, or is damaged (torch cannot read "
                         "it: "
                         f"{type(err).__name__}: "
                         f"{_first_line(str(err)) or 'no detail'})"
                         ) from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer risloc (checkpoint format {version}; "
                         f"this version, {risloc.__version__}, reads format {FORMAT_VERSION}): "
                         "upgrade risloc to read it")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} is a torch file but not a risloc checkpoint (risloc "
                         f"writes its checkpoints and models in format {FORMAT_VERSION}, with "
                         "'format_version' among their keys)")
    if "payload" not in state:  # written before checkpoints carried a digest
        return state
    payload = state["payload"]
    if not isinstance(payload, bytes) or hashlib.sha256(payload).hexdigest() != \
            state.get("sha256"):
        raise ValueError(f"{path}: damaged checkpoint (its content does not match its "
                         "SHA-256 digest)")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # a digest proves integrity, not origin
        raise ValueError(_FOREIGN_OBJECTS.format(path=path)) from None
    except Exception as err:  # noqa: BLE001 - any failure here is a damaged file
        raise ValueError(f"{path}: unreadable checkpoint content ({err})") from None


def _first_line(text: str, width: int = 200) -> str:
    """The first line of ``text``, shortened to ``width`` characters with an ellipsis."""
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= width else line[:width - 3].rstrip() + "..."


def averaged_weights(state: dict[str, Any], which: str) -> dict[str, torch.Tensor]:
    """The network weights of an AveragedModel state dict ('ema' or 'swa')."""
    avg = state.get(which)
    if avg is None:
        raise ValueError(f"the checkpoint holds no {which!r} weights")
    return {k[len("module."):]: v for k, v in avg.items() if k.startswith("module.")}


def model_from_state(state: dict[str, Any], weights: str = "ema"
                     ) -> tuple[CovarianceNet, InferenceRecipe]:
    """Rebuild the trained network of a loaded checkpoint, in eval mode, and its recipe.

    weights : 'ema' (default, what validation selected), 'swa' or 'raw'.
    """
    if weights not in ("ema", "swa", "raw"):
        raise ValueError(f"weights must be 'ema', 'swa' or 'raw', got {weights!r}")
    try:
        recipe = InferenceRecipe.from_json(state["config"])
        model = CovarianceNet(recipe.system, recipe.network_config())
        sd = state["model"] if weights == "raw" else averaged_weights(state, weights)
        model.load_state_dict(sd)
    except (AttributeError, KeyError, RuntimeError, TypeError) as err:
        raise ValueError(f"the checkpoint does not hold a risloc network ({err})") from None
    return model.eval(), recipe


def load_model(path: str | Path, weights: str = "ema",
               map_location: str | torch.device = "cpu"
               ) -> tuple[CovarianceNet, InferenceRecipe]:
    """Rebuild the trained network of a checkpoint file (see :func:`model_from_state`)."""
    return model_from_state(load_checkpoint(path, map_location), weights)


INFERENCE_KEYS = ("format_version", "config", "epoch", "step", "ema", "swa", "best", "history",
                  "order_head", "order_report")


MODEL_SUFFIXES = (".pt", ".pth")


def model_card_path(model: str | Path) -> Path:
    """The model card of a model file: ``model.pt`` -> ``model.json``."""
    return Path(model).with_suffix(".json")


def check_model_target(dst: str | Path, src: str | Path, in_place: bool = False) -> Path:
    """ValueError unless ``dst`` may receive a model made from ``src`` and its card
    (:func:`model_card_path`) may be written beside it, checked before any work: ``dst``
    ends in .pt / .pth (so its card is not itself, nor the card of another model it would
    be mistaken for), is not ``src`` (unless ``in_place``), and its card is not ``src``'s
    card (unless in place) nor ``src``."""
    dst, src = Path(dst), Path(src)
    if dst.is_dir():
        raise ValueError(f"{dst} is a folder: name the model file to write in it, e.g. "
                         f"{dst / 'model.pt'}")
    if dst.suffix.lower() not in MODEL_SUFFIXES:
        raise ValueError(f"the model file {dst} must end in .pt (or .pth): its model card "
                         f"is written beside it as <name>.json")
    same = dst.resolve() == src.resolve()
    check_writable(dst, inputs=[] if in_place else [src])
    card, src_card = model_card_path(dst), model_card_path(src)
    if not same and card.resolve() == src_card.resolve():
        raise ValueError(f"the model card of {dst} would be {card}, the card of the input "
                         f"{src}: give the new model another name")
    check_writable(card, inputs=[src])
    return dst


def _validation_text(data: dict, scene: dict) -> str:
    """What a recipe validated on, for the model card (its ``data`` and ``scene``)."""
    shown = data.get("snr_shown", 1.0) == 1  # (validation_set: shown to all or to none)
    how = (f"; the SNR {'shown to the network' if shown else 'withheld from the network'}; "
           "MUSIC on R_blend with the network's K, no NF-MLE; EMA weights")
    if data.get("val_file"):
        return f"the scenes of the file {data['val_file']}{how}"
    spread = scene.get("power_spread_db")
    n = len(data.get("scene_mix") or ())
    kinds = f", mixed with the {n} kind{'s' * (n > 1)} of data.scene_mix" if n else ""
    k = f"K = {scene['K']}" if scene.get("K") is not None else "K uniform in 1..K_max"
    return (f"{data.get('n_val')} scenes of the validation split (seed {data.get('seed')}"
            f", from scene {data.get('val_offset', 0)}): SNR uniform in {scene.get('snr_db')}"
            f" dB, {k}, source powers spread over {spread} dB{kinds}{how}")


def _origin(src: str | Path, state: dict) -> str:
    """The training checkpoint a model comes from: ``src`` itself, or where ``src`` is an
    exported model (no training state), the origin its card records (a re-export names the
    training run, not the intermediate copy)."""
    here = str(Path(src).resolve())
    if not set(state) <= set(INFERENCE_KEYS):
        return here
    try:
        origin = json.loads(model_card_path(src).read_text()).get("exported_from")
    except (OSError, ValueError, AttributeError):  # no card, or not one
        return here
    return origin if isinstance(origin, str) and origin else here


def export_model(src: str | Path, dst: str | Path,
                 verify: Callable[[Path], object] | None = None) -> Path:
    """Write an inference-only copy of a training checkpoint (config + averaged weights,
    no optimizer/scheduler/RNG state) and its model card ``<dst>.json`` (the validation
    metrics of the exported epoch, the training history summary), both atomically. This is
    how the shipped model is made. ``verify(path)`` (e.g. loading it as a pipeline) runs on
    the written model before it takes ``dst``'s name: a model that fails it replaces
    nothing."""
    dst = check_model_target(dst, src)
    card_path = model_card_path(dst)
    state = load_checkpoint(src)
    slim = {k: state[k] for k in INFERENCE_KEYS if k in state}
    model_from_state(slim)  # names what is missing (e.g. the EMA weights) before any write
    history = state.get("history") or []
    row = next((h for h in history if h.get("epoch") == state.get("epoch")), {})
    cfg = json.loads(state["config"]) if isinstance(state["config"], str) else state["config"]
    data, scene = cfg.get("data", {}), cfg.get("scene", {})
    card = {
        "risloc_version": risloc.__version__,
        "exported_from": _origin(src, state),
        "epoch": state.get("epoch"), "optimizer_steps": state.get("step"),
        "epochs_logged": len(history),
        "seconds_per_epoch_median": (statistics.median(h["seconds"] for h in history)
                                     if history and all("seconds" in h for h in history)
                                     else None),
        "validation_set": _validation_text(data, scene),
        "validation": {k[4:]: v for k, v in row.items() if k.startswith("val_")},
        "config": cfg,
    }
    if state.get("order_report") is not None:  # a model with its order head (fit-order)
        card["order_head"] = state["order_report"]
    with atomic_path(dst) as tmp:  # checked under a temporary name, then renamed
        save_checkpoint(tmp, slim)
        if verify is not None:
            try:
                verify(tmp)
            except ValueError as err:  # named by the input, not the temporary written
                raise ValueError(str(err).replace(str(tmp), str(src))) from None
        # a kill between the two renames leaves a model without a card, never one beside
        # the card of the model it replaced
        card_path.unlink(missing_ok=True)
    write_json_atomic(card_path, card, default=str)
    return dst
