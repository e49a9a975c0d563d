"""`risloc export-model`: a checkpoint that does not load as a working model replaces
nothing, and a checkpoint without validation metrics (a run's before its first epoch, one of
your own) is exported with '-' for them."""

import pytest
from typer.testing import CliRunner

from risloc.cli.main import app


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.training import Trainer, load_train_config

    out = tmp_path_factory.mktemp("untrained")
    cfg = load_train_config(None, ["model.width=8", "model.dilations=[1]", "model.hidden=8",
                                   f"out_dir={out}"])
    return save_checkpoint(out / "ckpt.pt", Trainer(cfg).state())


def test_a_checkpoint_without_validation_metrics_is_exported_with_dashes(tmp_path, untrained):
    res = CliRunner().invoke(app, ["export-model", str(untrained), "--out", str(tmp_path / "m.pt")])
    said = " ".join(res.output.split())
    assert res.exit_code == 0, said
    assert "validation angle median - deg, K accuracy -" in said
    assert (tmp_path / "m.pt").exists() and (tmp_path / "m.json").exists()


def test_a_model_that_does_not_load_replaces_nothing(tmp_path, untrained, monkeypatch):
    from risloc.pipeline import learned

    (tmp_path / "m.pt").write_bytes(b"the good model")
    (tmp_path / "m.json").write_text("{}")

    def broken(path, **kwargs):
        raise ValueError(f"{path}: cannot build the pipeline")

    monkeypatch.setattr(learned, "load_learned_pipeline", broken)
    res = CliRunner().invoke(app, ["export-model", str(untrained), "--out", str(tmp_path / "m.pt"),
                                   "--overwrite"])
    assert res.exit_code == 2 and "cannot build the pipeline" in res.output, res.output
    assert (tmp_path / "m.pt").read_bytes() == b"the good model"
    assert (tmp_path / "m.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]


def test_the_summary_line_shows_each_validation_metric_and_a_dash_for_one_not_a_number(
        tmp_path, untrained):
    """(a mutation review: only a checkpoint without metrics was exported, so the two
    metrics could swap, and a value that is not a number failed the export)"""
    from risloc.inference.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(untrained)
    state["history"] = [{"epoch": state.get("epoch"), "val_angle_median_deg": 1.23456,
                         "val_K_accuracy": "n/a"}]
    src = save_checkpoint(tmp_path / "ckpt.pt", state)
    res = CliRunner().invoke(app, ["export-model", str(src), "--out", str(tmp_path / "m.pt")])
    said = " ".join(res.output.split())
    assert res.exit_code == 0, said
    assert "validation angle median 1.23 deg, K accuracy -" in said


def test_a_missing_checkpoint_or_an_existing_model_or_card_is_refused(tmp_path, untrained):
    """(a mutation review: neither refusal was tested; a missing checkpoint is named before
    an --out that exists)"""
    (tmp_path / "m.pt").write_bytes(b"the good model")
    res = CliRunner().invoke(app, ["export-model", str(tmp_path / "none.pt"), "--out",
                                   str(tmp_path / "m.pt")])
    assert res.exit_code == 2 and "checkpoint not found:" in res.output, res.output
    (tmp_path / "c.json").write_text("{}")  # a card of the user's where no model is
    for out in ("m.pt", "c.pt"):
        res = CliRunner().invoke(app, ["export-model", str(untrained), "--out",
                                       str(tmp_path / out)])
        assert res.exit_code == 2 and "--overwrite" in res.output, res.output
    assert (tmp_path / "m.pt").read_bytes() == b"the good model"
    assert (tmp_path / "c.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "m.pt"]


def test_an_empty_out_is_refused_as_the_folder_it_names(tmp_path, untrained, monkeypatch):
    """--out '' is the current folder: said so, not "PosixPath('.') has an empty name"."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["export-model", str(untrained), "--out", ""])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and ". is a folder: name the model file" in text, text
    assert list(tmp_path.iterdir()) == []


def test_a_whole_number_metric_is_shown_not_dashed():
    """(a second mutation review: an int metric, e.g. a K accuracy of exactly 1, read as '-')"""
    from risloc.cli.export import _number

    assert _number(1, ".3f") == "1.000" and _number(0.5, ".3f") == "0.500"
    assert _number(None, ".3f") == _number("n/a", ".3f") == "-"


def test_a_run_s_best_pt_before_its_first_epoch_ends_is_named_so(tmp_path):
    """`risloc export-model RUN/best.pt` on a run still in its first epoch (its .lock and
    steps.csv there, no checkpoint yet) says why, not only 'checkpoint not found'."""
    (tmp_path / ".lock").write_text("pid 1 on host")
    (tmp_path / "steps.csv").write_text("step,epoch,total\n20,0,2.0\n")
    res = CliRunner().invoke(app, ["export-model", str(tmp_path / "best.pt"), "--out",
                                   str(tmp_path / "m.pt")])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "checkpoint not found:" in said, said
    assert "no epoch of the run in" in said and "has finished yet" in said, said
    assert not (tmp_path / "m.pt").exists()
    other = tmp_path / "not-a-run"  # no run there: only 'not found'
    other.mkdir()
    res = CliRunner().invoke(app, ["export-model", str(other / "best.pt"), "--out",
                                   str(tmp_path / "m.pt")])
    assert res.exit_code == 2 and "has finished yet" not in res.output, res.output


@pytest.mark.parametrize("name,marker", [("last.pt", ".lock"), ("best.pt", "steps.csv")])
def test_either_checkpoint_of_a_run_with_either_mark_of_its_first_epoch_is_named_so(
        tmp_path, name, marker):
    """(a third mutation review: only best.pt with both marks was tested) last.pt too, and a
    run with only its lock (no step logged yet) or only its steps.csv (the lock gone)."""
    (tmp_path / marker).write_text("")
    res = CliRunner().invoke(app, ["export-model", str(tmp_path / name), "--out",
                                   str(tmp_path / "m.pt")])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "has finished yet" in said, said


def test_a_checkpoint_without_an_order_head_is_exported_without_a_warning(
        tmp_path, untrained, caplog):
    """(a third mutation review) a run's checkpoint has no order head yet: the check that
    the written model loads does not warn that it decides K by the residual rule."""
    import logging

    with caplog.at_level(logging.WARNING):
        res = CliRunner().invoke(app, ["export-model", str(untrained), "--out",
                                       str(tmp_path / "m.pt")])
    assert res.exit_code == 0, res.output
    assert "has no order head" not in caplog.text + res.output


def test_without_out_the_model_is_model_pt_in_the_current_folder(tmp_path, untrained,
                                                                  monkeypatch):
    """(a mutation review: the --out default was untested)"""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["export-model", str(untrained)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]
