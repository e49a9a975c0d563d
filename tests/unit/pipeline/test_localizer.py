import math

import pytest
import torch

from risloc.config import SceneConfig
from risloc.evaluation.metrics import match_sources
from risloc.pipeline import Localizer, read_estimates, write_estimates
from risloc.pipeline.estimates_file import estimate_rows
from risloc.simulation import simulate_range


@pytest.fixture(scope="module")
def scenes(system):
    return simulate_range(0, 4, system, SceneConfig(snr_db=(25.0, 25.0)), seed=1,
                          split="test", K=1)


def test_classical_localizer_finds_sources_and_skips_bad_scenes(system, scenes):
    y = scenes.y.clone()
    y[2, 3, 1] = complex(math.nan, 0.0)
    H = scenes.H.clone()
    H[3] = 0
    res = Localizer(system, "classical").localize(y, H, scenes.codes, scenes.snr_db, K=1)
    assert [i for i, _ in res.bad] == [2, 3]
    assert "non-finite values in y" in res.bad[0][1] and "all-zero channel" in res.bad[1][1]
    est = res.estimates
    assert est.K.tolist() == [1, 1, 0, 0]
    assert bool(torch.isnan(est.azimuth[2:]).all())
    m = match_sources(est[:2], scenes.azimuth[:2], scenes.elevation[:2], scenes.range_m[:2],
                      scenes.K[:2])
    assert float(m.angle_error[m.paired].abs().max()) < math.radians(0.5)


def test_localizer_rejects_bad_shapes_and_methods(system, scenes):
    loc = Localizer(system, "classical")
    with pytest.raises(ValueError, match="y must be"):
        loc.localize(scenes.y[:, :, :4], scenes.H, scenes.codes)
    with pytest.raises(ValueError, match="complex"):
        loc.localize(scenes.y.real, scenes.H, scenes.codes)
    with pytest.raises(ValueError, match="method"):
        Localizer(system, "magic")
    with pytest.raises(ValueError, match="needs a model"):
        Localizer(system, "learned")


def test_estimates_file_round_trip(tmp_path, scenes):
    from risloc.core.params import Estimates

    nan = math.nan
    est = Estimates(K=torch.tensor([2, 0, 1]),
                    azimuth=torch.tensor([[0.1, -0.2], [nan, nan], [0.3, nan]]),
                    elevation=torch.tensor([[0.05, 0.0], [nan, nan], [-0.1, nan]]),
                    range_m=torch.tensor([[1.5, 7.0], [nan, nan], [2.0, nan]]),
                    score=torch.tensor([[3.0, 2.0], [nan, nan], [1.0, nan]]))
    path = write_estimates(tmp_path / "e.csv", estimate_rows(est, offset=10))
    lines = path.read_text().splitlines()
    assert lines[0] == "scene,source,azimuth_deg,elevation_deg,range_m,score"
    assert lines[1].startswith("10,0,5.729578,2.864789,1.500000")
    back = read_estimates(path, 13, 2)
    assert back.K[10:].tolist() == [2, 0, 1]
    assert torch.allclose(back.azimuth[10:].nan_to_num(9), est.azimuth.nan_to_num(9), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["e.csv"]
