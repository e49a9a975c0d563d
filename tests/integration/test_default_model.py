"""The model shipped inside the package (src/risloc/models/default.pt): it is present,
loads through the public API, matches the default system, carries its model card, and
localizes clean single-source scenes of the held-out test split accurately."""

import json

import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.evaluation.metrics import match_sources, summarize
from risloc.pipeline import Localizer
from risloc.pipeline.learned import DEFAULT_MODEL
from risloc.simulation import simulate_range


def test_shipped_model_is_packaged_with_its_card():
    assert DEFAULT_MODEL.exists(), "the package must ship src/risloc/models/default.pt"
    assert DEFAULT_MODEL.stat().st_size < 5e6
    card = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    assert card["config"]["system"] == SystemConfig().model_dump(mode="json")
    assert 0.0 < card["validation"]["K_accuracy"] <= 1.0


def test_shipped_model_localizes_high_snr_single_sources():
    loc = Localizer.from_checkpoint()  # None = the shipped model
    assert loc.method == "learned" and loc.system == SystemConfig()
    sc = simulate_range(0, 16, loc.system, SceneConfig(), seed=11, split="test", snr_db=20.0,
                        K=1)
    est = loc.localize(sc.y, sc.H, sc.codes, sc.snr_db).estimates
    s = summarize(match_sources(est, sc.azimuth, sc.elevation, sc.range_m, sc.K))
    assert s.K_accuracy >= 0.9
    assert s.angle_median_deg < 0.5 and s.range_median_m < 0.5
    assert bool(torch.isfinite(est.azimuth[est.mask]).all())


def test_shipped_model_decides_K_with_its_order_head():
    from risloc.pipeline.learned import load_learned_pipeline

    pipe = load_learned_pipeline()
    assert pipe.order_head is not None, "the shipped model carries an order head"
    card = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    rows = {r["snr_db"]: r for r in card["order_head"]["per_snr"]}
    # what `risloc fit-order` measured on the validation split when the head was fitted
    assert rows[20.0]["K_accuracy_order_head"] >= rows[20.0]["K_accuracy_network_head"]
    sc = simulate_range(0, 24, pipe.system, SceneConfig(), seed=12, split="test", snr_db=20.0,
                        K=3)
    est = pipe.localize(sc.y, sc.H, sc.codes, sc.snr_db)
    assert float((est.K == 3).float().mean()) >= 0.8


def test_both_localizers_ignore_the_units_of_y_and_H():
    """A user's file has arbitrary units: rescaling y or H must change no decision or
    position (a K decision that read absolute powers would learn the simulator's unit
    source power or its channel normalisation)."""
    sc = simulate_range(0, 12, SystemConfig(), SceneConfig(), seed=13, split="test",
                        snr_db=10.0)
    for method in ("learned", "classical"):
        loc = Localizer.from_checkpoint(method=method)
        for snr in (sc.snr_db, None):  # None: the SNR-less branches (sigma^2 estimated)
            ref = loc.localize(sc.y, sc.H, sc.codes, snr).estimates
            for y_gain, H_gain in ((1e3, 1.0), (1e-3, 1.0), (1.0, 1e3), (1.0, 1e-3)):
                est = loc.localize(y_gain * sc.y, H_gain * sc.H, sc.codes, snr).estimates
                case = (method, snr is None, y_gain, H_gain)
                assert torch.equal(est.K, ref.K), case
                for name in ("azimuth", "elevation", "range_m"):  # rad, rad, m
                    assert torch.allclose(getattr(est, name), getattr(ref, name), atol=1e-3,
                                          equal_nan=True), (*case, name)
