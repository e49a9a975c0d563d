"""Scenes from a second implementation of the contract (benchmarks/independent_scenes.py,
NumPy and h5py only): its physics agrees with the package's, and both localizers recover
its sources on nearly noise-free scenes (the full comparison: benchmarks/bench_independent.py)."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

from risloc.config import SystemConfig
from risloc.evaluation.metrics import match_sources, summarize
from risloc.io import read_scenes
from risloc.physics.steering import steering
from risloc.pipeline import Localizer

GENERATOR = Path(__file__).resolve().parents[2] / "benchmarks" / "independent_scenes.py"


def _generator():
    spec = importlib.util.spec_from_file_location("independent_scenes", GENERATOR)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_its_steering_is_the_package_s():
    gen = _generator()
    rng = np.random.default_rng(0)
    az, el = np.deg2rad(rng.uniform(-60, 60, 40)), np.deg2rad(rng.uniform(-30, 30, 40))
    r = rng.uniform(0.5, 10, 40)
    ours = steering(*(torch.from_numpy(v) for v in (az, el, r)), SystemConfig(),
                    torch.complex128).numpy()
    np.testing.assert_allclose(gen.steering(az, el, r, gen.SYSTEM), ours, atol=1e-9)


def test_both_localizers_recover_its_sources(tmp_path):
    gen = _generator()
    path = tmp_path / "independent.h5"
    assert gen.write_file(path, 6, [40.0], 6.0, (0.5, 10.0), seed=3, with_snr=False) == 6
    scenes, info = read_scenes(path)
    assert info.system == SystemConfig() and torch.isnan(scenes.snr_db).all()
    for loc in (Localizer(info.system, "classical"), Localizer.from_checkpoint()):
        est = loc.localize(scenes.y, scenes.H, scenes.codes).estimates
        m = match_sources(est, scenes.azimuth, scenes.elevation, scenes.range_m, scenes.K)
        s = summarize(m)
        assert s.K_accuracy == 1.0 and s.f1 == 1.0, loc.method
        assert s.azimuth_median_deg < 0.02 and s.elevation_median_deg < 0.02, loc.method
