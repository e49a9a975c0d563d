"""Checkpoints that do not match what they claim to be are refused with a ValueError, and
an exported model keeps every set of weights inference may ask for (mutation review)."""

import json

import pytest
import torch

from risloc.config import SystemConfig
from risloc.inference.checkpoint import (
    check_model_target,
    export_model,
    load_checkpoint,
    load_model,
    model_from_state,
    save_checkpoint,
)
from risloc.model import CovarianceNet, ModelConfig

SMALL = {"width": 8, "dilations": [1], "hidden": 8}


def _state(system=SystemConfig(), weights_of=None, seed=0):
    """A checkpoint's content by hand: the recipe of ``system`` and weights of a network of
    ``weights_of`` (default: the same system)."""
    torch.manual_seed(seed)
    net = CovarianceNet(weights_of or system, ModelConfig(**SMALL))
    ema = {"module." + k: v for k, v in net.state_dict().items()}
    ema["n_averaged"] = torch.tensor(1)
    swa = {"module." + k: v + 0.5 for k, v in net.state_dict().items()}
    recipe = json.dumps({"system": system.model_dump(), "model": SMALL})
    return {"config": recipe, "epoch": 3, "step": 30, "ema": ema, "swa": swa,
            "model": net.state_dict()}, net


def test_weights_of_another_system_are_a_value_error_not_a_torch_traceback():
    state, _ = _state(SystemConfig(), weights_of=SystemConfig(N_H=10))
    with pytest.raises(ValueError, match="does not hold a risloc network"):
        model_from_state(state)


def test_weights_missing_a_layer_are_refused_not_left_at_random():
    state, _ = _state()
    dropped = next(k for k in state["ema"] if k.startswith("module.") and "weight" in k)
    del state["ema"][dropped]
    with pytest.raises(ValueError, match="does not hold a risloc network"):
        model_from_state(state)


def test_a_torch_file_of_another_format_version_is_refused(tmp_path):
    for version in (0, "1", 1.5):
        torch.save({"format_version": version, "config": "{}"}, tmp_path / "v.pt")
        with pytest.raises(ValueError, match="not a risloc checkpoint"):
            load_checkpoint(tmp_path / "v.pt")


def test_an_exported_model_keeps_the_swa_weights(tmp_path):
    state, net = _state()
    save_checkpoint(tmp_path / "run.pt", state)
    export_model(tmp_path / "run.pt", tmp_path / "m.pt")
    model, recipe = load_model(tmp_path / "m.pt", "swa")
    assert recipe.system == SystemConfig()
    for k, v in net.state_dict().items():
        assert torch.equal(model.state_dict()[k], v + 0.5), k
    ema, _ = load_model(tmp_path / "m.pt", "ema")
    for k, v in net.state_dict().items():
        assert torch.equal(ema.state_dict()[k], v), k


def test_a_model_rewritten_in_place_is_allowed_only_in_place(tmp_path):
    """fit-order m.pt --out m.pt rewrites the model and its own card; export-model to its
    own input is refused."""
    m = tmp_path / "m.pt"
    m.write_bytes(b"x")
    (tmp_path / "m.json").write_text("{}")
    assert check_model_target(m, m, in_place=True) == m
    with pytest.raises(ValueError, match="is one of the inputs"):
        check_model_target(m, m)


def test_the_card_reports_the_exported_epoch_and_names_a_training_run_as_its_origin(tmp_path):
    """The card's validation metrics are the exported epoch's (not the last logged), and a
    training checkpoint (optimizer state: not an exported model) is its own origin even
    beside a stray card naming another."""
    state, _ = _state()
    state["optimizer"] = {"state": {}, "param_groups": []}
    state["history"] = [{"epoch": e, "seconds": 1.0, "val_K_accuracy": a}
                        for e, a in ((2, 0.5), (3, 0.9), (4, 0.7))]
    run = save_checkpoint(tmp_path / "run.pt", state)
    (tmp_path / "run.json").write_text(json.dumps({"exported_from": "/elsewhere/best.pt"}))
    export_model(run, tmp_path / "m.pt")
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["epoch"] == 3 and card["validation"] == {"K_accuracy": 0.9}
    assert card["exported_from"] == str(run.resolve())
    export_model(tmp_path / "m.pt", tmp_path / "m2.pt")  # a re-export: the run, again
    assert json.loads((tmp_path / "m2.json").read_text())["exported_from"] == str(run.resolve())


def test_exporting_a_checkpoint_without_ema_weights_writes_nothing(tmp_path):
    state, _ = _state()
    del state["ema"]
    save_checkpoint(tmp_path / "run.pt", state)
    with pytest.raises(ValueError, match="holds no 'ema' weights"):
        export_model(tmp_path / "run.pt", tmp_path / "m.pt")  # no verify: checked anyway
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]


def test_an_unknown_choice_of_weights_is_named_as_such():
    state, _ = _state()
    for weights in ("model", "EMA", "best"):
        with pytest.raises(ValueError, match="weights must be 'ema', 'swa' or 'raw'"):
            model_from_state(state, weights)
