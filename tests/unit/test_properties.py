"""Property-based reliability suite (hypothesis): whatever a user feeds in — malformed
arrays, odd dtypes, NaN / inf / zero / huge / tiny values in single scenes, damaged scene
files, odd configuration overrides — ends in a clean, typed error or a per-scene report,
never a traceback of another kind, a hang or a silent wrong answer the input checks could
have caught. A larger run of the same properties: benchmarks/bench_reliability.py."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from risloc.config import ConfigError, SceneConfig, SystemConfig, load_config
from risloc.core.checks import InputError, InputTypeError
from risloc.io.faults import FAULTS, FIELDS, damaged
from risloc.io.scenefile import SceneFileError, batch_to_arrays, read_scenes
from risloc.pipeline import Localizer
from risloc.simulation import simulate_range

SYSTEM = SystemConfig()
BASE = simulate_range(0, 3, SYSTEM, SceneConfig(), seed=21, split="test", snr_db=15.0, K=1)
ARRAYS = {"y": BASE.y.numpy(), "H": BASE.H.numpy(), "codes": BASE.codes.numpy()}
CLEAN = (InputError, InputTypeError)
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

values = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e30, 1e-30, 1e-45, 1e18])


@st.composite
def corrupted(draw):
    """The three arrays with one scene's array scaled, zeroed or poisoned."""
    arrays = {k: v.copy() for k, v in ARRAYS.items()}
    name = draw(st.sampled_from(sorted(arrays)))
    scene = draw(st.integers(0, 2))
    how = draw(st.sampled_from(["scale", "fill", "one"]))
    v = draw(values)
    with np.errstate(all="ignore"):
        if how == "scale":
            arrays[name][scene] = arrays[name][scene] * v
        elif how == "fill":
            arrays[name][scene] = v
        else:
            arrays[name][scene].flat[draw(st.integers(0, 15))] = v
    return arrays, name, scene, how, v


@SETTINGS
@given(corrupted())
def test_a_bad_scene_is_reported_and_the_others_are_localized(case):
    arrays, name, _, how, v = case
    loc = Localizer(SYSTEM, "classical", workers=1)
    res = loc.localize(arrays["y"], arrays["H"], arrays["codes"], K=1)
    bad = dict(res.bad)
    for b in range(3):
        if b in bad:
            assert res.estimates.K[b] == 0 and bad[b]
        else:
            assert res.estimates.K[b] == 1
            assert math.isfinite(float(res.estimates.azimuth[b, 0]))
    # exactly what the input checks promise fails a scene: a non-finite value, an all-zero
    # y or H, codes off the unit circle; magnitudes alone never do
    expected = {b for b in range(3)
                if not all(np.isfinite(arrays[k][b]).all() for k in arrays)
                or not np.any(arrays["y"][b]) or not np.any(arrays["H"][b])
                or np.abs(np.abs(arrays["codes"][b].astype(np.complex128)) - 1).max() > 1e-3}
    assert set(bad) == expected, (bad, name, how, v)


@SETTINGS
@given(st.sampled_from(["y", "H", "codes"]),
       st.sampled_from(["float32", "int64", "bool", "object", "drop-dim", "extra-dim",
                        "short", "none", "list"]))
def test_wrong_arrays_are_typed_errors(name, how):
    arrays = {k: v.copy() for k, v in ARRAYS.items()}
    a = arrays[name]
    arrays[name] = {"float32": a.real.astype("float32"), "int64": a.real.astype("int64"),
                    "bool": a.real > 0, "object": a.astype(object), "drop-dim": a[0, 0],
                    "extra-dim": a[None], "short": a[..., :3], "none": None,
                    "list": a.tolist()}[how]
    loc = Localizer(SYSTEM, "classical", workers=1)
    try:
        res = loc.localize(arrays["y"], arrays["H"], arrays["codes"])
    except CLEAN:
        return
    if name == "codes" and how in ("float32", "int64"):  # real codes are taken (a 1-bit
        # RIS's +-1); these, the real parts of unit-modulus ones, are not: every scene named
        assert len(res.bad) == len(res) and all("codes are real and not +-1" in r
                                                for _, r in res.bad)
        return
    assert how == "list"  # a nested list of complex numbers is a valid array


@SETTINGS
@given(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                 st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
                 st.text(max_size=3)),
       st.one_of(st.none(), st.integers(-2, 8), st.floats(-1, 7), st.text(max_size=2),
                 st.lists(st.integers(0, 6), max_size=4)))
def test_snr_and_K_are_used_or_refused_cleanly(snr, K):
    loc = Localizer(SYSTEM, "classical", workers=1)
    try:
        res = loc.localize(BASE.y, BASE.H, BASE.codes, snr_db=snr, K=K)
    except CLEAN:
        return
    assert len(res) == 3 and not res.bad
    assert ((res.estimates.K >= 1) & (res.estimates.K <= SYSTEM.K_max)).all()
    if K is not None:
        assert res.estimates.K.tolist() == list(np.broadcast_to(np.asarray(K), (3,)))


@SETTINGS
@given(st.sampled_from(FIELDS), st.sampled_from(FAULTS))
def test_damaged_scene_files_are_clean_errors_or_read(tmp_path_factory, field, how):
    arrays = batch_to_arrays(BASE, SYSTEM.K_max)
    arrays["system"] = np.array(SYSTEM.model_dump_json())
    arrays = damaged(arrays, field, how)
    path = tmp_path_factory.mktemp("f") / "s.npz"
    np.savez(path, **arrays)
    try:
        batch, info = read_scenes(path)
    except SceneFileError:
        return
    assert len(batch) == info.n_scenes == 3


@SETTINGS
@given(st.sampled_from(["system.L", "system.M", "system.K_max", "scene.snr_db",
                        "scene.power_spread_db", "scene.azimuth_deg", "scene.K", "system.x"]),
       st.sampled_from(["-1", "0", "3", "nan", "[1, 2]", "[5, -5]", "abc", "1e9", "{}"]))
def test_config_overrides_are_validated_with_the_field_named(key, value):
    try:
        cfg = load_config(None, [f"{key}={value}"])
    except ConfigError as err:  # the field named whole, or by its value in a check across
        # fields ("M=3"): every message begins "invalid configuration", which names none
        assert key in str(err) or f"{key.split('.')[-1]}={value}" in str(err), str(err)
        return
    assert cfg.system.K_max < cfg.system.M


def test_the_shipped_model_refuses_another_system_naming_the_field():
    loc = Localizer.from_checkpoint(workers=1)
    other = SYSTEM.model_dump() | {"wavelength": 0.25, "L": 16}
    with pytest.raises(InputError, match="wavelength"):
        loc.localize(BASE.y, BASE.H, BASE.codes, system=other)
