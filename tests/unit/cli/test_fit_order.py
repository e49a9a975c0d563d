"""`risloc fit-order`: its defaults fit the head as the shipped recipe does, a margin that
is not a number >= 0 is refused, and the report's table puts each figure in its column."""

import math

import pytest
from typer.testing import CliRunner

from risloc.cli.fit_order import report_table
from risloc.cli.main import app

ROW = {"snr_db": 10.0, "power_spread_db": 12.0, "scenes": 64,
       "K_accuracy_residual_rule": 0.11, "K_accuracy_order_head": 0.22,
       "f1_residual_rule": 0.33, "f1_order_head": 0.44}


@pytest.fixture
def fitted(monkeypatch):
    """fit-order's work replaced: the arguments fit_order was called with."""
    from risloc.pipeline import calibrate, learned

    calls = []
    monkeypatch.setattr(learned, "load_learned_pipeline", lambda *a, **k: None)
    monkeypatch.setattr(calibrate, "order_scenes", lambda *a, **k: None)
    monkeypatch.setattr(calibrate, "fit_order", lambda *a, **k: calls.append((a, k)) or {
        "per_snr": [ROW]})
    return calls


def test_the_defaults_fit_the_head_as_the_recipe_s_order_stage_does(tmp_path, fitted):
    """docs/guide.md: --margin by default 0, as the shipped head; the scenes, report scenes
    and scene mix those of a recipe's order section (what `risloc train` fits), with a
    source ranker (--no-rank: none)."""
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.training.config import OrderStageConfig

    save_checkpoint(tmp_path / "m.pt", {"config": "{}"})  # a model without a head
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--out",
                                   str(tmp_path / "m2.pt")])
    assert res.exit_code == 0, res.output
    (args, kwargs), = fitted
    order = OrderStageConfig()
    assert args[2:4] == (order.scenes, order.report_scenes) == (16384, 256)
    assert args[:2] == (tmp_path / "m.pt", tmp_path / "m2.pt")  # read the input, write --out
    assert kwargs["margin"] == 0 and kwargs["mix"] is order.scene_mix is True
    assert kwargs["scene"] == {} and kwargs["rank"] is True  # a source ranker, as train's
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--out",
                                   str(tmp_path / "m3.pt"), "--no-mix", "--no-rank"])
    assert res.exit_code == 0 and fitted[-1][1]["mix"] is False
    assert fitted[-1][1]["rank"] is False
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--out",
                                   str(tmp_path / "m3.pt"), "--keep-head"])
    assert res.exit_code == 0 and fitted[-1][1]["keep_head"] is True
    assert fitted[-2][1]["keep_head"] is False
    # --keep-head --no-rank would change nothing: refused by its flags, before any work
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--out",
                                   str(tmp_path / "m3.pt"), "--keep-head", "--no-rank"])
    assert res.exit_code == 2 and "--keep-head with --no-rank changes nothing" in res.output
    assert "order features" not in res.output and len(fitted) == 3
    # another model at --out is replaced only with --overwrite (the input itself: in place)
    (tmp_path / "m2.pt").write_bytes(b"mine")
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--out",
                                   str(tmp_path / "m2.pt")])
    assert res.exit_code == 2 and "m2.pt exists: pass --overwrite" in res.output
    assert len(fitted) == 3
    for out in (["--out", str(tmp_path / "m2.pt"), "--overwrite"],
                ["--out", str(tmp_path / "m.pt")]):
        res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), *out])
        assert res.exit_code == 0, res.output
    assert len(fitted) == 5


@pytest.mark.parametrize("margin", ["-1", "nan", "inf"])  # inf: fitted, its card said null
def test_a_margin_that_is_not_a_number_at_least_0_is_refused(tmp_path, fitted, margin):
    (tmp_path / "m.pt").write_bytes(b"")
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--out",
                                   str(tmp_path / "m2.pt"), "--margin", margin])
    assert res.exit_code == 2 and "--margin must be >= 0" in res.output, res.output
    assert fitted == []


def test_the_report_table_puts_each_figure_under_its_heading():
    table = report_table({"per_snr": [ROW, {**ROW, "snr_db": 20.0}]})
    cells = {c.header: list(c.cells) for c in table.columns}
    assert cells["SNR (dB)"] == ["10", "20"] and cells["power spread (dB)"] == ["12", "12"]
    assert cells["K acc residual rule"][0] == "0.110" and cells["K acc order head"][0] == "0.220"
    assert cells["F1 residual rule"][0] == "0.330" and cells["F1 order head"][0] == "0.440"
    assert "64 scenes per row" in table.title
    assert not math.isnan(float(cells["F1 order head"][1]))


@pytest.mark.parametrize("item", ["=5", " =[0, 25]", "power_spread_db"])
def test_a_scene_field_without_its_name_is_named_as_the_option_wants_it(item):
    """--scene takes FIELD=VALUE (a field of the scene section), not the section.field=value
    of --set: the message says what this option wants."""
    from risloc.cli.fit_order import scene_fields

    with pytest.raises(ValueError, match="must look like FIELD=VALUE"):
        scene_fields([item])
    assert scene_fields(["power_spread_db=[0, 25]", "K=2"]) == {
        "power_spread_db": [0, 25], "K": 2}


def test_a_refit_keeps_what_it_is_not_told_to_change(tmp_path, fitted):
    """A new user's review: `risloc fit-order` of the shipped model without --scene fitted
    its head on the recipe's base scenes, not the shipped head's (power spread 0..25 dB). A
    refit now takes the current head's scenes, mix and margin, else the recipe's order
    section; the options given replace them field by field."""
    import json

    from risloc.inference.checkpoint import save_checkpoint

    head = {"scene": {"power_spread_db": [0, 25], "range_m": [1.0, 5.0]}, "scene_mix": False,
            "repair_margin": 0.5, "per_snr": [ROW]}
    save_checkpoint(tmp_path / "h.pt", {"config": "{}", "order_report": head})
    recipe = {"order": {"scene": {"power_spread_db": [0, 20]}, "scene_mix": False}}
    save_checkpoint(tmp_path / "r.pt", {"config": json.dumps(recipe)})
    # the margin the pipeline reads is the head's own, where its report has none (a review)
    save_checkpoint(tmp_path / "m.pt", {"config": "{}", "order_head": {"repair_margin": 0.25},
                                        "order_report": {"scene": {}, "per_snr": [ROW]}})
    runs = [(["h.pt"], ({"power_spread_db": [0, 25], "range_m": [1.0, 5.0]}, False, 0.5)),
            (["m.pt"], ({}, True, 0.25)),
            (["h.pt", "--scene", "range_m=[0.5, 2]", "--mix", "--margin", "0"],
             ({"power_spread_db": [0, 25], "range_m": [0.5, 2]}, True, 0.0)),
            (["r.pt"], ({"power_spread_db": [0, 20]}, False, 0.0))]
    for i, (args, (scene, mix, margin)) in enumerate(runs):
        res = CliRunner().invoke(app, ["fit-order", str(tmp_path / args[0]), *args[1:],
                                       "--out", str(tmp_path / f"o{i}.pt")])
        assert res.exit_code == 0, res.output
        kwargs = fitted[-1][1]
        assert (kwargs["scene"], kwargs["mix"], kwargs["margin"]) == (scene, mix, margin)
    said = " ".join(res.output.split())
    assert "with {'power_spread_db': [0, 20]} without its scene_mix kinds" in said
    assert "(not given: its recipe's order section)" in said
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "r.pt"), "--scene",
                                   "power_spread_db=[0, 9]", "--mix", "--margin", "0", "--out",
                                   str(tmp_path / "all.pt")])  # everything given: nothing kept
    assert res.exit_code == 0 and "(not given:" not in res.output, res.output
    for given in (["--mix"], ["--margin", "0"]):  # one of the two not given: said as taken
        res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "r.pt"), "--scene",
                                       "power_spread_db=[0, 9]", *given, "--out",
                                       str(tmp_path / "all.pt"), "--overwrite"])
        assert res.exit_code == 0 and "(not given: its recipe's order section)" in " ".join(
            res.output.split()), (given, res.output)


def test_a_model_with_a_broken_recipe_is_named_before_its_head_settings_are_read(tmp_path):
    """A review: reading the kept head settings first turned load_learned_pipeline's "the
    checkpoint's recipe is invalid: ..." into a bare JSON error ("Expecting value: ...")."""
    from risloc.inference.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.pt", {"config": "not json"})
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--out",
                                   str(tmp_path / "m2.pt")])
    assert res.exit_code == 2 and "the checkpoint's recipe is invalid" in res.output


def test_an_older_head_report_and_a_kept_scene_are_said_and_passed_on(tmp_path, fitted):
    """A head report without scene_mix / repair_margin (fitted before they were stored)
    reads as the defaults it was fitted with (the mix, margin 0); scene fields kept from the
    current head are said as not given even where --mix and --margin are; --workers reaches
    the fit."""
    from risloc.inference.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "h.pt", {"config": "{}", "order_report": {
        "scene": {"power_spread_db": [0, 25]}, "per_snr": [ROW]}})
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "h.pt"), "--out",
                                   str(tmp_path / "o.pt"), "--workers", "3"])
    assert res.exit_code == 0, res.output
    kwargs = fitted[-1][1]
    assert (kwargs["mix"], kwargs["margin"], kwargs["workers"]) == (True, 0.0, 3)
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "h.pt"), "--mix", "--margin",
                                   "0", "--out", str(tmp_path / "o2.pt")])
    assert res.exit_code == 0 and "(not given: as its current head)" in " ".join(
        res.output.split()), res.output


def test_the_model_is_loaded_without_its_head_and_the_scenes_checked_before_the_fit(
        tmp_path, fitted, monkeypatch):
    """(a third mutation review: the fit was mocked away with both untested) the network is
    loaded without its current head (the one being replaced), and the head's scene
    distribution is checked, with the fields and mix the fit gets, before any fit starts."""
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.pipeline import calibrate, learned

    loads, checks = [], []
    monkeypatch.setattr(learned, "load_learned_pipeline",
                        lambda *a, **k: loads.append(k) or "pipe")
    monkeypatch.setattr(calibrate, "order_scenes", lambda *a: checks.append(a))
    save_checkpoint(tmp_path / "m.pt", {"config": "{}"})
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--scene", "K=2",
                                   "--no-mix", "--out", str(tmp_path / "m2.pt")])
    assert res.exit_code == 0, res.output
    assert loads == [{"order_head": False}] and checks == [("pipe", {"K": 2}, False)]

    def bad(*a):
        raise ValueError("scene.K: not a scene field")

    monkeypatch.setattr(calibrate, "order_scenes", bad)
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--scene", "K=x",
                                   "--out", str(tmp_path / "m3.pt")])
    assert res.exit_code == 2 and "not a scene field" in res.output, res.output
    assert len(fitted) == 1 and not (tmp_path / "m3.pt").exists()


def test_the_last_line_says_whether_a_model_card_was_written(tmp_path, monkeypatch):
    """(a third mutation review: the wrote-line's two cases were untested)"""
    from risloc.inference.checkpoint import model_card_path, save_checkpoint
    from risloc.pipeline import calibrate, learned

    def fit(src, dst, *a, **k):
        if k["mix"]:  # (a card written beside the model, as where the input had one)
            model_card_path(dst).write_text("{}")
        return {"per_snr": [ROW]}

    monkeypatch.setattr(learned, "load_learned_pipeline", lambda *a, **k: None)
    monkeypatch.setattr(calibrate, "order_scenes", lambda *a, **k: None)
    monkeypatch.setattr(calibrate, "fit_order", fit)
    save_checkpoint(tmp_path / "m.pt", {"config": "{}"})
    for mix, said in (("--mix", "and its card"), ("--no-mix", "(no model card: its input")):
        res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), mix, "--out",
                                       str(tmp_path / f"o{mix}.pt")])
        text = " ".join(res.output.split())
        assert res.exit_code == 0 and said in text, text


def test_too_few_scenes_and_a_missing_model_are_refused_before_the_fit(tmp_path, fitted):
    """--scenes below MIN_ORDER_SCENES (64) is refused by name; a missing model is named
    first, before an existing --out would be (the input's mistake is the one to fix)."""
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.pipeline.order import MIN_ORDER_SCENES

    save_checkpoint(tmp_path / "m.pt", {"config": "{}"})
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--out",
                                   str(tmp_path / "m2.pt"), "--scenes",
                                   str(MIN_ORDER_SCENES - 1)])
    assert res.exit_code == 2 and "Invalid value for '--scenes'" in " ".join(
        res.output.split()), res.output
    assert fitted == []
    (tmp_path / "m2.pt").write_bytes(b"mine")
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "gone.pt"), "--out",
                                   str(tmp_path / "m2.pt")])
    assert res.exit_code == 2 and "checkpoint not found" in res.output, res.output
    assert fitted == []
