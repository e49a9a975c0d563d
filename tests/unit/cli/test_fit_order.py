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
    and scene mix those of a recipe's order section (what `risloc train` fits)."""
    from risloc.training.config import OrderStageConfig

    (tmp_path / "m.pt").write_bytes(b"")
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--out",
                                   str(tmp_path / "m2.pt")])
    assert res.exit_code == 0, res.output
    (args, kwargs), = fitted
    order = OrderStageConfig()
    assert args[2:4] == (order.scenes, order.report_scenes) == (16384, 256)
    assert kwargs["margin"] == 0 and kwargs["mix"] is order.scene_mix is True
    assert kwargs["scene"] == {}
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--out",
                                   str(tmp_path / "m3.pt"), "--no-mix"])
    assert res.exit_code == 0 and fitted[-1][1]["mix"] is False
    # another model at --out is replaced only with --overwrite (the input itself: in place)
    (tmp_path / "m2.pt").write_bytes(b"mine")
    res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), "--out",
                                   str(tmp_path / "m2.pt")])
    assert res.exit_code == 2 and "m2.pt exists: pass --overwrite" in res.output
    assert len(fitted) == 2
    for out in (["--out", str(tmp_path / "m2.pt"), "--overwrite"],
                ["--out", str(tmp_path / "m.pt")]):
        res = CliRunner().invoke(app, ["fit-order", str(tmp_path / "m.pt"), *out])
        assert res.exit_code == 0, res.output
    assert len(fitted) == 4


@pytest.mark.parametrize("margin", ["-1", "nan"])
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
