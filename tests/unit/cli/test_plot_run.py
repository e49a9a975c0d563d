"""`risloc plot-run RUN`: the curves go to RUN/curves.png by default (docs/guide.md) or to a
PNG named by --out, and a folder that is not a finished run's is named for what it is."""

import pytest
from typer.testing import CliRunner

from risloc.cli.main import app


@pytest.fixture
def drawn(monkeypatch):
    """The PNGs plot-run asked for (the drawing itself: tests/unit/experiments/test_plots)."""
    from risloc.experiments import plots

    paths = []
    monkeypatch.setattr(plots, "plot_run", lambda run, path: paths.append(path) or path)
    return paths


def _run(folder):
    folder.mkdir()
    (folder / "epochs.csv").write_text("epoch,train_total,val_objective,val_angle_median_deg,"
                                       "lr,beta\n1,1.0,2.0,3.0,0.001,0.3\n")
    return folder


def test_the_curves_go_to_the_run_s_curves_png_or_to_a_png_named_in_any_case(tmp_path, drawn):
    run = _run(tmp_path / "run")
    res = CliRunner().invoke(app, ["plot-run", str(run)])
    assert res.exit_code == 0, res.output
    assert drawn == [run / "curves.png"]
    res = CliRunner().invoke(app, ["plot-run", str(run), "--out", str(tmp_path / "Curves.PNG")])
    assert res.exit_code == 0, res.output
    assert drawn[-1] == tmp_path / "Curves.PNG"


def test_a_folder_that_is_not_a_finished_run_is_named_for_what_it_is(tmp_path, drawn):
    starting = tmp_path / "starting"  # a run in its first epoch, no step logged yet
    starting.mkdir()
    (starting / ".lock").write_text("")
    res = CliRunner().invoke(app, ["plot-run", str(starting)])
    assert res.exit_code == 2
    assert "no epoch of this run has finished yet" in " ".join(res.output.split())
    (tmp_path / "epochs.csv").write_text("")
    res = CliRunner().invoke(app, ["plot-run", str(tmp_path / "epochs.csv")])
    assert res.exit_code == 2
    assert "epochs.csv is a file: give the run's folder" in " ".join(res.output.split())
    assert drawn == []


def test_a_missing_folder_a_logging_run_a_non_png_and_an_unwritable_out_are_refused(
        tmp_path, drawn):
    """(a second mutation review: these four refusals went untested)"""
    res = CliRunner().invoke(app, ["plot-run", str(tmp_path / "none")])
    assert res.exit_code == 2 and "none: no such folder" in " ".join(res.output.split())
    logging = tmp_path / "logging"  # steps logged, no epoch finished, no lock
    logging.mkdir()
    (logging / "steps.csv").write_text("step,loss\n1,1.0\n")
    res = CliRunner().invoke(app, ["plot-run", str(logging)])
    assert res.exit_code == 2
    assert "no epoch of this run has finished yet" in " ".join(res.output.split())
    run = _run(tmp_path / "run")
    res = CliRunner().invoke(app, ["plot-run", str(run), "--out", str(tmp_path / "c.pdf")])
    assert res.exit_code == 2 and "give a name ending in .png" in " ".join(res.output.split())
    (tmp_path / "afile").write_text("")
    res = CliRunner().invoke(app, ["plot-run", str(run), "--out",
                                   str(tmp_path / "afile" / "c.png")])
    assert res.exit_code == 2 and "is a file" in " ".join(res.output.split()), res.output
    assert drawn == []
