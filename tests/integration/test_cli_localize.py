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
