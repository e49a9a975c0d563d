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
    # a base rate other than 1: the floor is min_lr_ratio of it (a mutation review)
    assert s.get_lr(200, 100, 10, 2.0, 0.1) == pytest.approx(0.2)


def test_beta_anneal_and_jitter():
    assert s.beta_at(0.0, 0.3, 0.2) == 0.0
    assert s.beta_at(0.1, 0.3, 0.2) == pytest.approx(0.15)
    assert s.beta_at(0.5, 0.3, 0.2) == pytest.approx(0.3)
    assert s.beta_at(0.0, 0.3, 0.0) == 0.3
    assert s.beta_at(-0.1, 0.3, 0.2) == 0.0  # progress below 0 clamped (a mutation review)
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
    # the final phase starts at ceil((1 - f) E): 7.5 -> epoch 8 (a mutation review: int
    # passed); 0.7 of 10 epochs is 7 of them, though (1 - 0.7) * 10 = 3.0000000000000004
    assert [s.phase_of(e, 10, 0, 0.25) for e in (7, 8)] == [1, 2]
    assert [s.phase_of(e, 10, 0, 0.7) for e in (2, 3)] == [1, 2]
    assert s.final_start(0.7, 10) == 3 and s.final_start(0.25, 10) == 8


def test_snr_curriculum():
    assert s.snr_range_at(0, 10, (-5, 20), (10, 20), 0.3) == (10, 20)
    assert s.snr_range_at(3, 10, (-5, 20), (10, 20), 0.3) == pytest.approx((-5, 20))
    assert s.snr_range_at(5, 10, (-5, 20), (10, 20), 0.0) == (-5, 20)


def test_the_validation_objective_is_the_angle_plus_the_weighted_f1_miss():
    """angle median + w (1 - F1) [deg]; inf where nothing was paired (a mutation review: the
    F1 term's sign or its complement could change unseen)."""
    from types import SimpleNamespace

    from risloc.training.evaluate import objective_of

    def summary(angle, f1):
        return SimpleNamespace(angle_median_deg=angle, f1=f1)

    assert objective_of(summary(2.0, 0.8), 5.0) == pytest.approx(3.0)
    assert objective_of(summary(2.0, 1.0), 5.0) == 2.0
    assert objective_of(summary(float("nan"), 0.0), 5.0) == math.inf


def test_schedule_edges_a_mutation_review_left_open():
    """The jittered beta is clamped at 1 too and its draws depend on the seed; the final
    phase of 0.35 of 10 epochs starts at epoch 7 (6.5 rounded up, never to even); the SNR
    curriculum stays at the full range after its fraction."""
    assert max(s.jittered_beta(1.0, 0.05, 7, k) for k in range(50)) == 1.0
    assert min(s.jittered_beta(1.0, 0.05, 7, k) for k in range(50)) < 1.0
    assert [s.jittered_beta(0.3, 0.05, 7, k) for k in range(5)] != [
        s.jittered_beta(0.3, 0.05, 8, k) for k in range(5)]
    assert s.final_start(0.35, 10) == 7 and s.phase_of(6, 10, 0, 0.35) == 1
    assert s.snr_range_at(8, 10, (-5, 20), (10, 20), 0.3) == pytest.approx((-5, 20))


def test_schedule_edges_a_second_mutation_review_left_open():
    """With one cosine step (total_steps = warm-up + 1) the rate is at its floor at
    total_steps; the jittered beta is clamped at 0 (not only at 1); a curriculum fraction
    of 0 gives the full SNR range from epoch 0 (a second mutation review: a span of 2 for
    1, a clamp at -1, ``< 0`` for ``<= 0`` passed)."""
    assert s.get_lr(11, 11, 10, 1.0, 0.1) == pytest.approx(0.1)  # at total_steps
    assert min(s.jittered_beta(0.0, 0.05, 7, k) for k in range(50)) == 0.0
    assert s.snr_range_at(0, 10, (-5, 20), (10, 20), 0.0) == (-5, 20)


def test_the_rate_decays_as_a_cosine_beta_ramps_linearly_and_the_snr_range_widens_by_hand():
    """Hand values off the midpoints, where a linear rate decay, a cosine beta ramp and a
    fixed upper SNR end all agreed with the tests (a third mutation review: each passed).
    Cosine rate at a quarter of its span: 0.1 + 0.45 (1 + cos(pi / 4)); beta at a quarter of
    its warm-up: 0.3 / 4; the SNR range a quarter of the way: both ends move."""
    assert s.get_lr(35, 110, 10, 1.0, 0.1) == pytest.approx(
        0.1 + 0.45 * (1 + math.sqrt(0.5)))  # (linear: 0.775)
    assert s.beta_at(0.05, 0.3, 0.2) == pytest.approx(0.075)  # (cosine ramp: 0.0439)
    assert s.snr_range_at(1, 10, (-5, 20), (10, 30), 0.4) == pytest.approx((6.25, 27.5))


def test_the_jittered_beta_of_one_seed_is_no_shifted_copy_of_the_next_seeds():
    """Runs of neighbouring seeds draw apart at every step (a mutation review: a
    draw keyed on seed + step passed, whose seed 8 repeats seed 7's draws a step early)."""
    assert [s.jittered_beta(0.5, 0.5, 7, k + 1) for k in range(5)] != [
        s.jittered_beta(0.5, 0.5, 8, k) for k in range(5)]
