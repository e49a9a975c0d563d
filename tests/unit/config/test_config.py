import pytest

from risloc.config import ConfigError, RislocConfig, SystemConfig, load_config


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


def test_yaml_toml_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("system:\n  L: 32\nscene:\n  K: 2\n")
    cfg = load_config(tmp_path / "c.yaml", ["scene.snr_db=[0, 10]"])
    assert cfg.system.L == 32 and cfg.scene.K == 2 and cfg.scene.snr_db == (0, 10)
    (tmp_path / "c.toml").write_text("[system]\nM = 8\nK_max = 3\n")
    assert load_config(tmp_path / "c.toml").system.M == 8
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must look like"):
        load_config(overrides=["scene.K"])
    with pytest.raises(ConfigError, match="scene.K=6 exceeds"):
        load_config(overrides=["scene.K=6"])


def test_json_round_trip():
    cfg = load_config(overrides=["system.wavefront=fresnel", "scene.K=3"])
    assert RislocConfig.from_json(cfg.to_json()) == cfg
    assert SystemConfig.model_validate_json(cfg.system.model_dump_json()) == cfg.system
