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


def test_a_missing_empty_or_card_file_is_named_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*gone.pt"):
        load_checkpoint(tmp_path / "gone.pt")
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"e.pt is not a risloc checkpoint \(not a file torch "
                                         r"writes: it is empty\)"):
        load_checkpoint(tmp_path / "e.pt")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(ValueError, match="it is a model card, give the model beside it, m.pt"):
        load_model(tmp_path / "m.json")


def test_map_location_reaches_every_tensor_of_both_formats(tmp_path, monkeypatch):
    """A checkpoint with a digest, and one written before checkpoints carried one."""
    save_checkpoint(tmp_path / "new.pt", {"w": torch.ones(3)})
    torch.save({"format_version": 1, "w": torch.ones(3)}, tmp_path / "old.pt")
    for name in ("new.pt", "old.pt"):
        assert load_checkpoint(tmp_path / name, map_location="meta")["w"].is_meta, name
    import risloc.inference.checkpoint as checkpoint

    seen = []
    real = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint",
                        lambda path, loc="cpu": seen.append(loc) or real(path, loc))
    state, _ = _state()
    save_checkpoint(tmp_path / "run.pt", state)
    device = torch.device("cpu")
    checkpoint.load_model(tmp_path / "run.pt", map_location=device)
    assert len(seen) == 1 and seen[0] is device


def test_a_stored_recipe_or_weights_of_the_wrong_shape_are_value_errors(tmp_path):
    """Not an AttributeError traceback: a recipe that is JSON but not an object, EMA
    weights that are not a dict."""
    for change in ({"config": "[1, 2]"}, {"ema": [1, 2]}, {"config": None}):
        state, _ = _state()
        state.update(change)
        if change.get("config", "") is None:  # no recipe at all
            del state["config"]
        with pytest.raises(ValueError, match="recipe is invalid|does not hold a risloc network"):
            model_from_state(state)


def test_a_checkpoint_of_a_newer_format_asks_for_an_upgrade(tmp_path):
    torch.save({"format_version": 2, "payload": b"x", "sha256": ""}, tmp_path / "n.pt")
    with pytest.raises(ValueError, match=r"n.pt was written by a newer risloc \(checkpoint "
                                         r"format 2; .*upgrade risloc to read it"):
        load_checkpoint(tmp_path / "n.pt")


def test_load_model_reads_the_ema_weights_unless_told(tmp_path):
    state, net = _state()
    state["model"] = {k: v + 1.0 for k, v in state["model"].items()}  # raw: not the EMA
    save_checkpoint(tmp_path / "run.pt", state)
    model, _ = load_model(tmp_path / "run.pt")
    for k, v in net.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_a_digest_checked_payload_is_still_read_weights_only(tmp_path):
    """The digest proves integrity, not origin: a payload holding other Python objects is
    refused like a file holding them, not unpickled."""
    import hashlib
    import io

    import numpy as np

    buf = io.BytesIO()
    torch.save({"format_version": 1, "a": np.zeros(3)}, buf)
    payload = buf.getvalue()
    torch.save({"format_version": 1, "payload": payload,
                "sha256": hashlib.sha256(payload).hexdigest()}, tmp_path / "p.pt")
    with pytest.raises(ValueError, match="p.pt is not a risloc checkpoint: it holds Python"
                       ) as err:
        load_checkpoint(tmp_path / "p.pt")
    assert "weights_only" not in str(err.value)


def test_an_exported_model_keeps_its_order_head_and_its_card_reports_it(tmp_path):
    state, _ = _state()
    state["order_head"] = {"weight": torch.arange(3.0)}
    state["order_report"] = {"scenes": 600}
    save_checkpoint(tmp_path / "run.pt", state)
    export_model(tmp_path / "run.pt", tmp_path / "m.pt")
    assert torch.equal(load_checkpoint(tmp_path / "m.pt")["order_head"]["weight"],
                       torch.arange(3.0))
    assert json.loads((tmp_path / "m.json").read_text())["order_head"] == {"scenes": 600}
    del state["order_report"]  # a head without its report: exported, the card reports none
    save_checkpoint(tmp_path / "run.pt", state)
    export_model(tmp_path / "run.pt", tmp_path / "m.pt")
    assert "order_head" in load_checkpoint(tmp_path / "m.pt")
    assert "order_head" not in json.loads((tmp_path / "m.json").read_text())


def test_a_model_target_is_checked_with_its_card(tmp_path):
    src = tmp_path / "run.pt"
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="dir is a folder: name the model file to write in it"):
        check_model_target(tmp_path / "dir", src)
    with pytest.raises(ValueError, match="must end in .pt"):
        check_model_target(tmp_path / "m.json", src)
    with pytest.raises(ValueError, match="the card of the input"):
        check_model_target(tmp_path / "run.pth", src)
    (tmp_path / "c.json").mkdir()  # where the card would go
    with pytest.raises(ValueError, match="c.json is a folder"):
        check_model_target(tmp_path / "c.pt", src)


def test_a_crash_before_the_new_card_leaves_no_old_card_beside_the_new_model(tmp_path,
                                                                              monkeypatch):
    import risloc.inference.checkpoint as checkpoint

    state, _ = _state()
    save_checkpoint(tmp_path / "run.pt", state)
    (tmp_path / "m.pt").write_bytes(b"old model")
    (tmp_path / "m.json").write_text('{"epoch": 99}')

    def crash(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr(checkpoint, "write_json_atomic", crash)
    with pytest.raises(OSError, match="killed"):
        checkpoint.export_model(tmp_path / "run.pt", tmp_path / "m.pt")
    assert load_checkpoint(tmp_path / "m.pt")["epoch"] == 3
    assert not (tmp_path / "m.json").exists()


def test_a_model_failing_its_check_is_named_by_the_input_not_the_temporary(tmp_path):
    state, _ = _state()
    run = save_checkpoint(tmp_path / "run.pt", state)

    def verify(path):
        raise ValueError(f"{path}: cannot build the pipeline")

    with pytest.raises(ValueError, match=f"^{run}: cannot build the pipeline$"):
        export_model(run, tmp_path / "m.pt", verify=verify)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]


def test_a_truncated_or_tampered_checkpoint_is_named_as_such(tmp_path):
    """A copy missing its end is named truncated (not a torch error), and a payload that
    does not match its digest is refused, not loaded."""
    import hashlib

    state, _ = _state()
    data = save_checkpoint(tmp_path / "run.pt", state).read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.pt is a truncated checkpoint \(its end is "
                                         r"missing"):
        load_checkpoint(tmp_path / "cut.pt")
    payload = torch.load(tmp_path / "run.pt", weights_only=True)["payload"]
    for digest in (hashlib.sha256(payload[:-1]).hexdigest(), None):
        torch.save({"format_version": 1, "payload": payload, "sha256": digest},
                   tmp_path / "t.pt")
        with pytest.raises(ValueError, match="t.pt: damaged checkpoint"):
            load_checkpoint(tmp_path / "t.pt")


def test_a_rebuilt_network_is_in_eval_mode():
    state, _ = _state()
    model, _ = model_from_state(state)
    assert not any(m.training for m in model.modules())


def test_a_long_torch_error_is_shortened_to_its_first_line():
    from risloc.inference.checkpoint import _first_line

    assert _first_line("x" * 200 + "\nmore") == "x" * 200
    assert _first_line("x" * 201) == "x" * 197 + "..."
    assert _first_line("") == ""


def test_the_card_says_the_snr_was_withheld_unless_shown_in_every_scene(tmp_path):
    """Validation shows the SNR to all scenes or to none: a share of 0.5 in training is
    withheld in validation."""
    for shown, text in ((1.0, "; the SNR shown to the network;"),
                        (0.5, "; the SNR withheld from the network;")):
        state, _ = _state()
        cfg = json.loads(state["config"])
        cfg["data"] = {"snr_shown": shown}
        state["config"] = json.dumps(cfg)
        save_checkpoint(tmp_path / "run.pt", state)
        export_model(tmp_path / "run.pt", tmp_path / "m.pt")
        assert text in json.loads((tmp_path / "m.json").read_text())["validation_set"]


def test_an_exported_model_keeps_what_a_refit_and_a_re_export_read(tmp_path):
    """(a third mutation review: the card was checked, not the model) the exported model
    keeps the head's report (`risloc fit-order` reads the current head's scenes, mix and
    margin from it) and the history (a re-export's card reads its validation metrics)."""
    state, _ = _state()
    state["order_head"] = {"weight": torch.arange(3.0)}
    state["order_report"] = {"scenes": 600, "repair_margin": 0.5}
    state["history"] = [{"epoch": 3, "val_K_accuracy": 0.75}]
    save_checkpoint(tmp_path / "run.pt", state)
    export_model(tmp_path / "run.pt", tmp_path / "m.pt")
    model = load_checkpoint(tmp_path / "m.pt")
    assert model["order_report"] == state["order_report"] and model["history"] == state["history"]
    export_model(tmp_path / "m.pt", tmp_path / "m2.pt")
    card = json.loads((tmp_path / "m2.json").read_text())
    assert card["validation"] == {"K_accuracy": 0.75} and card["order_head"]["scenes"] == 600


def test_a_payload_that_is_not_bytes_is_a_damaged_checkpoint_not_a_type_error(tmp_path):
    """(a fourth mutation review) and a state's own 'sha256' key is not stored inside."""
    for payload in ("text", 7):
        torch.save({"format_version": 1, "payload": payload, "sha256": "x"}, tmp_path / "t.pt")
        with pytest.raises(ValueError, match="t.pt: damaged checkpoint"):
            load_checkpoint(tmp_path / "t.pt")
    save_checkpoint(tmp_path / "s.pt", {"w": torch.ones(1), "sha256": "stale"})
    assert "sha256" not in load_checkpoint(tmp_path / "s.pt")


def test_the_card_names_the_validation_file_or_the_scene_mix_and_a_text_origin(tmp_path):
    """(a fourth mutation review) the card's validation set names a val_file, else the
    scene_mix kinds; an exported model's card whose origin is not text is not copied; the
    exported model keeps the run's best-epoch record."""
    for data, text in (({"val_file": "v.npz"}, "the scenes of the file v.npz;"),
                       ({"scene_mix": [{"share": 0.5, "scene": {"range_m": [0.5, 1.5]}}]},
                        ", mixed with the 1 kind of data.scene_mix;")):
        state, _ = _state()
        cfg = json.loads(state["config"])
        cfg["data"] = data
        state["config"] = json.dumps(cfg)
        state["best"] = {"epoch": 3}
        save_checkpoint(tmp_path / "run.pt", state)
        export_model(tmp_path / "run.pt", tmp_path / "m.pt")
        assert text in json.loads((tmp_path / "m.json").read_text())["validation_set"]
        assert load_checkpoint(tmp_path / "m.pt")["best"] == {"epoch": 3}
    (tmp_path / "m.json").write_text(json.dumps({"exported_from": ["/elsewhere/run.pt"]}))
    export_model(tmp_path / "m.pt", tmp_path / "m2.pt")
    origin = json.loads((tmp_path / "m2.json").read_text())["exported_from"]
    assert origin == str((tmp_path / "m.pt").resolve())


def test_a_folder_given_as_checkpoint_is_named_with_the_file_to_give(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ValueError, match="run is a folder, not a checkpoint: give the "
                                         r"checkpoint file \(it holds no .pt file\)"):
        load_checkpoint(run)
    (run / "best.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"give a file in it, e.g. .*run.best\.pt"):
        load_checkpoint(run)
    (run / "model.pt").write_bytes(b"")  # a finished run: its model is the one to give
    with pytest.raises(ValueError, match=r"give a file in it, e.g. .*run.model\.pt"):
        load_model(run)
