import optuna
import pytest

from risloc.config import ConfigError
from risloc.hpo import TuneSettings, load_space
from risloc.hpo.search import DEFAULT_SPACE, worker_seed
from risloc.training import load_train_config


def test_default_space_suggests_valid_recipes_with_a_relative_lr():
    base = load_train_config(None, ["optim.lr=2e-3"])
    space = load_space(DEFAULT_SPACE, base)
    fields = {d.field for d in space}
    assert {"optim.lr", "optim.batch_size", "model.refine_iterations"} <= fields
    params = {d.field: (d.choices[-1] if d.choices else d.low) for d in space}
    values = [f"{d.field}={d.suggest(optuna.trial.FixedTrial(params), base)!r}" for d in space]
    cfg = load_train_config(None, values)
    lr = next(d for d in space if d.field == "optim.lr")
    assert cfg.optim.lr == pytest.approx(2e-3 * lr.low)
    assert cfg.optim.batch_size == params["optim.batch_size"]


def test_space_files_are_checked_entry_by_entry(tmp_path):
    for text, msg in (("optim.nope: {low: 1, high: 2}", "not a recipe field"),
                      ("optim.lr: {low: 2, high: 1}", "low < high"),
                      ("optim.lr: {low: 0, high: 1, log: true}", "low > 0"),
                      ("optim.lr: {choices: []}", "non-empty"),
                      ("optim.lr: {low: 1, high: 2, step: 3}", "unknown keys"),
                      ("- a list", "mapping")):
        p = tmp_path / "s.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            load_space(p)


def test_settings_and_worker_seeds():
    with pytest.raises(ValueError, match="n_trials"):
        TuneSettings(config=None, n_trials=0)
    with pytest.raises(ValueError, match="heartbeat"):
        TuneSettings(config=None, heartbeat_s=10, grace_s=5)
    s = TuneSettings(config=None, out_dir="runs/x")
    assert s.storage_url.startswith("sqlite:///") and s.storage_url.endswith("study.db")
    assert TuneSettings(config=None, storage="postgresql://u@h/db").storage_url == \
        "postgresql://u@h/db"
    assert worker_seed(0) == worker_seed(0) and 0 <= worker_seed(7) < 2**31
