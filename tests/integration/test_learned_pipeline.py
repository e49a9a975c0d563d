"""The learned pipeline rebuilt from a checkpoint of `risloc train`, `localize --method
learned` and `risloc demo` (with a tiny model trained here; the shipped model is not
assumed)."""

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from risloc.cli.main import app
from risloc.config import SceneConfig, SystemConfig
from risloc.core.checks import InputError
from risloc.core.params import Estimates
from risloc.estimators.classical import cancelling_sources
from risloc.estimators.mlfit import MLFit
from risloc.estimators.music import MusicConfig
from risloc.estimators.nfmle import nfmle_fit
from risloc.evaluation.metrics import match_sources
from risloc.inference.checkpoint import load_checkpoint
from risloc.inference.forward import forward_blend
from risloc.pipeline import Localizer
from risloc.pipeline.learned import inference_music_config, load_learned_pipeline
from risloc.pipeline.order import SourceRanker, estimated_snr_db, order_features
from risloc.simulation import simulate_range
from risloc.training import load_train_config, train

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    train(load_train_config(ROOT / "configs" / "train_tiny.yaml",
                            [f"out_dir={out}", "progress=false"]))
    return out / "best.pt"


def test_pipeline_rebuilds_from_checkpoint_and_localizes(checkpoint):
    loc = Localizer.from_checkpoint(checkpoint)
    assert loc.method == "learned" and loc.system == SystemConfig()
    sc = simulate_range(0, 3, loc.system, SceneConfig(), split="test", snr_db=10.0)
    y = sc.y.clone()
    y[1, 0, 0] = float("inf")
    res = loc.localize(y, sc.H, sc.codes, sc.snr_db)
    assert [i for i, _ in res.bad] == [1]
    est = res.estimates
    assert est.K[1] == 0 and bool((est.K[[0, 2]] >= 1).all())
    ok = est.mask[[0, 2]]
    assert bool(torch.isfinite(est.azimuth[[0, 2]][ok]).all())
    known = loc.localize(sc.y, sc.H, sc.codes, K=2).estimates
    assert known.K.tolist() == [2, 2, 2]
    # inference uses the recipe's blend and field of view (stored in the checkpoint) on the
    # package's default MUSIC grid; every stage searches that field of view
    pipe = load_learned_pipeline(checkpoint)
    recipe = load_train_config(ROOT / "configs" / "train_tiny.yaml")
    assert pipe.recipe.blend == recipe.blend and pipe.fov == recipe.scene.fov
    assert pipe.music is None  # the network's slots propose
    assert pipe.fit_config.polish.fov == pipe.fit_config.search.fov == pipe.fov
    assert pipe.polish_config.fov == pipe.fov
    with_music = load_learned_pipeline(checkpoint, music=inference_music_config(pipe.fov))
    assert with_music.music.n_azimuth == MusicConfig().n_azimuth
    assert with_music.music.fov == pipe.fov


def test_stages_compose_to_localize_and_the_slots_can_propose(checkpoint):
    """localize = forward -> propose -> fit -> decide order -> polish (the named stages)."""
    pipe = load_learned_pipeline(checkpoint)
    sc = simulate_range(0, 5, pipe.system, SceneConfig(), split="test", snr_db=15.0)
    with torch.no_grad():
        fwd = pipe.forward(sc.y, sc.H, sc.codes)
        cand = pipe.propose(fwd)
        assert cand.shape == (5, pipe.system.K_max, 3) and bool(torch.isfinite(cand).all())
        fit = pipe.fit(sc.y, sc.H, sc.codes, cand)
        decision = pipe.decide_order(fwd, fit, sc.y)
        est = pipe.polish(sc.y, sc.H, sc.codes, fit, decision.K, ranking=decision.ranking)
    whole = pipe.localize(sc.y, sc.H, sc.codes)
    assert torch.equal(whole.K, est.K)
    torch.testing.assert_close(whole.azimuth, est.azimuth.float(), equal_nan=True)
    music = load_learned_pipeline(checkpoint, music=inference_music_config(pipe.fov))
    with torch.no_grad():
        R_blend = music.forward(sc.y, sc.H, sc.codes).R_blend
        assert R_blend.shape == (5, 144, 144)
        # the recipe's beta, blend and loading (a mutation review: beta 0 or 1 passed)
        blend = pipe.recipe.blend
        assert 0 < blend.beta < 1
        ref = forward_blend(pipe.network, sc.y, sc.H, sc.codes, None, blend.beta, blend)
        torch.testing.assert_close(R_blend, ref.R_blend)
        for other in (0.0, 1.0):
            far = forward_blend(pipe.network, sc.y, sc.H, sc.codes, None, other, blend)
            assert float((far.R_blend - R_blend).abs().max()) > 1e-3 * float(R_blend.abs().max())
    assert bool((music.localize(sc.y, sc.H, sc.codes).K >= 1).all())
    # the chosen set is repaired only when K is given: K decided, nothing changes
    plain = replace(pipe, chosen_repairs=0)
    assert torch.equal(plain.localize(sc.y, sc.H, sc.codes).azimuth.nan_to_num(9),
                       whole.azimuth.nan_to_num(9))
    K = torch.full((5,), 3)
    with torch.no_grad():  # K given: the fit stage and the repair with known_K_margin
        fit_K = pipe.fit(sc.y, sc.H, sc.codes, cand, known=True)
        repaired = pipe.polish(sc.y, sc.H, sc.codes, fit_K, K, repair=True, known=True)
        unrepaired = pipe.polish(sc.y, sc.H, sc.codes, fit_K, K)
        no_margin = replace(pipe, known_K_margin=0.0)
        torch.testing.assert_close(no_margin.fit(sc.y, sc.H, sc.codes, cand, known=True).theta,
                                   fit.theta, rtol=0, atol=0)
    assert torch.equal(pipe.localize(sc.y, sc.H, sc.codes, K=K).azimuth.nan_to_num(9),
                       repaired.azimuth.float().nan_to_num(9))
    assert torch.equal(plain.localize(sc.y, sc.H, sc.codes, K=K).azimuth.nan_to_num(9),
                       unrepaired.azimuth.float().nan_to_num(9))
    # repair_decided: the head's K gets the same repair
    with torch.no_grad():
        decided = pipe.polish(sc.y, sc.H, sc.codes, fit, decision.K, repair=True)
    assert torch.equal(replace(pipe, repair_decided=True).localize(sc.y, sc.H, sc.codes)
                       .azimuth.nan_to_num(9), decided.azimuth.float().nan_to_num(9))


def test_fit_stage_names_proposals_it_would_misread(checkpoint):
    """A proposal stage of one's own: the wrong shape, NaN padding, degrees or a range in
    metres are refused by name (they ran silently or failed deep inside; NaN padding cost
    F1 0.98 -> 0.67 at 10 dB, a persona review)."""
    pipe = load_learned_pipeline(checkpoint)
    sc = simulate_range(0, 3, pipe.system, SceneConfig(), split="test", snr_db=10.0)
    with torch.no_grad():
        cand = pipe.propose(pipe.forward(sc.y, sc.H, sc.codes))
    K_max = pipe.system.K_max
    fit = lambda c: pipe.fit(sc.y, sc.H, sc.codes, c)  # noqa: E731
    with pytest.raises(ValueError, match=rf"\[B, K_max, 3\] = \[3, {K_max}, 3\].*"
                       rf"got \(3, {K_max - 1}, 3\); fewer sources of your own"):
        fit(cand[:, :-1])
    with pytest.raises(ValueError, match=rf"got \(3, {K_max + 1}, 3\)$"):
        fit(torch.cat([cand, cand[:, :1]], 1))
    with pytest.raises(ValueError, match=rf"got \(3, {K_max}, 2\)$"):
        fit(cand[..., :2])
    with pytest.raises(ValueError, match=rf"got \(2, {K_max}, 3\)$"):
        fit(cand[:2])
    nan = cand.clone()
    nan[:, -1] = float("nan")
    with pytest.raises(ValueError, match="all finite: got NaN or inf .*not NaN"):
        fit(nan)
    deg = cand.clone()
    deg[..., :2] = torch.rad2deg(cand[..., :2]) + 10.0  # clear of +-pi whatever the slots
    with pytest.raises(ValueError, match=r"degrees\? pass radians"):
        fit(deg)
    deg = cand.clone()
    deg[..., 1] = 2.0  # an elevation beyond pi/2 alone
    with pytest.raises(ValueError, match=r"degrees\? pass radians"):
        fit(deg)
    metres = cand.clone()
    metres[..., 2] = 1.0 / cand[..., 2] + 2 / pipe.fov.range_m[0]
    with pytest.raises(ValueError, match=r"a range in metres\? pass 1/range"):
        fit(metres)
    metres[..., 2] = 0.0
    with pytest.raises(ValueError, match=r"a range in metres\? pass 1/range"):
        fit(metres)


def test_polish_splits_a_cancelling_pair(checkpoint):
    # A nested fit whose first three sources are two true ones and a twin of the second
    # 0.3 deg away (30 dB, three sources): where the polished pair cancels, the polish
    # stage sends one member to the missing source, as the classical localizer does.
    pipe = load_learned_pipeline(checkpoint)
    sc = simulate_range(0, 12, pipe.system, SceneConfig(), split="test", K=3, snr_db=30.0)
    twin = sc.azimuth[:, 1] + math.radians(0.3)
    theta = torch.stack([torch.stack([sc.azimuth[:, j] if j < 2 else twin,
                                      sc.elevation[:, min(j, 1)], 1 / sc.range_m[:, min(j, 1)]],
                                     -1) for j in range(3)], 1)
    fit = MLFit(theta, torch.zeros(12, 4), torch.zeros(12, 3), torch.zeros(12))
    K = torch.full((12,), 3)
    with torch.no_grad():
        init = Estimates.from_theta(K, theta)
        ref = nfmle_fit(sc.y, sc.H, sc.codes, init, pipe.system, pipe.polish_config)
        flagged = cancelling_sources(ref.energy, sc.y, init.mask).any(-1)
        est = pipe.polish(sc.y, sc.H, sc.codes, fit, K)
    assert flagged.sum() >= 2, ref.energy
    m = match_sources(est[flagged], sc.azimuth[flagged], sc.elevation[flagged],
                      sc.range_m[flagged], sc.K[flagged])
    assert m.angle_error[m.truth_mask].rad2deg().max() < 0.3
    assert torch.equal(est.azimuth[~flagged], ref.estimates.azimuth[~flagged])


def test_scene_parallel_localization_equals_serial(checkpoint):
    sc = simulate_range(0, 40, SystemConfig(), SceneConfig(), split="test", snr_db=10.0)
    serial = Localizer.from_checkpoint(checkpoint, workers=1).localize(sc.y, sc.H, sc.codes)
    split = Localizer.from_checkpoint(checkpoint, workers=2).localize(sc.y, sc.H, sc.codes)
    passes = Localizer.from_checkpoint(checkpoint, workers=2)
    passes.chunk = 16  # 3 passes of 13-14 scenes taken in turn by 2 workers
    a, b = serial.estimates, split.estimates
    assert torch.equal(a.K, b.K)
    # equal up to float32 rounding, which the fit's LM iterations can carry a little
    # (measured: 2.6e-6 relative in 3 of 200 positions since the gains-weighted shortlist)
    for name in ("azimuth", "elevation", "range_m"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=0,
                                   equal_nan=True)
    # other pass sizes change the GEMM blocking: float32 rounding that the LM iterations'
    # accept/reject decisions can amplify (measured: 1.9e-4 rad, 8.8 mm), never K; and
    # since the nested sets are repaired, a repair's accept decision can flip and the fit
    # end in another local optimum (measured: 1 of these 40 scenes, K = 5 at 10 dB with
    # this barely trained network; costs 74.1 / 71.6)
    c = passes.localize(sc.y, sc.H, sc.codes).estimates
    assert torch.equal(a.K, c.K)
    off = torch.zeros(len(sc), dtype=torch.bool)
    for name, tol in (("azimuth", 1e-3), ("elevation", 1e-3), ("range_m", 0.05)):
        diff = (getattr(a, name) - getattr(c, name)).abs().nan_to_num(0.0)
        off |= (diff > tol).any(1)
    assert int(off.sum()) <= 1
    with pytest.raises(ValueError, match="workers"):
        Localizer(SystemConfig(), "classical", workers=0)
    with pytest.raises(ValueError, match="chunk"):
        Localizer(SystemConfig(), "classical", chunk=0)


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_learned_pipeline(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(ValueError, match=r"junk.pt is a torch file but not a risloc checkpoint "
                                         r"\(risloc writes .* in format 1"):
        load_learned_pipeline(junk)
    (tmp_path / "model.json").write_text("{}")  # the card given for its model
    with pytest.raises(ValueError, match="it is a model card, give the model beside it, "
                                         "model.pt"):
        load_learned_pipeline(tmp_path / "model.json")
    newer = tmp_path / "newer.pt"  # from a later risloc: said so, not "not a checkpoint"
    torch.save({"format_version": 99}, newer)
    with pytest.raises(ValueError, match=r"written by a newer risloc \(checkpoint format 99; "
                                         r"this version, .*reads format 1\): upgrade"):
        load_learned_pipeline(newer)


def test_localize_learned_and_demo_cli(tmp_path, checkpoint):
    f = tmp_path / "s.npz"
    assert runner.invoke(app, ["simulate", "--n", "3", "--out", str(f), "--split",
                               "test"]).exit_code == 0
    res = runner.invoke(app, ["localize", str(f), "--method", "learned", "--checkpoint",
                              str(checkpoint), "--out", str(tmp_path / "e.csv")])
    assert res.exit_code == 0, res.output
    other = tmp_path / "o.npz"
    runner.invoke(app, ["simulate", "--n", "2", "--out", str(other), "--set", "system.L=8"])
    res = runner.invoke(app, ["localize", str(other), "--method", "learned", "--checkpoint",
                              str(checkpoint)])
    assert res.exit_code == 2 and "L 8 (model: 16)" in res.output
    res = runner.invoke(app, ["demo", "--n", "2", "--snr-db", "10", "--checkpoint",
                              str(checkpoint), "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    assert "learned" in res.output and "classical" in res.output
    for name in ("metrics.csv", "error_vs_snr.png", "music_spectrum_blend.png"):
        assert (tmp_path / "demo" / name).exists()


def test_exported_model_predicts_the_same(tmp_path, checkpoint):
    from risloc.inference.checkpoint import export_model

    slim = export_model(checkpoint, tmp_path / "slim.pt")
    assert slim.stat().st_size < checkpoint.stat().st_size
    sc = simulate_range(0, 2, SystemConfig(), SceneConfig(), split="test", snr_db=15.0)
    a = Localizer.from_checkpoint(checkpoint).localize(sc.y, sc.H, sc.codes).estimates
    b = Localizer.from_checkpoint(slim).localize(sc.y, sc.H, sc.codes).estimates
    assert torch.equal(a.K, b.K) and torch.equal(a.azimuth.nan_to_num(), b.azimuth.nan_to_num())
    card = json.loads(slim.with_suffix(".json").read_text())
    best = load_checkpoint(checkpoint)
    assert card["epoch"] == best["epoch"] and card["config"]["system"]["N_H"] == 12
    row = next(h for h in best["history"] if h["epoch"] == best["epoch"])
    assert card["validation"]["K_accuracy"] == row["val_K_accuracy"]


def test_export_model_cli(tmp_path, checkpoint, caplog):
    logger = logging.getLogger("risloc.pipeline.learned")
    logger.addHandler(caplog.handler)  # (the CLI's logging setup may stop propagation)
    try:
        res = runner.invoke(app, ["export-model", str(checkpoint), "--out",
                                  str(tmp_path / "m.pt")])
    finally:
        logger.removeHandler(caplog.handler)
    assert res.exit_code == 0, res.output
    assert "has no order head" not in caplog.text  # a run's checkpoint has none yet
    assert (tmp_path / "m.pt").exists() and (tmp_path / "m.json").exists()
    res = runner.invoke(app, ["export-model", str(tmp_path / "none.pt")])
    assert res.exit_code == 2 and "checkpoint not found" in res.output
    before = checkpoint.read_bytes()
    res = runner.invoke(app, ["export-model", str(checkpoint), "--out", str(checkpoint)])
    assert res.exit_code == 2 and "is one of the inputs" in res.output
    assert checkpoint.read_bytes() == before  # the training checkpoint is untouched
    for name in ("m2.json", "m2.JSON", "m", "m.v2"):  # the card would be the model, or m.json
        res = runner.invoke(app, ["export-model", str(checkpoint), "--out",
                                  str(tmp_path / name)])
        assert res.exit_code == 2 and "must end in .pt (or .pth)" in res.output, name
        assert not (tmp_path / name).exists()
    (tmp_path / "ex").mkdir()  # a folder: named as one, with the way out
    res = runner.invoke(app, ["export-model", str(checkpoint), "--out", str(tmp_path / "ex")])
    assert res.exit_code == 2 and "is a folder: name the model file to write in it" in \
        " ".join(res.output.split()), res.output
    # a checkpoint that does not make a model replaces nothing: the good model stays
    from risloc.inference.checkpoint import save_checkpoint

    good = {p: (tmp_path / p).read_bytes() for p in ("m.pt", "m.json")}
    state = load_checkpoint(checkpoint)
    del state["ema"]
    save_checkpoint(tmp_path / "no_ema.pt", state)
    res = runner.invoke(app, ["export-model", str(checkpoint), "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 2 and "exists: pass --overwrite" in res.output  # not silently
    assert {p: (tmp_path / p).read_bytes() for p in good} == good
    res = runner.invoke(app, ["export-model", str(tmp_path / "no_ema.pt"), "--out",
                              str(tmp_path / "m.pt"), "--overwrite"])
    assert res.exit_code == 2 and "holds no 'ema' weights" in res.output
    assert {p: (tmp_path / p).read_bytes() for p in good} == good
    assert not list(tmp_path.glob(".m.pt*"))  # no temporary left
    # a model rewritten in place (fit-order m.pt --out m.pt) updates its own card; another
    # model's card is not replaced without --overwrite (a CLI mutation review: in-place
    # refused passed)
    from risloc.cli.common import refuse_existing_model

    refuse_existing_model(tmp_path / "m.pt", False, tmp_path / "m.pt")
    (tmp_path / "m3.json").write_text("{}")  # a user's file where no model is
    with pytest.raises(ValueError, match="m3.json exists and would be replaced"):
        refuse_existing_model(tmp_path / "m3.pt", False, tmp_path / "m.pt")
    # the card of a model exported to "m.pt" from "m.pth" would be the input's card
    (tmp_path / "m.pth").write_bytes(checkpoint.read_bytes())
    res = runner.invoke(app, ["export-model", str(tmp_path / "m.pth"), "--out",
                              str(tmp_path / "m.pt"), "--overwrite"])
    assert res.exit_code == 2 and "the card of the input" in res.output
    # a file of the user's where the card would go is replaced only with --overwrite
    (tmp_path / "notes.json").write_text('{"my": "notes"}')
    res = runner.invoke(app, ["export-model", str(checkpoint), "--out",
                              str(tmp_path / "notes.pt")])
    assert res.exit_code == 2 and "notes.json exists and would be replaced by the model " \
        "card of" in " ".join(res.output.split()), res.output
    assert (tmp_path / "notes.json").read_text() == '{"my": "notes"}'
    assert not (tmp_path / "notes.pt").exists()
    res = runner.invoke(app, ["export-model", str(checkpoint), "--out",
                              str(tmp_path / "notes.pt"), "--overwrite"])
    assert res.exit_code == 0 and "validation" in (tmp_path / "notes.json").read_text()


def test_the_card_says_what_the_model_was_validated_on_and_errors_name_the_input(
        tmp_path, checkpoint):
    """The card's validation set follows the recipe (a file, the power spread, the SNR
    shown; before, a file's validation was described as simulated scenes), its source is an
    absolute path, and a checkpoint that fails the check after writing is named in the
    error, not the temporary file it was checked as."""
    from risloc.inference.checkpoint import export_model, save_checkpoint
    from risloc.pipeline.order import FEATURES_VERSION

    export_model(checkpoint, tmp_path / "m.pt")
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["validation_set"].startswith("16 scenes of the validation split (seed 0, "
                                             "from scene 0): SNR uniform in [5.0, 20.0] dB")
    assert "source powers spread over [0.0, 15.0] dB" in card["validation_set"]
    assert "; the SNR withheld from the network;" in card["validation_set"]  # snr_shown 0
    assert card["exported_from"] == str(checkpoint.resolve())
    # a re-export names the training checkpoint, not the intermediate copy (a review)
    export_model(tmp_path / "m.pt", tmp_path / "again.pt")
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["exported_from"] == str(checkpoint.resolve())
    assert {k: v for k, v in again.items() if k != "exported_from"} == \
        {k: v for k, v in card.items() if k != "exported_from"}
    state = load_checkpoint(checkpoint)
    cfg = json.loads(state["config"])
    cfg["data"]["val_file"] = "data/val.h5"
    cfg["data"]["snr_shown"] = 0.5  # shown in a share of training scenes, to no validation one
    state["config"] = json.dumps(cfg)
    save_checkpoint(tmp_path / "vf.pt", state)
    export_model(tmp_path / "vf.pt", tmp_path / "vf_model.pt")
    card = json.loads((tmp_path / "vf_model.json").read_text())
    assert card["validation_set"].startswith("the scenes of the file data/val.h5; the SNR "
                                             "withheld from the network;")
    state = load_checkpoint(checkpoint)
    state["order_head"] = {"features": FEATURES_VERSION, "broken": 1}
    save_checkpoint(tmp_path / "bad.pt", state)
    with pytest.raises(ValueError) as err:
        export_model(tmp_path / "bad.pt", tmp_path / "m2.pt", verify=load_learned_pipeline)
    assert str(tmp_path / "bad.pt") in str(err.value) and ".partial" not in str(err.value)
    assert not (tmp_path / "m2.pt").exists()


def test_a_model_is_never_left_beside_the_card_of_the_one_it_replaced(tmp_path, checkpoint,
                                                                      monkeypatch):
    """A kill between the model's rename and its card's left the new model with the old
    card (another epoch, another head); now the old card goes first."""
    import risloc.inference.checkpoint as ckpt
    from risloc.inference.checkpoint import export_model

    export_model(checkpoint, tmp_path / "m.pt")
    assert (tmp_path / "m.json").exists()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "write_json_atomic", killed)  # killed before the new card
    with pytest.raises(KeyboardInterrupt):
        export_model(tmp_path / "m.pt", tmp_path / "m2.pt")
    (tmp_path / "m2.json").write_text("{}")  # an older card at the target
    with pytest.raises(KeyboardInterrupt):
        export_model(checkpoint, tmp_path / "m2.pt")
    assert (tmp_path / "m2.pt").exists() and not (tmp_path / "m2.json").exists()


def test_fit_order_adds_a_head_the_pipeline_uses(tmp_path, checkpoint, caplog, monkeypatch):
    from risloc.inference.checkpoint import export_model

    slim = export_model(checkpoint, tmp_path / "slim.pt")
    caplog.set_level("WARNING", logger="risloc.pipeline.learned")
    assert load_learned_pipeline(slim).order_head is None
    # a model without its head is named: its K is not decided as a finished model's is
    load_learned_pipeline(slim)  # said once per checkpoint (evaluate loads it per SNR)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "has no order head: K is decided by the classical residual " \
        "rule" in said[0] and f"risloc fit-order {slim}" in said[0], said
    out = tmp_path / "ordered.pt"
    res = runner.invoke(app, ["fit-order", str(slim), "--out", str(out), "--scenes", "128",
                              "--report-scenes", "8", "--workers", "1",
                              "--scene", "power_spread_db=[0, 25]", "--margin", "0.5",
                              "--no-mix"])
    assert res.exit_code == 0, res.output
    assert f"wrote {out} and its card {out.with_suffix('.json')}" in " ".join(
        res.output.split())
    assert "order head" in res.output
    assert "SNR (dB)" in res.output  # (rich read '[dB]' as markup and dropped it)
    pipe = load_learned_pipeline(out)
    assert pipe.order_head is not None
    # the head reads the fits of the fit stage it was fitted on: its margin comes with it
    assert pipe.fit_config.repair_margin == 0.5
    assert load_learned_pipeline(slim).fit_config.repair_margin == 0.0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["order_head"]["repair_margin"] == 0.5
    assert card["order_head"]["scene"] == {"power_spread_db": [0, 25]}
    assert card["order_head"]["scene_mix"] is False  # (this recipe has no mixture to leave)
    assert card["order_head"]["training_split"].endswith(
        "the recipe's scenes with {'power_spread_db': [0, 25]}")
    rows = card["order_head"]["per_snr"]
    assert len(rows) == 12 and all(0 <= r["K_accuracy_order_head"] <= 1 for r in rows)
    assert card["epoch"] == json.loads(slim.with_suffix(".json").read_text())["epoch"]
    again = export_model(out, tmp_path / "again.pt")  # exporting a model keeps its head's report
    assert json.loads(again.with_suffix(".json").read_text())["order_head"] == card["order_head"]
    # an exported model refitted in place (--out its own name): allowed, its card beside it
    # updated (a mutation review: a refit in place was refused for the card it rewrites)
    m = tmp_path / "m.pt"
    m.write_bytes(slim.read_bytes())
    m.with_suffix(".json").write_text(slim.with_suffix(".json").read_text())
    res = runner.invoke(app, ["fit-order", str(m), "--out", str(m), "--scenes", "64",
                              "--report-scenes", "1", "--workers", "1", "--margin", "0.25"])
    assert res.exit_code == 0, res.output
    refit = json.loads(m.with_suffix(".json").read_text())
    assert refit["order_head"]["repair_margin"] == 0.25 and refit["epoch"] == card["epoch"]
    assert load_learned_pipeline(m).order_head is not None
    # K unknown: the head decides K from the nested fits; K given: the caller
    sc = simulate_range(0, 6, SystemConfig(), SceneConfig(), split="test", snr_db=10.0)
    with torch.no_grad():
        fwd = pipe.forward(sc.y, sc.H, sc.codes)
        fit = pipe.fit(sc.y, sc.H, sc.codes, pipe.propose(fwd))
        decision = pipe.decide_order(fwd, fit, sc.y)
    assert decision.probabilities.shape == (6, 5)
    # where the scene's estimated SNR is below low_snr_db the head decides with balance
    # low_snr_balance (the F1-optimal rule), elsewhere with its own
    x = order_features(fit, sc.y, fwd.out.K_logits)
    assert torch.equal(decision.K, pipe.order_head.decide(x))  # 10 dB: above 0.5 dB
    seen = []
    decide = pipe.order_head.decide
    monkeypatch.setattr(pipe.order_head, "decide", lambda x, k_max=None, balance=None:
                        seen.append(balance) or decide(x, k_max, balance))
    pipe.decide_order(fwd, fit, sc.y)
    pipe.low_snr_db, pipe.low_snr_balance = 1e3, 50.0
    assert torch.equal(pipe.decide_order(fwd, fit, sc.y).K,
                       decide(x, balance=torch.full((6,), 50.0)))
    torch.testing.assert_close(seen[0], torch.full((6,), pipe.order_head.balance))
    torch.testing.assert_close(seen[1], torch.full((6,), 50.0))
    pipe.low_snr_db, pipe.low_snr_balance = 0.5, 0.0
    monkeypatch.undo()
    assert torch.equal(pipe.localize(sc.y, sc.H, sc.codes).K, decision.K)
    assert torch.equal(pipe.localize(sc.y, sc.H, sc.codes, K=torch.full((6,), 2)).K,
                       torch.full((6,), 2))
    for opt, value, says in (("--scenes", "10", "64"), ("--report-scenes", "0", "1"),
                             ("--workers", "0", "1")):
        res = runner.invoke(app, ["fit-order", str(slim), "--out", str(out), opt, value])
        assert res.exit_code == 2 and opt in res.output and says in res.output, res.output
    before = out.read_bytes()  # another model at --out is replaced only with --overwrite
    res = runner.invoke(app, ["fit-order", str(slim), "--out", str(out)])
    assert res.exit_code == 2 and "exists: pass --overwrite" in res.output
    assert out.read_bytes() == before and "order features" not in res.output
    (tmp_path / "notes.json").write_text("mine")  # nor a file of the user's at its card
    res = runner.invoke(app, ["fit-order", str(slim), "--out", str(tmp_path / "notes.pt")])
    assert res.exit_code == 2 and "notes.json exists" in res.output, res.output
    assert (tmp_path / "notes.json").read_text() == "mine" and "order features" not in \
        res.output
    res = runner.invoke(app, ["fit-order", str(slim), "--out", str(out), "--margin", "-1",
                              "--overwrite"])
    assert res.exit_code == 2, res.output
    assert "--margin must be >= 0 and finite, got -1.0" in res.output, res.output
    # outputs that would lose the model or another model's card are refused before the fit
    (tmp_path / "folder.pt").mkdir()
    for bad, says in (("o.json", "must end in .pt"), ("slim", "must end in .pt"),
                      ("folder.pt", "is a folder")):
        res = runner.invoke(app, ["fit-order", str(slim), "--out", str(tmp_path / bad)])
        assert res.exit_code == 2 and says in res.output, (bad, res.output)
        assert "order features" not in res.output  # no fitting began
    # a model without a card fitted onto a name with an older card: that card goes
    (tmp_path / "bare.pt").write_bytes(slim.read_bytes())
    res = runner.invoke(app, ["fit-order", str(tmp_path / "bare.pt"), "--out", str(out),
                              "--scenes", "64", "--report-scenes", "1", "--workers", "1",
                              "--overwrite"])
    assert res.exit_code == 0, res.output
    assert not out.with_suffix(".json").exists()
    assert "(no model card: its input had none)" in " ".join(res.output.split())
    for bad, says in (("colour=3", "colour"), ("power_spread_db", "FIELD=VALUE"),
                      ("range_m=[0.1, 20]", "leaves the base scene's field of view")):
        res = runner.invoke(app, ["fit-order", str(slim), "--out", str(out), "--scene", bad,
                                  "--overwrite"])
        assert res.exit_code == 2 and says in res.output, (bad, res.output)
        assert "order features" not in res.output  # (a review: an empty bar first)
    (tmp_path / "junk.pt").write_text("junk")
    res = runner.invoke(app, ["fit-order", str(tmp_path / "junk.pt"), "--out", str(out),
                              "--overwrite"])
    assert res.exit_code == 2 and "not a risloc checkpoint" in res.output
    assert "order features" not in res.output
    # a head fitted on the old features (source powers in the units of H) is not used
    from risloc.inference.checkpoint import save_checkpoint

    state = load_checkpoint(out)
    del state["order_head"]["repair_margin"]  # heads stored before margins: fitted with 0
    save_checkpoint(tmp_path / "head_without_margin.pt", state)
    unmarked = load_learned_pipeline(tmp_path / "head_without_margin.pt")
    assert unmarked.order_head is not None and unmarked.fit_config.repair_margin == 0.0
    del state["order_head"]["features"]
    save_checkpoint(tmp_path / "old_head.pt", state)
    logger = logging.getLogger("risloc.pipeline.learned")
    logger.addHandler(caplog.handler)  # the CLI runs above may stop propagation to root
    try:
        assert load_learned_pipeline(tmp_path / "old_head.pt").order_head is None
    finally:
        logger.removeHandler(caplog.handler)
    assert "order features version 1" in caplog.text and "risloc fit-order" in caplog.text


def test_the_learned_localizer_never_uses_the_snr(checkpoint):
    """A network trained without the SNR (the shipped recipe's data.snr_shown 0) is never
    given it, and the K decision never reads it: K and positions are the same with and
    without snr_db, and with a wrong one."""
    recipe = load_train_config(ROOT / "configs" / "train_tiny.yaml")
    assert recipe.data.snr_shown == 0
    loc = Localizer.from_checkpoint(checkpoint, workers=1)
    sc = simulate_range(0, 8, SystemConfig(), SceneConfig(), split="test", snr_db=10.0)
    ref = loc.localize(sc.y, sc.H, sc.codes).estimates
    for snr in (sc.snr_db, sc.snr_db + 15.0):
        est = loc.localize(sc.y, sc.H, sc.codes, snr).estimates
        assert torch.equal(est.K, ref.K)
        torch.testing.assert_close(est.azimuth, ref.azimuth, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("given_K", [False, True])
def test_the_gpu_route_of_the_lm_loop_answers_as_the_cpu_route_without_waiting(monkeypatch,
                                                                              given_K):
    """The LM loop's masked route (a GPU's default, NFMLEConfig.masked) run on the CPU:
    the shipped learned localizer dispatches no operation that would make a GPU's host
    wait (risloc.core.syncs; LAPACK's QR branch is the CPU's own) and gives the CPU route's
    K and positions (bit for bit on the machine this was written on; the tolerance leaves
    room for GEMM rounding that depends on the batch's layout). CI has no GPU: this keeps
    the GPU's route tested. With K given too (the repair of the chosen sources): a check
    that waited there broke the call's CUDA graph capture (stop 42)."""
    from risloc.core.checks import normalise_scale
    from risloc.core.syncs import SyncCounter
    from risloc.estimators import nfmle

    pipe = load_learned_pipeline()
    sc = simulate_range(0, 24, SystemConfig(), SceneConfig(power_spread_db=12.0),
                        split="test", seed=11)
    y, H = (t.to(torch.complex64) for t in normalise_scale(sc.y, sc.H))
    codes = sc.codes.to(torch.complex64)
    K = sc.K if given_K else None
    ref = pipe.localize(y, H, codes, K=K)
    monkeypatch.setattr(nfmle, "masked_route", lambda cfg, device: True)
    with SyncCounter() as counter:
        est = pipe.localize(y, H, codes, K=K)
    assert {k: n for k, n in counter.syncs.items() if "(CPU route)" not in k} == {}
    assert sum(counter.from_host.values()) == 0
    assert torch.equal(est.K, ref.K)
    # float32 LM stops move along a flat cost with rounding: here up to 1e-3 deg and 2 mm
    # with K decided, 0.014 deg and 1.7 cm with K given (its repair round's LM runs add
    # stops); the medians are 3e-6 deg and 3e-6 m either way
    bounds = (1e-3, 1e-3, 5e-2) if given_K else (2e-4, 2e-4, 5e-3)
    for f, worst in zip(("azimuth", "elevation", "range_m"), bounds, strict=True):
        gap = (getattr(est, f) - getattr(ref, f)).abs()
        assert gap.nanmedian() < worst / 100 and gap.nan_to_num(0).amax() < worst
        assert torch.equal(gap.isnan(), getattr(ref, f).isnan())


def test_a_smaller_k_max_caps_a_headless_models_residual_rule(checkpoint):
    """A model without its order head decides K by the residual rule on the nested fits;
    a system passed with K_max = 2 caps it there too (a mutation review: the rule read every
    nested cost, and only the classical localizer's cap was tested)."""
    loc = Localizer.from_checkpoint(checkpoint, workers=1)
    assert loc.pipeline.order_head is None
    sc = simulate_range(0, 4, loc.system, SceneConfig(), split="test", snr_db=25.0, K=5)
    full = loc.localize(sc.y, sc.H, sc.codes).estimates
    capped = loc.localize(sc.y, sc.H, sc.codes, system=SystemConfig(K_max=2)).estimates
    assert int(full.K.max()) > 2 and int(capped.K.max()) <= 2


def test_the_decided_sources_are_those_the_ranker_puts_first():
    """Where the order head decides K, localize polishes the K nested sources the source
    ranker ranks first (here a ranker that reverses the nested order: the last K), not the
    first K, in the scenes whose estimated SNR is below ``rank_below_db``; where K is given
    there is no ranking. The shipped model has a ranker."""
    pipe = load_learned_pipeline()
    assert isinstance(pipe.source_ranker, SourceRanker)
    sc = simulate_range(0, 4, pipe.system, SceneConfig(), split="test", snr_db=10.0)
    reverse = torch.arange(pipe.system.K_max - 1, -1, -1).expand(4, -1)

    class Reverse(torch.nn.Module):
        def rank(self, inputs):
            assert inputs.shape[:2] == (4, pipe.system.K_max)
            return reverse

    pipe.source_ranker, pipe.rank_below_db = Reverse(), None  # (10 dB: above the gate)
    with torch.no_grad():
        fwd = pipe.forward(sc.y, sc.H, sc.codes)
        fit = pipe.fit(sc.y, sc.H, sc.codes, pipe.propose(fwd))
        decision = pipe.decide_order(fwd, fit, sc.y)
        assert torch.equal(decision.ranking, reverse)
        assert pipe.decide_order(fwd, fit, sc.y, K=sc.K).ranking is None
        # the ranker's order only where the scene's estimated SNR is below rank_below_db
        snr = estimated_snr_db(fit.costs, sc.y.shape[1], sc.y.shape[2])
        pipe.rank_below_db = float(snr.median())
        low = snr < pipe.rank_below_db
        assert 0 < int(low.sum()) < 4
        nested = torch.arange(pipe.system.K_max).expand(4, -1)
        assert torch.equal(pipe.decide_order(fwd, fit, sc.y).ranking,
                           torch.where(low.unsqueeze(-1), reverse, nested))
        pipe.rank_below_db = None
        last = pipe.polish(sc.y, sc.H, sc.codes, fit._replace(theta=fit.theta.flip(1)),
                           decision.K)
        first = pipe.polish(sc.y, sc.H, sc.codes, fit, decision.K)
        # polish refuses a ranking that is not a permutation of the K_max slots per scene
        for bad, what in ((reverse[:, :3], r"\[B, K_max\] = \[4, 5\] integers"),
                          (reverse.float(), "integers"),
                          (torch.zeros_like(reverse), r"permutation .* scene\(s\) \[0, 1, 2, 3\]")):
            with pytest.raises(InputError, match=what):
                pipe.polish(sc.y, sc.H, sc.codes, fit, decision.K, ranking=bad)
    got = pipe.localize(sc.y, sc.H, sc.codes)
    assert torch.equal(got.K, last.K)
    torch.testing.assert_close(got.azimuth, last.azimuth.float(), equal_nan=True)
    assert not torch.allclose(got.azimuth.nan_to_num(9), first.azimuth.float().nan_to_num(9))
