import pytest

from risloc.config import ConfigError
from risloc.hpo import load_space
from risloc.training import load_train_config


def _space(tmp_path, text, base=None):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return load_space(p, base)


def test_a_trial_s_relative_parameter_means_that_multiple_of_the_base_value(tmp_path):
    """value() (trials.csv, best_overrides.yaml) reads a relative parameter as a multiple of
    the base recipe's value, an absolute one as the value itself (a mutation review)."""
    base = load_train_config(None, ["optim.lr=2e-3"])
    space = _space(tmp_path, "optim.lr: {low: 0.25, high: 4, log: true, relative: true}\n"
                             "blend.beta: {low: 0.1, high: 0.5}", base)
    params = {"optim.lr": 3.0, "blend.beta": 0.2}
    assert {d.field: d.value(params, base) for d in space} == {
        "optim.lr": pytest.approx(6e-3), "blend.beta": 0.2}


@pytest.mark.parametrize("field", ["schedule.epochs", "schedule.hpo_mode", "out_dir",
                                   "progress"])
def test_every_field_tune_sets_itself_is_refused_in_a_space(tmp_path, field):
    with pytest.raises(ConfigError, match=f"{field} is set by risloc tune itself"):
        _space(tmp_path, f"{field}: {{choices: [true, false]}}")


def test_a_range_over_a_true_or_false_field_asks_for_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"optim.amp is true or false: give it choices "
                                          r"\[true, false\]"):
        _space(tmp_path, "optim.amp: {low: 0, high: 1}")


def test_a_relative_range_over_a_field_of_0_is_refused(tmp_path):
    """A relative range multiplies the base value: over optim.weight_decay = 0 every trial
    got 0, the study searching nothing while it seemed to (a review)."""
    base = load_train_config(None, ["optim.weight_decay=0.0"])
    with pytest.raises(ConfigError, match="optim.weight_decay, which is 0: every trial would "
                                          "get 0; give it an absolute range"):
        _space(tmp_path, "optim.weight_decay: {low: 0.5, high: 2, relative: true}", base)
    _space(tmp_path, "optim.weight_decay: {low: 0.0, high: 0.1}", base)  # absolute: taken


@pytest.mark.parametrize("field,guess", [("optim.lrx", "optim.lr"),
                                         ("train.lr", "optim.lr"),
                                         ("schedule.epoch", "schedule.epochs")])
def test_a_field_not_in_the_recipe_is_named_with_the_one_meant(tmp_path, field, guess):
    """A misspelt or misplaced field gets the recipe's own did-you-mean (a scale-out
    persona: only 'is not a recipe field' was said)."""
    with pytest.raises(ConfigError, match=rf"{field} is not a recipe field \(did you mean "
                                          rf"{guess}\?\)$"):
        _space(tmp_path, f"{field}: {{low: 1, high: 2}}")


def test_a_number_as_a_field_is_not_a_recipe_field_not_a_crash(tmp_path):
    """(a diff review: the did-you-mean split the key as text, and a YAML key 5 raised
    AttributeError)"""
    with pytest.raises(ConfigError, match=r"5 is not a recipe field"):
        _space(tmp_path, "5: {low: 0.1, high: 1}")


def test_choices_written_with_an_exponent_are_numbers(tmp_path):
    """`choices: [1e-5, 1e-4]` were the strings '1e-5', '1e-4' (YAML 1.1), so the duplicate
    check compared text ([1e-5, 0.00001] passed) and trials wrote strings; numbers now."""
    base = load_train_config("train_default")
    space = tmp_path / "space.yaml"
    space.write_text("optim.weight_decay: {choices: [1e-5, 1e-4]}\n")
    (dim,) = load_space(space, base)
    assert dim.choices == (1e-5, 1e-4) and all(type(c) is float for c in dim.choices)
    space.write_text("optim.weight_decay: {choices: [1e-5, 0.00001]}\n")
    with pytest.raises(ConfigError, match="twice|duplicate|repeat"):
        load_space(space, base)
