"""The named estimators of ``risloc evaluate`` (risloc.experiments.estimators): what each
hands on (the covariance, the K it is told or decides, the system); the numerics of the
estimators themselves: tests/unit/estimators/; end to end:
tests/integration/test_cli_evaluate.py."""

import dataclasses

import pytest
import torch

from risloc.config import SceneConfig
from risloc.estimators import music as music_mod
from risloc.estimators import nfmle as nfmle_mod
from risloc.estimators import order as order_mod
from risloc.estimators import ramezani as ramezani_mod
from risloc.experiments import estimators
from risloc.pipeline import localizer as localizer_mod
from risloc.simulation import simulate_batch


@pytest.fixture(scope="module")
def scenes(system):
    return simulate_batch(3, system, SceneConfig(), torch.Generator().manual_seed(5), snr_db=10.0)


@pytest.fixture
def calls(monkeypatch):
    """What the estimators were given, by callee; MDL says 0 (a weak covariance)."""
    got = {}

    def record(name, result=None):
        def fn(*args, **kwargs):
            got[name] = (args, kwargs)
            return result if result is not None else f"{name} estimates"
        return fn

    monkeypatch.setattr(music_mod, "music", record("music"))
    monkeypatch.setattr(ramezani_mod, "ramezani_music", record("ramezani"))
    monkeypatch.setattr(nfmle_mod, "nfmle_refine", record("nfmle"))
    monkeypatch.setattr(order_mod, "mdl_order", lambda R, L, K_max: (
        got.__setitem__("mdl", (L, K_max)) or torch.zeros(R.shape[0], dtype=torch.long)))
    return got


def test_the_sample_covariance_estimators_use_a_told_K_else_mdl_of_at_least_one(
        calls, scenes, system):
    """(a mutation review: a told K ignored, MDL's 0 passed to MUSIC, MDL allowed K_max - 1,
    ramezani-samp running plain MUSIC or a config not fitted to the system, the +nfmle
    variant not polishing all passed)"""
    told = torch.tensor([2, 1, 3])
    for name, callee in (("music-samp", "music"), ("ramezani-samp", "ramezani")):
        fn = estimators.get_estimator(name)
        assert fn(scenes, system, told) == f"{callee} estimates"
        assert torch.equal(calls[callee][0][1], told) and "mdl" not in calls
        assert fn(scenes, system, None) == f"{callee} estimates"
        assert torch.equal(calls[callee][0][1], torch.ones(3, dtype=torch.long))  # MDL's 0 -> 1
        assert calls.pop("mdl") == (system.L, system.K_max)
    # MDL on L snapshots tests orders below min(N, L) only (mdl_order refuses more):
    # a system of L <= K_max snapshots is asked for L - 1, and L = 1 decides K = 1 unasked
    for L, asked in ((4, 3), (1, None)):
        few = system.model_copy(update={"L": L})
        estimators.get_estimator("music-samp")(scenes, few, None)
        assert calls.pop("mdl", None) == (None if asked is None else (L, asked))
        assert torch.equal(calls["music"][0][1], torch.ones(3, dtype=torch.long))
    small = system.model_copy(update={"N_V": 6, "N_H": 6})  # (its sub-RISs: 4 x 4, not 8 x 8)
    estimators.get_estimator("ramezani-samp")(scenes, small, told)
    assert calls["ramezani"][0][3].subarray == (4, 4)
    assert estimators.get_estimator("music-samp+nfmle")(scenes, system, told) == "nfmle estimates"
    assert calls["nfmle"][0][3] == "music estimates"
    assert torch.equal(calls["music"][0][1], told)


def test_the_oracle_runs_on_the_truth_with_its_K_unless_told_one(calls, scenes, system):
    fn = estimators.get_estimator("music-oracle")
    fn(scenes, system, None)
    assert torch.equal(calls["music"][0][1], scenes.K)
    told = torch.tensor([1, 1, 1])
    fn(scenes, system, told)
    assert torch.equal(calls["music"][0][1], told)
    assert estimators.NEEDS_TRUTH == ("music-oracle",)
    bare = dataclasses.replace(scenes, K=None, azimuth=None)
    with pytest.raises(ValueError, match="music-oracle needs the truth"):
        fn(bare, system, None)


def test_classical_and_learned_pass_on_K_the_snr_and_the_system(monkeypatch, scenes, system):
    seen = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            pass

        @classmethod
        def from_checkpoint(cls, path=None, **kwargs):
            seen.append(("checkpoint", path))
            return cls()

        def localize(self, y, H, codes, snr_db=None, K=None, system=None):
            seen.append((snr_db, K, system))
            return type("Result", (), {"estimates": "done"})()

    monkeypatch.setattr(localizer_mod, "Localizer", Recorder)
    told = torch.tensor([2, 2, 2])
    assert estimators.get_estimator("classical")(scenes, system, told) == "done"
    assert seen[-1][0] is scenes.snr_db and seen[-1][1] is told
    assert estimators.get_estimator("learned", "m.pt")(scenes, system, None) == "done"
    assert seen[-2:] == [("checkpoint", "m.pt"), (scenes.snr_db, None, system)]
    with pytest.raises(ValueError, match="unknown estimator 'musik'; choose from"):
        estimators.get_estimator("musik")


def test_music_on_a_ris_of_no_more_elements_than_sources_looks_for_n_minus_1(caplog):
    """A 2 x 2 RIS (N = 4) with the default K_max = 5 is a valid system, and its scenes hold
    up to 5 sources: MUSIC on the 4 x 4 covariance resolves at most 3. music-oracle told
    K = 4 stopped `risloc evaluate` ('every K must satisfy 1 <= K < 4'), and music-samp's
    MDL ('K_max=5 must lie in 1..p-1 = 3'); now they look for 3, with a warning (an edge
    review)."""
    from risloc.config import SystemConfig

    tiny = SystemConfig(N_H=2, N_V=2, M=6, L=8)
    sc = simulate_batch(2, tiny, SceneConfig(K=4, min_separation_deg=0.0),
                        torch.Generator().manual_seed(1), snr_db=20.0)
    for name in ("music-oracle", "music-samp", "music-samp+nfmle"):  # (each named as given)
        caplog.clear()
        est = estimators.get_estimator(name)(sc, tiny, torch.tensor([4, 4]))
        assert est.K.tolist() == [3, 3]
        assert torch.isfinite(est.azimuth[:, :3]).all()
        assert f"{name}: MUSIC on the 4 x 4 covariance of a 2 x 2 RIS resolves at most 3" \
            in caplog.text
    est = estimators.get_estimator("music-samp")(sc, tiny, None)  # MDL within 1..3
    assert 1 <= int(est.K.max()) <= 3
    one = SystemConfig(N_H=1, N_V=1, M=2, K_max=1, L=1)  # the smallest system: no MUSIC
    sc = simulate_batch(1, one, SceneConfig(), torch.Generator().manual_seed(1), snr_db=20.0)
    with pytest.raises(ValueError, match=r"music-oracle: MUSIC needs a RIS of at least 2 "
                                         r"elements, the system has N=1 \(1 x 1\)"):
        estimators.get_estimator("music-oracle")(sc, one, None)
    with pytest.raises(ValueError, match=r"music-samp\+nfmle: MUSIC needs .* leave "
                                         r"music-samp\+nfmle out of --estimators"):
        estimators.get_estimator("music-samp+nfmle")(sc, one, None)


def test_each_estimator_searches_the_field_of_view_it_is_given(calls, scenes, system):
    """``get_estimator(name, fov=box)``: MUSIC (samp, oracle), its NF-MLE polish and
    Ramezani's search ``box``; without one their default box (a mutation review: the box
    not passed on to music-samp, the oracle, the polish or ramezani-samp passed)."""
    from risloc.config import FieldOfView

    box = FieldOfView(azimuth_deg=(-20.0, 20.0), elevation_deg=(-10.0, 10.0),
                      range_m=(0.4, 2.0))
    for fov in (box, None):
        want = FieldOfView() if fov is None else fov
        for name in ("music-samp", "music-oracle"):
            estimators.get_estimator(name, fov=fov)(scenes, system, None)
            assert calls.pop("music")[0][3].fov == want, name
        estimators.get_estimator("music-samp+nfmle", fov=fov)(scenes, system, None)
        assert calls.pop("music")[0][3].fov == want
        assert calls.pop("nfmle")[0][5].fov == want
        estimators.get_estimator("ramezani-samp", fov=fov)(scenes, system, None)
        assert calls.pop("ramezani")[0][3].fov == want


def test_music_told_as_many_sources_as_it_resolves_gives_no_warning(caplog):
    """The warning of _music_K is for scenes of more sources than MUSIC resolves; told
    exactly min(M, N) - 1 it looks for them all and says nothing (a mutation review:
    ``K > cap`` made ``K >= cap`` passed)."""
    from risloc.config import SystemConfig

    tiny = SystemConfig(N_H=2, N_V=2, M=6, L=8)
    assert estimators._music_K(torch.tensor([3, 1]), tiny, "music-oracle").tolist() == [3, 1]
    assert "resolves at most" not in caplog.text
    assert estimators._music_K(torch.tensor([4, 1]), tiny, "music-oracle").tolist() == [3, 1]
    assert "music-oracle: MUSIC on the 4 x 4 covariance" in caplog.text
