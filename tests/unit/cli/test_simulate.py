import numpy as np

from risloc.cli.simulate import _fov_covering as _both


def _fov_covering(angles, ranges):
    return _both(angles, ranges)[0]  # (the --fov options; the training ones: below)


def test_fov_covering_widens_only_the_fields_the_truth_leaves_with_its_margins():
    """A mutation review: the margins (a fifth in range, 5 deg in angle), the +-89 deg clip,
    the default box kept as the least, NaN slots ignored and the fields named were unchecked."""
    nan = np.nan
    inside = np.array([[10.0, -20.0, nan], [5.0, 0.0, nan]])
    assert _fov_covering(inside, np.array([1.0, 2.0, nan])) == ""
    assert _fov_covering(inside, np.array([0.2, 12.0, nan])) == "--fov range_m=0.16,15"
    assert _fov_covering(np.array([[-70.0, 10.0], [0.0, 0.0]]), np.array([1.0, 2.0])) \
        == "--fov azimuth_deg=-75,60"
    assert _fov_covering(np.array([[0.0, 70.0], [-10.0, 87.0]]), np.array([1.0, 2.0])) \
        == "--fov azimuth_deg=-60,75 --fov elevation_deg=-30,89"
    # an azimuth stored in 360..720 is the same direction (counted inside, as the metrics
    # pair it): not a reason to widen the box
    assert _fov_covering(np.array([[420.0, 0.0], [0.0, 0.0]]), np.array([0.2, 1.0])) \
        == "--fov range_m=0.16,10"
    # the training recipe's fields of the same box, quoted for a shell
    assert _both(np.array([[0.0, 70.0], [-10.0, 87.0]]), np.array([1.0, 2.0]))[1] == \
        "--set 'scene.azimuth_deg=[-60, 75]' --set 'scene.elevation_deg=[-30, 89]'"


def test_fov_covering_counts_the_angles_no_box_holds():
    """A review: a source at azimuth 100 deg got '--fov azimuth_deg=-60,89', which leaves it
    out, and the hint said a model trained on that box finds it; such angles are counted."""
    fov, train, beyond = _both(np.array([[100.0, 10.0, np.nan], [0.0, 0.0, np.nan]]),
                               np.array([1.0, 2.0, np.nan]))
    assert (fov, beyond) == ("--fov azimuth_deg=-60,89", 1)
    assert _both(np.array([[70.0], [0.0]]), np.array([1.0]))[2] == 0


def test_info_on_a_folder_offers_a_pattern_only_as_localize_s(tmp_path):
    """A newcomer's review: `risloc info data` said to give 'data/*.h5', which info and
    evaluate (one file each) then refused as 'no such file'; only localize expands one."""
    from typer.testing import CliRunner

    from risloc.cli.main import app

    (tmp_path / "data").mkdir()
    res = CliRunner().invoke(app, ["info", str(tmp_path / "data")])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "a folder, not a scene file" in out
    assert "risloc localize also takes a pattern such as" in out


def test_parse_shard_slices_and_refusals():
    """A mutation review: the shard slices and their refusals were unchecked."""
    import pytest

    from risloc.cli.simulate import parse_shard

    assert parse_shard(None, 5) == (0, 5)
    assert [parse_shard(f"{i}/3", 8) for i in range(3)] == [(0, 2), (2, 5), (5, 8)]
    assert parse_shard("3/4", 4) == (3, 4)  # as many shards as scenes
    for bad, n in (("3/3", 9), ("-1/3", 9), ("5/5", 4), ("a/2", 4)):
        with pytest.raises(ValueError):
            parse_shard(bad, n)


def _simulate(*args):
    from typer.testing import CliRunner

    from risloc.cli.main import app

    res = CliRunner().invoke(app, ["simulate", *map(str, args)])
    return res.exit_code, " ".join(res.output.split())


def test_simulate_records_its_options_and_shards_hold_the_unsharded_scenes(tmp_path):
    """A mutation review: what simulate records (K, SNR, power spread, shard) and that the
    shards of an .h5 file hold the unsharded file's scenes were unchecked."""
    import json

    from risloc.io.scenefile import inspect_scene_file, read_scenes

    whole, part = tmp_path / "w.H5", tmp_path / "p.h5"
    assert _simulate("--n", 5, "--out", whole, "--K", 2, "--snr-db", 7,
                     "--power-spread-db", 3)[0] == 0
    code, text = _simulate("--n", 5, "--out", part, "--K", 2, "--snr-db", 7,
                           "--power-spread-db", 3, "--shard", "1/2")
    assert code == 0, text
    assert "wrote 3 scenes" in text and "shard 1/2: scenes 2..4 of 5" in text
    info = inspect_scene_file(whole)
    assert info.n_scenes == 5 and "shard" not in info.attrs
    assert int(info.attrs["K_fixed"]) == 2 and float(info.attrs["snr_db_fixed"]) == 7
    scene = json.loads(info.attrs["config"])["scene"]
    assert scene["K"] == 2 and scene["power_spread_db"] in (3, [3, 3])
    sharded = inspect_scene_file(part).attrs
    assert (sharded["shard"], int(sharded["first_scene"]), int(sharded["n_total"])) \
        == ("1/2", 2, 5)
    a, _ = read_scenes(whole, 2, 5)  # (start, stop)
    b, _ = read_scenes(part, 0, 3)
    assert np.array_equal(a.y.numpy(), b.y.numpy())
    assert (a.K.numpy() == 2).all()


def test_simulate_refuses_bad_options_before_writing(tmp_path):
    """A mutation review: the option checks were unchecked."""
    out = tmp_path / "s.npz"
    for args, words in ((["--split", "nope"], "--split must be one of"),
                        (["--snr-db", "1e4"], "--snr-db must be a finite SNR"),
                        (["--K", "0"], "the number of sources must be 1.."),
                        (["--recipe", "train_tiny", "--config", "x.yaml"], "exclude each other")):
        code, text = _simulate("--n", 2, "--out", out, *args)
        assert code != 0 and words in text, (args, text)
        assert not out.exists()
    code, text = _simulate("--n", 2, "--out", tmp_path / "s.txt")
    assert code != 0 and "--out must end in .h5 or .npz" in text
    assert _simulate("--n", 2, "--out", out)[0] == 0
    code, text = _simulate("--n", 2, "--out", out)
    assert code != 0  # exists: refused without --overwrite
    assert _simulate("--n", 2, "--out", out, "--overwrite")[0] == 0


def test_simulate_takes_K_max_and_info_exits_1_on_a_scene_that_cannot_be_localized(tmp_path):
    """A mutation review: --K K_max (the largest allowed), the "(statistics)" row of a file
    read whole and info's exit code on a bad scene were unchecked."""
    import h5py
    from typer.testing import CliRunner

    from risloc.cli.main import app

    out = tmp_path / "s.h5"
    code, text = _simulate("--n", 2, "--out", out, "--K", 5)  # (system.K_max: 5)
    assert code == 0, text
    assert "K histogram 1:0 2:0 3:0 4:0 5:2" in " ".join(text.replace("│", " ").split())
    assert "(statistics)" not in text  # (2 scenes: all of them read)
    assert CliRunner().invoke(app, ["info", str(out)]).exit_code == 0
    with h5py.File(out, "a") as f:  # scene 1: codes off the unit circle
        f["codes"][1] = 2 * f["codes"][1]
    assert CliRunner().invoke(app, ["info", str(out)]).exit_code == 1


def test_simulate_recipe_records_its_scene_kinds_and_info_names_them(tmp_path):
    """A mutation review: the scene_mix attribute of `simulate --recipe` and info's "scene
    kinds" row (a kind without a name: 'unnamed') were unchecked."""
    from typer.testing import CliRunner

    from risloc.cli.main import app
    from risloc.io.scenefile import inspect_scene_file

    out = tmp_path / "m.npz"
    code, text = _simulate("--n", 2, "--out", out, "--recipe", "train_mix", "--set",
                           "data.scene_mix=[{share: 0.5, scene: {code_bits: 1}}, "
                           "{name: near, share: 0.25, scene: {range_m: [0.5, 1.5]}}]")
    assert code == 0, text
    assert "scene_mix" in inspect_scene_file(out).attrs
    res = CliRunner().invoke(app, ["info", str(out)])
    text = " ".join(res.output.replace("│", " ").split())
    assert "scene kinds unnamed 50%, near 25% (the base scene the rest)" in text


def test_drawn_with_takes_a_recipe_s_K_and_a_fixed_spread():
    """A mutation review: K_fixed 0 (no --K) falling back to the scene's K, and a spread
    [s, s] read as fixed, were unchecked."""
    import json

    from risloc.cli.simulate import _drawn_with

    def drawn(K_fixed, **scene):
        return _drawn_with({"config": json.dumps({"scene": scene}), "K_fixed": K_fixed})

    assert "K = 3," in drawn(0, K=3) and "K = 3," in drawn("0", K=3)
    assert "K = 2," in drawn(2, K=None)
    assert "K uniform in 1..K_max" in drawn(0, K=None)
    assert "source powers spread over 3.0 dB," in drawn(0, power_spread_db=[3.0, 3.0])
    assert "s uniform per scene in [0.0, 25.0]" in drawn(0, power_spread_db=[0.0, 25.0])
