import h5py
from typer.testing import CliRunner

from risloc.cli.main import app
from risloc.io import read_scenes

runner = CliRunner()


def test_simulate_writes_file_with_config(tmp_path):
    out = tmp_path / "d" / "t.h5"
    res = runner.invoke(app, ["simulate", "--n", "300", "--split", "test", "--out", str(out),
                              "--set", "scene.K=2", "--seed", "4"])
    assert res.exit_code == 0, res.output
    batch, info = read_scenes(out)
    assert info.n_scenes == 300 and bool((batch.K == 2).all())
    with h5py.File(out) as f:
        assert '"K":2' in f.attrs["config"] and f.attrs["split"] == "test"
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "300" in res.output


def test_simulate_npz_and_errors(tmp_path):
    out = tmp_path / "t.npz"
    assert runner.invoke(app, ["simulate", "--n", "20", "--out", str(out)]).exit_code == 0
    assert read_scenes(out)[1].n_scenes == 20
    bad = runner.invoke(app, ["simulate", "--n", "5", "--out", str(tmp_path / "x.h5"),
                              "--set", "system.M=4"])
    assert bad.exit_code == 2 and "K_max=5 must be smaller than M=4" in bad.output
    assert not (tmp_path / "x.h5").exists()
    bad = runner.invoke(app, ["simulate", "--n", "5", "--split", "dev"])
    assert bad.exit_code == 2 and "--split" in bad.output
    (tmp_path / "junk.h5").write_bytes(b"junk")
    bad = runner.invoke(app, ["info", str(tmp_path / "junk.h5")])
    assert bad.exit_code == 2 and "not a readable HDF5" in bad.output


def test_simulate_refuses_a_nan_snr_and_odd_suffixes(tmp_path):
    res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "s.h5"),
                              "--snr-db", "nan"])
    assert res.exit_code == 2 and "finite" in res.output
    res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "s.txt")])
    assert res.exit_code == 2 and ".h5 or .npz" in res.output
    assert list(tmp_path.iterdir()) == []
