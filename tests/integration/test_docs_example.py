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


def test_the_readme_python_snippet_runs_as_written():
    """The README's "Your own data, in Python" block, executed as it stands."""
    import math
    import re

    import torch

    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Your own data, in Python\n```python\n(.*?)```", text, re.S)
    assert block is not None
    torch.set_num_threads(1)
    names: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), names)
    est, res = names["est"], names["res"]
    assert est["azimuth_deg"].shape == (8, 5) and len(res.records()) == int(est["K"].sum())
    assert not res.bad and all(not math.isnan(r["range_m"]) for r in res.records())
