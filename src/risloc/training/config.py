"""Typed, validated training configuration (a recipe), loadable from YAML / TOML.

A recipe file holds the ``system`` and ``scene`` sections of ``risloc.config`` plus
``model`` (ModelConfig), ``loss`` (LossConfig), ``optim``, ``schedule``, ``data``,
``evaluation`` and a few top-level keys. Dotted overrides (``--set optim.lr=3e-4``)
apply to any section. The network's and MUSIC's field of view always follow ``scene``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from risloc.config import (
    ConfigError,
    ConfigSection,
    Mixture,
    SceneConfig,
    SceneKind,
    SystemConfig,
    check_scene_K,
    format_validation_error,
    merge_nested,
    parse_overrides,
    read_config_file,
    recipe_path,
    replace_scene_fields,
    scene_mixture,
    validate_config,
)
from risloc.estimators.music import MusicConfig
from risloc.inference.recipe import BlendConfig, migrate_recipe
from risloc.losses.total import LossConfig
from risloc.model.network import ModelConfig
from risloc.pipeline.order import MIN_ORDER_SCENES

Beta = Annotated[float, Field(ge=0, lt=1)]  # (AdamW refuses others only when it starts)


class OptimConfig(ConfigSection):
    """AdamW, warm-up + cosine learning rate (per optimizer step), clipping, accumulation."""

    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="final lr / lr of the cosine")
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    warmup_steps: int = Field(200, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=1)
    accumulation: int = Field(1, ge=1, description="micro-batches per optimizer step")
    amp: bool = Field(True, description="mixed precision; only ever enabled on CUDA")


class ScheduleConfig(ConfigSection):
    """Epochs, beta annealing (0 -> blend.beta), loss-weight phases, EMA / SWA, early
    stopping, SNR curriculum.

    weight_schedule maps a LossConfig weight name to its (warm-up, main, final) values;
    the warm-up phase is the first ``weight_warmup_epochs`` epochs, the final phase the
    last ``weight_final_frac`` of the epochs.
    """

    epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(200, ge=1, description="optimizer steps per epoch")
    beta_warmup_frac: float = Field(0.2, ge=0, le=1)
    hpo_mode: bool = False
    beta_jitter: float = Field(0.05, ge=0, le=0.5)
    beta_jitter_hpo: float = Field(0.02, ge=0, le=0.5)
    weight_schedule: dict[str, tuple[float, float, float]] = {
        "lam_subspace_align": (0.02, 0.05, 0.07), "lam_peak_contrast": (0.05, 0.10, 0.12)}
    weight_warmup_epochs: int = Field(2, ge=0)
    weight_final_frac: float = Field(0.2, ge=0, le=1)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    swa_frac: float = Field(0.2, ge=0, lt=1, description="final fraction of epochs with SWA")
    swa_lr_ratio: float = Field(0.2, gt=0, le=1, description="SWA lr / optim.lr")
    swa_anneal_epochs: int = Field(1, ge=1)
    patience: int = Field(10, ge=1, description="epochs without improvement before stopping")
    min_improvement: float = Field(0.0, ge=0, description="objective decrease that counts")
    snr_curriculum: bool = False
    curriculum_frac: float = Field(0.3, ge=0, le=1)
    curriculum_start_db: tuple[float, float] = (10.0, 20.0)

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        bad = [k for k in self.weight_schedule if k not in LossConfig.__dataclass_fields__
               or not k.startswith("lam_")]
        if bad:
            raise ValueError(f"weight_schedule names unknown loss weights {bad}")
        # (LossConfig's rule, else the phase that sets it fails the run mid-way)
        bad = {k: v for k, v in self.weight_schedule.items() if min(v) < 0}
        if bad:
            raise ValueError(f"weight_schedule values are loss weights, >= 0; got {bad}")
        return self


class DataConfig(ConfigSection):
    """Training data (seeded simulator stream or a scene file) and the fixed validation set."""

    seed: int = Field(0, ge=0)
    stream: int = Field(1, ge=0, description="scene_stream index of the training stream")
    train_file: Path | None = Field(None, description=(
        "train on this scene file's scenes (truth required; its system must be the "
        "recipe's) instead of the simulator; the order head is still fitted on simulated "
        "scenes of `scene` (order.*)"))
    val_file: Path | None = Field(None, description=(
        "validate on this scene file's scenes (as train_file) instead of n_val simulated"))

    @field_validator("train_file", "val_file")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        """Relative paths are taken from the current folder and kept absolute, so a run
        resumes, and its model card names its data, from any folder."""
        return None if path is None else path.expanduser().absolute()
    n_val: int = Field(512, ge=1)
    val_offset: int = Field(0, ge=0, description="first validation-split scene")
    val_batch_size: int = Field(128, ge=1)
    shards: int = Field(1, ge=1, description=(
        "shards of every global batch, each from its own seeded stream (batch_size / "
        "shards scenes); data-parallel training with N processes needs shards = N, and one "
        "process with the same shards follows the same trajectory; loss.spectral_scenes "
        "counts scenes of the global batch, spectral_scenes / shards from each shard"))
    snr_shown: float = Field(1.0, ge=0, le=1, description=(
        "share of training scenes whose SNR the network is given (the rest: NaN = unknown); "
        "0 = never, and the learned pipeline then ignores the SNR (users' files rarely carry "
        "one). The validation scenes show it only when this is 1"))
    scene_mix: tuple[SceneKind, ...] = Field((), description=(
        "other kinds of scene in the training, validation and order-head scenes, each a "
        "share of them drawn with some `scene` fields replaced (dense patches, near "
        "sources, other codebooks, ...); the base `scene` takes the rest"))


class EvalConfig(ConfigSection):
    """End-to-end validation: near-field MUSIC on R_blend with the predicted K.

    objective = median angle error [deg] + f1_weight_deg (1 - F1)  (lower is better)
    """

    n_azimuth: int = Field(81, ge=2)
    n_elevation: int = Field(41, ge=2)
    n_range: int = Field(16, ge=2)
    refine_iterations: int = Field(6, ge=0)
    f1_weight_deg: float = Field(5.0, ge=0)




class OrderStageConfig(ConfigSection):
    """The order head (risloc.pipeline.order) that `risloc train` fits after training: the
    run's best checkpoint is exported to <out_dir>/model.pt (the inference model, as
    shipped) and its head fitted there (risloc.pipeline.calibrate.fit_order)."""

    scenes: int = Field(16384, ge=0, description="training-split scenes (0 = skip this stage)")
    report_scenes: int = Field(256, ge=1, description="validation scenes per SNR of the report")
    scene: dict[str, Any] = Field(default_factory=dict, description=(
        "SceneConfig fields replaced in the recipe's scene distribution for the head's "
        "training scenes, e.g. {power_spread_db: [0, 25]} (powers spread wider than the "
        "network trained on teach the head to keep weak sources); empty: the recipe's"))
    scene_mix: bool = Field(True, description=(
        "the head's scenes follow data.scene_mix; false: the base scene alone (a network "
        "trained on a mixture, its K decision fitted for the scenes users have most)"))

    @model_validator(mode="after")
    def _check(self) -> OrderStageConfig:
        if 0 < self.scenes < MIN_ORDER_SCENES:
            raise ValueError(f"order.scenes must be 0 (skip) or >= {MIN_ORDER_SCENES}, got "
                             f"{self.scenes}")
        return self


class TrainConfig(ConfigSection):
    """The full training recipe."""

    system: SystemConfig = SystemConfig()
    scene: SceneConfig = SceneConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    blend: BlendConfig = BlendConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    data: DataConfig = DataConfig()
    evaluation: EvalConfig = EvalConfig()
    order: OrderStageConfig = OrderStageConfig()
    out_dir: Path = Path("runs/train")
    seed: int = Field(0, ge=0, description="seed of initialisation and beta jitter")
    threads: int = Field(0, ge=0, description="torch CPU threads (0 = leave as is)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    prefetch: bool | Literal["thread", "process"] | None = Field(None, description=(
        "simulate the next micro-batch while the current one trains (the same batches): "
        "true or thread in a background thread, process in a worker process (no shared "
        "interpreter); None = a thread on CUDA only, where simulating a batch of 512 on the "
        "CPU took 0.107 s of a 0.27 s step on an H200"))
    cuda_graphs: bool = Field(True, description=(
        "on CUDA, replay the network's ML refinement of its slots (about a quarter of a "
        "training step's kernel launches) from CUDA graphs captured once per batch shape: "
        "a step of 512 on a ready batch took 0.080 s with, 0.106 s without on an H200 "
        "(benchmarks/device_speed.sh); no effect on the CPU"))
    simulate_on: Literal["host", "device"] = Field("host", description=(
        "where the physics of simulated training batches runs: host, or the training "
        "device, in the training thread; the draws stay on the host (the batches are the "
        "scenes of their seeds up to float rounding) and are all the prefetching thread "
        "makes: 35-52 % of the time of a batch of 512 on one CPU thread "
        "(benchmarks/bench_simulate.py); an experiment for a GPU lease; not with "
        "prefetch=process (CUDA in forked workers)"))
    progress: bool = True
    log_every: int = Field(20, ge=1, description="optimizer steps between step-log rows")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        validate_config({"system": self.system.model_dump(), "scene": self.scene.model_dump()})
        S, n = self.data.shards, self.loss.spectral_scenes
        if S > 1 and n % S:
            raise ValueError(f"loss.spectral_scenes={n} must be a multiple of data.shards={S} "
                             "(each shard factorises its equal share of them)")
        if self.simulate_on == "device" and self.prefetch == "process":
            raise ValueError("simulate_on=device cannot run in prefetch=process's workers "
                             "(CUDA does not survive a fork): use prefetch=thread")
        lo, hi = self.schedule.curriculum_start_db
        if self.schedule.snr_curriculum and not lo <= hi:  # (drawn between them, silently)
            raise ValueError(f"schedule.curriculum_start_db = [{lo:g}, {hi:g}] is reversed: it "
                             "is the SNR range [low, high] the curriculum starts from, moving "
                             f"to scene.snr_db = [{self.scene.snr_db[0]:g}, "
                             f"{self.scene.snr_db[1]:g}]")
        # fail before training: the order stage's scene, the mixture's kinds (valid scenes
        # inside the field of view, scene_mixture), each K within the system's
        check_scene_K(replace_scene_fields(self.scene, self.order.scene, "order.scene"),
                      self.system.K_max, "order.scene")
        for i, (_, sc) in enumerate(self.scenes()[1:] if self.data.scene_mix else ()):
            check_scene_K(sc, self.system.K_max, f"data.scene_mix[{i}].scene")
        return self

    def scenes(self, scene: SceneConfig | None = None) -> SceneConfig | Mixture:
        """The scene distribution: ``scene`` (default: the recipe's) or, with
        ``data.scene_mix``, the mixture of it and the other kinds."""
        scene = self.scene if scene is None else scene
        return scene_mixture(scene, self.data.scene_mix) if self.data.scene_mix else scene


    def network_config(self) -> ModelConfig:
        """ModelConfig with the scene's field of view."""
        return replace(self.model, fov=self.scene.fov)

    def music_config(self) -> MusicConfig:
        e, s = self.evaluation, self.scene
        return MusicConfig(n_azimuth=e.n_azimuth, n_elevation=e.n_elevation,
                           n_range=e.n_range, refine_iterations=e.refine_iterations,
                           fov=s.fov)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, overrides: list[str] | None = None) -> TrainConfig:
        """A recipe stored in a checkpoint (older formats migrated, :func:`_migrate`), with
        dotted overrides applied."""
        data, given = migrate_recipe(json.loads(text)), parse_overrides(overrides)
        # (not a dict: refused by the validation, naming it; merged, [] read as the defaults
        # and null as a TypeError)
        cfg = validate_train_config(merge_nested(data, given) if isinstance(data, dict)
                                    else data)
        # the stored recipe holds every loss weight: only the overrides can set one anew
        return _no_scheduled_loss_weight(cfg, given)


#: top-level recipe fields that do not change what a run computes: how and where it runs,
#: where it writes, and the order head fitted after it
RUN_FREE = ("progress", "threads", "device", "prefetch", "cuda_graphs", "simulate_on",
            "log_every", "out_dir", "order")
#: the stopping rule: it ends a run, without changing its trajectory up to that point
STOPPING_FIELDS = ("schedule.patience", "schedule.min_improvement")


def trajectory(cfg: TrainConfig, stopping: bool = True) -> dict[str, Any]:
    """The recipe's fields that decide what a run computes (JSON-like; without RUN_FREE, and
    without the stopping rule unless ``stopping``): two runs, or a resumed run and its
    checkpoint, or the trials of one study, must agree on them. A scene file reads "given",
    not its path: the callers compare the files themselves (by SHA-256), so the same file
    named from another folder or machine is the same run."""
    d = cfg.model_dump(mode="json", exclude=set(RUN_FREE))
    if not stopping:
        for key in STOPPING_FIELDS:
            d["schedule"].pop(key.split(".")[1])
    for key in ("train_file", "val_file"):
        if d["data"].get(key) is not None:
            d["data"][key] = "given"
    return d


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'section.field: old -> new' for every differing leaf of two nested dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def listed(diff: list[str], n: int = 6) -> str:
    """The first ``n`` of :func:`differences`' lines joined, with how many more there are."""
    more = f"; and {len(diff) - n} more" if len(diff) > n else ""
    return "; ".join(diff[:n]) + more


def validate_train_config(data: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict; ConfigError names the offending field."""
    try:
        return TrainConfig.model_validate(data)
    except (ValidationError, ValueError) as err:
        msg = (format_validation_error(err, "training configuration", TrainConfig)
               if isinstance(err, ValidationError) else str(err))
        raise ConfigError(msg) from None


def load_train_config(path: str | Path | None = None,
                      overrides: list[str] | None = None) -> TrainConfig:
    """Read a recipe (a YAML / TOML file, or a shipped recipe's name such as 'train_default';
    None = the built-in defaults) and apply dotted overrides."""
    data = read_config_file(recipe_path(path)) if path is not None else {}
    data = merge_nested(data, parse_overrides(overrides))
    return _no_scheduled_loss_weight(validate_train_config(data), data)


def _no_scheduled_loss_weight(cfg: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """``cfg``, or ConfigError where ``given`` (what the user set) sets a loss weight that
    schedule.weight_schedule sets every epoch."""
    scheduled = cfg.schedule.weight_schedule
    clash = sorted(k for k in given.get("loss") or {} if k in scheduled)
    if clash:  # the schedule would replace the value set each epoch, silently
        k = clash[0]
        raise ConfigError(f"loss.{k} is set, but {scheduled_message(k, scheduled)}: set the "
                          f"schedule instead, e.g. --set "
                          f"'schedule.weight_schedule.{k}=[0, 0, 0]'")
    return cfg


def scheduled_message(term: str, scheduled: dict[str, Any]) -> str:
    """Why a loss weight that schedule.weight_schedule sets cannot be set (or searched)."""
    return (f"schedule.weight_schedule sets it every epoch "
            f"({', '.join(f'{v:g}' for v in scheduled[term])} in the warm-up, main and final "
            "phases)")
