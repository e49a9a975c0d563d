"""Bounds, precedence and messages of the configuration that a mutation review found
unchecked."""

import math

import pytest
import torch

from risloc.config import (
    ConfigError,
    FieldOfView,
    SceneConfig,
    SceneKind,
    SystemConfig,
    check_snr_db,
    load_config,
    parse_overrides,
    replace_scene_fields,
    scene_mixture,
)


@pytest.mark.parametrize("kwargs,name", [
    ({"azimuth_deg": (-90.0, 0.0)}, "azimuth_deg"), ({"azimuth_deg": (0.0, 90.0)}, "azimuth_deg"),
    ({"elevation_deg": (-90.0, 0.0)}, "elevation_deg"),
    ({"range_m": (2.0, 2.0)}, "range_m"),  # an empty range: no 1/range interval
])
def test_field_of_view_edges_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FieldOfView(**kwargs)


def test_field_of_view_contains_its_boundary_and_widens_by_rtol_relative():
    fov = FieldOfView((-60.0, 60.0), (-30.0, 30.0), (0.5, 10.0))
    rad = lambda d: torch.tensor([math.radians(d)], dtype=torch.float64)  # noqa: E731
    r = torch.tensor([10.0], dtype=torch.float64)
    assert fov.contains(rad(-60.0), rad(-30.0), r).item()  # every low/high edge inside
    assert fov.contains(rad(60.0), rad(30.0), torch.tensor([0.5], dtype=torch.float64)).item()
    assert not fov.contains(rad(60.001), rad(0.0), r).item()
    # rtol is relative to the side's magnitude: 60 deg * 1e-4 = 0.006 deg of slack
    assert fov.contains(rad(60.004), rad(0.0), r, rtol=1e-4).item()
    assert fov.contains(rad(300.0), rad(0.0), r).item()  # 300 deg is -60 deg


def test_snr_limits_are_inclusive_and_the_message_names_the_field():
    assert check_snr_db(300.0) == 300.0 and check_snr_db(-300.0) == -300.0
    with pytest.raises(ValueError, match=r"data\.snr_db must be a finite SNR .*got 300\.5"):
        check_snr_db(300.5, "data.snr_db")
    with pytest.raises(ConfigError, match="scene.snr_db"):
        load_config(overrides=["scene.snr_db=[0, 1000]"])


def test_a_fixed_snr_is_a_valid_interval_and_bad_scene_values_are_refused():
    assert SceneConfig(snr_db=(10.0, 10.0)).snr_db == (10.0, 10.0)  # one SNR: lo == hi
    for override, field in (("scene.K=0", "scene.K"), ("system.K_max=0", "system.K_max"),
                            ("scene.rician_kappa=[-0.5, 1]", "rician_kappa"),
                            ("scene.snr_db=[10, 5]", "scene.snr_db")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_config(overrides=[override])


def test_an_override_beats_the_file_and_keeps_its_other_keys(tmp_path):
    (tmp_path / "c.yaml").write_text("system:\n  M: 8\n  K_max: 3\nscene:\n  K: 2\n")
    cfg = load_config(tmp_path / "c.yaml", ["scene.K=3", "system.L=8"])
    assert cfg.scene.K == 3 and cfg.system.M == 8 and cfg.system.L == 8


def test_an_override_value_may_hold_an_equals_sign_and_a_value_is_not_a_section():
    assert parse_overrides(["out_dir=runs/a=b"]) == {"out_dir": "runs/a=b"}
    with pytest.raises(ConfigError, match="'scene' is not a section"):
        parse_overrides(["scene=3", "scene.K=2"])


def test_a_scene_kind_stays_inside_the_base_field_of_view_and_leaves_it_a_share():
    base = SceneConfig()
    with pytest.raises(ValueError, match=r"range_m \(0\.5, 20\.0\) leaves the base scene"):
        replace_scene_fields(base, {"range_m": [0.5, 20.0]}, "kind")
    with pytest.raises(ValueError, match=r"azimuth_deg .* leaves the base scene"):
        replace_scene_fields(base, {"azimuth_deg": [-10.0, 70.0]}, "kind")
    with pytest.raises(ValueError, match="shares sum to 1"):
        scene_mixture(base, [SceneKind(share=0.5), SceneKind(share=0.5)])
    with pytest.raises(ValueError, match="share"):
        SceneKind(share=1.0)
    with pytest.raises(ValueError, match=r"data\.scene_mix\[0\]\.scene\.snr_db"):
        scene_mixture(base, [SceneKind(share=0.5, scene={"snr_db": [5, 0]})])


def test_system_counts_have_their_lower_bounds():
    SystemConfig(N_H=1, N_V=1, L=1, M=2, K_max=1)  # the smallest system
    for field in ("N_H", "N_V", "L"):
        with pytest.raises(ValueError, match=field):
            SystemConfig(**{field: 0})


def test_a_file_s_system_with_as_many_antennas_as_the_default_k_max_reads():
    from risloc.config import system_from_json

    assert system_from_json('{"M": 5}').K_max == 4  # M = 5 = the default K_max: M - 1
    assert system_from_json('{"M": 6}').K_max == 5


# ------------------------------------------------ a third mutation review: what none checked
@pytest.mark.parametrize("elevation", [(0.0, 90.0), (-90.0, 0.0)])
def test_a_scene_refuses_an_elevation_of_90_deg_when_built(elevation):
    """The scene's own check, not only its field of view's (built later, on use)."""
    with pytest.raises(ValueError, match=r"elevation_deg must lie inside \(-90, 90\)"):
        SceneConfig(elevation_deg=elevation)


def test_contains_widens_a_side_near_zero_by_rtol_of_at_least_one_unit():
    """rtol is relative to max(1, |low|, |high|): a side of 0 deg (or a range under 1 m)
    still gets rtol of slack, so a float32 round trip of its boundary stays inside."""
    fov = FieldOfView((-60.0, 60.0), (0.0, 0.0), (0.5, 10.0))
    el = torch.tensor([math.radians(5e-7)], dtype=torch.float64)  # 5e-7 deg above 0
    az, r = torch.zeros(1, dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    assert not fov.contains(az, el, r).item()
    assert fov.contains(az, el, r, rtol=1e-6).item()


def test_a_scene_mixture_is_the_base_scene_first_with_the_share_left():
    """The order the simulator draws kinds in (a seeded stream depends on it)."""
    base = SceneConfig()
    mix = scene_mixture(base, [SceneKind(share=0.25, scene={"K": 2}),
                               SceneKind(share=0.5, scene={"range_m": [0.5, 2.0]})])
    assert [share for share, _ in mix] == pytest.approx([0.25, 0.25, 0.5])
    assert mix[0][1] == base and mix[1][1] == SceneConfig(K=2)
    assert mix[2][1] == SceneConfig(range_m=(0.5, 2.0))


def test_the_wavenumber_is_two_pi_over_the_wavelength():
    assert SystemConfig().k0 == pytest.approx(2 * math.pi / 0.3)
    assert SystemConfig(wavelength=0.1).k0 == pytest.approx(20 * math.pi)


def test_a_base_station_angle_beyond_90_deg_is_refused():
    """A config review: bs_angle_deg (-200, 200) was taken; the array response repeats in
    sin psi, so psi was no longer uniform as docs/conventions.md draws it."""
    with pytest.raises(ValueError, match=r"bs_angle_deg must lie within \[-90, 90\]"):
        SceneConfig(bs_angle_deg=(-200.0, 200.0))
    with pytest.raises(ValueError, match="bs_angle_deg must lie within"):
        SceneConfig(bs_angle_deg=(0.0, 90.5))
    assert SceneConfig(bs_angle_deg=(-90.0, 90.0)).bs_angle_deg == (-90.0, 90.0)
