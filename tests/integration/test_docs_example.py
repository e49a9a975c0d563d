"""The user guide's "bring your own data" example runs as written."""

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bring_your_own_data_example_runs(capsys):
    runpy.run_path(str(ROOT / "docs" / "examples" / "bring_your_own_data.py"),
                   run_name="__main__")
    out = capsys.readouterr().out
    assert "scene 0: azimuth" in out and "skipped scenes: none" in out
    assert "sqrt(CRB) azimuth [deg]" in out
