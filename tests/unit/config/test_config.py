import re

import pytest

from risloc.config import (
    ConfigError,
    RislocConfig,
    SystemConfig,
    load_config,
    load_yaml,
    parse_overrides,
)


def test_defaults_match_conventions():
    cfg = RislocConfig()
    s = cfg.system
    assert (s.N_H, s.N_V, s.N, s.M, s.L, s.K_max) == (12, 12, 144, 16, 16, 5)
    assert s.wavelength == 0.3 and s.spacing == pytest.approx(0.15)
    assert s.wavefront == "spherical"
    sc = cfg.scene
    assert sc.azimuth_deg == (-60, 60) and sc.elevation_deg == (-30, 30)
    assert sc.range_m == (0.5, 10) and sc.snr_db == (-5, 20) and sc.min_separation_deg == 5
    assert sc.rician_kappa == (0.5, 10) and sc.codebook == "random" and sc.code_bits == 3


@pytest.mark.parametrize("override,field", [
    ("system.spacing=-0.1", "system.spacing"),
    ("system.K_max=16", "system"),
    ("scene.azimuth_deg=[10, -10]", "scene.azimuth_deg"),
    ("scene.codebook=gold", "scene.codebook"),
    ("scene.range_m=[0, 5]", "range_m"),
    ("system.wavefront=planar", "system.wavefront"),
    ("system.bogus=1", "system.bogus"),
])
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(overrides=[override])


@pytest.mark.parametrize("override,says", [
    ("scene.snr_db=5", "scene.snr_db: Input should be a valid tuple (a pair: "
                       "scene.snr_db=[lo, hi])"),
    ("snr_db=5", "snr_db: Extra inputs are not permitted (did you mean scene.snr_db?)"),
    ("scene.snr=[0, 5]", "scene.snr: Extra inputs are not permitted (did you mean "
                         "scene.snr_db?)"),
    ("scene.K_max=3", "scene.K_max: Extra inputs are not permitted (did you mean "
                      "system.K_max?)"),  # another section's field
    ("sytem={L: 4}", "sytem: Extra inputs are not permitted (did you mean system?)"),
    ("system.zzz=1", "system.zzz: Extra inputs are not permitted"),
    ("system.lambda=0.3", "system.lambda: Extra inputs are not permitted (did you mean "
                          "system.wavelength?)"),  # another name (a user's review)
    ("system.d=0.15", "system.d: Extra inputs are not permitted (did you mean "
                      "system.spacing?)"),
    ("lambda=0.3", "lambda: Extra inputs are not permitted (did you mean "
                   "system.wavelength?)"),  # in another section too (a review)
    ("system.frequency=1e9", "system.frequency: Extra inputs are not permitted (did you mean "
                             "system.wavelength, in metres: c / frequency (0.3 m at 1 GHz)?)"),
    # a carrier frequency where the system takes its wavelength (a new user's review)
    ("seed=1", "seed: Extra inputs are not permitted"),  # not "scene": a value, no section
    ("scene.k=2", "scene.k: Extra inputs are not permitted (did you mean scene.K?)"),
    ("system.n_h=8", "system.n_h: Extra inputs are not permitted (did you mean "
                     "system.N_H?)"),  # the name in another case (a review: no hint)
])
def test_invalid_fields_say_how_to_write_them(override, says):
    """pydantic's own words leave the fix unsaid for a pair given as one number and a field
    given in the wrong section (or misspelt)."""
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert str(err.value) == f"invalid configuration: {says}"


@pytest.mark.parametrize("override,whole", [
    ("model.dilations.0=3", "model.dilations"), ("scene.snr_db.1=5", "scene.snr_db"),
    ("model.dilations.0.x=3", "model.dilations")])
def test_an_override_into_a_list_says_to_set_the_list_whole(override, whole):
    """A numeric component indexes a list or tuple, which an override sets whole (pydantic
    said only 'Input should be a valid tuple' of the dict {'0': 3} it became)."""
    with pytest.raises(ConfigError, match=re.escape(
            f"indexes into {whole}, a list that is set whole: write {whole}=[...] with all "
            f"its entries (on the command line: --set '{whole}=[3, 2]')")):
        parse_overrides([override])
    assert parse_overrides(["0=3"]) == {"0": 3}  # no list before it: left to validation


def test_no_pair_hint_where_one_number_is_valid_too():
    with pytest.raises(ConfigError) as err:  # power_spread_db: a number or a pair
        load_config(overrides=["scene.power_spread_db=foo"])
    assert "[lo, hi]" not in str(err.value)


@pytest.mark.parametrize("override,says", [
    ("lr=1", "lr: Extra inputs are not permitted (did you mean optim.lr?)"),
    ("loss.lam_gapp=1", "loss.lam_gapp: Unexpected keyword argument (did you mean "
                        "loss.lam_gap?)"),  # a dataclass section
    ("lam_gap=1", "lam_gap: Extra inputs are not permitted (did you mean loss.lam_gap?)"),
    ("data.scene_mix=5", "data.scene_mix: Input should be a valid tuple (given 5)"),
    # the value given is named (a new user's review: 'optim.lr=abc' was not)
    ("optim.lr=abc", "optim.lr: Input should be a valid number, unable to parse string as a "
                     "number (given 'abc')"),
])
def test_training_fields_say_where_they_belong(override, says):
    from risloc.training import load_train_config

    with pytest.raises(ConfigError) as err:
        load_train_config("train_tiny", [override])
    assert str(err.value) == f"invalid training configuration: {says}"


def test_yaml_toml_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("system:\n  L: 32\nscene:\n  K: 2\n")
    cfg = load_config(tmp_path / "c.yaml", ["scene.snr_db=[0, 10]"])
    assert cfg.system.L == 32 and cfg.scene.K == 2 and cfg.scene.snr_db == (0, 10)
    (tmp_path / "c.toml").write_text("[system]\nM = 8\nK_max = 3\n")
    assert load_config(tmp_path / "c.toml").system.M == 8
    (tmp_path / "C.TOML").write_text("[system]\nM = 8\nK_max = 3\n")  # any case
    assert load_config(tmp_path / "C.TOML").system.M == 8
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must look like"):
        load_config(overrides=["scene.K"])
    with pytest.raises(ConfigError, match="scene.K=6 exceeds"):
        load_config(overrides=["scene.K=6"])


def test_unreadable_files_and_values_are_named(tmp_path):
    (tmp_path / "typo.yaml").write_text("scenes:\n  K: 2\nsystem:\n  L: 32\n")
    with pytest.raises(ConfigError, match="typo.yaml: unknown top-level key\\(s\\) 'scenes'"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "recipe.yaml").write_text("system:\n  L: 32\nmodel:\n  width: 8\n")
    assert load_config(tmp_path / "recipe.yaml", ignored=["model"]).system.L == 32
    (tmp_path / "bad.yaml").write_text("system: [L: 32\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "bad.toml").write_text("[system\nL = 32\n")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError,
                       match=r"override 'scene.snr_db=\[0, 10': the value is not valid YAML"):
        load_config(overrides=["scene.snr_db=[0, 10"])
    with pytest.raises(ConfigError, match="override 'scene.K=' has no value"):
        load_config(overrides=["scene.K="])
    with pytest.raises(ConfigError, match="override ' =3' names no field"):
        load_config(overrides=[" =3"])  # was "<config>: Extra inputs are not permitted"
    for key in ("scene..K", "scene.K.", ".K"):  # was "scene.: Extra inputs are not permitted"
        with pytest.raises(ConfigError, match=rf"override '{re.escape(key)}' has an empty name "
                           r"between its dots \(write section.field=value, e.g. scene.K=3\)"):
            load_config(overrides=[f"{key}=3"])
    assert load_config(overrides=["scene.K=null"]).scene.K is None
    with pytest.raises(ConfigError, match=r"K: expected int \| None, got the boolean true"):
        load_config(overrides=["scene.K=true"])  # pydantic alone would read it as K = 1
    with pytest.raises(ConfigError, match="system.wavelength: Input should be a finite number"):
        load_config(overrides=["system.wavelength=.inf"])
    with pytest.raises(ConfigError, match=r"overrides must be a list .*\(write \['system.M=8'\]"):
        load_config(overrides="system.M=8")
    with pytest.raises(ConfigError, match="unknown top-level key.*load_train_config"):
        load_config("train_default")


def test_spacing_defaults_to_half_the_wavelength_given():
    """docs/conventions.md: d = lambda/2 by default, for the wavelength given (a system of
    another band with the default spacing would have grating lobes)."""
    assert SystemConfig().spacing == 0.15
    assert SystemConfig(wavelength=0.1).spacing == 0.05
    assert SystemConfig(wavelength=0.1, spacing=0.2).spacing == 0.2
    assert load_config(overrides=["system.wavelength=0.02"]).system.spacing == 0.01
    assert SystemConfig.model_validate_json('{"wavelength": 0.5}').spacing == 0.25
    # a wavelength in any form pydantic takes (it kept 0.15 m for all of these: wrong CRBs)
    import numpy as np

    for lam in (np.float32(0.6), np.float64(0.6), "0.6", np.int64(1)):
        assert SystemConfig(wavelength=lam).spacing == pytest.approx(float(lam) / 2), lam


def test_json_round_trip():
    cfg = load_config(overrides=["system.wavefront=fresnel", "scene.K=3"])
    assert RislocConfig.from_json(cfg.to_json()) == cfg
    assert SystemConfig.model_validate_json(cfg.system.model_dump_json()) == cfg.system


# ---------------------------------------------------------------- the one field of view
def test_field_of_view_validates_each_axis_and_names_it():
    from risloc.config import FieldOfView

    for kwargs, name in (({"azimuth_deg": (10.0, -10.0)}, "azimuth_deg"),
                         # the numbers read, and what is wrong with them (the text of
                         # --fov range_m=1,0.5 showed ('1', '0.5') and called it not finite)
                         ({"range_m": ("1", "0.5")}, r"range_m must be \(low, high\) with "
                                                     r"low <= high, got \(1, 0.5\): reversed"),
                         ({"range_m": ("nan", "1")}, r"range_m must be finite, got \(nan, 1\)$"),
                         ({"elevation_deg": (-95.0, 0.0)}, "elevation_deg"),
                         ({"range_m": (0.0, 5.0)}, "range_m"),
                         ({"range_m": (2.0, float("nan"))}, "range_m"),
                         ({"azimuth_deg": (-60, 60, 0)}, r"azimuth_deg must be \(low, high\)"),
                         ({"range_m": 5.0}, r"range_m must be \(low, high\), two numbers"),
                         ({"azimuth_deg": "12"}, r"azimuth_deg must be \(low, high\)")):
        with pytest.raises(ValueError, match=name):
            FieldOfView(**kwargs)


def test_field_of_view_bounds_are_radians_and_inverse_range():
    import math

    from risloc.config import FieldOfView

    lo, hi = FieldOfView((-30.0, 45.0), (-10.0, 20.0), (0.5, 4.0)).bounds()
    assert lo.tolist() == pytest.approx([math.radians(-30), math.radians(-10), 0.25])
    assert hi.tolist() == pytest.approx([math.radians(45), math.radians(20), 2.0])


def test_every_estimator_config_and_the_scene_share_the_field_of_view():
    from risloc.config import FieldOfView, SceneConfig
    from risloc.estimators.classical import ClassicalConfig
    from risloc.estimators.music import MusicConfig
    from risloc.estimators.nfmle import NFMLEConfig

    fov = FieldOfView((-75.0, 75.0), (-20.0, 20.0), (1.0, 8.0))
    scene = SceneConfig(azimuth_deg=(-75.0, 75.0), elevation_deg=(-20.0, 20.0),
                        range_m=(1.0, 8.0))
    assert scene.fov == fov
    cl = ClassicalConfig().with_fov(fov)
    assert cl.fov == cl.step.fov == cl.final.fov == fov
    assert MusicConfig(fov=fov).grid_key[:3] == (fov.azimuth_deg, fov.elevation_deg,
                                                 fov.range_m)
    assert NFMLEConfig(fov=fov).fov.bounds()[1][0] > NFMLEConfig().fov.bounds()[1][0]


def test_power_spread_is_validated():
    from risloc.config import SceneConfig

    assert SceneConfig(power_spread_db=12).power_spread_db == 12
    assert SceneConfig(power_spread_db=(0, 15)).power_spread_db == (0.0, 15.0)
    for bad in (-1.0, (5.0, 2.0), 61.0):
        with pytest.raises(ValueError, match="power_spread_db"):
            SceneConfig(power_spread_db=bad)


def test_a_file_s_system_of_the_contract_s_keys_alone_reads_with_few_antennas():
    """A review: the conventions' keys (no K_max, risloc's own) with M <= 5 were refused,
    "K_max=5 must be smaller than M=4"; the file's K_max is then M - 1."""
    from risloc.config import system_from_json

    contract = ('{"N_H": 4, "N_V": 4, "wavelength": 0.3, "spacing": 0.15, "M": 4, "L": 8, '
                '"wavefront": "spherical"}')
    assert system_from_json(contract).K_max == 3
    assert system_from_json('{"M": 16}').K_max == 5  # room for the default: kept
    with pytest.raises(ConfigError, match="K_max=5 must be smaller than M=4"):
        system_from_json('{"M": 4, "K_max": 5}')  # a K_max given is the file's
    # the same system as a dict (Localizer.localize(system=...), crb, simulate_range) reads
    # the same (a review: the dict was refused where its JSON text was read)
    import json

    from risloc.config import validate_system
    from risloc.core.checks import as_system

    assert as_system(json.loads(contract)) == system_from_json(contract)
    assert validate_system({"M": 4}).K_max == 3 and validate_system({"M": 16}).K_max == 5
    import numpy as np  # M read from an array (a review: NumPy's int64 was refused)

    assert validate_system({"M": np.int64(4)}).K_max == 3
    # one antenna: named as too few (a review: "K_max=5 must be smaller than M=1", which no
    # K_max can be)
    with pytest.raises(ConfigError, match="M: Input should be greater than or equal to 2"):
        validate_system({"M": 1})


def test_a_key_given_twice_is_refused_and_a_merged_one_may_be_overridden(tmp_path):
    """YAML keeps the last of a repeated key, silently; recipes, search spaces and --set
    values refuse it (a review), while a merge (<<: *base) followed by its own value of a
    merged key stays what YAML means (a review of that change: merges were refused)."""
    from risloc.config import load_yaml, parse_overrides, read_config_file

    p = tmp_path / "r.yaml"
    p.write_text("scene: {snr_db: [0, 10], snr_db: [5, 5]}\n")
    with pytest.raises(ConfigError, match="the key 'snr_db' is given twice"):
        read_config_file(p)
    with pytest.raises(ConfigError, match="the key 'lr' is given twice"):
        parse_overrides(["optim={lr: 1, lr: 2}"])
    text = "base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  y: 3\n"
    assert load_yaml(text) == {"base": {"x": 1, "y": 2}, "mine": {"x": 1, "y": 3}}


# ------------------------------------------- a second mutation review: what none checked
def test_defaults_the_conventions_promise_for_powers_sources_and_the_base_station():
    """docs/conventions.md: equal powers (p_k = 1) by default, K drawn in 1..K_max, psi of
    the base station's array ~ U(-60, 60) deg."""
    sc = RislocConfig().scene
    assert sc.power_spread_db == 0 and sc.K is None and sc.bs_angle_deg == (-60, 60)


def test_scene_and_field_of_view_edges_that_are_valid():
    from risloc.config import FieldOfView, SceneConfig

    fov = FieldOfView((10.0, 10.0), (0.0, 0.0), (1.0, 2.0))  # one direction: low == high
    assert fov.azimuth_deg == (10.0, 10.0)
    sc = SceneConfig(min_separation_deg=0, rician_kappa=(0.0, 1.0), power_spread_db=60,
                     code_bits=16)  # no minimum separation, Rayleigh (kappa 0), the limits
    assert (sc.min_separation_deg, sc.rician_kappa[0], sc.code_bits) == (0, 0, 16)
    assert SceneConfig(power_spread_db=(0, 60)).power_spread_db == (0, 60)
    with pytest.raises(ValueError, match="code_bits"):
        SceneConfig(code_bits=17)
    with pytest.raises(ValueError, match="azimuth_deg must be"):  # bytes are not a pair
        FieldOfView(azimuth_deg=b"12")


def test_the_did_you_mean_hints_of_another_case_depth_and_section():
    from risloc.training import load_train_config

    def says(overrides, load=load_config):
        with pytest.raises(ConfigError) as err:
            load(overrides=overrides)
        return str(err.value)

    assert "(did you mean system.wavelength?)" in says(["system.Lambda=0.3"])  # any case
    train = lambda overrides: says(overrides, load_train_config)  # noqa: E731
    # a field two sections down (model.fov.*) is offered too
    assert train(["azimuth_deg=[0, 1]"]).endswith(
        "(did you mean scene.azimuth_deg or model.fov.azimuth_deg?)")
    # another section's field of the name given beats a close spelling where it was given
    assert train(["data.batch_size=8"]).endswith("(did you mean optim.batch_size?)")
    # a section given where one is meant: the section, not order.scene (a dict of values)
    assert train(["data.scene={K: 2}"]).endswith("(did you mean scene?)")


def test_a_system_json_read_as_bytes_and_overrides_written_with_spaces():
    from risloc.config import system_from_json

    assert system_from_json(b'{"M": 8, "K_max": 3}').M == 8  # an HDF5 attribute's bytes
    assert parse_overrides(["scene.K = 3"]) == {"scene": {"K": 3}}
    with pytest.raises(ConfigError, match="has no value"):  # not K = None, silently
        parse_overrides(["scene.K= "])


def test_files_empty_yml_non_utf8_and_a_repeated_key_after_a_merge(tmp_path):
    from risloc.config import read_config_file, recipe_path

    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    assert load_config(tmp_path / "empty.yaml") == RislocConfig()
    (tmp_path / "c.yml").write_text("system: {L: 8}\n")
    assert load_config(tmp_path / "c.yml").system.L == 8
    (tmp_path / "latin.yaml").write_bytes("scene: {codebook: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin.yaml is not valid YAML"):
        read_config_file(tmp_path / "latin.yaml")
    (tmp_path / "m.yaml").write_text("base: &b {x: 1}\nmine: {<<: *b, y: 3, y: 4}\n")
    with pytest.raises(ConfigError, match="the key 'y' is given twice"):
        read_config_file(tmp_path / "m.yaml")
    # a path that names no file is not read as the shipped recipe of its name
    with pytest.raises(ConfigError, match="not found"):
        recipe_path(tmp_path / "train_default")


def test_a_json_config_file_is_told_to_be_renamed_to_yaml(tmp_path):
    """A new user's slip: a recipe written as JSON (valid YAML) under .json is refused by
    its suffix; the message names the fix, and the renamed file reads."""
    path = tmp_path / "mine.json"
    path.write_text('{"system": {"N_H": 8, "M": 8}}')
    with pytest.raises(ConfigError, match=r"must end in \.yaml, \.yml or \.toml \(JSON is "
                                          r"YAML: rename it to \.yaml\)"):
        load_config(path, None)
    assert load_config(path.rename(tmp_path / "mine.yaml"), None).system.N_H == 8


def test_an_exponent_without_a_dot_reads_as_a_float():
    """YAML 1.1 read 1e-5 as the string "1e-5" (a float needs a dot there): a search
    space's `choices: [1e-5, 1e-4]` stayed strings (a docs check of tuning). Read as YAML 1.2
    and JSON read them; quoted text and other strings stay strings."""
    got = load_yaml("a: [1e-5, 2E3, -1.5e-2, 1.0e-3, 12, '1e-3', 1e, e5]")["a"]
    assert got == [1e-5, 2000.0, -0.015, 1e-3, 12, "1e-3", "1e", "e5"]
    assert [type(v) for v in got[:5]] == [float, float, float, float, int]
