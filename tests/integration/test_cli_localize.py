from typer.testing import CliRunner

from risloc.cli.main import app
from risloc.pipeline import read_estimates

runner = CliRunner()


def test_localize_file_writes_csv_and_metrics(tmp_path):
    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "3", "--out", str(f), "--snr-db", "20",
                               "--K", "1", "--split", "test"]).exit_code == 0
    out = tmp_path / "est.csv"
    res = runner.invoke(app, ["localize", str(f), "--out", str(out), "--K", "1"])
    assert res.exit_code == 0, res.output
    assert "metrics against the file's truth" in res.output
    est = read_estimates(out, 3, 5)
    assert est.K.tolist() == [1, 1, 1]


def test_localize_bad_inputs(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"junk")
    res = runner.invoke(app, ["localize", str(tmp_path / "junk.h5")])
    assert res.exit_code == 2 and "not a readable HDF5" in res.output
    res = runner.invoke(app, ["localize", str(tmp_path / "junk.h5"), "--method", "x"])
    assert res.exit_code == 2 and "--method" in res.output
    assert not (tmp_path / "estimates.csv").exists()


def test_localize_never_replaces_its_input_and_skips_bad_scenes(tmp_path):
    import h5py
    import numpy as np

    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "4", "--out", str(f), "--snr-db", "20",
                               "--K", "1", "--split", "test"]).exit_code == 0
    before = f.read_bytes()
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "." / "s.h5"),
                              "--method", "classical"])
    assert res.exit_code == 2 and "one of the inputs" in res.output
    assert f.read_bytes() == before
    with h5py.File(f, "a") as h:  # one empty scene, one scene x 1e-30 (float32 underflow)
        h["y"][2] = np.zeros_like(h["y"][2])
        h["y"][3] = h["y"][3] * 1e-30
    out = tmp_path / "est.csv"
    res = runner.invoke(app, ["localize", str(f), "--out", str(out), "--method", "classical",
                              "--K", "1"])
    assert res.exit_code == 1, res.output  # done, but a scene could not be localized
    assert "scene 2 not localized: all-zero measurements" in res.output
    est = read_estimates(out, 4, 5)
    assert est.K.tolist() == [1, 1, 0, 1]  # the tiny scene is localized, not lost
