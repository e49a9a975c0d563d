"""Learning-rate, beta, loss-weight and SNR schedules."""

import math

import pytest

from risloc.training import schedules as s


def test_lr_warmup_then_cosine():
    lrs = [s.get_lr(k, 100, 10, 1.0, 0.1) for k in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))  # rising
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[100] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:100], lrs[11:101], strict=True))


def test_beta_anneal_and_jitter():
    assert s.beta_at(0.0, 0.3, 0.2) == 0.0
    assert s.beta_at(0.1, 0.3, 0.2) == pytest.approx(0.15)
    assert s.beta_at(0.5, 0.3, 0.2) == pytest.approx(0.3)
    assert s.beta_at(0.0, 0.3, 0.0) == 0.3
    draws = [s.jittered_beta(0.3, 0.05, 7, k) for k in range(200)]
    assert all(0.25 <= d <= 0.35 for d in draws) and max(draws) - min(draws) > 0.05
    assert s.jittered_beta(0.3, 0.05, 7, 11) == s.jittered_beta(0.3, 0.05, 7, 11)
    assert s.jittered_beta(0.0, 0.05, 7, 3) >= 0.0  # clamped
    assert s.jittered_beta(0.3, 0.0, 7, 3) == 0.3


def test_loss_weight_phases():
    sched = {"lam_subspace_align": (0.02, 0.05, 0.07), "lam_peak_contrast": (0.05, 0.10, 0.12)}
    phases = [s.phase_of(e, 10, 2, 0.2) for e in range(10)]
    assert phases == [0, 0, 1, 1, 1, 1, 1, 1, 2, 2]
    assert s.loss_weights_at(0, 10, sched, 2, 0.2) == {"lam_subspace_align": 0.02,
                                                       "lam_peak_contrast": 0.05}
    assert s.loss_weights_at(5, 10, sched, 2, 0.2)["lam_peak_contrast"] == 0.10
    assert s.loss_weights_at(9, 10, sched, 2, 0.2)["lam_subspace_align"] == 0.07


def test_snr_curriculum():
    assert s.snr_range_at(0, 10, (-5, 20), (10, 20), 0.3) == (10, 20)
    assert s.snr_range_at(3, 10, (-5, 20), (10, 20), 0.3) == pytest.approx((-5, 20))
    assert s.snr_range_at(5, 10, (-5, 20), (10, 20), 0.0) == (-5, 20)
