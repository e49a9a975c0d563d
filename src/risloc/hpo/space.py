"""The search space of ``risloc tune``, declared in a YAML file the user can edit
(``risloc/hpo/search_space.yaml``): one entry per recipe field."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from risloc.config import ConfigError, did_you_mean, load_yaml, merge_nested, parse_overrides
from risloc.training.config import (
    TrainConfig,
    load_train_config,
    scheduled_message,
    validate_train_config,
)


@dataclass(frozen=True)
class Dimension:
    """One searched recipe field: a float range (log scale, optionally relative to the base
    recipe's value) or a list of choices."""

    field: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    relative: bool = False
    choices: tuple[Any, ...] | None = None

    @property
    def name(self) -> str:
        return self.field

    def suggest(self, trial, base: TrainConfig) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.field, list(self.choices))
        v = trial.suggest_float(self.field, self.low, self.high, log=self.log)
        return v * _get(base, self.field) if self.relative else v

    def base_param(self, base: TrainConfig) -> Any:
        """The trial parameter that reproduces the base recipe's value (1.0 on a relative
        scale); ConfigError when the space does not contain it."""
        v = 1.0 if self.relative else _get(base, self.field)
        if self.choices is not None:  # (a tuple field's choices: lists, as YAML gives them)
            plain = list(v) if isinstance(v, tuple) else v
            inside = [c for c in self.choices if c == plain]
        else:
            inside = [v] if self.low <= v <= self.high else []
        if not inside:
            span = self.choices if self.choices is not None else (self.low, self.high)
            raise ConfigError(f"the base recipe's {self.field}={_get(base, self.field)!r} "
                              f"lies outside the search space {span}: widen the space or "
                              "run without the baseline trial")
        return inside[0]

    def value(self, params: dict[str, Any], base: TrainConfig) -> Any:
        """The recipe value a trial's parameters mean."""
        v = params[self.field]
        return v * _get(base, self.field) if self.relative else v


def _get(cfg: TrainConfig, field: str) -> Any:
    node: Any = cfg
    for part in field.split("."):
        node = getattr(node, part)
    return node


def load_space(path: str | Path, base: TrainConfig | None = None) -> tuple[Dimension, ...]:
    """Read and check a search-space file: ConfigError naming the entry on any problem."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"search space file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"the search space {path} is a folder, not a YAML file")
    try:
        data = load_yaml(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"search space file {path} is not valid YAML: "
                          f"{' '.join(str(err).split())[:300]}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping of recipe fields to ranges")
    base = base or load_train_config(None)
    dims = []
    for field, spec in data.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: {field}: expected a mapping, got {spec!r}")
        unknown = set(spec) - {"low", "high", "log", "relative", "choices"}
        if unknown:
            raise ConfigError(f"{path}: {field}: unknown keys {sorted(unknown)}")
        if field in SET_BY_TUNE:
            raise ConfigError(f"{path}: {field} is set by risloc tune itself (--epochs, the "
                              "trial's folder, HPO mode), so it cannot be searched")
        try:
            current = _get(base, field)
        except AttributeError:
            raise ConfigError(f"{path}: {field} is not a recipe field"
                              f"{did_you_mean(type(base), str(field).split('.'), False)}"
                              ) from None
        if isinstance(current, BaseModel) or isinstance(current, dict):
            raise ConfigError(f"{path}: {field} is a section of the recipe; search its "
                              "fields (e.g. optim.lr)")
        if "choices" in spec:
            ranged = sorted(set(spec) - {"choices"})
            if ranged:  # (they would be dropped: a relative choice taken as the value)
                raise ConfigError(f"{path}: {field}: choices are the values themselves; "
                                  f"{', '.join(ranged)} belong to a range (low, high)")
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{path}: {field}: choices must be a non-empty list")
            if any(choices.index(c) != i for i, c in enumerate(choices)):
                raise ConfigError(f"{path}: {field}: a choice is listed twice in {choices} "
                                  "(it would be drawn twice as often)")
            dim = Dimension(field, choices=tuple(choices))
        else:
            try:
                lo, hi = float(spec["low"]), float(spec["high"])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{path}: {field}: needs numeric low and high") from None
            if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi or (
                    spec.get("log") and lo <= 0):
                raise ConfigError(f"{path}: {field}: need finite low < high (and low > 0 on "
                                  f"a log scale), got {lo}, {hi}")
            if isinstance(current, bool):  # (0.0 and 1.0 validate; a trial's 0.37 fails)
                raise ConfigError(f"{path}: {field} is true or false: give it choices "
                                  "[true, false] (a range draws fractions)")
            if isinstance(current, int):
                raise ConfigError(f"{path}: {field} is a whole number: give it choices (a "
                                  "range draws fractions)")
            if spec.get("relative") and not isinstance(current, float):
                raise ConfigError(f"{path}: {field}: relative ranges multiply a float field; "
                                  f"the recipe's {field} is {current!r}")
            if spec.get("relative") is True and current == 0.0:  # (every trial: 0)
                raise ConfigError(f"{path}: {field}: a relative range multiplies the "
                                  f"recipe's {field}, which is 0: every trial would get 0; "
                                  "give it an absolute range")
            if current is None:  # (e.g. scene.K, int | None: a trial's 1.37 fails)
                raise ConfigError(f"{path}: {field}: a range draws fractions, but the "
                                  f"recipe's {field} is {current!r}: give it choices")
            for flag in ("log", "relative"):
                if not isinstance(spec.get(flag, False), bool):
                    raise ConfigError(f"{path}: {field}: {flag} must be true or false, got "
                                      f"{spec[flag]!r}")
            dim = Dimension(field, lo, hi, bool(spec.get("log")), bool(spec.get("relative")))
        scheduled = base.schedule.weight_schedule
        if field.startswith("loss.") and field[5:] in scheduled:
            raise ConfigError(f"{path}: {field}: {scheduled_message(field[5:], scheduled)}, "
                              "so it cannot be searched")
        for value in _extremes(dim, base):  # every trial's recipe validates
            try:
                validate_train_config(merge_nested(base.model_dump(),
                                                   parse_overrides([override(field, value)])))
            except ConfigError as err:
                raise ConfigError(f"{path}: {field}={value!r} makes no valid recipe: "
                                  f"{err}") from None
        dims.append(dim)
    return tuple(dims)


def override(field: str, value: Any) -> str:
    """The recipe override ``field=value`` that gives ``field`` exactly ``value`` (read back
    as YAML: None as null, not the string 'None')."""
    return f"{field}={json.dumps(value)}"


# recipe fields every trial's config sets (risloc.hpo.search._trial_config)
SET_BY_TUNE = ("schedule.epochs", "schedule.hpo_mode", "out_dir", "progress")


def _extremes(dim: Dimension, base: TrainConfig) -> list[Any]:
    """The values a dimension can give a trial's recipe at its ends (every choice)."""
    if dim.choices is not None:
        return list(dim.choices)
    scale = _get(base, dim.field) if dim.relative else 1.0
    return [dim.low * scale, dim.high * scale]
