"""`risloc tune`'s command (cli/tune.py): the settings it hands the search, its banner,
exit codes and the summary it prints; the search itself is replaced by a recorder
(the study's own behaviour: tests/unit/hpo, tests/integration/test_tune.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("optuna")

from typer.testing import CliRunner  # noqa: E402

import risloc.hpo as hpo  # noqa: E402
from risloc.cli.main import app  # noqa: E402


def _trial(number, state, value, params):
    return SimpleNamespace(number=number, state=SimpleNamespace(name=state), value=value,
                           params=params)


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """hpo.tune replaced: records its settings and returns a study of two trials."""
    seen = []
    study = SimpleNamespace(trials=[_trial(0, "COMPLETE", 0.0123456, {"optim.lr": 1.23456}),
                                    _trial(1, "PRUNED", None, {"optim.lr": 2.0,
                                                               "data.batch_size": 32})])

    def fake(settings, on_start=None):
        seen.append(settings)
        if on_start is not None:  # (its checks passed: the banner)
            on_start()
        return study

    monkeypatch.setattr(hpo, "tune", fake)
    monkeypatch.chdir(tmp_path)
    return seen


def _flat(text):
    return " ".join(text.split())


def test_the_defaults_are_the_guide_s(recorded):
    """No option: the recipe, budget, folder, storage, pruner and heartbeat the guide and
    --help name."""
    res = CliRunner().invoke(app, ["tune"])
    assert res.exit_code == 0, res.output
    s = recorded[0]
    assert (s.config, s.overrides, s.out_dir, s.storage, s.space) == (
        "train_default", (), "runs/tune", None, None)
    assert (s.n_trials, s.epochs, s.seed, s.study_name) == (20, 10, 0, "risloc")
    assert (s.startup_trials, s.warmup_epochs, s.heartbeat_s, s.grace_s, s.baseline) == (
        6, 8, 60, 180, False)
    assert ("tuning -> sqlite:///runs/tune/study.db study 'risloc' (20 trials x 10 epochs)"
            in _flat(res.output))


def test_every_option_reaches_the_search(recorded, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {low: 0.5, high: 2.0, log: true, relative: true}\n")
    res = CliRunner().invoke(app, [
        "tune", "-c", "train_tiny", "-o", "o", "--set", "data.n_val=8", "--set",
        "model.hidden=24", "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--space",
        str(space), "--startup-trials", "2", "--warmup-epochs", "3", "--baseline",
        "--trials", "4", "--epochs", "5"])
    assert res.exit_code == 0, res.output
    s = recorded[0]
    assert (s.config, s.overrides, s.out_dir, s.space) == (
        "train_tiny", ("data.n_val=8", "model.hidden=24"), "o", str(space))
    assert s.storage == f"sqlite:///{tmp_path / 'x.db'}"
    assert (s.startup_trials, s.warmup_epochs, s.baseline) == (2, 3, True)
    assert f"tuning -> sqlite:///{tmp_path / 'x.db'} study 'risloc' (4 trials x 5 epochs)" \
        in _flat(res.output)


def test_the_banner_hides_a_storage_password(recorded):
    res = CliRunner().invoke(app, ["tune", "--storage", "postgresql+psycopg2://u:S3cret@h/db",
                                   "--study-name", "w"])
    assert res.exit_code == 0, res.output
    assert recorded[0].storage == "postgresql+psycopg2://u:S3cret@h/db"
    assert "S3cret" not in res.output
    assert "tuning -> postgresql+psycopg2://u:***@h/db study 'w'" in _flat(res.output)


@pytest.mark.parametrize("args", [["--trials", "0"], ["--epochs", "0"], ["--seed", "-1"],
                                  ["--startup-trials", "-1"], ["--warmup-epochs", "-1"],
                                  ["--heartbeat", "0"]])
def test_out_of_range_numbers_are_refused_before_the_search(recorded, args):
    res = CliRunner().invoke(app, ["tune", *args])
    assert res.exit_code == 2 and not recorded, res.output
    assert f"Invalid value for '{args[0]}'" in _flat(res.output)  # the option, by its name


def test_zero_startup_trials_and_warmup_epochs_are_taken(recorded):
    """0 is in range for the pruner's counts (prune from the first trial and epoch)."""
    res = CliRunner().invoke(app, ["tune", "--startup-trials", "0", "--warmup-epochs", "0"])
    assert res.exit_code == 0, res.output
    assert (recorded[0].startup_trials, recorded[0].warmup_epochs) == (0, 0)


def test_the_summary_lists_each_trial_and_names_the_best_only_once_written(recorded):
    res = CliRunner().invoke(app, ["tune", "-c", "train_tiny", "-o", "my out"])
    assert res.exit_code == 0, res.output
    text = _flat(res.output)
    assert "study 'risloc'" in text
    lines = res.output.splitlines()
    row0 = next(ln for ln in lines if "COMPLETE" in ln).split()
    row1 = next(ln for ln in lines if "PRUNED" in ln).split()
    # trial, state, objective (.4g), then the parameters sorted by name (.3g; none: blank)
    assert [c for c in row0 if c not in "│┃|"] == ["0", "COMPLETE", "0.01235", "1.23"]
    assert [c for c in row1 if c not in "│┃|"] == ["1", "PRUNED", "32", "2"]
    assert "data." in text and "lr (x base)" in text  # optim.lr: a multiple of the recipe's
    assert "batch_size (x base)" not in text and "best trial" not in text
    Path("my out").mkdir()
    (Path("my out") / "best_overrides.yaml").write_text("objective: 0.0\n")
    res = CliRunner().invoke(app, ["tune", "-c", "train_tiny", "-o", "my out"])
    assert res.exit_code == 0, res.output
    assert ("best trial: my out/best_overrides.yaml (risloc train --config train_tiny "
            "--overrides 'my out/best_overrides.yaml')") in _flat(res.output)


@pytest.mark.parametrize("when", ["before_start", "between_trials", "in_trial"])
def test_ctrl_c_exits_130_saying_what_was_interrupted(monkeypatch, tmp_path, when):
    # a review: it always named "the interrupted trial", also where none ran (Ctrl-C after
    # the last trial, or before the study was opened: then maybe no folder at all)
    def stop(settings, on_start=None):
        if when != "before_start":
            on_start()
        err = KeyboardInterrupt()
        if when == "in_trial":
            err.interrupted_trial = 3  # (set by the objective: hpo/search.py)
        raise err

    monkeypatch.setattr(hpo, "tune", stop)
    res = CliRunner().invoke(app, ["tune", "-c", "train_tiny", "-o", str(tmp_path / "t")])
    assert res.exit_code == 130, res.output
    text = _flat(res.output)
    continues = (f"interrupted: the study keeps its finished trials; the same command "
                 f"continues it in {tmp_path / 't'}")
    trial = ", the interrupted trial 3 from its last finished epoch"
    if when == "before_start":
        assert ("interrupted: before the study was opened; the same command starts or "
                "continues it") in text and "interrupted trial" not in text, text
    elif when == "between_trials":
        assert continues in text and "interrupted trial" not in text, text
    else:
        assert continues + trial in text, text
    assert "best trial" not in res.output


def test_without_optuna_the_hint_names_the_extra_and_exits_2(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    res = CliRunner().invoke(app, ["tune"])
    assert res.exit_code == 2, res.output
    assert "error: risloc tune needs Optuna: pip install 'risloc[hpo]'" in _flat(res.output)


def test_a_search_error_is_one_line_and_exit_2(monkeypatch, tmp_path):
    def refuse(settings, on_start=None):
        raise ValueError("study 'risloc' holds trials of another recipe")

    monkeypatch.setattr(hpo, "tune", refuse)
    res = CliRunner().invoke(app, ["tune", "-c", "train_tiny", "-o", str(tmp_path / "t")])
    assert res.exit_code == 2
    assert "error: study 'risloc' holds trials of another recipe" in _flat(res.output)


@pytest.mark.parametrize("args, message", [
    (["--set", "nosuch.field=1"], "nosuch: Extra inputs are not permitted"),
    (["--storage", "sqlite://"], "an in-memory SQLite study ends with this process")])
def test_arguments_refused_by_the_search_print_no_banner(tmp_path, args, message):
    """The search checks its arguments before any trial (the real hpo.tune): an error is
    not preceded by "tuning -> ..." as if the search had started."""
    res = CliRunner().invoke(app, ["tune", "-c", "train_tiny", "-o", str(tmp_path / "t"),
                                   *args])
    assert res.exit_code == 2, res.output
    assert message in _flat(res.output)
    assert "tuning ->" not in res.output
