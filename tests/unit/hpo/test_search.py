import optuna
import pytest

from risloc.hpo import SEARCH_SPACE, TuneSettings, suggest_overrides
from risloc.training import load_train_config


def test_suggested_overrides_form_a_valid_recipe_with_scaled_lr():
    base = load_train_config(None, ["optim.lr=2e-3"])
    params = {name: (lo if log else hi) for name, (_f, lo, hi, log) in SEARCH_SPACE.items()}
    overrides = suggest_overrides(optuna.trial.FixedTrial(params), base)
    cfg = load_train_config(None, overrides)
    assert cfg.optim.lr == pytest.approx(2e-3 * params["lr_factor"])
    assert cfg.blend.beta == pytest.approx(params["beta"])
    assert cfg.loss.lam_K == pytest.approx(params["lam_K"])
    assert cfg.optim.weight_decay == pytest.approx(params["weight_decay"])


def test_search_space_bounds_are_valid_recipe_values():
    for name, (field, lo, hi, _log) in SEARCH_SPACE.items():
        assert 0 < lo < hi, name
        if name != "lr_factor":
            for v in (lo, hi):
                load_train_config(None, [f"{field}={v}"])  # validates


def test_tune_settings_reject_nonsense():
    with pytest.raises(ValueError, match="n_trials"):
        TuneSettings(config=None, n_trials=0)
