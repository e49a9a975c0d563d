"""The network: shapes, PSD low-rank R_pred tied to steering, snapshot-order invariance,
scale invariance, input validation, no R_true input."""

import inspect
import math

import pytest
import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.model import CovarianceNet, ModelConfig
from risloc.physics import steering
from risloc.simulation import simulate_batch, simulate_range

SYSTEM = SystemConfig()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1, 2), hidden=32)).eval()


@pytest.fixture(scope="module")
def scenes():
    return simulate_batch(3, SYSTEM, SceneConfig(), torch.Generator().manual_seed(4))


def test_output_shapes_and_psd_low_rank(model, scenes):
    with torch.no_grad():
        out = model(scenes.y, scenes.H, scenes.codes, scenes.snr_db)
    B, N, S = 3, SYSTEM.N, SYSTEM.K_max
    assert out.F.shape == (B, N, S) and out.F.dtype == torch.complex64
    assert out.R_pred.shape == (B, N, N)
    assert torch.allclose(out.R_pred, out.R_pred.mH)
    ev = torch.linalg.eigvalsh(out.R_pred.to(torch.complex128))
    assert ev.min() > -1e-4 * ev.max()  # PSD
    assert (ev > 1e-6 * ev.max(-1, keepdim=True).values).sum(-1).max() <= S  # rank <= K_max
    assert out.K_logits.shape == (B, SYSTEM.K_max)
    assert ((out.K_hat >= 1) & (out.K_hat <= SYSTEM.K_max)).all()
    for t in (out.slot_azimuth, out.slot_elevation, out.slot_range, out.slot_confidence):
        assert t.shape == (B, S) and torch.isfinite(t).all()
    assert (out.slot_range > 0).all() and ((out.slot_confidence > 0) &
                                           (out.slot_confidence < 1)).all()
    assert torch.all(out.slot_confidence[:, :-1] >= out.slot_confidence[:, 1:])
    assert out.heatmap.shape == (B, 8, 16, 31) and out.offsets.shape == (B, 3, 8, 16, 31)


def test_a_non_default_system_gets_its_own_shapes_and_a_psd_covariance():
    """A rectangular RIS, fewer antennas, snapshots and slots than the default: every output
    is sized by that system and R_pred is Hermitian PSD of rank <= K_max (a second mutation
    review: the slot head sized N_H^2, equal to N only on a square RIS, passed)."""
    system = SystemConfig(N_H=4, N_V=6, M=8, L=6, K_max=3)
    torch.manual_seed(1)
    net = CovarianceNet(system, ModelConfig(n_azimuth=9, n_elevation=6, n_inv_range=3,
                                            width=8, dilations=(1,), hidden=8)).eval()
    sc = simulate_batch(2, system, SceneConfig(),
                        torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(sc.y, sc.H, sc.codes, sc.snr_db)
    assert out.F.shape == (2, 24, 3) and out.R_pred.shape == (2, 24, 24)
    assert out.K_logits.shape == (2, 3) and out.learned.shape == (2, 3, 3)
    assert out.heatmap.shape == (2, 3, 6, 9) and out.offsets.shape == (2, 3, 3, 6, 9)
    assert torch.allclose(out.R_pred, out.R_pred.mH)
    ev = torch.linalg.eigvalsh(out.R_pred.to(torch.complex128))
    assert ev.min() > -1e-4 * ev.max()
    assert (ev > 1e-6 * ev.max(-1, keepdim=True).values).sum(-1).max() <= 3


def test_factor_is_tied_to_slot_steering(model, scenes):
    with torch.no_grad():
        out = model(scenes.y, scenes.H, scenes.codes)
    a = steering(out.slot_azimuth, out.slot_elevation, out.slot_range, SYSTEM).mT
    assert torch.allclose(out.slot_steering, a, atol=1e-5)
    # with the correction gate at 0, F is exactly the weighted steering matrix
    gated = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16,
                                              correction=False)).eval()
    with torch.no_grad():
        o2 = gated(scenes.y, scenes.H, scenes.codes)
    w = o2.F.abs().square().sum(-2).sqrt()  # column norms = weights
    assert torch.allclose(o2.F, o2.slot_steering * w.unsqueeze(-2), atol=1e-5)


def test_invariant_to_snapshot_order_and_measurement_scale(model, scenes):
    perm = torch.randperm(SYSTEM.L, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(scenes.y, scenes.H, scenes.codes, scenes.snr_db)
        p = model(scenes.y[:, perm], scenes.H, scenes.codes[:, perm], scenes.snr_db)
        s = model(7.5 * scenes.y, scenes.H, scenes.codes, scenes.snr_db)
    for o in (p, s):
        assert torch.allclose(o.R_pred, ref.R_pred, atol=1e-3 * ref.R_pred.abs().max())
        assert torch.allclose(o.K_logits, ref.K_logits, atol=1e-4)
        assert torch.allclose(o.slot_azimuth, ref.slot_azimuth, atol=1e-5)


def test_invariant_to_antenna_mixing_complex_scale_and_snapshot_phases(model, scenes):
    """y_l -> k e^{i phi_l} Q y_l, H -> k Q H (Q unitary M x M, a permutation included;
    k complex) leaves the measurement model, so every output, unchanged: the network sees
    y, H only through the back-projections a_l = Phi_l^H (Phi_l Phi_l^H + alpha' I)^-1 y_l
    (Q cancels, alpha' ~ tr, k as conj(k) k / |k|^2; phi_l stays on a_l), read as
    |a(p)^H a_l|^2 after a per-scene RMS, and through least-squares residual ratios (the
    K features, the ML refinement), all blind to those. Holds for any weights: checked on
    random and shipped ones (only the shipped zoom stage is non-identity). float32
    round-off moves R_pred by <= 4e-5 of its largest entry, K logits by <= 5e-6 (measured);
    a mutation review (a conj dropped in the back-projection, a scale taken from real
    parts, an absolute Tikhonov weight, a feature reading y without H) fails here."""
    from risloc.inference.checkpoint import load_model
    from risloc.pipeline.learned import DEFAULT_MODEL

    g = torch.Generator().manual_seed(2)
    y, H = scenes.y, scenes.H
    B, L, M = y.shape
    Q = torch.linalg.qr(torch.randn(B, M, M, dtype=torch.complex128, generator=g))[0]
    Q = Q[:, torch.randperm(M, generator=g)].to(torch.complex64)  # antennas permuted, mixed
    k = torch.tensor(3.7 * complex(0.6, -0.8), dtype=torch.complex64)
    phase = torch.exp(2j * math.pi * torch.rand(B, L, 1, generator=g)).to(torch.complex64)
    for net in (model, load_model(DEFAULT_MODEL)[0]):
        with torch.no_grad():
            ref = net(y, H, scenes.codes, scenes.snr_db)
            for yy, HH in (((k * y) @ Q.mT, k * (Q @ H)), (phase * y, H)):
                o = net(yy, HH, scenes.codes, scenes.snr_db)
                assert torch.allclose(o.R_pred, ref.R_pred, atol=2e-4 * ref.R_pred.abs().max())
                assert torch.allclose(o.K_logits, ref.K_logits, atol=1e-4)
                assert torch.allclose(o.heatmap, ref.heatmap, atol=1e-4)
                assert torch.allclose(o.slot_confidence, ref.slot_confidence, atol=1e-5)
                assert torch.allclose(o.learned, ref.learned, atol=1e-5)
                for p in ("slot_azimuth", "slot_elevation"):
                    assert torch.allclose(getattr(o, p), getattr(ref, p), atol=1e-5)
                assert torch.allclose(o.slot_range, ref.slot_range, rtol=1e-4)


def test_unknown_snr_and_bad_inputs(model, scenes):
    with torch.no_grad():
        a = model(scenes.y, scenes.H, scenes.codes, None)
        b = model(scenes.y, scenes.H, scenes.codes, torch.full((3,), float("nan")))
    assert torch.allclose(a.K_logits, b.K_logits)
    y_nan = scenes.y.clone()
    y_nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        model(y_nan, scenes.H, scenes.codes)
    with pytest.raises(ValueError, match=r"have L=15 \(the system.s: 16\)"):
        model(scenes.y[:, :-1], scenes.H, scenes.codes[:, :-1])
    with pytest.raises(ValueError, match="shape mismatch"):
        model(scenes.y, scenes.H[:2], scenes.codes)
    with pytest.raises(ValueError, match="all-zero channel H in scenes \\[0, 1, 2\\]"):
        model(scenes.y, torch.zeros_like(scenes.H), scenes.codes)
    with pytest.raises(TypeError, match="y must be complex"):
        model(scenes.y.real, scenes.H, scenes.codes)
    with pytest.raises(ValueError):
        ModelConfig(n_azimuth=1)


def test_size_and_no_truth_input():
    params = CovarianceNet(SYSTEM).n_parameters()
    assert 1e5 < params < 5e6
    # the correction gate is trained with the correction (its gradient reaches it) and is
    # neither trained nor counted without it (a second mutation review: the gate detached
    # and the frozen gate counted both passed)
    torch.manual_seed(0)
    sc = simulate_batch(2, SYSTEM, SceneConfig(), torch.Generator().manual_seed(3))
    cfg = ModelConfig(width=16, dilations=(1,), hidden=16, refine_iterations=0)
    net = CovarianceNet(SYSTEM, cfg)
    (g,) = torch.autograd.grad(net(sc.y, sc.H, sc.codes).F.abs().sum(), net.gate)
    assert float(g.abs()) > 0
    off = CovarianceNet(SYSTEM, ModelConfig(**{**cfg.__dict__, "correction": False}))
    assert not off.gate.requires_grad
    assert off.n_parameters() == sum(p.numel() for n, p in off.named_parameters()
                                     if n != "gate")
    assert "R_true" not in inspect.signature(CovarianceNet.forward).parameters


def test_ml_refinement_lowers_the_ml_cost_of_the_active_slots(scenes):
    from risloc.estimators.nfmle import ml_residual

    torch.manual_seed(0)
    cfg = ModelConfig(width=16, dilations=(1,), hidden=16)
    off = CovarianceNet(SYSTEM, ModelConfig(**{**cfg.__dict__, "refine_iterations": 0})).eval()
    on = CovarianceNet(SYSTEM, cfg).eval()
    on.load_state_dict(off.state_dict())
    with torch.no_grad():
        o0 = off(scenes.y, scenes.H, scenes.codes)
        o1 = on(scenes.y, scenes.H, scenes.codes)
    assert torch.equal(o0.learned, o1.learned) and torch.equal(o0.K_logits, o1.K_logits)
    assert torch.allclose(o0.slot_azimuth, o0.learned[..., 0])
    mask = torch.arange(5) < o1.K_hat.unsqueeze(-1)
    assert torch.equal(o1.slot_azimuth[~mask], o1.learned[..., 0][~mask])  # inactive kept
    cost = [ml_residual(scenes.y, scenes.H, scenes.codes, o.slot_azimuth, o.slot_elevation,
                        o.slot_range, mask, SYSTEM) for o in (o0, o1)]
    assert torch.all(cost[1] <= cost[0] * (1 + 1e-6))



def test_mixed_precision_reaches_only_the_cnn_trunk(model, scenes, monkeypatch):
    # The trainer's autocast (FP16 on CUDA; BF16 is the CPU analogue used here) must leave
    # the physics in FP32: under CUDA autocast the ML refinement's solve once received
    # half-precision gradients and training with AMP failed.
    import risloc.model.network as network

    seen = []

    def spy(fn):
        def wrapped(*a, **k):
            seen.append((fn.__name__, torch.is_autocast_enabled("cpu")))
            return fn(*a, **k)
        return wrapped

    for name in ("lm_solve", "steering", "residual_features"):
        monkeypatch.setattr(network, name, spy(getattr(network, name)))
    args = (scenes.y, scenes.H, scenes.codes, scenes.snr_db)
    with torch.no_grad():
        ref = model(*args)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = model(*args)
    assert {n for n, _ in seen} >= {"lm_solve", "steering"}
    assert not any(on for _, on in seen), seen  # physics ran with autocast off
    assert amp.F.dtype == torch.complex64 and amp.K_logits.dtype == torch.float32
    assert amp.slot_azimuth.dtype == torch.float32
    for t in (amp.slot_azimuth, amp.slot_elevation, amp.slot_range, amp.R_pred):
        assert torch.isfinite(t).all()
    # autocast did reach the trunk (its heatmap carries BF16 rounding, ~0.5 % here), and
    # only rounding: the slots picked from the heatmap may flip, so they are not compared
    gap = (amp.heatmap - ref.heatmap).abs().amax() / ref.heatmap.abs().amax()
    assert 1e-4 < gap < 5e-2


def test_beamformer_bank_in_bfloat16_only_on_request_in_eval_mode_and_close(model, scenes,
                                                                              monkeypatch):
    import risloc.model.network as network

    monkeypatch.setattr(network, "native_bf16", lambda device: True)  # emulated elsewhere
    bank = model.bank
    a = scenes.y.new_empty(3, SYSTEM.L, SYSTEM.N).normal_(generator=torch.Generator()
                                                          .manual_seed(1))
    exact = bank(a)
    monkeypatch.setattr(bank, "bf16", True)
    fast = bank(a)
    bank.train()
    try:
        assert torch.equal(bank(a), exact)  # training sees the complex64 spectrum
    finally:
        bank.eval()
    assert not torch.equal(fast, exact)
    log_spectrum = slice(0, model.cfg.n_inv_range)
    assert (fast[:, log_spectrum] - exact[:, log_spectrum]).abs().max() < 2e-2


def _measured_columns(sc, az, el, r):
    """Phi_l a(p) of the given sources: [B, L, M, P]."""
    from risloc.core.operator import apply_operator

    return apply_operator(sc.H, sc.codes, steering(az, el, r, SYSTEM))


def _true_then_junk(sc, K):
    junk_az = torch.tensor([0.9, -0.9, 0.5, -0.5, 0.2])[: SYSTEM.K_max - K]
    junk_el = torch.tensor([0.4, -0.4, -0.3, 0.3, 0.1])[: SYSTEM.K_max - K]
    junk_r = torch.tensor([3.0, 0.8, 6.0, 1.5, 2.0])[: SYSTEM.K_max - K]
    B = sc.y.shape[0]
    az = torch.cat([sc.azimuth[:, :K], junk_az.expand(B, -1)], 1)
    el = torch.cat([sc.elevation[:, :K], junk_el.expand(B, -1)], 1)
    r = torch.cat([sc.range_m[:, :K], junk_r.expand(B, -1)], 1)
    return az, el, r


def test_residual_features_vanish_once_the_true_sources_are_in_and_read_the_noise_level():
    """The model-order features (module docstring, step 5): on noise-free scenes with the
    K true sources first, the residual of k < K slots is a large share of ||y||^2 and that of
    k >= K vanishes; at a known 0 dB the floor log(r_k / ((M - k) L sigma^2)) of k >= K is
    the noise's chi-square over its degrees of freedom (near 0), and an unknown SNR leaves
    it at 0 with the flag off (a mutation review: a dropped column in r_k, (M - k) read as M
    and 1 + snr read as snr all passed)."""
    from risloc.model.network import residual_features

    S = SYSTEM.K_max
    clean = simulate_range(0, 3, SYSTEM, SceneConfig(), seed=5, split="test", K=2,
                           snr_db=200.0)
    f = residual_features(clean.y, _measured_columns(clean, *_true_then_junk(clean, 2)),
                          None)
    assert f.shape == (3, 2 * S + 1)
    rel = f[:, :S]
    assert bool((rel[:, 0] > -6).all()) and bool((rel[:, 1:] < -15).all()), rel
    assert bool((f[:, S:] == 0).all())  # SNR unknown: no floor, flag off
    noisy = simulate_range(0, 16, SYSTEM, SceneConfig(), seed=6, split="test", K=1,
                           snr_db=0.0)
    cols = _measured_columns(noisy, *_true_then_junk(noisy, 1))
    g = residual_features(noisy.y, cols, noisy.snr_db)
    assert bool((g[:, -1] == 1).all())
    floor = g[:, S:2 * S].mean(0)  # per k, 16 scenes: std ~0.03
    assert bool((floor.abs() < 0.12).all()), floor
    # NaN = unknown per scene
    part = residual_features(noisy.y, cols, torch.where(torch.arange(16) < 8, noisy.snr_db,
                                                        float("nan")))
    torch.testing.assert_close(part[:8], g[:8])
    assert bool((part[8:, S:] == 0).all())


def test_factor_weights_are_confidence_times_the_probability_of_that_many_sources():
    """F[:, s] = w_s a(slot_s), w_s^2 = conf_s P(K > s) without the correction (module
    docstring, step 7); the correction enters through the gate (gate 0: the same F) and
    starts small (a mutation review: P(K <= k), the weights without P, an ungated or
    unnormalised correction all passed)."""
    torch.manual_seed(2)
    sc = simulate_range(0, 3, SYSTEM, SceneConfig(), seed=8, split="test")
    cfg = ModelConfig(width=16, dilations=(1,), hidden=16, correction=False)
    plain = CovarianceNet(SYSTEM, cfg).eval()
    with torch.no_grad():
        o = plain(sc.y, sc.H, sc.codes)
    P = torch.softmax(o.K_logits, -1)
    p_geq = torch.stack([P[:, k:].sum(-1) for k in range(SYSTEM.K_max)], -1)
    torch.testing.assert_close(o.F.abs().square().sum(-2), o.slot_confidence * p_geq + 1e-8,
                               rtol=1e-4, atol=1e-7)
    gated = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16)).eval()
    gated.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        g = gated(sc.y, sc.H, sc.codes)
        gated.gate.zero_()
        g0 = gated(sc.y, sc.H, sc.codes)
    torch.testing.assert_close(g0.F, o.F)
    # at initialisation the correction is at most the size of the unit steering vector,
    # scaled by the small gate: F starts at the geometry
    w = (o.slot_confidence * p_geq + 1e-8).sqrt().unsqueeze(-2)
    gap = (g.F / w - g.slot_steering).norm(dim=-2)
    assert bool((gap > 0).all()) and float(gap.max()) < ModelConfig().correction_init


def test_a_known_snr_reaches_the_k_head_and_zero_db_is_not_unknown(scenes):
    """snr_db (NaN = unknown) reaches the K head of a network trained with it: known and
    unknown differ, and a known 0 dB is told from an unknown SNR by its flag (a mutation
    review: the SNR dropped before the decoder, or its flag zeroed, passed)."""
    torch.manual_seed(3)
    net = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16,
                                            residual_features=False)).eval()
    with torch.no_grad():
        unknown = net(scenes.y, scenes.H, scenes.codes, None, covariance=False).K_logits
        zero = net(scenes.y, scenes.H, scenes.codes, torch.zeros(3),
                   covariance=False).K_logits
        told = net(scenes.y, scenes.H, scenes.codes, scenes.snr_db, covariance=False).K_logits
    assert (zero - unknown).abs().amax() > 1e-5
    assert (told - unknown).abs().amax() > 1e-5 and (told - zero).abs().amax() > 1e-5


def test_slots_are_distinct_local_maxima_of_the_heatmap_moved_by_their_offsets(scenes):
    """Slot s = the s-th strongest local maximum of the heatmap (3x3x3 neighbourhood),
    position = its cell + offset x cell size (module docstring, step 4). With the offsets
    saturated at offset_cells, each position lies exactly offset_cells cells past a grid
    cell, and that cell holds the slot's heat and is a local maximum (a mutation review:
    a wrong elevation cell, every cell a peak, or offsets not scaled by offset_cells
    passed the unit tests)."""
    import torch.nn.functional as Fn

    torch.manual_seed(5)
    cfg = ModelConfig(width=16, dilations=(1,), hidden=16, zoom=False, refine_iterations=0)
    net = CovarianceNet(SYSTEM, cfg).eval()
    Nr = cfg.n_inv_range
    with torch.no_grad():
        net.head.bias[Nr:] = 30.0  # tanh = 1: every offset is offset_cells
        out = net(scenes.y, scenes.H, scenes.codes, covariance=False)
    g = out.grid
    cells = []
    for ax, t in zip((g.azimuth, g.elevation, g.inv_range), out.learned.unbind(-1),
                     strict=True):
        c = (t - ax[0]) / (ax[1] - ax[0]) - cfg.offset_cells
        torch.testing.assert_close(c, c.round(), rtol=0, atol=1e-3)
        cells.append(c.round().long())
        assert bool(((c.round() >= 0) & (c.round() < len(ax))).all())
    a, e, r = cells
    heat = out.heatmap
    b = torch.arange(3).unsqueeze(-1)
    at = heat[b, r, e, a]  # (B, S)
    torch.testing.assert_close(torch.sigmoid(at), out.slot_confidence)
    local_max = Fn.max_pool3d(heat.unsqueeze(1), 3, 1, 1).squeeze(1)
    assert torch.equal(at, local_max[b, r, e, a])
    flat = (r * 1000 + e) * 1000 + a
    assert all(len(set(row.tolist())) == SYSTEM.K_max for row in flat)
    peaks = (heat == local_max).flatten(1)
    assert torch.equal(at[:, -1], torch.where(peaks, heat.flatten(1), -1e9).topk(
        SYSTEM.K_max, -1).values[:, -1])  # none stronger was left out


def test_slot_inverse_ranges_stay_above_the_floor_when_offsets_push_them_out(scenes):
    """A slot at the farthest 1/range bins with offsets of -offset_cells would land at a
    negative 1/range (a negative range): its 1/range is floored at half the grid's
    smallest, so every slot range is positive and finite (a mutation review: the floor
    dropped passed)."""
    torch.manual_seed(5)
    cfg = ModelConfig(width=16, dilations=(1,), hidden=16, zoom=False, refine_iterations=0)
    net = CovarianceNet(SYSTEM, cfg).eval()
    Nr = cfg.n_inv_range
    inv = net.grid.inv_range
    with torch.no_grad():
        net.head.bias[Nr:] = -30.0  # every offset is -offset_cells
        net.head.bias[:Nr] += torch.linspace(8.0, 0.0, Nr)  # the far bins are the hottest
        out = net(scenes.y, scenes.H, scenes.codes, covariance=False)
    t = out.learned[..., 2]
    cell = ((t - inv[0]) / (inv[1] - inv[0]) + cfg.offset_cells).round()
    want = (inv[0] + (cell - cfg.offset_cells) * (inv[1] - inv[0])).clamp_min(0.5 * inv[0])
    assert bool((t <= 0.5 * inv[0] + 1e-6).any())  # some slot did hit the floor
    torch.testing.assert_close(t, want)
    assert bool((out.slot_range > 0).all() & torch.isfinite(out.slot_range).all())


def test_the_ml_refinement_leaves_inactive_slots_where_learned_even_outside_its_box(scenes):
    """Only the K_hat strongest slots are refined; the others keep their learned positions
    exactly, also where those lie outside the field of view that the LM solve clamps to
    (here 1/range at the floor, a range beyond the box's) (a second mutation review: the
    solve's output taken for every slot passed)."""
    torch.manual_seed(5)
    cfg = ModelConfig(width=16, dilations=(1,), hidden=16, zoom=False, refine_iterations=1)
    net = CovarianceNet(SYSTEM, cfg).eval()
    Nr = cfg.n_inv_range
    with torch.no_grad():
        net.head.bias[Nr:] = -30.0  # every offset is -offset_cells
        net.head.bias[:Nr] += torch.linspace(8.0, 0.0, Nr)  # the far bins are the hottest
        out = net(scenes.y, scenes.H, scenes.codes)
    inactive = torch.arange(SYSTEM.K_max) >= out.K_hat.unsqueeze(-1)
    far = out.learned[..., 2] < 1.0 / cfg.fov.range_m[1]  # outside the box
    assert bool((inactive & far).any())
    pos = torch.stack([out.slot_azimuth, out.slot_elevation, 1.0 / out.slot_range], -1)
    torch.testing.assert_close(pos[inactive], out.learned[inactive], rtol=1e-6, atol=1e-7)


def test_a_trained_zoom_stage_is_invariant_to_measurement_scale(scenes):
    """The zoom stage starts as the identity (its last layer zero), so the scale test above
    cannot see it: with that layer non-zero (as after training) the slots still do not
    move when y is rescaled (the back-projection is normalised per scene, the stencil
    spectrum to its maximum; a mutation review: either normalisation dropped passed)."""
    torch.manual_seed(6)
    net = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16,
                                            refine_iterations=0)).eval()
    with torch.no_grad():
        last = net.zoom.mlp[-1]
        last.weight.normal_(0.0, 0.3)
        last.bias.normal_(0.0, 0.3)
        ref = net(scenes.y, scenes.H, scenes.codes, covariance=False)
        for scale in (7.5, 1e-3):
            s = net(scale * scenes.y, scenes.H, scenes.codes, covariance=False)
            torch.testing.assert_close(s.learned, ref.learned, rtol=0, atol=2e-5)
        last.weight.zero_()
        last.bias.zero_()
        still = net(scenes.y, scenes.H, scenes.codes, covariance=False)
    assert float((still.learned - ref.learned).abs().max()) > 1e-3  # the zoom did act



def test_the_k_head_reads_the_residuals_of_the_strongest_slots_first(scenes, monkeypatch):
    """residual_features gets the measured columns Phi_l a(slot_s) of the slots in their
    order (decreasing heat), so r_k is the fit of the k strongest (a mutation review: the
    columns reversed passed)."""
    import risloc.model.network as network
    from risloc.core.operator import apply_operator

    torch.manual_seed(7)
    net = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16,
                                            refine_iterations=0)).eval()
    seen = []
    real = network.residual_features
    monkeypatch.setattr(network, "residual_features",
                        lambda y, Bm, snr: seen.append(Bm) or real(y, Bm, snr))
    with torch.no_grad():
        out = net(scenes.y, scenes.H, scenes.codes)
    want = apply_operator(scenes.H, scenes.codes, out.slot_steering.mT)
    torch.testing.assert_close(seen[0], want)


def test_the_zoom_correction_is_bounded_by_zoom_max():
    """Stage 2 moves a slot by at most (zoom_max_deg, zoom_max_deg, zoom_max_inv_range):
    with its last layer saturated (tanh = +-1) the correction is exactly that bound (a
    mutation review: the unbounded tanh, +-1 rad and +-1 1/m, passed)."""
    torch.manual_seed(8)
    cfg = ModelConfig(width=16, dilations=(1,), hidden=16, refine_iterations=0)
    net = CovarianceNet(SYSTEM, cfg).eval()
    sc = simulate_batch(2, SYSTEM, SceneConfig(), torch.Generator().manual_seed(8))
    with torch.no_grad():
        stage1 = net(sc.y, sc.H, sc.codes, covariance=False).learned  # zoom starts at 0
        net.zoom.mlp[-1].bias.copy_(torch.tensor([30.0, -30.0, 30.0]))
        moved = net(sc.y, sc.H, sc.codes, covariance=False).learned
    want = torch.tensor([math.radians(cfg.zoom_max_deg), -math.radians(cfg.zoom_max_deg),
                         cfg.zoom_max_inv_range])
    free = stage1[..., 2] > net._min_inv_range + 1e-6  # not at the 1/range floor
    assert bool(free.sum() > 5)
    torch.testing.assert_close((moved - stage1)[free], want.expand(int(free.sum()), 3),
                               rtol=0, atol=1e-5)


def test_neither_the_k_head_nor_the_zoom_stencil_moves_the_stage_one_slots():
    """Gradient paths the design leaves out: the K head reads the slots' ML residuals of
    detached steering (the K cross-entropy does not move the slots: no gradient from the
    K logits to the zoom's parameters), and the zoom's stencil spectrum is sampled at the
    detached stage-1 position (its output has no gradient to that position) (a mutation
    review: either detach dropped passed)."""
    torch.manual_seed(9)
    net = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16,
                                            refine_iterations=0))
    sc = simulate_batch(2, SYSTEM, SceneConfig(), torch.Generator().manual_seed(9))
    with torch.no_grad():
        net.zoom.mlp[-1].weight.normal_(0.0, 0.3)
    out = net(sc.y, sc.H, sc.codes, sc.snr_db, covariance=False)
    zoom_params = list(net.zoom.parameters())
    grads = torch.autograd.grad(out.K_logits.sum(), zoom_params, allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0 for g in grads)
    assert any(g is not None and float(g.abs().max()) > 0 for g in torch.autograd.grad(
        out.learned.sum(), zoom_params, allow_unused=True))  # the positions do read it
    a = torch.randn(2, SYSTEM.L, SYSTEM.N, dtype=torch.complex64)
    theta = torch.tensor([[0.2, 0.1, 0.5]] * SYSTEM.K_max).expand(2, -1, -1).clone()
    theta.requires_grad_(True)
    corr = net.zoom(a, theta, torch.randn(2, SYSTEM.K_max, 16), torch.rand(2, SYSTEM.K_max))
    (g,) = torch.autograd.grad(corr.sum(), theta, allow_unused=True)
    assert g is None or float(g.abs().max()) == 0


def test_residual_floor_reads_a_known_snr_in_power_decibels():
    """sigma^2 = ||y||^2 / (L M (1 + 10^(snr / 10))): at a known 10 dB the floor of k >= K is
    again near 0 (a mutation review: 10^(snr / 20) passed, the test's 0 dB making both 1)."""
    from risloc.model.network import residual_features

    S = SYSTEM.K_max
    noisy = simulate_range(0, 16, SYSTEM, SceneConfig(), seed=6, split="test", K=1,
                           snr_db=10.0)
    g = residual_features(noisy.y, _measured_columns(noisy, *_true_then_junk(noisy, 1)),
                          noisy.snr_db)
    floor = g[:, S:2 * S].mean(0)
    assert bool((floor.abs() < 0.12).all()), floor


def test_the_ml_refinement_searches_the_models_field_of_view(scenes, monkeypatch):
    """The slots' ML refinement projects onto the network's own field of view (a recipe
    sets it to its scenes'), not the default box (a mutation review: the fov dropped from
    its NFMLEConfig passed, every test model having the default one)."""
    import risloc.model.network as network
    from risloc.config import FieldOfView

    fov = FieldOfView(azimuth_deg=(-40.0, 40.0), elevation_deg=(-20.0, 20.0),
                      range_m=(1.0, 6.0))
    net = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16, fov=fov,
                                            refine_iterations=1)).eval()
    seen = []
    real = network.lm_solve
    monkeypatch.setattr(network, "lm_solve", lambda *a: seen.append(a[-1]) or real(*a))
    with torch.no_grad():
        net(scenes.y, scenes.H, scenes.codes)
    assert seen and seen[0].fov == fov


def test_the_back_projection_is_normalised_per_scene_not_per_snapshot(model, scenes):
    """a = back_projection / its RMS over the whole scene (module docstring, step 1): one
    factor per scene, so snapshots keep their relative power (a mutation review: the RMS
    per snapshot, which equalises them, passed the scale-invariance tests)."""
    from risloc.covariance.tools import back_projection

    y = scenes.y.clone()
    y[:, 0] *= 5.0  # one strong snapshot
    with torch.no_grad():
        a, _ = model._features(y, scenes.H, scenes.codes)
    bp = back_projection(y, scenes.H, scenes.codes, model.cfg.bp_alpha)
    ratio = (a.abs() / bp.abs()).flatten(1)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, atol=0)
    # that factor is the RMS: mean |a|^2 = 1 per scene (a second mutation review: the mean
    # |a| instead passed, scale-invariant too)
    torch.testing.assert_close(a.abs().square().mean((-2, -1)), torch.ones(3), rtol=1e-5,
                               atol=0)


def test_the_beamformer_bank_is_the_steering_of_its_grid_and_its_features_are_normalised(
        model, scenes):
    """Column g of the bank is the steering vector of grid cell g = (r, e, a) in C order (the
    order _positions decodes); the features are log(S + 0.01) with S at mean 1 per scene,
    and S over its maximum over the whole scene grid (a mutation review: azimuth and
    elevation swapped in the steering, S over its max, log(S + 1) and the peak per 1/range
    bin all passed)."""
    g = model.grid
    Nr, Ne, Na = len(g.inv_range), len(g.elevation), len(g.azimuth)
    for r, e, a in ((0, 0, 1), (3, 5, 20), (Nr - 1, Ne - 1, 2)):
        want = steering(g.azimuth[a], g.elevation[e], 1.0 / g.inv_range[r], SYSTEM)
        torch.testing.assert_close(model.bank.A[:, (r * Ne + e) * Na + a], want)
    with torch.no_grad():
        a, _ = model._features(scenes.y, scenes.H, scenes.codes)
        x = model.bank(a)
    S = torch.exp(x[:, :Nr]) - 1e-2
    torch.testing.assert_close(S.mean((-3, -2, -1)), torch.ones(3), rtol=1e-4, atol=0)
    torch.testing.assert_close(x[:, Nr:], S / S.amax((-3, -2, -1), keepdim=True),
                               rtol=1e-4, atol=1e-5)
    assert bool((x[:, Nr:].amax((-2, -1)) < 1 - 1e-3).any())  # some bins peak below 1


def test_the_trunk_is_residual_and_starts_sparse_and_the_grid_coordinates_are_fixed(model,
                                                                                      scenes):
    """A ResBlock is x + conv(...); the heat logits start at -4 (CenterNet), the offsets at
    0; the coordinate channels are elevation then azimuth, each -1 -> 1 (a mutation review:
    the skip dropped, the -4 on the offsets, azimuth reversed all passed)."""
    from risloc.model.network import ResBlock

    blk = ResBlock(8, 2)
    nn_zero = torch.nn.init.zeros_
    nn_zero(blk.conv.weight), nn_zero(blk.conv.bias)
    x = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(blk(x), x)
    Nr = model.cfg.n_inv_range
    fresh = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16))
    assert bool((fresh.head.bias[:Nr] == -4.0).all())
    assert bool((fresh.head.bias[Nr:].abs() < 1).all())
    with torch.no_grad():
        _, f = model._features(scenes.y, scenes.H, scenes.codes)
    Ne, Na = f.shape[-2:]
    torch.testing.assert_close(f[0, -2, :, 0], torch.linspace(-1, 1, Ne))
    torch.testing.assert_close(f[0, -1, 0], torch.linspace(-1, 1, Na))


def test_the_zoom_stencil_and_its_spectrum_are_as_documented(scenes):
    """The stencil steps zoom_deg in both angles and zoom_inv_range in 1/range; the MLP sees
    the stencil spectrum over its maximum (a mutation review: 1/range stepped by zoom_deg and
    the spectrum unnormalised passed)."""
    torch.manual_seed(3)
    cfg = ModelConfig(width=16, dilations=(1,), hidden=16, refine_iterations=0)
    net = CovarianceNet(SYSTEM, cfg).eval()
    st = net.zoom.stencil
    P = (2 * cfg.zoom_points + 1) ** 2 * 3
    assert st.shape == (P, 3)
    torch.testing.assert_close(st[:, 2].unique(), torch.tensor([-1.0, 0.0, 1.0]) *
                               cfg.zoom_inv_range)
    torch.testing.assert_close(st[:, 0].unique(), torch.deg2rad(
        torch.arange(-cfg.zoom_points, cfg.zoom_points + 1.0) * cfg.zoom_deg))
    seen, args = [], []
    net.zoom.mlp[0].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    net.zoom.register_forward_hook(lambda m, i, o: args.append(i))
    with torch.no_grad():
        net(scenes.y, scenes.H, scenes.codes, covariance=False)
    spec = seen[0][..., :P]
    torch.testing.assert_close(spec.amax(-1), torch.ones(spec.shape[:-1]))
    # S_s(p) = mean_l |a(p)^H a_l|^2 at theta_s + stencil, over its max, then log(max) and
    # the stage-1 position theta_s (a second mutation review: the conj dropped, the mean
    # over snapshots read as the first snapshot, log(max) read as max and theta zeroed
    # all passed)
    a, theta = args[0][0], args[0][1]
    pts = theta.unsqueeze(-2) + st  # (B, S, P, 3)
    sv = steering(pts[..., 0], pts[..., 1], 1.0 / pts[..., 2].clamp_min(0.02), SYSTEM)
    want = (torch.einsum("bspn,bln->bslp", sv.conj(), a).abs().square()).mean(-2)
    top = want.amax(-1, keepdim=True)
    torch.testing.assert_close(spec, want / top, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen[0][..., P], torch.log(top[..., 0]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen[0][..., -3:], theta)


def test_the_residual_floor_counts_m_minus_k_degrees_of_freedom_per_snapshot(scenes):
    """floor_k - rel_k = log(||y||^2 / ((M - k) L sigma^2)) = log(M (1 + snr) / (M - k))
    exactly, whatever the columns (a mutation review: M - k + 1 passed the statistical
    test)."""
    from risloc.model.network import residual_features

    S, M = SYSTEM.K_max, SYSTEM.M
    Bm = torch.randn(3, SYSTEM.L, M, S, dtype=torch.complex64)
    snr = torch.tensor([0.0, 10.0, -5.0])
    f = residual_features(scenes.y, Bm, snr).double()
    k = torch.arange(1, S + 1, dtype=torch.float64)
    want = torch.log(M * (1 + 10 ** (snr.double() / 10)).unsqueeze(-1) / (M - k))
    torch.testing.assert_close(f[:, S:2 * S] - f[:, :S], want, rtol=0, atol=1e-4)


def test_each_slot_reads_the_cnn_feature_of_its_own_pixel(scenes):
    """feat[b, s] = h[b, :, e_s, a_s] at the slot's (elevation, azimuth) cell (a mutation
    review: the pixel taken modulo Na only passed)."""
    torch.manual_seed(5)
    net = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16,
                                            refine_iterations=0)).eval()
    hs, feats = [], []
    net.norm.register_forward_hook(lambda m, i, o: hs.append(o))
    net.zoom.mlp[0].register_forward_hook(lambda m, i, o: feats.append(i[0]))
    with torch.no_grad():
        out = net(scenes.y, scenes.H, scenes.codes, covariance=False)
    h = hs[0]
    Ne, Na = h.shape[-2:]
    idx, _ = net._slots(out.heatmap, out.offsets)
    e, a = (idx // Na) % Ne, idx % Na
    assert bool(((idx // Na) >= Ne).any())  # some slots off the first 1/range bin
    want = torch.stack([h[b, :, e[b], a[b]].mT for b in range(h.shape[0])])
    P = net.zoom.stencil.shape[0]
    torch.testing.assert_close(feats[0][..., P + 1:P + 1 + h.shape[1]], want)


def test_the_heads_read_their_documented_inputs(scenes):
    """K head: [mean_pix h, max_pix h, snr/20, known, sigmoid(heat_s), heat_s/10, residual
    features]; slot head: [feat_s, conf_s, s/S], its output (re, im) per element entering F as
    w_s (a_s + g c_s / sqrt(N)) unconjugated (a mutation review: max-pooling read as mean,
    heat/10 as sigmoid, the rank zeroed and the correction conjugated all passed)."""
    torch.manual_seed(6)
    net = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16,
                                            refine_iterations=0)).eval()
    hs, kin, sin, sout = [], [], [], []
    net.norm.register_forward_hook(lambda m, i, o: hs.append(o))
    net.k_head[0].register_forward_hook(lambda m, i, o: kin.append(i[0]))
    net.slot_head[0].register_forward_hook(lambda m, i, o: sin.append(i[0]))
    net.slot_head.register_forward_hook(lambda m, i, o: sout.append(o))
    with torch.no_grad():
        net.gate.fill_(0.7)
        out = net(scenes.y, scenes.H, scenes.codes, scenes.snr_db)
    h, W, S, N = hs[0], 16, SYSTEM.K_max, SYSTEM.N
    idx, _ = net._slots(out.heatmap, out.offsets)
    heat_s = out.heatmap.reshape(3, -1).gather(1, idx)
    torch.testing.assert_close(kin[0][:, :2 * W + 2 + 2 * S], torch.cat(
        [h.mean((-2, -1)), h.amax((-2, -1)), scenes.snr_db.unsqueeze(-1) / 20,
         torch.ones(3, 1), torch.sigmoid(heat_s), heat_s / 10], -1))
    torch.testing.assert_close(sin[0][..., -2:], torch.stack(
        [out.slot_confidence, (torch.arange(S) / S).expand(3, S)], -1))
    c = sout[0].view(3, S, N, 2)
    corr = torch.complex(c[..., 0], c[..., 1]).mT / math.sqrt(N)
    P = torch.softmax(out.K_logits, -1)
    p_geq = torch.stack([P[:, k:].sum(-1) for k in range(S)], -1)
    w = (out.slot_confidence * p_geq + 1e-8).sqrt().unsqueeze(-2)
    torch.testing.assert_close(out.F, w * (out.slot_steering + 0.7 * corr), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("bad", [dict(n_azimuth=1), dict(n_elevation=1), dict(n_inv_range=1),
                                 dict(width=4), dict(hidden=4), dict(dilations=())])
def test_model_config_rejects_degenerate_grids_and_trunks(bad):
    """Every grid axis needs 2 points (a cell step is ax[1] - ax[0]), the trunk GroupNorm(8)
    8 channels, the heads 8 hidden units and the trunk a block (a mutation review: the
    1/range axis dropped from the check, width >= 4, the hidden and the dilations checks
    dropped all passed)."""
    with pytest.raises(ValueError, match="ModelConfig"):
        ModelConfig(**bad)


def test_the_ml_refinement_gets_the_k_hat_strongest_slots_and_the_zoom_reads_conf(scenes,
                                                                                 monkeypatch):
    """lm_solve's mask is s < K_hat (the K_hat strongest slots, not K_hat - 1), and the zoom
    MLP reads each slot's confidence after its CNN feature (a mutation review: the mask
    without its + 1 and the confidence zeroed in the zoom input both passed)."""
    import risloc.model.network as network

    torch.manual_seed(4)
    net = CovarianceNet(SYSTEM, ModelConfig(width=16, dilations=(1,), hidden=16,
                                            refine_iterations=1)).eval()
    masks, zin = [], []
    real = network.lm_solve
    monkeypatch.setattr(network, "lm_solve", lambda *a: masks.append(a[4]) or real(*a))
    net.zoom.mlp[0].register_forward_hook(lambda m, i, o: zin.append(i[0]))
    with torch.no_grad():
        out = net(scenes.y, scenes.H, scenes.codes, scenes.snr_db)
    assert torch.equal(masks[0], torch.arange(SYSTEM.K_max) < out.K_hat.unsqueeze(-1))
    P = net.zoom.stencil.shape[0]
    torch.testing.assert_close(zin[0][..., P + 1 + 16], out.slot_confidence)
