"""Typed, validated configuration of the physical system and of the scene generator.

The defaults are the default system of docs/conventions.md (the seeds' system). Every
artifact risloc writes records the configuration it was made with, as JSON
(`RislocConfig.to_json`).

Loading: ``load_config(path, overrides)`` reads YAML or TOML and applies dotted
``section.field=value`` overrides (values parsed as YAML, so ``scene.snr_db=[0, 10]``
works). Invalid values fail at load with a message naming the field.
"""

from __future__ import annotations

try:  # Python >= 3.11
    import tomllib  # novm (the except below is 3.10's)
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

import dataclasses
import difflib
import functools
import json
import math
import numbers
import re
import typing
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Wavefront = Literal["spherical", "fresnel"]
Codebook = Literal["random", "dft", "hadamard"]


class ConfigError(ValueError):
    """A configuration could not be loaded or failed validation."""


@functools.cache  # never evicted: CUDA graphs read it by address
def _box(lo: tuple[float, ...], hi: tuple[float, ...], dtype: torch.dtype, device: str
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensors of :meth:`FieldOfView.bounds` (cached)."""
    return (torch.tensor(lo, dtype=dtype, device=device),
            torch.tensor(hi, dtype=dtype, device=device))


@dataclass(frozen=True)
class FieldOfView:
    """The box sources are sought in — the one definition every estimator, the network and
    the scene generator share (docs/conventions.md, "Field of view").

    azimuth_deg, elevation_deg : (low, high) — [deg], inside (-90, 90)
    range_m : (low, high) — [m], 0 < low < high
    """

    azimuth_deg: tuple[float, float] = (-60.0, 60.0)
    elevation_deg: tuple[float, float] = (-30.0, 30.0)
    range_m: tuple[float, float] = (0.5, 10.0)

    def describe(self) -> str:
        """'azimuth a..b deg, elevation c..d deg, range e..f m': the box in messages."""
        return (f"azimuth {self.azimuth_deg[0]:g}..{self.azimuth_deg[1]:g} deg, elevation "
                f"{self.elevation_deg[0]:g}..{self.elevation_deg[1]:g} deg, range "
                f"{self.range_m[0]:g}..{self.range_m[1]:g} m")

    def __post_init__(self) -> None:
        for name in ("azimuth_deg", "elevation_deg", "range_m"):
            try:
                if isinstance(getattr(self, name), str | bytes):  # ("12": not (1, 2))
                    raise TypeError
                lo, hi = (float(v) for v in getattr(self, name))
            except (TypeError, ValueError):  # not a pair of numbers
                raise ValueError(f"field of view {name} must be (low, high), two numbers, got "
                                 f"{getattr(self, name)!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"field of view {name} must be finite, got ({lo:g}, {hi:g})")
            if lo > hi:
                raise ValueError(f"field of view {name} must be (low, high) with low <= high, "
                                 f"got ({lo:g}, {hi:g}): reversed?")
            object.__setattr__(self, name, (lo, hi))
        for name in ("azimuth_deg", "elevation_deg"):
            lo, hi = getattr(self, name)
            if not -90 < lo <= hi < 90:
                raise ValueError(f"field of view {name} must lie inside (-90, 90), got "
                                 f"{(lo, hi)}")
        if not 0 < self.range_m[0] < self.range_m[1]:
            raise ValueError(f"field of view range_m must satisfy 0 < low < high, got "
                             f"{self.range_m}")

    def bounds(self, dtype: torch.dtype | None = None, device=None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Box of (azimuth [rad], elevation [rad], 1/range [1/m]): (lower, upper), [3] each
        (float64 unless ``dtype``). Cached per dtype and device, so not to be changed in
        place: built from Python numbers on a GPU, each pair is a copy the host waits for
        (24 per learned call, counted on an H200)."""
        lo = (math.radians(self.azimuth_deg[0]), math.radians(self.elevation_deg[0]),
              1.0 / self.range_m[1])
        hi = (math.radians(self.azimuth_deg[1]), math.radians(self.elevation_deg[1]),
              1.0 / self.range_m[0])
        return _box(lo, hi, dtype or torch.float64, str(torch.device(device or "cpu")))

    def contains(self, azimuth: torch.Tensor, elevation: torch.Tensor,
                 range_m: torch.Tensor, rtol: float = 0.0) -> torch.Tensor:
        """[...] bool — positions (rad, rad, m) inside the box (boundaries included; NaN:
        outside; an azimuth taken modulo 360 deg, as the metrics pair it: 300 deg is -60
        deg); ``rtol`` widens each side by rtol max(1, |low|, |high|) in its unit (1e-6: a
        file's float32 degrees, read back, on the boundary are inside)."""
        inside = torch.ones(azimuth.shape, dtype=torch.bool, device=azimuth.device)
        wrapped = torch.remainder(torch.rad2deg(azimuth) + 180.0, 360.0) - 180.0
        for v, (lo, hi) in ((wrapped, self.azimuth_deg),
                            (torch.rad2deg(elevation), self.elevation_deg),
                            (range_m, self.range_m)):
            tol = rtol * max(1.0, abs(lo), abs(hi))
            inside &= (v >= lo - tol) & (v <= hi + tol)
        return inside


class ConfigSection(BaseModel):
    """A section of a configuration: immutable, unknown fields refused, a YAML boolean
    refused where a number is expected (pydantic would read ``K: true`` as 1), and so are
    ``.inf`` / ``.nan`` (no setting of risloc is infinite)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and \
                        "bool" not in str(field.annotation):
                    kind = getattr(field.annotation, "__name__", str(field.annotation))
                    raise ValueError(f"{name}: expected {kind}, got the boolean "
                                     f"{str(value).lower()}")
        return data


SNR_LIMIT_DB = 300.0  # a round bound below ~380 dB, where 10^(-SNR/10) leaves float32's range


def check_snr_db(value: float, name: str = "snr_db") -> float:
    """``value`` if a finite SNR within +-:data:`SNR_LIMIT_DB`, else ValueError naming
    ``name`` (no SNR means more; beyond about +-380 dB the noise-to-signal power ratio leaves
    float32's range, and 1e4 dB crashed the classical localizer)."""
    if not (math.isfinite(value) and abs(value) <= SNR_LIMIT_DB):
        raise ValueError(f"{name} must be a finite SNR within +-{SNR_LIMIT_DB:g} dB (beyond "
                         f"about +-380 dB the noise-to-signal power ratio leaves float32's "
                         f"range), got {value:g}")
    return value


def _check_interval(v: tuple[float, float], name: str) -> tuple[float, float]:
    lo, hi = v
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} bounds must be finite, got {v}")
    if lo > hi:
        raise ValueError(f"{name} is empty: lower bound {lo} > upper bound {hi}")
    return (float(lo), float(hi))


class SystemConfig(ConfigSection):
    """The physical system: RIS geometry, base station, snapshots, wavefront model.

    These are the fields stored as the ``system`` JSON of a scene file.
    Field names follow docs/conventions.md (N_H, N_V, wavelength, spacing, M, L, wavefront).
    """

    N_H: int = Field(12, ge=1, description="RIS columns (along x)")
    N_V: int = Field(12, ge=1, description="RIS rows (along y)")
    wavelength: float = Field(0.3, gt=0, description="carrier wavelength [m]")
    spacing: float = Field(0.15, gt=0, description=(
        "element spacing d [m]; default lambda/2 (of the wavelength given, where only the "
        "wavelength is)"))
    M: int = Field(16, ge=2, description="base-station antennas (K < M sources)")
    L: int = Field(16, ge=1, description="snapshots (RIS codes) per scene")
    wavefront: Wavefront = "spherical"
    K_max: int = Field(5, ge=1, description="largest number of sources")

    @property
    def N(self) -> int:
        """Number of RIS elements."""
        return self.N_H * self.N_V

    @property
    def k0(self) -> float:
        """Wavenumber 2 pi / lambda [rad/m]."""
        return 2.0 * math.pi / self.wavelength

    def describe(self) -> str:
        """One line for people: 'RIS 12x12 (N=144), M=16, L=16, lambda=0.3 m, ...'."""
        return (f"RIS {self.N_H}x{self.N_V} (N={self.N}), M={self.M}, L={self.L}, "
                f"lambda={self.wavelength} m, d={self.spacing} m, {self.wavefront}, "
                f"K_max={self.K_max}")

    @model_validator(mode="after")
    def _check(self) -> SystemConfig:
        # docs/conventions.md: d = lambda/2 unless given, for a wavelength given in any form
        # pydantic takes (a NumPy float read from a file, a string): read after validation
        if "spacing" not in self.model_fields_set:
            object.__setattr__(self, "spacing", self.wavelength / 2)
        if self.K_max >= self.M:
            raise ValueError(
                f"K_max={self.K_max} must be smaller than M={self.M}: "
                "K >= M sources cannot be resolved from M antennas"
            )
        return self


class SceneConfig(ConfigSection):
    """How scenes are drawn: field of view, separation, SNR, channel, codebook.

    The field of view (azimuth_deg, elevation_deg) holds the sources and, as
    docs/conventions.md draws it, the base station's direction from the RIS (phi_b,
    theta_b of the channel's line-of-sight part): a narrower one narrows both. bs_angle_deg
    is the angle psi of the RIS seen from the base station's array."""

    azimuth_deg: tuple[float, float] = FieldOfView.azimuth_deg  # the estimators' by default
    elevation_deg: tuple[float, float] = FieldOfView.elevation_deg
    range_m: tuple[float, float] = FieldOfView.range_m
    min_separation_deg: float = Field(5.0, ge=0)
    snr_db: tuple[float, float] = (-5.0, 20.0)
    K: int | None = Field(None, ge=1, description="fixed source count; None draws U{1..K_max}")
    power_spread_db: float | tuple[float, float] = Field(
        0.0, description="source powers: 10 log10 p_k drawn uniformly in [-s/2, s/2] dB per "
        "source (0 = equal unit powers, docs/conventions.md); a pair (lo, hi) draws s per scene "
        "uniformly in [lo, hi] (training on a mix of spreads)")
    rician_kappa: tuple[float, float] = (0.5, 10.0)
    bs_angle_deg: tuple[float, float] = (-60.0, 60.0)
    codebook: Codebook = "random"
    # (dft/hadamard: L distinct rows of the codebook, then quantised to code_bits; with 1 bit
    # on the default 12x12 RIS the 144 DFT rows give only 128 distinct codes, so a scene's L
    # codes may repeat one: measured by a physics review, left as the codebook defines them)
    code_bits: int = Field(3, ge=1, le=16)

    @field_validator("azimuth_deg", "elevation_deg", "range_m", "snr_db",
                     "rician_kappa", "bs_angle_deg")
    @classmethod
    def _interval(cls, v: tuple[float, float], info: Any) -> tuple[float, float]:
        v = _check_interval(v, info.field_name)
        if info.field_name == "snr_db":
            for x in v:
                check_snr_db(x, "snr_db")
        return v

    @field_validator("power_spread_db")
    @classmethod
    def _spread(cls, v: float | tuple[float, float]) -> float | tuple[float, float]:
        lo, hi = (v, v) if isinstance(v, float | int) else _check_interval(v, "power_spread_db")
        if not 0 <= lo <= hi <= 60:
            raise ValueError(f"power_spread_db must lie in [0, 60] dB, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> SceneConfig:
        if self.range_m[0] <= 0:
            raise ValueError(f"range_m must be positive, got {self.range_m}")
        if not (-90 < self.azimuth_deg[0] and self.azimuth_deg[1] < 90):
            raise ValueError(f"azimuth_deg must lie inside (-90, 90), got {self.azimuth_deg}")
        if not (-90 < self.elevation_deg[0] and self.elevation_deg[1] < 90):
            raise ValueError(f"elevation_deg must lie inside (-90, 90), got {self.elevation_deg}")
        if self.rician_kappa[0] < 0:
            raise ValueError(f"rician_kappa must be >= 0, got {self.rician_kappa}")
        if not (-90 <= self.bs_angle_deg[0] and self.bs_angle_deg[1] <= 90):
            raise ValueError(f"bs_angle_deg must lie within [-90, 90] (the angle psi of the RIS "
                             f"from the base station's array's broadside), got {self.bs_angle_deg}")
        return self

    @property
    def fov(self) -> FieldOfView:
        """The field of view sources are drawn in."""
        return FieldOfView(self.azimuth_deg, self.elevation_deg, self.range_m)


class SceneKind(ConfigSection):
    """One kind of scene in a mixture (``data.scene_mix`` of a training recipe): a share of
    the scenes, drawn with some fields of the base scene replaced."""

    name: str = ""
    share: float = Field(gt=0, lt=1, description="share of the scenes drawn of this kind")
    scene: dict[str, Any] = Field(default_factory=dict, description=(
        "SceneConfig fields that replace the base scene's, e.g. {'range_m': [0.5, 1.5]}"))


Mixture = tuple[tuple[float, SceneConfig], ...]


def check_scene_K(scene: SceneConfig, K_max: int, what: str = "scene") -> None:
    """Refuse a ``scene`` that fixes more sources than the system's ``K_max`` (a SceneConfig
    alone does not know its system); ``what`` names the scene in the error."""
    if scene.K is not None and scene.K > K_max:
        raise ValueError(f"{what}.K={scene.K} exceeds system.K_max={K_max}")


def replace_scene_fields(scene: SceneConfig, fields: dict[str, Any], what: str = "scene"
                         ) -> SceneConfig:
    """``scene`` with the SceneConfig ``fields`` replaced, validated; its sources must stay
    inside ``scene``'s field of view (the network's grid follows it). ``what`` names the
    fields' origin in errors."""
    try:
        sc = SceneConfig.model_validate({**scene.model_dump(), **fields})
    except ValidationError as err:
        if "." in what or what.isidentifier():  # a recipe's field: its fields named from it
            raise ValueError(format_validation_error(err, "scene", SceneConfig, prefix=what)
                             ) from None
        raise ValueError(f"{what}: {format_validation_error(err, model=SceneConfig)}"
                         ) from None
    for field in ("azimuth_deg", "elevation_deg", "range_m"):
        (lo, hi), (blo, bhi) = getattr(sc, field), getattr(scene, field)
        if lo < blo or hi > bhi:
            raise ValueError(f"{what}: {field} {(lo, hi)} leaves the base scene's "
                             f"field of view {(blo, bhi)}")
    return sc


def scene_mixture(scene: SceneConfig, kinds: tuple[SceneKind, ...] | list[SceneKind] = ()
                  ) -> Mixture:
    """``((share, SceneConfig), ...)``: the base ``scene`` with the share the kinds leave,
    then every kind (the base scene with its fields replaced). A kind must keep its sources
    inside the base scene's field of view (the network's grid follows it)."""
    out, rest = [], 1.0
    for i, kind in enumerate(kinds):
        what = f"data.scene_mix[{i}].scene"  # (named as the recipe holds it)
        out.append((kind.share, replace_scene_fields(scene, kind.scene, what)))
        rest -= kind.share
    if rest <= 1e-9:
        raise ValueError(f"the scene_mix shares sum to {1 - rest:g}; they must leave a share "
                         "for the base scene (sum < 1)")
    return ((rest, scene), *out)


class RislocConfig(ConfigSection):
    """Top-level configuration: the system plus the scene generator."""

    system: SystemConfig = SystemConfig()
    scene: SceneConfig = SceneConfig()

    @model_validator(mode="after")
    def _check(self) -> RislocConfig:
        check_scene_K(self.scene, self.system.K_max)
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> RislocConfig:
        return validate_config(json.loads(text))


def format_validation_error(err: ValidationError, what: str = "configuration",
                            model: type[BaseModel] | None = None, prefix: str = "") -> str:
    """One line naming each invalid field of ``model`` (the validated class), with a hint
    where pydantic's words leave the fix unsaid: a pair field given one value, a field
    unknown where it was given (another section's, or a misspelling). ``prefix``: where
    ``model`` sits in a larger configuration (its fields named from there)."""
    parts = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        hint = ""
        if model is not None:
            path, kind = _field_at(model, loc)
            if e["type"] == "tuple_type" and _is_pair(kind):
                hint = f" (a pair: {'.'.join(path)}=[lo, hi])"
            elif e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
                hint = did_you_mean(model, loc, isinstance(e.get("input"), dict))
        msg = e["msg"]
        if e["type"] == "value_error":  # a validator's own words, without pydantic's "Value
            inner = e.get("ctx", {}).get("error")  # error, " or a nested check's heading
            msg = re.sub(r"^invalid [a-z ]+: ", "", str(inner) if inner is not None else msg)
        given = e.get("input")
        if e["type"] not in ("value_error", "extra_forbidden", "unexpected_keyword_argument") \
                and isinstance(given, str | int | float) and not hint:
            # (a validator's own words name what it was given; an unknown field's value
            # says nothing)
            msg += f" (given {given!r})"
        name = ".".join([prefix, *loc] if prefix else loc)
        parts.append(f"{name}: {msg}{hint}" if name else f"{msg}{hint}")
    return f"invalid {what}: " + "; ".join(parts)


def _sections(kind: Any) -> dict[str, Any]:
    """Field name -> annotation of a pydantic model or dataclass ({} for anything else)."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return {n: f.annotation for n, f in kind.model_fields.items()}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(kind)}
    return {}


def _field_at(model: type, loc: list[str]) -> tuple[list[str], Any]:
    """(the field path, its annotation) that ``loc`` of an error reaches in ``model``,
    sections followed down; pydantic's extra parts (union members, list indices) dropped."""
    path, kind = [], model
    for part in loc:
        fields = _sections(kind)
        if part not in fields:
            break
        path.append(part)
        kind = fields[part]
    return path, kind


def _is_pair(kind: Any) -> bool:
    args = typing.get_args(kind)  # (not tuple[X, ...]: any length)
    return typing.get_origin(kind) is tuple and len(args) == 2 and Ellipsis not in args


_FREQUENCIES = ("frequency", "freq", "fc")
"""Names of a frequency: the system takes its wavelength, named with its unit."""
_SYNONYMS = {"lambda": "wavelength", "lam": "wavelength", "wavelength_m": "wavelength",
             "d": "spacing", "element_spacing": "spacing", "spacing_m": "spacing",
             "n_antennas": "M", "antennas": "M", "snapshots": "L", "n_snapshots": "L",
             "learning_rate": "lr",
             **dict.fromkeys(_FREQUENCIES, "wavelength")}
"""Other names of fields that a spelling match does not find (a review:
``lambda`` was offered N_H or N_V, ``optim.learning_rate`` nothing)."""


def did_you_mean(model: type, loc: list[str], is_section: bool) -> str:
    """' (did you mean a.b?)' for the unknown field at ``loc`` of ``model``: a field of that
    name anywhere in the configuration, else a close spelling where it was given (a
    section's name only where a section of values was given)."""
    name, (where, kind) = loc[-1], _field_at(model, loc[:-1])

    def leaves(kind: Any, prefix: list[str], depth: int) -> dict[str, bool]:
        out = {}
        for n, k in _sections(kind).items():
            out[".".join([*prefix, n])] = bool(_sections(k))  # path -> is a section
            if depth and _sections(k):
                out.update(leaves(k, [*prefix, n], depth - 1))
        return out

    everywhere = leaves(model, [], 2)
    # the name in any case (scene.k: scene.K), or another name of a field: its field
    names = {str(n).lower() for n in (name, _SYNONYMS.get(str(name).lower())) if n}
    same = [p for p, sec in everywhere.items()
            if p.rsplit(".", 1)[-1].lower() in names and sec == is_section
            and p != ".".join([*where, name])]
    here = [n for n, k in _sections(kind).items() if bool(_sections(k)) == is_section]
    close = [".".join([*where, c]) for c in difflib.get_close_matches(name, here, 1)]
    guess = same or close
    unit = (", in metres: c / frequency (0.3 m at 1 GHz)"
            if str(name).lower() in _FREQUENCIES and same else "")
    return f" (did you mean {' or '.join(guess)}{unit}?)" if guess else ""


def _validate(model: type[BaseModel], data: Any, what: str):
    """``model`` from a dict of its fields; ConfigError naming each invalid field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, what, model)) from None


def validate_config(data: dict[str, Any]) -> RislocConfig:
    """Validate a nested dict; raise ConfigError naming the offending field."""
    return _validate(RislocConfig, data, "configuration")


def validate_system(data: Any) -> SystemConfig:
    """A SystemConfig from a dict of its fields (K_max as :func:`system_from_json` reads
    it where the dict has none); ConfigError naming each invalid field."""
    return _validate(SystemConfig, _with_K_max(data), "system")


def _with_K_max(data: Any) -> Any:
    """A system's fields with K_max = M - 1 where they are the contract's keys alone (no
    K_max, risloc's own) and the default K_max would not fit M antennas: the most sources
    M antennas can tell."""
    M = data.get("M") if isinstance(data, dict) else None  # (NumPy's integers too)
    if isinstance(M, numbers.Integral) and not isinstance(M, bool) and "K_max" not in data \
            and 2 <= M <= SystemConfig().K_max:
        return {**data, "K_max": int(M) - 1}
    return data


def validate_scene(data: Any) -> SceneConfig:
    """A SceneConfig from a dict of its fields; ConfigError naming each invalid field."""
    return _validate(SceneConfig, data, "scene")


MATLAB_SYSTEM = "h5writeatt(file, '/', 'system', jsonencode(struct('M', 16, ...)))"
"""How MATLAB stores a scene file's ``system`` attribute (its char text), for messages."""


def system_from_json(text: str | None) -> SystemConfig:
    """Parse a scene file's ``system`` JSON (None -> the default system)."""
    if text is None:
        return SystemConfig()
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        raise ConfigError(f"bad 'system' attribute: expected a JSON string, got "
                          f"{type(text).__name__}: store one string, f.attrs['system'] = "
                          f"json_text in h5py, {MATLAB_SYSTEM} in MATLAB (its char text)")
    try:
        return SystemConfig.model_validate(_with_K_max(json.loads(text)))
    except (ValidationError, json.JSONDecodeError, TypeError) as err:
        msg = (format_validation_error(err, model=SystemConfig)
               if isinstance(err, ValidationError) else str(err))
        raise ConfigError(f"bad 'system' attribute: {msg}") from None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(p.strip() for p in parts):
        raise ConfigError(f"override {key!r} has an empty name between its dots (write "
                          f"section.field=value, e.g. scene.K=3)")
    index = next((i for i, p in enumerate(parts) if i and p.strip().isdigit()), None)
    if index is not None:  # (no field is named by a number: it indexes a list or tuple)
        whole = ".".join(parts[:index])
        raise ConfigError(f"override {key!r}: {parts[index]!r} indexes into {whole}, a list "
                          f"that is set whole: write {whole}=[...] with all its entries "
                          f"(on the command line: --set '{whole}=[3, 2]')")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    last = parts[-1]  # a section given whole merges with the fields set before it, as it
    node[last] = (merge_nested(node[last], value)  # does with the file's (merge_nested)
                  if isinstance(value, dict) and isinstance(node.get(last), dict) else value)


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn ``["scene.K=3", "system.L=32"]`` into a nested dict."""
    out: dict[str, Any] = {}
    if isinstance(overrides, str):  # iterated, it would be read character by character
        raise ConfigError(f"overrides must be a list of section.field=value strings, got "
                          f"the string {overrides!r} (write [{overrides!r}])")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"override {item!r} names no field (write section.field=value)")
        if not raw.strip():
            raise ConfigError(f"override {item!r} has no value (write section.field=value; "
                              "null, if you mean none)")
        try:
            value = load_yaml(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML "
                              f"({_first_line(err)})") from None
        _set_dotted(out, key.strip(), value)
    return out


def merge_nested(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, section by section (nested dicts merged, not replaced)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = (merge_nested(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict)
                  else v)
    return out


# the recipes shipped in the package (risloc/recipes/*.yaml; configs/ in the repository)
RECIPES = Path(__file__).resolve().parent / "recipes"


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in the package, e.g. 'train_default'."""
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def recipe_path(recipe: str | Path) -> Path:
    """The file of a recipe given as a path or as the name of a shipped one
    ('train_default'); ConfigError lists the shipped names when neither exists."""
    path = Path(recipe)
    if path.exists():
        return path
    shipped = RECIPES / f"{path.name}.yaml"
    if str(recipe) == path.name and not path.suffix and shipped.exists():
        return shipped
    close = difflib.get_close_matches(Path(path.name).stem, shipped_recipes(), 1)
    guess = f"; did you mean {close[0]}?" if close else ""
    raise ConfigError(f"config file not found: {recipe} (the shipped recipes, named without "
                      f"a path: {', '.join(shipped_recipes())}{guess})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice in one mapping (plain YAML keeps the
    last, silently: a recipe or search space would not be what its file reads)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:  # the keys written in this mapping: a merged one
            if key_node.tag == "tag:yaml.org,2002:merge":  # (<<: *base) may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                again = key in seen
            except TypeError:  # an unhashable key: the base loader names it
                break
            if again:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads 1e-3 as the string "1e-3": a float needs a dot there. YAML 1.2,
# JSON and Python read a float; so does this loader (a search space's `choices: [1e-5, 1e-4]`
# stayed strings, unchecked as numbers and written so to trials.csv).
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a key repeated in a mapping and reads ``1e-3`` as a
    float (YAML 1.2, not 1.1's string)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into a dict."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    toml = path.suffix.lower() == ".toml"
    if not toml and path.suffix.lower() not in (".yaml", ".yml"):
        hint = (" (JSON is YAML: rename it to .yaml)" if path.suffix.lower() == ".json"
                else "")
        raise ConfigError(f"config file {path} must end in .yaml, .yml or .toml{hint}")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if toml else load_yaml(text) or {}
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        kind = "TOML" if toml else "YAML"
        raise ConfigError(f"config file {path} is not valid {kind}: {_first_line(err)}"
                          ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    return data


def _first_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:300] if text else type(err).__name__


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                ignored: Collection[str] = ()) -> RislocConfig:
    """Load a configuration file (optional) and apply dotted overrides.

    The file's 'system' and 'scene' sections are read; top-level keys named in ``ignored``
    (e.g. the other sections of a training recipe) are skipped, and any other key is a
    ConfigError naming it, so that a misspelt section is not silently dropped.
    """
    data = read_config_file(recipe_path(path)) if path is not None else {}
    unknown = sorted(str(k) for k in data if k not in ("system", "scene", *ignored))
    if unknown:
        raise ConfigError(f"config file {path}: unknown top-level key(s) "
                          f"{', '.join(map(repr, unknown))} (a config holds 'system' and "
                          "'scene' sections; a training recipe's are read by "
                          "risloc.training.load_train_config, or here with "
                          "ignored=TrainConfig.model_fields)")
    data = {k: v for k, v in data.items() if k in ("system", "scene")}
    return validate_config(merge_nested(data, parse_overrides(overrides)))
