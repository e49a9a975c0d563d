"""pyproject's ``requires-python = ">=3.10"`` holds: no module of the package, its tests or
its benchmarks uses syntax, a standard-library module or a function newer than Python 3.10
(checked statically by vermin, as CI runs 3.11 only)."""

import subprocess
import sys
from pathlib import Path

import pytest

import risloc

REPO = Path(risloc.__file__).parents[2]
RUN_VERMIN = "import sys; from vermin.main import main; sys.exit(main())"


def _vermin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_VERMIN, "-q", "--no-tips",
                           "--eval-annotations", "-t=3.10-", "--violations", *args],
                          capture_output=True, text=True, timeout=300)


def test_the_code_runs_on_python_3_10(tmp_path):
    pytest.importorskip("vermin")
    newer = tmp_path / "newer.py"  # the check itself: 3.11's tomllib and ExceptionGroup
    newer.write_text("import tomllib\n\ntry:\n    pass\nexcept* ValueError:\n    pass\n")
    caught = _vermin(str(newer))
    assert caught.returncode != 0 and "tomllib" in caught.stdout, caught.stdout
    folders = [REPO / name for name in ("src", "tests", "benchmarks") if (REPO / name).is_dir()]
    if not (REPO / "src" / "risloc").is_dir():
        pytest.skip("an installed copy of risloc, not the repository's")
    res = _vermin(*map(str, folders))
    assert res.returncode == 0, res.stdout + res.stderr
