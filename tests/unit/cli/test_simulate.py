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
