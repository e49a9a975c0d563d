"""`risloc tune` on the tiny recipe: trials train, the study resumes from its SQLite
database, pruning stops a trial's training, and the best trial comes back as overrides."""

import csv
from pathlib import Path

import optuna
import yaml
from typer.testing import CliRunner

from risloc.cli.main import app
from risloc.hpo import TuneSettings, tune
from risloc.hpo.search import _objective
from risloc.training import load_train_config

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "train_tiny.yaml")
runner = CliRunner()


def test_study_runs_resumes_and_reports(tmp_path):
    s = TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=2, epochs=1, seed=3)
    study = tune(s)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert (tmp_path / "study.db").exists()
    assert (tmp_path / "trial_0000" / "best.pt").exists()
    # resume: the same command with a larger target runs only the missing trial
    study = tune(TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=3, epochs=1,
                              seed=3))
    assert len(study.trials) == 3
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    best = yaml.safe_load((tmp_path / "best_overrides.yaml").read_text())
    assert best["objective"] == min(t.value for t in study.trials)
    cfg = load_train_config(TINY, [f"{k}={v}" for k, v in best["overrides"].items()])
    assert cfg.blend.beta == best["overrides"]["blend.beta"]


class _PruneAll(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_pruned_trial_stops_training_after_the_reporting_epoch(tmp_path):
    s = TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=1, epochs=2)
    study = optuna.create_study(pruner=_PruneAll())
    study.optimize(_objective(s, load_train_config(TINY)), n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    epochs = list(csv.DictReader((tmp_path / "trial_0000" / "epochs.csv").open()))
    assert len(epochs) == 1  # the second epoch never ran


def test_tune_cli(tmp_path):
    res = runner.invoke(app, ["tune", "--config", TINY, "--trials", "1", "--epochs", "1",
                              "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "best trial as recipe overrides" in res.output
    res = runner.invoke(app, ["tune", "--config", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2
