"""The network: shapes, PSD low-rank R_pred tied to steering, snapshot-order invariance,
scale invariance, input validation, no R_true input."""

import inspect

import pytest
import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.model import CovarianceNet, ModelConfig
from risloc.physics import steering
from risloc.simulation import simulate_batch

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
