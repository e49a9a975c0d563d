import math

import pytest
import torch

from risloc.config import SceneConfig, SceneKind, SystemConfig, scene_mixture
from risloc.physics import angular_separation, steering
from risloc.simulation import (
    block_generator,
    scene_true_covariance,
    simulate_batch,
    simulate_mixture,
    simulate_range,
)


def test_realised_snr_equals_requested(system, scene):
    b = simulate_range(0, 200, system, scene, seed=3, split="train")
    noiseless = b.codes * (b.symbols @ steering(b.azimuth.nan_to_num(0), b.elevation.nan_to_num(0),
                                               b.range_m.nan_to_num(1), system))
    signal = noiseless @ b.H.transpose(-1, -2)
    realised = 10 * torch.log10(signal.abs().square().mean((-1, -2)) / b.noise_var)
    assert torch.allclose(realised, b.snr_db, atol=1e-3)
    assert float(b.snr_db.min()) >= -5 and float(b.snr_db.max()) <= 20


def test_noiseless_y_is_exact_measurement_model(system):
    """With huge SNR, y = H diag(c_l) A s_l exactly (checked against a per-snapshot loop)."""
    scene = SceneConfig(snr_db=(300.0, 300.0))
    b = simulate_batch(3, system, scene, torch.Generator().manual_seed(0))
    for i in range(3):
        K = int(b.K[i])
        A = steering(b.azimuth[i, :K], b.elevation[i, :K], b.range_m[i, :K], system).T  # (N, K)
        for l in (0, 7, 15):
            y = b.H[i] @ torch.diag(b.codes[i, l]) @ A @ b.symbols[i, l, :K]
            assert torch.allclose(b.y[i, l], y, rtol=1e-4, atol=1e-5)


def test_symbols_are_independent_across_snapshots(system, scene):
    """LESSONS: constant symbols over snapshots made the sources coherent by accident."""
    b = simulate_range(0, 512, system, scene, seed=0, split="train", K=1)
    s = b.symbols[:, :, 0]  # (B, L)
    corr = (s[:, :-1] * s[:, 1:].conj()).mean()
    assert abs(complex(corr)) < 0.1
    assert abs(float(s.abs().square().mean()) - 1.0) < 0.05


def test_true_covariance_hermitian_rank_K_trace_N(system, scene):
    b = simulate_range(0, 40, system, scene, seed=1, split="validation")
    R = scene_true_covariance(b, system, torch.complex128)
    assert torch.allclose(R, R.mH, atol=1e-12)
    tr = torch.diagonal(R, dim1=-2, dim2=-1).sum(-1)
    assert torch.allclose(tr.real, torch.full((40,), 144.0, dtype=torch.float64))
    ev = torch.linalg.eigvalsh(R)
    rank = (ev > 1e-9 * ev[:, -1:]).sum(-1)
    assert torch.equal(rank, b.K)
    assert float(ev.min()) > -1e-9  # PSD


def test_sources_in_field_of_view_and_separated(system, scene):
    b = simulate_range(0, 2048, system, scene, seed=5, split="train", K=5)
    az, el, r = (torch.rad2deg(b.azimuth), torch.rad2deg(b.elevation), b.range_m)
    assert float(az.abs().max()) <= 60 and float(el.abs().max()) <= 30
    assert float(r.min()) >= 0.5 and float(r.max()) <= 10
    i, j = torch.triu_indices(5, 5, 1)
    sep = angular_separation(b.azimuth[:, i], b.elevation[:, i], b.azimuth[:, j],
                             b.elevation[:, j])
    assert math.degrees(float(sep.min())) >= 5.0 - 1e-4
    # ranges are uniform in metres: mean ~ 5.25
    assert abs(float(r.mean()) - 5.25) < 0.1


def test_K_distribution_and_padding(system, scene):
    b = simulate_range(0, 5000, system, scene, seed=0, split="train")
    counts = torch.bincount(b.K, minlength=6)[1:]
    assert int(counts.min()) > 900  # uniform on 1..5
    for name in ("azimuth", "elevation", "range_m"):  # every truth field is NaN-padded
        assert torch.equal(torch.isfinite(getattr(b, name)), b.mask), name
    assert torch.equal(b.powers > 0, b.mask)
    assert float(b.symbols[~b.mask.unsqueeze(1).expand_as(b.symbols)].abs().max()) == 0.0


def test_same_seed_identical_and_chunking_invariant(system, scene):
    a = simulate_range(0, 1500, system, scene, seed=7, split="train")
    b = simulate_range(1000, 1500, system, scene, seed=7, split="train")
    assert torch.equal(a.y[1000:], b.y)
    assert torch.equal(a.H[1000:], b.H)
    c = simulate_range(0, 1500, system, scene, seed=8, split="train")
    assert not torch.equal(a.y[:10], c.y[:10])


def test_splits_share_no_scene(system, scene):
    ys = {sp: simulate_range(0, 2048, system, scene, seed=0, split=sp)
          for sp in ("train", "validation", "test")}
    keys = {sp: {tuple(v) for v in torch.view_as_real(b.y[:, 0, :2]).reshape(len(b), -1).tolist()}
            for sp, b in ys.items()}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    assert len(keys["train"]) == 2048


def test_bad_split_and_impossible_separation(system):
    with pytest.raises(ValueError, match="split"):
        block_generator(0, "holdout", 0)
    tight = SceneConfig(azimuth_deg=(0, 1), elevation_deg=(0, 1), min_separation_deg=5)
    with pytest.raises(ValueError, match="could not place"):
        simulate_batch(4, system, tight, torch.Generator().manual_seed(0), K=5)
    # a fixed K of 1 still draws K_max positions: said (a review: "5 sources" for K = 1)
    with pytest.raises(ValueError, match=r"every scene draws K_max = 5 positions, whatever"):
        simulate_batch(4, system, tight, torch.Generator().manual_seed(0), K=1)
    with pytest.raises(ValueError, match="K=9"):
        simulate_batch(4, system, SceneConfig(), torch.Generator().manual_seed(0), K=9)


def test_fresnel_system_and_other_codebooks():
    s = SystemConfig(wavefront="fresnel", N_H=8, N_V=4, M=8, L=12, K_max=3)
    for book in ("dft", "hadamard"):
        b = simulate_batch(5, s, SceneConfig(codebook=book), torch.Generator().manual_seed(0))
        assert b.y.shape == (5, 12, 8) and b.H.shape == (5, 8, 32) and b.codes.shape == (5, 12, 32)
        assert bool(torch.isfinite(b.y).all())


def test_power_spread_draws_uniform_db_and_keeps_everything_else(system, scene):
    """10 log10 p_k ~ U[-s/2, s/2] (docs/conventions.md); the spread scene keeps the sources,
    channel, codes, SNR and noise draws of the equal-power scene with the same seed."""
    from risloc.simulation import simulate_range

    equal = simulate_range(0, 600, system, scene, seed=4, split="test")
    spread = simulate_range(0, 600, system, scene.model_copy(update={"power_spread_db": 12.0}),
                            seed=4, split="test")
    db = 10 * torch.log10(spread.powers[spread.mask])
    assert float(db.min()) >= -6.0 and float(db.max()) <= 6.0
    assert float(db.std()) == pytest.approx(12 / 12**0.5, rel=0.06)  # uniform: s / sqrt(12)
    assert torch.equal(equal.powers, equal.mask.float())
    for name in ("K", "H", "codes", "snr_db"):
        assert torch.equal(getattr(equal, name), getattr(spread, name)), name
    assert torch.equal(equal.azimuth.nan_to_num(), spread.azimuth.nan_to_num())
    # symbols s_l ~ CN(0, diag(p)): the unit symbols of the equal-power scene, scaled
    assert torch.allclose(equal.symbols * spread.powers.sqrt().unsqueeze(1), spread.symbols,
                          atol=1e-6)
    # and the SNR realised in the scene is still the requested one
    A = steering(spread.azimuth.nan_to_num(0), spread.elevation.nan_to_num(0),
                 spread.range_m.nan_to_num(1), system)
    signal = (spread.codes * (spread.symbols @ A)) @ spread.H.transpose(-1, -2)
    realised = 10 * torch.log10(signal.abs().square().mean((-1, -2)) / spread.noise_var)
    assert torch.allclose(realised, spread.snr_db, atol=1e-3)


def test_power_spread_range_draws_a_spread_per_scene(system, scene):
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 2000, system, scene.model_copy(update={"power_spread_db": (0, 15)}),
                        seed=5)
    db = 10 * torch.log10(sc.powers)
    db = torch.where(sc.mask, db, torch.nan)
    span = (db.nan_to_num(-99).amax(1) - db.nan_to_num(99).amin(1))[sc.K >= 3]
    assert float(span.max()) <= 15.0 and float(span.min()) < 2.0


def test_mixture_draws_each_kind_by_its_share_in_its_region(system, scene):
    """Two kinds in corners the base scene rarely fills (P < 0.01 per source): the share of
    scenes with every source in a kind's corner is the kind's share."""
    mix = scene_mixture(scene, [
        SceneKind(name="a", share=0.3, scene={"azimuth_deg": (40, 60), "range_m": (0.5, 1)}),
        SceneKind(name="b", share=0.2, scene={"azimuth_deg": (-60, -40), "range_m": (9, 10),
                                              "codebook": "dft"})])
    assert [round(s, 6) for s, _ in mix] == [0.5, 0.3, 0.2] and mix[0][1] == scene
    sc = simulate_range(0, 2000, system, mix, seed=4)
    az, rng = torch.rad2deg(sc.azimuth), sc.range_m

    def every(ok):
        return torch.where(sc.mask, ok, True).all(1)

    in_a = every((az >= 40) & (rng <= 1))
    in_b = every((az <= -40) & (rng >= 9))
    assert abs(in_a.float().mean() - 0.3) < 0.04 and abs(in_b.float().mean() - 0.2) < 0.04
    # kind b's scenes carry DFT codes, whose first element is 1 in every code (a random
    # code's is 1 with probability 1/8, so in all 16 codes of a scene with (1/8)^16)
    dft_like = (sc.codes[:, :, 0] - 1).abs().amax(1) < 1e-5
    assert dft_like[in_b].float().mean() > 0.9 and dft_like[~in_a & ~in_b].float().mean() < 0.1
    again = simulate_range(1000, 1500, system, mix, seed=4)  # block-cut invariant, seeded
    assert torch.equal(again.y, sc.y[1000:1500])
    gen = block_generator(0, "train", 0)
    assert torch.equal(simulate_mixture(8, system, scene, gen).y,
                       simulate_batch(8, system, scene, block_generator(0, "train", 0)).y)


@pytest.mark.parametrize("kinds, message", [
    ([SceneKind(share=0.6), SceneKind(share=0.4)], "sum to 1"),
    ([SceneKind(share=0.1, scene={"range_m": (0.2, 1)})], "range_m"),
    ([SceneKind(share=0.1, scene={"codebok": "dft"})], "codebok"),
    ([SceneKind(name="x", share=0.1, scene={"azimuth_deg": (50, 70)})],
     "data.scene_mix[0].scene: azimuth_deg"),
])
def test_mixture_errors_name_the_kind_and_field(scene, kinds, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        scene_mixture(scene, kinds)


@pytest.mark.parametrize("scene", [SceneConfig(power_spread_db=(0.0, 15.0)),
                                   SceneConfig(codebook="dft"),
                                   SceneConfig(codebook="hadamard", K=2)])
def test_draws_then_physics_are_the_simulated_scenes_on_the_compute_device(system, scene):
    """simulate_batch = synthesize(draw_scenes(...)): the same scenes bit for bit, the draws
    left as they were (reusable); with ``compute`` the physics runs there (the meta device
    stands in for a GPU on the CPU: every field lands on it)."""
    from dataclasses import fields

    from risloc.simulation.scenes import draw_scenes, synthesize

    def gen():
        return torch.Generator().manual_seed(5)

    ref = simulate_batch(48, system, scene, gen(), snr_db=7.0)
    draws = draw_scenes(48, system, scene, gen(), snr_db=7.0)
    kept = {f.name: getattr(draws, f.name) for f in fields(draws) if f.name != "channel"}
    kept = {k: v.clone() for k, v in kept.items()}
    for got in (synthesize(draws, system, scene), synthesize(draws, system, scene),
                simulate_batch(48, system, scene, gen(), snr_db=7.0, compute="cpu")):
        for f in fields(ref):
            torch.testing.assert_close(getattr(got, f.name), getattr(ref, f.name), rtol=0,
                                       atol=0, equal_nan=True, msg=f.name)
    assert all(torch.equal(getattr(draws, k), v) for k, v in kept.items())
    on_meta = simulate_batch(48, system, scene, gen(), compute="meta")
    assert {getattr(on_meta, f.name).device.type for f in fields(on_meta)} == {"meta"}
    mixed = simulate_mixture(48, system, scene_mixture(scene, [SceneKind(
        share=0.5, scene={"range_m": (0.5, 0.6)})]), gen(), compute="meta")
    assert mixed.y.device.type == "meta" and mixed.y.shape == ref.y.shape


def test_the_scenes_of_a_seed_stay_what_they_were():
    """The first scenes of the test split (seed 0, powers spread over 12 dB) as drawn since
    the draws were split from the physics (stop 42; the same as before it): every result
    in docs/ rests on these streams, so a change of a draw's order or of its formula
    must fail here, not pass unnoticed."""
    sc = simulate_range(0, 3, SystemConfig(), SceneConfig(power_spread_db=12.0), 0, "test")
    assert sc.K.tolist() == [3, 4, 2]
    torch.testing.assert_close(sc.azimuth[:, 0], torch.tensor([-0.996018, -0.305862, -0.376764]),
                               rtol=0, atol=2e-6)
    torch.testing.assert_close(sc.range_m[:, 0], torch.tensor([4.65468, 4.833413, 6.131188]),
                               rtol=0, atol=2e-6)
    torch.testing.assert_close(sc.snr_db, torch.tensor([12.3394, 1.6051, -1.1644]), rtol=0,
                               atol=2e-4)
    torch.testing.assert_close(sc.y.abs().square().sum((1, 2)),
                               torch.tensor([575.7875, 1527.7091, 2114.2119]), rtol=1e-5,
                               atol=0)
    torch.testing.assert_close(sc.codes[0, 0, :3].angle(),
                               torch.tensor([-math.pi / 4, -math.pi / 2, 3 * math.pi / 4]))


def test_an_empty_or_reversed_scene_range_is_named(system, scene):
    with pytest.raises(ValueError, match="empty scene range 5..5"):
        simulate_range(5, 5, system, scene)
    with pytest.raises(ValueError, match="bad scene range 5..2"):
        simulate_range(5, 2, system, scene)


def test_an_snr_that_is_no_level_and_a_fractional_K_are_named(system, scene):
    """NaN means 'unknown' to the localizers: simulated with it, every y was NaN; K = 2.5
    was simulated as 2."""
    for snr in (math.nan, math.inf, 1e4):
        with pytest.raises(ValueError, match="snr_db must be a finite SNR within"):
            simulate_range(0, 2, system, scene, snr_db=snr)
    for K in (2.5, True):
        with pytest.raises(ValueError, match="K must be a whole number of sources"):
            simulate_range(0, 2, system, scene, K=K)
    assert simulate_range(0, 2, system, scene, K=2.0).K.tolist() == [2, 2]


def test_a_K_outside_one_to_K_max_is_named(system, scene):
    """Let through, K = 0 would simulate scenes without a source (zero signal, zero
    noise: y = 0) and K > K_max has no slot for its sources."""
    for K in (0, -1, system.K_max + 1):
        with pytest.raises(ValueError, match=rf"K={K} must lie in 1..K_max={system.K_max}"):
            simulate_range(0, 2, system, scene, K=K)
    assert simulate_range(0, 2, system, scene, K=1).K.tolist() == [1, 1]


def test_the_system_and_scene_may_be_dicts_and_a_list_is_no_fixed_value(system, scene):
    """As Localizer and crb take a dict system; a dict scene gave 'not enough values to
    unpack' and a list of SNRs a float() TypeError."""
    from risloc.config import ConfigError

    small = simulate_range(0, 3, {"M": 8, "K_max": 3}, {"K": 2})
    same = simulate_range(0, 3, SystemConfig(M=8, K_max=3), SceneConfig(K=2))
    assert torch.equal(small.y, same.y) and small.K.tolist() == [2, 2, 2]
    assert torch.equal(simulate_range(0, 2, system, None).y,
                       simulate_range(0, 2, system, SceneConfig()).y)
    for kw in ({"snr_db": [0.0, 10.0]}, {"K": [1, 2]}):
        with pytest.raises(TypeError, match=f"{next(iter(kw))} must be one number, fixed in "
                                            "every scene"):
            simulate_range(0, 2, system, scene, **kw)
    with pytest.raises(ConfigError, match="invalid scene: colour"):
        simulate_range(0, 2, system, {"colour": 3})
    with pytest.raises(TypeError, match="scene must be a SceneConfig, a dict"):
        simulate_range(0, 2, system, "near")


def test_the_true_covariance_weighs_each_source_by_its_power(system):
    """R_true = N A diag(p) A^H / sum(p), entry by entry with unequal powers and a padded
    slot, and its factor W W^H the same (a mutation review: every test drew equal powers,
    so sqrt(p) for p passed)."""
    from risloc.simulation.scenes import SceneBatch, true_covariance, true_covariance_factor

    nan = float("nan")
    az = torch.tensor([[0.3, -0.4, nan]], dtype=torch.float64)
    el = torch.tensor([[0.1, -0.2, nan]], dtype=torch.float64)
    r = torch.tensor([[1.5, 4.0, nan]], dtype=torch.float64)
    p = torch.tensor([[1.0, 9.0, 0.0]], dtype=torch.float64)
    a = steering(az[:, :2], el[:, :2], r[:, :2], system, torch.complex128)[0]  # (2, N)
    want = sum(float(p[0, k]) * torch.outer(a[k], a[k].conj()) for k in range(2))
    want = want * system.N / 10.0
    R = true_covariance(az, el, r, p, system, torch.complex128)[0]
    assert torch.allclose(R, want, atol=1e-12)
    scenes = SceneBatch(y=torch.zeros(1, system.L, system.M, dtype=torch.complex64),
                        H=torch.zeros(1, system.M, system.N, dtype=torch.complex64),
                        codes=torch.ones(1, system.L, system.N, dtype=torch.complex64),
                        snr_db=torch.zeros(1), K=torch.tensor([2]), azimuth=az.float(),
                        elevation=el.float(), range_m=r.float(), powers=p.float())
    W = true_covariance_factor(scenes, system, torch.complex128)[0]
    assert torch.allclose(W @ W.mH, want, atol=1e-5)


def test_a_K_given_to_the_call_wins_over_the_scenes_K(system):
    """K= of simulate_range (``risloc simulate --K``) fixes K even where the scene config
    fixes another (a mutation review: the scene's K winning passed)."""
    sc = simulate_range(0, 3, system, SceneConfig(K=2), K=4)
    assert sc.K.tolist() == [4, 4, 4]


def test_an_equal_power_scene_draws_no_powers_and_a_reversed_spread_is_named():
    """Spread 0 consumes no draw (the next kind of a mixture keeps its scenes); a spread
    range (hi, lo) or a negative spread is refused, not drawn in reverse."""
    from risloc.simulation.scenes import draw_powers

    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    mask = torch.arange(5) < torch.tensor([[2], [5]])
    assert torch.equal(draw_powers(mask, 0.0, g), mask.float())
    assert torch.equal(g.get_state(), state)
    for bad in ((10.0, 5.0), -1.0):
        with pytest.raises(ValueError, match=r"power spread must be >= 0 dB \(a range: lo <= hi"):
            draw_powers(mask, bad, g)



def test_a_data_loader_pins_a_scene_batch(system, scene, monkeypatch):
    """torch's pin_memory returns an object without a pin_memory() method as it is, unpinned."""
    from torch.utils.data._utils.pin_memory import pin_memory

    b = simulate_batch(2, system, scene, torch.Generator().manual_seed(0))
    results = []

    def fake_pin(self, *args, **kwargs):  # pinning needs CUDA; record what it returned
        results.append(self.clone())
        return results[-1]

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    out = pin_memory(b)  # what a DataLoader with pin_memory=True does to each batch
    assert type(out) is type(b)
    for name in ("y", "H", "codes", "snr_db", "K", "azimuth", "elevation", "range_m",
                 "powers", "noise_var", "symbols"):
        got = getattr(out, name)
        assert any(got is r for r in results), name
        assert torch.equal(got, getattr(b, name)), name
    assert len(results) == 11


def test_a_scene_batch_shows_its_shapes_not_its_values(system):
    """A notebook cell showing 8 simulated scenes printed 38,000 characters of tensors (a
    persona); the repr names each field held with its shape and type."""
    sc = simulate_range(0, 8, system, SceneConfig(), split="test", snr_db=10.0)
    text = repr(sc)
    assert text.startswith("SceneBatch(8 scenes on cpu: y [8, 16, 16] complex64, H [8, 16, "
                           "144] complex64, codes [8, 16, 144] complex64, snr_db [8] float32")
    assert "range_m [8, 5] float32" in text and len(text) < 400, text
    from risloc.simulation.scenes import SceneBatch

    bare = SceneBatch(sc.y, sc.H, sc.codes, sc.snr_db)  # (a file without truth: no K)
    assert repr(bare).endswith("snr_db [8] float32)"), repr(bare)
