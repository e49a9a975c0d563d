"""The order head's features and fitting (risloc.pipeline.order)."""

import dataclasses
import math

import pytest
import torch

from risloc.config import SceneConfig
from risloc.core.params import Estimates, pack
from risloc.estimators.mlfit import MLFitConfig, ml_fit
from risloc.pipeline.order import (
    OrderFitConfig,
    OrderHead,
    RankerFitConfig,
    estimated_snr_db,
    fit_order_head,
    fit_source_ranker,
    n_features,
    n_source_inputs,
    order_features,
    order_head_from_state,
    order_head_state,
    prior_features,
    rank_sources,
    ranker_from_state,
    real_sources,
    source_inputs,
)
from risloc.simulation import simulate_range


@pytest.fixture(scope="module")
def fitted(system):
    """Nested ML fits of 10 dB scenes with K = 3, started from the truth and two junk slots."""
    sc = simulate_range(0, 6, system, SceneConfig(), seed=3, split="test", K=3, snr_db=10.0)
    theta = pack(sc.azimuth[:, :3], sc.elevation[:, :3], sc.range_m[:, :3])
    junk = torch.tensor([[0.9, 0.4, 0.3], [-0.9, -0.4, 1.2]]).expand(6, -1, -1)
    start = torch.cat([theta, junk], 1)
    cfg = MLFitConfig(repairs=0)
    return sc, start, cfg, ml_fit(sc.y, sc.H, sc.codes, start, system, cfg)


def test_features_are_finite_and_read_the_nested_costs(system, fitted):
    sc, _, _, fit = fitted
    logits = torch.randn(6, system.K_max)
    f = order_features(fit, sc.y, logits)
    assert f.shape == (6, n_features(system.K_max)) and bool(torch.isfinite(f).all())
    C = fit.costs
    torch.testing.assert_close(f[:, :5], torch.log(C[:, 1:] / C[:, :1]).float())
    # what the 3rd true source explains is far above the noise level; the 4th source only
    # fits noise (the best of the field of view: ~25-60 sigma^2, risloc.estimators.order)
    S = system.K_max
    assert bool((f[:, S + 2] > math.log(50.0)).all())
    assert bool((f[:, S + 3] < math.log(60.0)).all())
    torch.testing.assert_close(f[:, -S:], torch.log_softmax(logits, -1))


def test_features_do_not_depend_on_the_units_of_y_and_H(system, fitted):
    """A user's file has arbitrary units: scaling y or H changes no feature."""
    sc, start, cfg, fit = fitted
    logits = torch.randn(6, system.K_max)
    f = order_features(fit, sc.y, logits)
    for y, H in ((10 * sc.y, sc.H), (sc.y, 1e3 * sc.H)):
        g = order_features(ml_fit(y, H, sc.codes, start, system, cfg), y, logits)
        torch.testing.assert_close(f, g, rtol=0, atol=2e-3)


def _separable(n: int = 2000):
    gen = torch.Generator().manual_seed(0)
    K = torch.randint(1, 6, (n,), generator=gen)
    X = torch.randn(n, 8, generator=gen)
    X[:, 3] += 6.0 * K  # the class is readable from one feature (Bayes accuracy 0.995)
    return X, K


def test_fit_order_head_learns_a_separable_rule_reproducibly():
    X, K = _separable()
    k = torch.arange(1, 6)
    found_all = torch.minimum(k, K.unsqueeze(-1)).float()  # every source localizable
    cfg = OrderFitConfig(epochs=20)
    head = fit_order_head(X[:1500], K[:1500], found_all[:1500], 5, cfg)
    acc = (head.decide(X[1500:]) == K[1500:]).float().mean().item()
    assert acc > 0.95  # where every source is found, the F1 rule reports K
    out = head(X[1500:])
    assert torch.allclose(out.probabilities.sum(-1), torch.ones(500))
    assert float((out.detections - found_all[1500:]).abs().mean()) < 0.2
    again = fit_order_head(X[:1500], K[:1500], found_all[:1500], 5, cfg)
    assert torch.equal(head(X[:10]).detections, again(X[:10]).detections)
    back = order_head_from_state(order_head_state(head))
    assert torch.equal(back(X[:10]).probabilities, head(X[:10]).probabilities)
    assert back.balance == head.balance
    # the fit stage's repair margin the head was fitted on is stored with it
    assert order_head_state(head, 0.75)["repair_margin"] == 0.75
    # the features are standardised by the training set's moments, kept in the state (a
    # mutation review: the scale left at 1 passed, the separable features being O(1))
    for h in (head, back):
        assert torch.allclose(h.mean, X[:1500].mean(0)) and torch.allclose(
            h.std, X[:1500].std(0).clamp_min(1e-6))


def test_the_head_averages_its_members_and_loads_single_mlp_files():
    """The members are fitted from seeds seed, seed + 1, ...: member i of a five-member head
    is the one-member head of seed i, and the head's outputs are the members' means. A file
    written before members existed (one MLP under ``net.``) loads as a one-member head."""
    X, K = _separable()
    found_all = torch.minimum(torch.arange(1, 6), K.unsqueeze(-1)).float()
    cfg = OrderFitConfig(epochs=2, members=3)
    head = fit_order_head(X[:600], K[:600], found_all[:600], 5, cfg)
    singles = [fit_order_head(X[:600], K[:600], found_all[:600], 5,
                              OrderFitConfig(epochs=2, members=1, seed=i)) for i in range(3)]
    outs = [s(X[600:700]) for s in singles]
    assert all(torch.equal(head.raw(X[:5], i)[0], singles[i].raw(X[:5])[0]) for i in range(3))
    out = head(X[600:700])
    assert torch.allclose(out.probabilities, sum(o.probabilities for o in outs) / 3)
    assert torch.allclose(out.detections, sum(o.detections for o in outs) / 3)
    assert not torch.allclose(outs[0].probabilities, outs[1].probabilities)  # seeds differ
    old = order_head_state(singles[0])
    old.pop("members")
    old["state_dict"] = {k.replace("nets.0.", "net.", 1): v
                         for k, v in old["state_dict"].items()}
    back = order_head_from_state(old)
    assert len(back.nets) == 1
    assert torch.equal(back(X[:10]).probabilities, singles[0](X[:10]).probabilities)
    with pytest.raises(ValueError, match="members"):
        OrderHead(8, 5, members=0)


def test_the_decision_trades_K_accuracy_for_detections():
    """Where only the strongest source is ever placed right, the F1-optimal decision
    (balance 0) reports one source whatever K is; a large balance reports the most probable
    K; k_max caps both."""
    X, K = _separable()
    first_only = torch.ones(len(K), 5)  # one detection whatever k
    head = fit_order_head(X, K, first_only, 5, OrderFitConfig(epochs=20, balance=0.0))
    assert bool((head.decide(X[:200]) == 1).all())
    head.balance = 100.0
    assert (head.decide(X[:200]) == K[:200]).float().mean() > 0.95
    assert int(head.decide(X[:200], k_max=2).max()) <= 2
    # a balance per scene decides each scene as that scene's balance alone would
    per_scene = torch.where(torch.arange(200) % 2 == 0, 0.0, 100.0)
    mixed = head.decide(X[:200], balance=per_scene)
    head.balance = 0.0
    assert torch.equal(mixed[0::2], head.decide(X[:200])[0::2])
    head.balance = 100.0
    assert torch.equal(mixed[1::2], head.decide(X[:200])[1::2])


def test_the_snr_estimated_from_the_nested_costs(system, fitted):
    """p_y / sigma^2 - 1 in dB, with p_y = C_0 / (L M) and sigma^2 = C_S / (L (M - S)):
    exact on costs built from a known level, and near the truth on 10 dB scenes fitted
    from their true sources: above it by 0.8-1.5 dB (the 2 junk slots take some noise)."""
    L, M, S = 16, 16, 5
    p_y = torch.tensor([2.0, 11.0, 1.0 + 1e-3, 1.0 + 1e-6], dtype=torch.float64)
    sigma2 = torch.ones(4, dtype=torch.float64)
    costs = torch.zeros(4, S + 1, dtype=torch.float64)
    costs[:, 0], costs[:, S] = L * M * p_y, L * (M - S) * sigma2
    # (-60 dB: a mutation review's clamp of p_y / sigma^2 - 1 at 1e-3 passed at -30 dB)
    torch.testing.assert_close(estimated_snr_db(costs, L, M),
                               torch.tensor([0.0, 10.0, -30.0, -60.0], dtype=torch.float64))
    costs[:, S] = 0.0  # a perfect fit: a large finite SNR, not inf or NaN
    assert bool(torch.isfinite(estimated_snr_db(costs, L, M)).all())
    sc, _, _, fit = fitted
    est = estimated_snr_db(fit.costs, sc.y.shape[1], sc.y.shape[2])
    assert bool(((est > 9.5) & (est < 12.0)).all()), est


def test_fit_order_head_rejects_bad_input():
    X, K = torch.zeros(10, 4), torch.ones(10, dtype=torch.int64)
    D = torch.ones(10, 5)
    with pytest.raises(ValueError, match="len"):
        fit_order_head(X, K[:5], D, 5)
    with pytest.raises(ValueError, match="len"):  # fewer features than K and detections
        fit_order_head(X[:5], K, D, 5)
    with pytest.raises(ValueError, match="detections"):
        fit_order_head(X, K, D[:, :3], 5)
    with pytest.raises(ValueError, match="1..5"):
        fit_order_head(X, K * 6, D, 5)
    with pytest.raises(ValueError, match="1..5"):  # K = 0 is no class of the head
        fit_order_head(X, K * 0, D, 5)
    X[0, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_order_head(X, K, D, 5)


def test_truncate_keeps_the_strongest_slots():
    nan = math.nan
    est = Estimates(torch.tensor([3, 1]), torch.tensor([[1.0, 2.0, 3.0], [4.0, nan, nan]]),
                    torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3))
    t = est.truncate(torch.tensor([2, 3]))
    assert t.K.tolist() == [2, 1]  # never more than were found
    assert t.azimuth[0, :2].tolist() == [1.0, 2.0] and math.isnan(t.azimuth[0, 2])
    assert math.isnan(t.range_m[1, 1])


def test_the_heads_scenes_replace_fields_in_the_recipes_mixture():
    from types import SimpleNamespace

    from risloc.config import SceneKind
    from risloc.inference.recipe import InferenceRecipe
    from risloc.pipeline.calibrate import order_scenes

    recipe = InferenceRecipe(scene=SceneConfig(power_spread_db=(0.0, 15.0)), data={
        "scene_mix": (SceneKind(name="near", share=0.25, scene={"range_m": (0.5, 1.5)}),
                      SceneKind(name="equal", share=0.25, scene={"power_spread_db": (0, 0)}))})
    pipe = SimpleNamespace(recipe=recipe)
    assert order_scenes(pipe) == recipe.scenes()
    mix = order_scenes(pipe, {"power_spread_db": [0, 25]})
    assert [share for share, _ in mix] == [0.5, 0.25, 0.25]
    # the base scene and the kinds that do not set the field get it; the others keep theirs
    assert [sc.power_spread_db for _, sc in mix] == [(0, 25), (0, 25), (0, 0)]
    assert mix[1][1].range_m == (0.5, 1.5)
    # mix False: the base scene alone, with the field replaced
    assert order_scenes(pipe, {"power_spread_db": [0, 25]}, mix=False) == mix[0][1]
    with pytest.raises(ValueError, match="order scene.*bogus"):
        order_scenes(pipe, {"bogus": 1})
    # K beyond the model's system: refused here, before fit-order's progress bar (a review)
    with pytest.raises(ValueError, match=r"order scene\.K=9 exceeds system\.K_max=5"):
        order_scenes(pipe, {"K": 9})


def test_nested_detections_count_the_true_sources_among_the_first_k():
    """The true sources first, then far-off ones: reporting the first k detects min(k, K)
    (a mutation review: no test called it)."""
    from risloc.pipeline.order import nested_detections

    nan = float("nan")
    az = torch.tensor([[0.1, -0.3, nan, nan], [0.5, nan, nan, nan]], dtype=torch.float64)
    el = torch.tensor([[0.0, 0.2, nan, nan], [-0.1, nan, nan, nan]], dtype=torch.float64)
    r = torch.tensor([[2.0, 4.0, nan, nan], [3.0, nan, nan, nan]], dtype=torch.float64)
    K = torch.tensor([2, 1])
    far = torch.tensor([-1.0, -0.5, 0.3])  # 50+ deg from every true source
    theta = torch.stack([torch.stack([torch.tensor([0.1, 0.0, 0.5]),
                                      torch.tensor([-0.3, 0.2, 0.25]), far, far]),
                         torch.stack([torch.tensor([0.5, -0.1, 1 / 3]), far, far, far])])
    got = nested_detections(theta, az, el, r, K)
    assert got.tolist() == [[1, 2, 2, 2], [1, 1, 1, 1]]


def test_the_decision_is_the_documented_rule_and_k_max_only_caps_it(monkeypatch):
    """OrderHead.decide: K = argmax_k 2 E[D_k] - F k + balance log P(K = k), F = max_k
    2 E[D_k] / (k + E[K]), on given probabilities and detections; k_max caps that K
    (a mutation review: E[K] or the F k term off by one, F the min, the last k left out
    and a cap of k_max - 1 all passed)."""
    from risloc.pipeline.order import OrderOutput

    gen = torch.Generator().manual_seed(3)
    B, K_max = 400, 5
    P = torch.softmax(2 * torch.randn(B, K_max, generator=gen), -1)
    det = torch.rand(B, K_max, generator=gen).cumsum(-1) * 0.6  # grows with k
    head = OrderHead(4, K_max)
    monkeypatch.setattr(head, "forward", lambda x: OrderOutput(P, det))
    k = torch.arange(1, K_max + 1, dtype=torch.float32)
    F = (2 * det / (k + (P * k).sum(-1, True))).amax(-1, keepdim=True)
    x = torch.zeros(B, 4)
    for balance in (0.0, 0.25, 3.0):
        want = (2 * det - F * k + balance * torch.log(P)).argmax(-1) + 1
        assert torch.equal(head.decide(x, balance=torch.full((B,), balance)), want)
        assert len(set(want.tolist())) == K_max  # every K is decided somewhere
        for k_max in (1, 2, 4, 5):
            got = head.decide(x, k_max=k_max, balance=torch.full((B,), balance))
            assert torch.equal(got, want.clamp_max(k_max))


def test_the_power_feature_is_the_sources_share_of_the_measured_power(system):
    """log(p_k / P_y), P_y = mean |y|^2: a noise-free single source fitted at its truth
    holds all the measured power (feature 0), the junk slots next to none (a mutation
    review: P_y summed over snapshots and antennas, or the sources' powers reversed,
    passed)."""
    sc = simulate_range(0, 3, system, SceneConfig(), seed=5, split="test", K=1,
                        snr_db=200.0)
    truth = pack(sc.azimuth[:, :1], sc.elevation[:, :1], sc.range_m[:, :1])
    junk = torch.tensor([[0.9, 0.4, 0.3], [-0.9, -0.4, 1.2], [0.5, -0.3, 0.2],
                         [-0.5, 0.3, 0.6]]).expand(3, -1, -1)
    fit = ml_fit(sc.y, sc.H, sc.codes, torch.cat([truth, junk], 1), system,
                 MLFitConfig(repairs=0))
    S = system.K_max
    power = order_features(fit, sc.y, torch.zeros(3, S))[:, 2 * S:3 * S]
    torch.testing.assert_close(power[:, 0], torch.zeros(3), rtol=0, atol=1e-3)
    assert bool((power[:, 1:] < -10).all()), power


def test_the_heads_training_data_are_the_pipelines_features_of_its_own_split():
    """fit-order's data: the features the pipeline computes at inference (order_stages) of
    training-split scenes of stream ORDER_STREAM (never the network's stream, nor a
    validation or test scene), with their true K; computed batch by batch, each batch on
    its own scenes (a mutation review: every batch read the first batch's scenes, and the
    validation split or the network's stream in place of the head's, passed)."""
    from risloc.pipeline.calibrate import (
        ORDER_STREAM,
        order_dataset,
        order_stages,
        training_data,
    )
    from risloc.pipeline.learned import load_learned_pipeline

    pipe = load_learned_pipeline(order_head=False)
    r = pipe.recipe
    assert ORDER_STREAM != 1  # the network's stream (data.stream's default)
    feats, K, *_ = training_data(pipe, 3, workers=1)
    sc = simulate_range(0, 3, r.system, r.scenes(), seed=r.data.seed, split="train",
                        stream=ORDER_STREAM)
    with torch.no_grad():
        fwd, fit, whole = order_stages(pipe, sc)
    assert torch.equal(K, sc.K)
    torch.testing.assert_close(feats, whole, rtol=0, atol=1e-3)
    # on the scaled inputs, as the Localizer runs it: a file's units change no feature, not
    # even where |y|^2 overflows float32 (a mutation review: the scaling left out passed)
    big = dataclasses.replace(sc, y=sc.y * 1e25, H=sc.H * 1e-20)
    with torch.no_grad():
        torch.testing.assert_close(order_stages(pipe, big)[2], whole, rtol=0, atol=1e-3)
    chunked, theta, prior = order_dataset(pipe, sc, batch=2, workers=1)
    assert theta.shape == (3, r.system.K_max, 3)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-3)
    torch.testing.assert_close(prior, prior_features(fwd.out, fit.theta), rtol=0, atol=1e-3)


def test_fit_order_fits_the_head_on_the_fits_of_the_margin_it_stores(tmp_path, monkeypatch):
    """The head stored with ``margin`` reads, in the pipeline, nested fits made with that
    repair margin: its training features must come from a fit stage with the same margin
    (a mutation review: the margin stored but the features made with 0 passed)."""
    import risloc.pipeline.calibrate as calibrate
    from risloc.pipeline.learned import DEFAULT_MODEL

    seen = []

    def stop(pipe, *a, **k):
        seen.append(pipe.fit_config.repair_margin)
        raise KeyboardInterrupt  # nothing more is needed

    monkeypatch.setattr(calibrate, "training_data", stop)
    with pytest.raises(KeyboardInterrupt):
        calibrate.fit_order(DEFAULT_MODEL, tmp_path / "o.pt", n_scenes=64, margin=0.75)
    assert seen == [0.75] and not (tmp_path / "o.pt").exists()


def test_fit_order_refuses_too_few_scenes_and_keeps_the_old_card_when_saving_fails(
        tmp_path, monkeypatch):
    """Fewer than MIN_ORDER_SCENES training scenes are refused before any work; a save
    that fails leaves the model at ``out`` as it was and so its card (a mutation review:
    the guard and the card's restore left out both passed)."""
    import risloc.pipeline.calibrate as calibrate
    from risloc.pipeline.learned import DEFAULT_MODEL
    from risloc.pipeline.order import MIN_ORDER_SCENES

    with pytest.raises(ValueError, match=f">= {MIN_ORDER_SCENES}"):
        calibrate.fit_order(DEFAULT_MODEL, tmp_path / "o.pt", n_scenes=MIN_ORDER_SCENES - 1)
    card = tmp_path / "o.json"
    card.write_text('{"old": 1}')
    monkeypatch.setattr(calibrate, "training_data", lambda *a, **k: calibrate.OrderData(
        *[None] * 5))
    monkeypatch.setattr(calibrate, "fit_order_head", lambda *a, **k: None)
    monkeypatch.setattr(calibrate, "fit_source_ranker", lambda *a, **k: None)
    monkeypatch.setattr(calibrate, "order_report", lambda *a, **k: [])
    monkeypatch.setattr(calibrate, "order_head_state", lambda *a, **k: {})

    def fail(path, state):
        raise OSError("disk full")

    monkeypatch.setattr(calibrate, "save_checkpoint", fail)
    with pytest.raises(OSError, match="disk full"):
        calibrate.fit_order(DEFAULT_MODEL, tmp_path / "o.pt", n_scenes=MIN_ORDER_SCENES)
    assert card.read_text() == '{"old": 1}' and not (tmp_path / "o.pt").exists()


def test_the_head_reads_its_features_standardised():
    """The head standardises its inputs by the training set's moments, so a fit on
    features in other units (scaled and shifted per feature) gives the same head outputs
    on the same scenes (a mutation review: the features centred but not scaled passed)."""
    X, K = _separable(600)
    found_all = torch.minimum(torch.arange(1, 6), K.unsqueeze(-1)).float()
    cfg = OrderFitConfig(epochs=3, members=1)
    scale = torch.logspace(-3, 3, X.shape[1])
    shift = torch.linspace(-50.0, 50.0, X.shape[1])
    a = fit_order_head(X, K, found_all, 5, cfg)
    b = fit_order_head(X * scale + shift, K, found_all, 5, cfg)
    pa, pb = a(X[:100]).probabilities, b(X[:100] * scale + shift).probabilities
    torch.testing.assert_close(pa, pb, rtol=0, atol=1e-3)


def test_order_dataset_reports_each_batch_of_its_own_scenes(monkeypatch):
    """order_dataset: each batch's features from that batch's scenes, and on_batch told the
    number of scenes of each batch, the last one short (fit-order's progress bar counts
    scenes: n_progress_items)."""
    from types import SimpleNamespace

    import risloc.pipeline.calibrate as calibrate

    def stages(pipe, scenes):
        return (SimpleNamespace(out=-scenes), SimpleNamespace(theta=scenes.view(-1, 1, 1)),
                scenes.unsqueeze(1))

    monkeypatch.setattr(calibrate, "order_stages", stages)
    monkeypatch.setattr(calibrate, "prior_features", lambda out, theta: out.unsqueeze(1))
    told = []
    feats, theta, prior = calibrate.order_dataset(None, torch.arange(5.0), batch=2, workers=1,
                                                  on_batch=told.append)
    assert told == [2, 2, 1]
    assert feats[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and theta.shape == (5, 1, 1)
    assert prior[:, 0].tolist() == [-0.0, -1.0, -2.0, -3.0, -4.0]


def test_the_heads_training_data_are_simulated_from_the_scenes_asked_for(monkeypatch):
    """training_data(scenes=...) simulates those scenes (fit-order's --scene / --no-mix),
    the recipe's only where none are given."""
    from types import SimpleNamespace

    import risloc.pipeline.calibrate as calibrate

    asked = []

    def simulate(lo, hi, system, scenes, **kw):
        asked.append((lo, hi, scenes, kw["split"], kw["stream"]))
        return SimpleNamespace(K=torch.ones(hi - lo, dtype=torch.int64), azimuth="az",
                               elevation="el", range_m="r")

    def detections(theta, az, el, r, K):  # the truth passed in its order (a mutation
        assert (az, el, r) == ("az", "el", "r")  # review: azimuth and elevation swapped,
        return torch.arange(5.0).expand(theta.shape[0], 5)  # or k reversed, passed)

    monkeypatch.setattr(calibrate, "simulate_range", simulate)
    monkeypatch.setattr(calibrate, "order_dataset", lambda pipe, sc, **kw: (
        torch.zeros(len(sc.K), 20), torch.zeros(len(sc.K), 5, 3), torch.ones(len(sc.K), 15)))
    monkeypatch.setattr(calibrate, "nested_detections", detections)
    monkeypatch.setattr(calibrate, "real_sources", lambda theta, az, el, r, K: (
        (az, el, r) == ("az", "el", "r")) * torch.ones(theta.shape[:2], dtype=torch.bool))
    pipe = SimpleNamespace(recipe=SimpleNamespace(system=None, scenes=lambda: "recipe's",
                                                  data=SimpleNamespace(seed=0)))
    feats, K, det, sources, real = calibrate.training_data(pipe, 3, scenes="mine")
    assert feats.shape == (3, 20) and K.shape == (3,)
    assert det.tolist() == [[0.0, 1.0, 2.0, 3.0, 4.0]] * 3
    assert sources.shape == (3, 5, 20 + 5 + 5) and bool(real.all())
    torch.testing.assert_close(sources[:, :, 22:25], torch.ones(3, 5, 3))  # the prior's
    assert asked == [(0, 3, "mine", "train", calibrate.ORDER_STREAM)]
    calibrate.training_data(pipe, 3)
    assert asked[1][2] == "recipe's"


def test_the_order_report_scores_both_deciders_per_snr_and_spread(monkeypatch):
    """order_report: one row per SNR of REPORT_SNRS and spread (0, REPORT_SPREAD_DB), each
    on validation scenes of stream REPORT_STREAM + 16 i at that SNR; the residual rule reads
    the costs with the scene's (L, M), the head decides with the pipeline's head_balance;
    K accuracy = mean(K == true K), F1 = 2 found / (sum K + sum true K), found = the true
    sources among the first K nested ones; on_batch counts n_progress_items' report part."""
    from types import SimpleNamespace

    import risloc.estimators.order as order_rule
    import risloc.pipeline.calibrate as calibrate

    K_true = torch.tensor([1, 2, 3, 3])
    L, M = 6, 4
    sims = []

    class Scenes(SimpleNamespace):
        def __len__(self):
            return 4

        def __getitem__(self, idx):
            return self

    def simulate(lo, hi, system, scene, **kw):
        sims.append((scene.power_spread_db, kw["split"], kw["stream"], kw["snr_db"]))
        return Scenes(K=K_true, y=torch.zeros(4, L, M), azimuth="az", elevation="el",
                      range_m="r")

    monkeypatch.setattr(calibrate, "simulate_range", simulate)
    monkeypatch.setattr(calibrate, "order_stages", lambda pipe, sc: (
        None, SimpleNamespace(costs="costs", theta=torch.zeros(4, 5, 3)), "feats"))
    rule_args = []
    monkeypatch.setattr(order_rule, "residual_order", lambda c, a, b: rule_args.append(
        (c, a, b)) or torch.ones(4, dtype=torch.int64))  # always 1
    # perfect nested fits: the first k report min(k, K) true sources
    def detections(theta, az, el, r, K):  # (a mutation review: az and el swapped passed)
        assert (az, el, r) == ("az", "el", "r")
        return torch.minimum(torch.arange(1, 6), K.unsqueeze(1)).float()

    monkeypatch.setattr(calibrate, "nested_detections", detections)
    balances = []
    head = SimpleNamespace(decide=lambda x, balance=None: balances.append(balance) or
                           torch.tensor([1, 2, 3, 4]))  # one too many in the last scene
    pipe = SimpleNamespace(recipe=SimpleNamespace(scene=SceneConfig(), system=None,
                                                  data=SimpleNamespace(seed=0)),
                           head_balance=lambda fit, y, h: "balance",
                           ranking=lambda fwd, fit, y, x, ranker: None)  # (no ranker)
    told = []
    rows = calibrate.order_report(pipe, head, 4, workers=1, on_batch=told.append)
    n_snr = len(calibrate.REPORT_SNRS)
    assert sum(told) == calibrate.n_progress_items(0, 4)
    assert [(r["snr_db"], r["power_spread_db"]) for r in rows] == [
        (s, p) for s in calibrate.REPORT_SNRS for p in (0.0, calibrate.REPORT_SPREAD_DB)]
    assert sims == [(p, "validation", calibrate.REPORT_STREAM + 16 * i, s)
                    for i, s in enumerate(calibrate.REPORT_SNRS)
                    for p in (0.0, calibrate.REPORT_SPREAD_DB)]
    assert rule_args == [("costs", L, M)] * 2 * n_snr and balances == ["balance"] * 2 * n_snr
    for r in rows:
        assert r["scenes"] == 4
        assert r["K_accuracy_residual_rule"] == 0.25 and r["K_accuracy_order_head"] == 0.75
        assert r["f1_residual_rule"] == pytest.approx(2 * 4 / (4 + 9))
        assert r["f1_order_head"] == pytest.approx(2 * 9 / (10 + 9))


def test_fit_order_reports_a_recipe_whose_power_spread_is_one_number(tmp_path, monkeypatch):
    """A recipe's power_spread_db may be one spread for every scene (SceneConfig's default
    0.0): fit-order's report names it, after the whole fit, instead of failing there on
    ``tuple(6.0)`` (a bug found in a mutation review)."""
    import risloc.pipeline.calibrate as calibrate
    from risloc.pipeline.learned import DEFAULT_MODEL, load_learned_pipeline

    real = calibrate.load_learned_pipeline

    def load(path, order_head=True):
        pipe = real(path, order_head=order_head)
        pipe.recipe = pipe.recipe.model_copy(update={"scene": SceneConfig(power_spread_db=6.0)})
        return pipe

    head = load_learned_pipeline().order_head
    monkeypatch.setattr(calibrate, "load_learned_pipeline", load)
    monkeypatch.setattr(calibrate, "training_data", lambda *a, **k: calibrate.OrderData(
        *[None] * 5))
    monkeypatch.setattr(calibrate, "fit_order_head", lambda *a, **k: head)
    monkeypatch.setattr(calibrate, "fit_source_ranker", lambda *a, **k: None)
    monkeypatch.setattr(calibrate, "order_report", lambda *a, **k: [])
    report = calibrate.fit_order(DEFAULT_MODEL, tmp_path / "o.pt", n_scenes=64)
    assert "the recipe's scenes (power spread 6.0 dB)" in report["training_split"]


def test_a_member_is_its_seeds_adamw_fit_with_softplus_detections():
    """Member i of the head is written out: initialised and shuffled from seed + i, AdamW
    on cross-entropy plus squared error of the detections on standardised features, its
    detections the softplus of its second K_max outputs (a mutation review: one shuffling
    seed for all members, and ReLU detections, passed)."""
    from risloc.pipeline.order import _member

    X, K = _separable(300)
    found = torch.minimum(torch.arange(1, 6), K.unsqueeze(-1)).float()
    cfg = OrderFitConfig(epochs=2, members=2, seed=4, batch=64)
    head = fit_order_head(X, K, found, 5, cfg)
    Xs = (X - X.mean(0)) / X.std(0).clamp_min(1e-6)
    i = 1
    torch.manual_seed(cfg.seed + i)
    net = _member(8, cfg.hidden, 5)
    gen = torch.Generator().manual_seed(cfg.seed + i)
    opt = torch.optim.AdamW(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.epochs):
        perm = torch.randperm(300, generator=gen)
        for lo in range(0, 300, cfg.batch):
            idx = perm[lo:lo + cfg.batch]
            out = net(Xs[idx])
            loss = torch.nn.functional.cross_entropy(out[:, :5], K[idx] - 1) + \
                torch.nn.functional.mse_loss(torch.nn.functional.softplus(out[:, 5:]),
                                             found[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        want = net(Xs[:20])
        logits, det = head.raw(X[:20], i)
    torch.testing.assert_close(logits, want[:, :5], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(det, torch.nn.functional.softplus(want[:, 5:]), rtol=1e-5,
                               atol=1e-6)
    assert float((det - want[:, 5:].clamp_min(0)).abs().max()) > 1e-3  # (ReLU differs)


def test_fit_order_fits_the_head_on_the_scenes_asked_for_and_cards_its_report(
        tmp_path, monkeypatch):
    """fit_order hands training_data the scenes of ``scene`` and ``mix`` (a recipe with a
    scene mixture: --no-mix its base scene alone), stores the head with its margin, and
    writes the report into the card beside ``out`` (a mutation review: --scene and --no-mix
    not passed on to the training data, and the card left without the head's report,
    passed the fast tests)."""
    import json

    import risloc.pipeline.calibrate as calibrate
    from risloc.config import SceneKind
    from risloc.pipeline.learned import DEFAULT_MODEL, load_learned_pipeline

    real = calibrate.load_learned_pipeline
    near = SceneKind(name="near", share=0.5, scene={"range_m": (0.5, 1.5)})

    def load(path, order_head=True):
        pipe = real(path, order_head=order_head)
        data = pipe.recipe.data.model_copy(update={"scene_mix": (near,)})
        pipe.recipe = pipe.recipe.model_copy(update={"data": data})
        return pipe

    seen = {}

    def training_data(pipe, n, workers=None, on_batch=None, scenes=None):
        seen.update(pipe=pipe, scenes=scenes)
        return calibrate.OrderData(*[None] * 5)

    head = load_learned_pipeline().order_head
    monkeypatch.setattr(calibrate, "load_learned_pipeline", load)
    monkeypatch.setattr(calibrate, "training_data", training_data)
    monkeypatch.setattr(calibrate, "fit_order_head", lambda *a, **k: head)
    monkeypatch.setattr(calibrate, "fit_source_ranker", lambda *a, **k: None)
    monkeypatch.setattr(calibrate, "order_report", lambda *a, **k: [])
    scene = {"power_spread_db": [0, 25]}
    for mix in (False, True):
        out = tmp_path / f"{mix}.pt"
        report = calibrate.fit_order(DEFAULT_MODEL, out, n_scenes=64, scene=scene,
                                     margin=0.25, mix=mix)
        assert seen["scenes"] == calibrate.order_scenes(seen["pipe"], scene, mix)
        assert isinstance(seen["scenes"], SceneConfig) is not mix  # a mixture only with mix
        card = json.loads(out.with_suffix(".json").read_text())
        assert card["order_head"] == json.loads(json.dumps(report))
        assert load_learned_pipeline(out).fit_config.repair_margin == 0.25


def test_a_head_keeps_its_balance_and_reads_a_constant_feature():
    """A stored head keeps its own balance, not the default one; a feature constant over
    the training set (standard deviation 0) is standardised by the floor 1e-6, not read as
    NaN (a mutation review: the balance stored as 0.25 and the unclamped std passed)."""
    head = OrderHead(4, 5, balance=0.7)
    assert order_head_from_state(order_head_state(head)).balance == 0.7
    X, K = _separable(300)
    X[:, 0] = 3.0
    found = torch.minimum(torch.arange(1, 6), K.unsqueeze(-1)).float()
    head = fit_order_head(X, K, found, 5, OrderFitConfig(epochs=1, members=1))
    out = head(X[:20])
    assert bool(torch.isfinite(out.probabilities).all() & torch.isfinite(out.detections).all())


def test_the_decision_reads_a_zero_probability_as_a_small_one(monkeypatch):
    """A K of probability 0 (a float32 softmax underflows) with balance 0 is the F1 rule
    alone, not 0 * log 0 = NaN taken as the best score (a mutation review: the clamp of P
    left out passed)."""
    from risloc.pipeline.order import OrderOutput

    P = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    det = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 3.0, 3.0]])
    head = OrderHead(4, 5, balance=0.0)
    monkeypatch.setattr(head, "forward", lambda x: OrderOutput(P, det))
    assert head.decide(torch.zeros(2, 4)).tolist() == [1, 3]


def test_fit_order_drops_a_stale_card_at_out_and_reports_its_scene_mix(tmp_path, monkeypatch):
    """A checkpoint without a card of its own leaves none at ``out``: an older card there
    described another head; the report records ``mix`` as given (a mutation review: the
    stale card kept, and the flag inverted, both passed)."""
    import risloc.pipeline.calibrate as calibrate
    from risloc.pipeline.learned import DEFAULT_MODEL, load_learned_pipeline

    head = load_learned_pipeline().order_head
    monkeypatch.setattr(calibrate, "training_data", lambda *a, **k: calibrate.OrderData(
        *[None] * 5))
    monkeypatch.setattr(calibrate, "fit_order_head", lambda *a, **k: head)
    monkeypatch.setattr(calibrate, "fit_source_ranker", lambda *a, **k: None)
    monkeypatch.setattr(calibrate, "order_report", lambda *a, **k: [])
    monkeypatch.setattr(calibrate, "save_checkpoint", lambda path, state: None)
    monkeypatch.setattr(calibrate, "model_card_path",
                        lambda p: tmp_path / f"card-{p.name}.json")
    stale = tmp_path / "card-o.pt.json"
    stale.write_text('{"old": 1}')
    report = calibrate.fit_order(DEFAULT_MODEL, tmp_path / "o.pt", n_scenes=64, mix=False)
    assert not stale.exists() and report["scene_mix"] is False
    assert "scene_mix" not in report["training_split"]  # the recipe has no mixture
    # a recipe with a mixture: the base scene alone is said so only where mix is False
    # (a mutation review: the note's condition inverted passed)
    load = calibrate.load_learned_pipeline

    def with_mix(*a, **k):
        pipe = load(*a, **k)
        data = type(pipe.recipe.data).model_validate({
            **pipe.recipe.data.model_dump(),
            "scene_mix": [{"share": 0.5, "scene": {"range_m": (0.5, 1.5)}}]})
        pipe.recipe = pipe.recipe.model_copy(update={"data": data})
        return pipe

    monkeypatch.setattr(calibrate, "load_learned_pipeline", with_mix)
    for mix in (False, True):
        report = calibrate.fit_order(DEFAULT_MODEL, tmp_path / "o.pt", n_scenes=64, mix=mix)
        assert ("without its scene_mix kinds" in report["training_split"]) is not mix, report


def test_the_decision_reads_the_log_of_a_small_probability_unclamped(monkeypatch):
    """balance * log P(K = k) for a P of 1e-6 is the log of 1e-6, not that of a larger clamp
    (a mutation review: a clamp at 1e-3 passed): the F1 rule alone would report 2 sources,
    the K head's 1e-6 for K = 2 holds it to 1 at balance 0.25."""
    from risloc.pipeline.order import OrderOutput

    P = torch.tensor([[1 - 4e-6, 1e-6, 1e-6, 1e-6, 1e-6]], dtype=torch.float64)
    det = torch.tensor([[0.0, 2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    head = OrderHead(4, 5, balance=0.25)
    monkeypatch.setattr(head, "forward", lambda x: OrderOutput(P, det))
    assert head.decide(torch.zeros(1, 4)).tolist() == [1]
    assert head.decide(torch.zeros(1, 4), balance=torch.zeros(1)).tolist() == [2]


def test_prior_features_read_the_network_at_each_nested_source():
    """prior_features (the source ranker's view of the network): the heat-map logit of the
    grid cell nearest each source, the confidence of the nearest slot and the angle to it;
    a source off by a third of a cell reads its own cell."""
    from types import SimpleNamespace

    grid = SimpleNamespace(azimuth=torch.linspace(-1, 1, 5),
                           elevation=torch.linspace(-0.5, 0.5, 3),
                           inv_range=torch.linspace(0.1, 0.5, 2))
    heat = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    out = SimpleNamespace(
        grid=grid, heatmap=heat, slot_azimuth=torch.tensor([[0.5, -1.0]]),
        slot_elevation=torch.tensor([[0.0, 0.5]]), slot_confidence=torch.tensor([[0.8, 0.3]]))
    theta = torch.tensor([[[0.5 + 0.5 / 3, 0.0, 0.5], [-1.0, 0.5 - 0.5 / 3, 0.1]]],
                         dtype=torch.float64)  # (the fits' float64 read as the map's)
    f = prior_features(out, theta)
    assert f.dtype == torch.float32
    assert f[0, :2].tolist() == [heat[0, 1, 1, 3].item(), heat[0, 0, 2, 0].item()]
    torch.testing.assert_close(f[0, 2:4], torch.logit(torch.tensor([0.8, 0.3])))
    angles = torch.tensor([math.degrees(0.5 / 3), math.degrees(0.5 / 3)])
    torch.testing.assert_close(f[0, 4:], torch.log(angles + 0.05), rtol=1e-4, atol=0)


def test_real_sources_marks_the_nested_sources_paired_with_a_true_one():
    """The ranker's target: a nested source is real when the Hungarian pairing of all K_max
    within the gate pairs it with a true source, whatever its place."""
    deg = math.pi / 180
    theta = torch.tensor([[[-30 * deg, 0.0, 0.5], [50 * deg, 20 * deg, 0.25],
                           [10 * deg, 5 * deg, 1 / 3]]])
    real = real_sources(theta, torch.tensor([[10 * deg, -30 * deg]], dtype=torch.float64),
                        torch.tensor([[5 * deg, 0.0]], dtype=torch.float64),
                        torch.tensor([[3.0, 2.0]], dtype=torch.float64), torch.tensor([2]))
    assert real.tolist() == [[True, False, True]]


def test_source_inputs_give_each_source_the_scene_its_own_columns_and_its_place():
    """[B, K_max, F + 5 + K_max]: the scene's features, the source's likelihood gain and
    power (feature blocks 2 and 3), its three prior features, one-hot k."""
    B, K_max = 2, 5
    f = torch.arange(B * 4 * K_max, dtype=torch.float32).reshape(B, 4 * K_max)
    prior = -torch.arange(B * 3 * K_max, dtype=torch.float32).reshape(B, 3 * K_max)
    x = source_inputs(f, prior)
    assert x.shape == (B, K_max, 4 * K_max + 5 + K_max)
    for k in range(K_max):
        assert torch.equal(x[:, k, :4 * K_max], f)
        want = torch.stack([f[:, K_max + k], f[:, 2 * K_max + k], prior[:, k],
                            prior[:, K_max + k], prior[:, 2 * K_max + k]], -1)
        assert torch.equal(x[:, k, 4 * K_max:4 * K_max + 5], want)
        assert x[0, k, 4 * K_max + 5:].tolist() == torch.eye(K_max)[k].tolist()


def _realness_data(n: int = 1500):
    """Sources whose realness one input column reads (with noise: not every source is
    ranked right), the others noise."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, n_source_inputs(5), generator=gen)  # (a K_max = 5 head's width)
    real = (x[:, :, 2] + 0.3 * torch.randn(n, 5, generator=gen)) > 0.5
    return 10 * x + 3, real  # (in other units: the ranker standardises)


def test_the_source_ranker_learns_which_sources_are_real_reproducibly():
    x, real = _realness_data()
    cfg = RankerFitConfig(epochs=15)
    ranker = fit_source_ranker(x[:1000], real[:1000], cfg)
    p = ranker(x[1000:])
    assert ((p > 0.5) == real[1000:]).float().mean() > 0.9
    order = ranker.rank(x[1000:])
    assert torch.equal(order, p.sort(dim=-1, descending=True, stable=True).indices)
    # the ranked sources: the real ones first, in nearly every scene
    first = real[1000:].gather(1, order)
    assert (first[:, :-1] >= first[:, 1:]).all(-1).float().mean() > 0.8
    theta = torch.arange(500 * 5 * 3.0).reshape(500, 5, 3)
    assert torch.equal(rank_sources(theta, order)[:, :, 0], theta[:, :, 0].gather(1, order))
    again = fit_source_ranker(x[:1000], real[:1000], cfg)
    torch.testing.assert_close(again(x[1000:]), p, rtol=0, atol=0)
    # a source whose inputs are not finite is ranked last, not first (sort puts NaN first)
    nan = x[1000:1002].clone()
    nan[:, 1, 0] = float("nan")
    assert ranker.rank(nan)[:, -1].tolist() == [1, 1]


def test_the_source_ranker_is_stored_with_the_head_and_refuses_bad_data():
    x, real = _realness_data(300)
    ranker = fit_source_ranker(x, real, RankerFitConfig(epochs=1, hidden=8))
    head = OrderHead(4, 5)
    state = order_head_state(head, 0.0, ranker)
    back = ranker_from_state(state)
    assert back.hidden == 8 and torch.equal(back(x[:20]), ranker(x[:20]))
    assert ranker_from_state(order_head_state(head)) is None  # a head without one
    with pytest.raises(ValueError, match="reads 30 inputs per source, the pipeline gives 25"):
        ranker_from_state(order_head_state(OrderHead(4, 4), 0.0, ranker))  # another K_max
    with pytest.raises(ValueError, match=r"real \[S, K_max\]"):
        fit_source_ranker(x, real[:, :4])
    bad = x.clone()
    bad[3, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fit_source_ranker(bad, real)


def test_the_order_report_scores_the_head_on_the_sources_its_ranker_reports():
    """order_report with a ranker: the head's K as without it (K accuracy the same), its F1
    counted on the ranked sources (a ranker reversing the nested order reports the last K
    and finds fewer), the residual rule's on the nested order."""
    from risloc.pipeline.calibrate import order_report
    from risloc.pipeline.learned import load_learned_pipeline

    pipe = load_learned_pipeline()

    class Reverse(torch.nn.Module):
        def rank(self, inputs):
            return torch.arange(inputs.shape[1] - 1, -1, -1).expand(inputs.shape[0], -1)

    nested = order_report(pipe, pipe.order_head, 4, workers=1)
    reverse = order_report(pipe, pipe.order_head, 4, workers=1, ranker=Reverse())
    for a, b in zip(nested, reverse, strict=True):
        assert a["K_accuracy_order_head"] == b["K_accuracy_order_head"]
        assert a["f1_residual_rule"] == b["f1_residual_rule"]
    assert sum(b["f1_order_head"] for b in reverse) < sum(a["f1_order_head"] for a in nested)


def test_fit_order_can_keep_the_head_and_fit_the_ranker_alone(tmp_path, monkeypatch):
    """keep_head: the model's head stored unchanged (its K decisions too), the ranker fitted
    and stored with it, the report saying where the kept head was fitted; refused by name
    where there is no head to keep, its margin differs or no ranker is to be fitted."""
    import risloc.pipeline.calibrate as calibrate
    from risloc.inference.checkpoint import load_checkpoint, save_checkpoint
    from risloc.pipeline.learned import DEFAULT_MODEL

    x, real = _realness_data(64)
    ranker = fit_source_ranker(x, real, RankerFitConfig(epochs=1, hidden=8))
    monkeypatch.setattr(calibrate, "training_data", lambda *a, **k: calibrate.OrderData(
        None, None, None, x, real))
    monkeypatch.setattr(calibrate, "fit_order_head", lambda *a, **k: pytest.fail("refitted"))
    monkeypatch.setattr(calibrate, "fit_source_ranker", lambda *a, **k: ranker)
    monkeypatch.setattr(calibrate, "order_report", lambda *a, **k: [])
    out = tmp_path / "m.pt"
    report = calibrate.fit_order(DEFAULT_MODEL, out, n_scenes=64, keep_head=True)
    old, new = load_checkpoint(DEFAULT_MODEL), load_checkpoint(out)
    for k, v in old["order_head"]["state_dict"].items():
        assert torch.equal(new["order_head"]["state_dict"][k], v)
    assert new["order_head"]["ranker"]["hidden"] == 8
    kept = report["head"]["kept"]
    assert kept["training_scenes"] == old["order_report"]["training_scenes"]
    assert report["fit"] == old["order_report"]["fit"] and report["training_scenes"] == 64
    with pytest.raises(ValueError, match="changes nothing"):
        calibrate.fit_order(DEFAULT_MODEL, out, n_scenes=64, keep_head=True, rank=False)
    with pytest.raises(ValueError, match="margin 0, not 0.5"):
        calibrate.fit_order(DEFAULT_MODEL, out, n_scenes=64, keep_head=True, margin=0.5)
    headless = tmp_path / "headless.pt"
    del old["order_head"]
    save_checkpoint(headless, old)
    with pytest.raises(ValueError, match="has no order head to keep"):
        calibrate.fit_order(headless, tmp_path / "h2.pt", n_scenes=64, keep_head=True)


def test_a_head_kept_twice_keeps_where_it_was_fitted(tmp_path, monkeypatch):
    """keep_head on a model whose head was kept before: the report's scenes are then the
    ranker's, so the kept head's own record is carried on (a review: the second keep
    recorded the ranker's 64 scenes as the head's)."""
    import risloc.pipeline.calibrate as calibrate
    from risloc.pipeline.learned import DEFAULT_MODEL

    x, real = _realness_data(64)
    ranker = fit_source_ranker(x, real, RankerFitConfig(epochs=1, hidden=8))
    monkeypatch.setattr(calibrate, "training_data", lambda *a, **k: calibrate.OrderData(
        None, None, None, x, real))
    monkeypatch.setattr(calibrate, "fit_source_ranker", lambda *a, **k: ranker)
    monkeypatch.setattr(calibrate, "order_report", lambda *a, **k: [])
    once = calibrate.fit_order(DEFAULT_MODEL, tmp_path / "a.pt", n_scenes=100, keep_head=True)
    twice = calibrate.fit_order(tmp_path / "a.pt", tmp_path / "b.pt", n_scenes=64,
                                keep_head=True)
    assert once["training_scenes"] == 100 and twice["training_scenes"] == 64
    assert twice["head"]["kept"] == once["head"]["kept"]
    assert twice["head"]["kept"]["training_scenes"] == 16384
