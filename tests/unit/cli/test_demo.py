"""`risloc demo` without options reproduces the README's table: 100 test scenes at each of
-5, 0, 5, 10 and 20 dB, seed 0, its report in reports/demo (docs/guide.md)."""

from pathlib import Path

from typer.testing import CliRunner

import risloc.cli.demo as demo
from risloc.cli.main import app


def test_the_defaults_are_those_of_the_readme_s_table(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(demo, "sweep_points", lambda settings, cfg: [])
    monkeypatch.setattr(demo, "run_report", lambda points, system, settings, out_dir, plots,
                        *a: seen.append((settings, out_dir, plots, a)))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["demo"])
    assert res.exit_code == 0, res.output
    (settings, out_dir, plots, (what, command)), = seen
    assert (settings.n_per_point, settings.snr_db, settings.seed) == (
        100, (-5.0, 0.0, 5.0, 10.0, 20.0), 0)
    assert out_dir == Path("reports/demo") and plots is True
    assert what == "default system, simulated test split" and command == "risloc demo"
