"""The benchmark scripts behind the published numbers still import and read their options
(a review: no test ran any of them, so a renamed function or option in the package would
have broken a documented command unseen). One process runs every script's --help, whose
description must be a whole sentence (a review: twelve scripts showed only the docstring's
first line, cut mid-sentence)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))

_RUN_EACH = r"""
import contextlib, io, runpy, sys
failed = []
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    shown = io.StringIO()
    try:
        with contextlib.redirect_stdout(shown):
            runpy.run_path(path, run_name="__main__")
        failed.append(f"{path}: --help did not end the script")
    except SystemExit as end:
        if end.code not in (0, None):
            failed.append(f"{path}: --help exited {end.code}")
        elif "usage" not in shown.getvalue().lower():
            failed.append(f"{path}: --help printed no usage")
        elif not shown.getvalue().split("\n\n")[1].rstrip().endswith((".", "?")):
            failed.append(f"{path}: --help cuts its description mid-sentence")
    except Exception as err:
        failed.append(f"{path}: {type(err).__name__}: {err}")
print("\n".join(failed))
"""


def test_every_benchmark_script_imports_and_shows_its_options():
    assert len(SCRIPTS) > 30
    res = subprocess.run([sys.executable, "-c", _RUN_EACH, *map(str, SCRIPTS)],
                         capture_output=True, text=True, timeout=600,
                         cwd=ROOT / "benchmarks")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "", res.stdout
