"""What inference needs of a training recipe, read from a checkpoint's stored recipe.

A checkpoint stores its full training recipe (:class:`risloc.training.config.TrainConfig`)
as JSON. Inference reads only the sections that define the network and how its output
is used: ``system``, ``scene`` (the field of view), ``model``, ``blend`` and, of ``data``,
``snr_shown`` and ``scene_mix`` (the scenes the order head is fitted on). The blend
settings live here, below training, since training, validation and inference make R_blend
with the same :func:`risloc.inference.forward.forward_blend`.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from risloc.config import (
    ConfigError,
    FieldOfView,
    Mixture,
    SceneConfig,
    SceneKind,
    SystemConfig,
    format_validation_error,
    scene_mixture,
)
from risloc.model.network import ModelConfig


class BlendConfig(BaseModel):
    """R_blend = (1 - beta) R_pred + beta R_samp (``risloc.covariance.blend``), then optional
    shrinkage and diagonal loading -- identical in training, validation and inference."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    beta: float = Field(0.30, ge=0, le=1, description="final blend weight of R_samp")
    shrinkage: float = Field(0.0, ge=0, le=1)
    loading: float = Field(0.0, ge=0)
    bp_alpha: float = Field(1e-3, gt=0, description="Tikhonov weight of R_samp")


class _DataView(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    snr_shown: float = Field(1.0, ge=0, le=1)
    seed: int = Field(0, ge=0)
    scene_mix: tuple[SceneKind, ...] = ()


class InferenceRecipe(BaseModel):
    """The inference view of a stored recipe (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    system: SystemConfig = SystemConfig()
    scene: SceneConfig = SceneConfig()
    model: ModelConfig = ModelConfig()
    blend: BlendConfig = BlendConfig()
    data: _DataView = _DataView()

    @field_validator("model", mode="before")
    @classmethod
    def _no_unknown_model_keys(cls, value: Any) -> Any:
        """An unknown key of ``model`` is refused, not dropped (extra="ignore" above reaches
        the dataclass): a network built without it would differ from the one trained."""
        if isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in fields(ModelConfig)})
            if unknown:
                raise ValueError(f"unknown model key(s) {', '.join(unknown)} (a recipe of a "
                                 "newer risloc? upgrade risloc to read it)")
        return value

    @property
    def fov(self) -> FieldOfView:
        """The field of view the network was trained on (its scene's)."""
        return self.scene.fov

    @property
    def reads_snr(self) -> bool:
        """Whether the network was ever given the SNR in training (else it never is)."""
        return self.data.snr_shown > 0

    def network_config(self) -> ModelConfig:
        """ModelConfig with the scene's field of view."""
        return replace(self.model, fov=self.fov)

    def scenes(self, scene: SceneConfig | None = None) -> SceneConfig | Mixture:
        """The scenes the network was trained on: ``scene`` (default: the recipe's), or the
        mixture of it and ``data.scene_mix``
        (:meth:`risloc.training.config.TrainConfig.scenes`)."""
        scene = self.scene if scene is None else scene
        return scene_mixture(scene, self.data.scene_mix) if self.data.scene_mix else scene

    @classmethod
    def from_json(cls, text: str) -> InferenceRecipe:
        try:
            return cls.model_validate(migrate_recipe(json.loads(text)))
        except ValidationError as err:  # one line naming each field, not pydantic's dump
            why = format_validation_error(err, "recipe", cls).partition(": ")[2]
            raise ConfigError(f"the checkpoint's recipe is invalid: {why}") from None
        except ValueError as err:
            raise ConfigError(f"the checkpoint's recipe is invalid: {err}") from None


_RETIRED = {"model": ("azimuth_deg", "elevation_deg", "range_m"), "order": ("unknown_snr",)}


def migrate_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """Older stored recipes, read as today's: the ``model`` section's own field of view
    (always replaced by the scene's) and ``order.unknown_snr`` (the order head no longer
    reads the SNR) are dropped."""
    if not isinstance(data, dict):  # refused by the validation, naming what it is
        return data
    for section, keys in _RETIRED.items():
        sec = data.get(section)
        if isinstance(sec, dict):
            data = {**data, section: {k: v for k, v in sec.items() if k not in keys}}
    return data
