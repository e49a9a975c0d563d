import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from risloc.core.params import Estimates
from risloc.evaluation.crb import CRBResult
from risloc.evaluation.metrics import (
    common_median_ratios,
    concat_matchings,
    match_sources,
    midpoint_median,
    paired_bootstrap_se,
    snr_groups,
    summarize,
    summarize_by_K,
    summarize_by_snr,
)

NAN = float("nan")
rad = math.radians


def _est(K, az_deg, el_deg, r):
    az, el, rr = (torch.tensor(v, dtype=torch.float64) for v in (az_deg, el_deg, r))
    return Estimates(K=torch.tensor(K), azimuth=torch.deg2rad(az), elevation=torch.deg2rad(el),
                     range_m=rr, score=torch.ones_like(rr))


def _truth(K, az_deg, el_deg, r):
    e = _est(K, az_deg, el_deg, r)
    return e.azimuth, e.elevation, e.range_m, e.K


# two scenes, K_max = 3 true slots (NaN padded)
TRUTH = _truth([3, 2], [[-40.0, 10.0, 35.0], [0.0, 20.0, NAN]],
               [[5.0, -10.0, 20.0], [0.0, 3.0, NAN]], [[1.0, 4.0, 8.0], [2.0, 6.0, NAN]])


def test_exact_estimates_give_zero_errors_and_perfect_scores():
    est = _est([3, 2], [[35.0, -40.0, 10.0], [20.0, 0.0, NAN]],
               [[20.0, 5.0, -10.0], [3.0, 0.0, NAN]], [[8.0, 1.0, 4.0], [6.0, 2.0, NAN]])
    m = match_sources(est, *TRUTH)
    assert m.est_index.tolist() == [[1, 2, 0], [1, 0, -1]]
    s = summarize(m)
    assert (s.n_true, s.n_estimated, s.n_paired, s.n_detected) == (5, 5, 5, 5)
    assert (s.n_missed, s.n_false_alarms) == (0, 0)
    assert s.f1 == 1.0 and s.precision == 1.0 and s.recall == 1.0 and s.K_accuracy == 1.0
    for name in ("azimuth", "elevation", "angle"):
        assert getattr(s, f"{name}_median_deg") == pytest.approx(0.0, abs=1e-9)
        assert getattr(s, f"{name}_rmse_deg") == pytest.approx(0.0, abs=1e-9)
    assert s.range_median_m == 0.0 and s.range_rmse_m == 0.0
    assert s.crb_azimuth_median_deg is None


def _permute(t, perms):
    """Permute the slots of each scene of t [B, K] by its own index list."""
    return torch.stack([row[perm] for row, perm in zip(t, perms)])


def test_pairing_invariant_to_slot_order():
    g = torch.Generator().manual_seed(0)
    est = _est([3, 2], [[-38.0, 11.0, 33.0], [1.0, 18.0, NAN]],
               [[4.0, -9.0, 21.0], [-1.0, 4.0, NAN]], [[1.5, 3.0, 9.0], [2.2, 5.0, NAN]])
    base = match_sources(est, *TRUTH)
    for _ in range(5):
        # real slots permuted per scene; padding stays at the end (slots < K are real)
        pe = [torch.randperm(3, generator=g), torch.tensor([1, 0, 2])]
        pt = [torch.randperm(3, generator=g), torch.tensor([1, 0, 2])]
        est_p = Estimates(est.K, *(_permute(t, pe) for t in
                                   (est.azimuth, est.elevation, est.range_m, est.score)))
        truth_p = [_permute(t, pt) for t in TRUTH[:3]]
        m = match_sources(est_p, *truth_p, TRUTH[3])
        assert summarize(m) == summarize(base)
        for b in range(2):  # every true source keeps its estimate and its errors
            inv = torch.argsort(pt[b])
            torch.testing.assert_close(m.angle_error[b, inv], base.angle_error[b],
                                       equal_nan=True)
            torch.testing.assert_close(m.range_error[b, inv], base.range_error[b],
                                       equal_nan=True)


def test_miss_and_false_alarm_are_counted():
    # scene 0: 2 estimates for 3 truths (one miss); scene 1: 3 estimates for 2 truths, and the
    # extra one is far away (false alarm); one pair of scene 1 falls outside the 5 deg gate
    est = _est([2, 3], [[-40.0, 35.0, NAN], [0.0, 28.0, -70.0]],
               [[5.0, 20.0, NAN], [0.0, 3.0, -25.0]], [[1.0, 8.0, NAN], [2.0, 6.0, 9.0]])
    m = match_sources(est, *TRUTH)
    s = summarize(m)
    assert m.missed.tolist() == [[False, True, False], [False, False, False]]
    assert m.false_alarm.tolist() == [[False, False, False], [False, False, True]]
    assert (s.n_true, s.n_estimated, s.n_paired, s.n_detected) == (5, 5, 4, 3)
    assert (s.n_missed, s.n_false_alarms) == (1, 1)
    assert s.precision == pytest.approx(3 / 5) and s.recall == pytest.approx(3 / 5)
    assert s.f1 == pytest.approx(3 / 5) and s.K_accuracy == 0.0


def test_precision_and_recall_with_more_estimates_than_sources():
    """Two true sources, three estimates, both sources detected: precision 2/3, recall 1
    (a mutation review: every other test had as many estimates as sources)."""
    est = _est([3], [[-20.0, 20.0, 50.0]], [[0.0, 5.0, -10.0]], [[2.0, 3.0, 4.0]])
    s = summarize(match_sources(est, *_truth([2], [[-20.5, 20.5]], [[0.0, 5.0]],
                                             [[2.0, 3.0]])))
    assert (s.n_true, s.n_estimated, s.n_detected) == (2, 3, 2)
    assert s.precision == pytest.approx(2 / 3) and s.recall == 1.0
    assert s.f1 == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))


def test_the_angle_bound_weighs_the_azimuth_bound_by_the_elevation():
    """The great-circle angle's bound: sqrt(cos^2(el) CRB_az + CRB_el); a source at 60 deg
    elevation with a 2 deg azimuth bound and no elevation error has a 1 deg angle bound (a
    mutation review: every source sat on the horizon, where cos = 1)."""
    from scipy.stats import norm

    est = _est([1], [[10.0]], [[60.0]], [[3.0]])
    crb = CRBResult(azimuth=torch.deg2rad(torch.tensor([[2.0]], dtype=torch.float64)),
                    elevation=torch.zeros(1, 1, dtype=torch.float64),
                    range_m=torch.full((1, 1), 0.1, dtype=torch.float64),
                    fim=torch.zeros(1, 3, 3))
    s = summarize(match_sources(est, *_truth([1], [[10.5]], [[60.0]], [[3.0]])), crb)
    assert s.crb_angle_median_deg == pytest.approx(1.0)
    assert s.crb_azimuth_median_deg == pytest.approx(2.0)
    # |error| / sqrt(CRB) = 0.25 in azimuth, over the median of a half-normal, norm.ppf(0.75)
    assert s.azimuth_median_over_bound == pytest.approx(0.25 / norm.ppf(0.75), rel=1e-4)


def test_azimuth_difference_is_wrap_free():
    # 179 deg is 2 deg clockwise of -179 deg: error -2 deg, not 358 deg (and vice versa)
    est = _est([1, 1], [[179.0], [-179.0]], [[0.0], [0.0]], [[3.0], [3.0]])
    m = match_sources(est, *_truth([1, 1], [[-179.0], [179.0]], [[0.0], [0.0]], [[3.0], [3.0]]))
    torch.testing.assert_close(m.azimuth_error.rad2deg(),
                               torch.tensor([[-2.0], [2.0]], dtype=torch.float64))
    torch.testing.assert_close(m.angle_error.rad2deg(),
                               torch.tensor([[2.0], [2.0]], dtype=torch.float64))
    assert m.detected.all()


def test_a_wrong_truth_K_is_named():
    est = _est([1, 1], [[0.0], [5.0]], [[0.0], [0.0]], [[2.0], [2.0]])
    az, el, r, K = _truth([1, 1], [[0.0], [5.0]], [[0.0], [0.0]], [[2.0], [2.0]])
    with pytest.raises(ValueError, match=r"truth_K must be \[B\] with the B = 2 true scenes, "
                                         r"got shape \(1,\)"):
        match_sources(est, az, el, r, K[:1])
    with pytest.raises(ValueError, match="truth K must be whole numbers of sources"):
        match_sources(est, az, el, r, torch.tensor([1.0, 0.5]))
    for bad in ([2, 1], [-1, 1]):  # more sources than the 1 true slot, or fewer than none
        with pytest.raises(ValueError, match=r"truth K must be \[B\] with 0 <= K <= 1 slots"):
            match_sources(est, az, el, r, torch.tensor(bad))
    assert match_sources(est, az, el, r, torch.tensor([1.0, 1.0])).detected.all()
    from risloc.pipeline import LocalizationResult  # a Localizer's result: its estimates

    assert match_sources(LocalizationResult(est), az, el, r, K).detected.all()


def test_degrees_for_radians_and_impossible_settings_are_named():
    """Angles in degrees passed where radians belong read as elevations far beyond
    +-pi/2: an error naming the scenes, for truth and estimates; a gate <= 0 or a
    negative range weight would score nothing or pair at random."""
    est = _est([1, 1], [[0.0], [5.0]], [[0.0], [40.0]], [[2.0], [2.0]])
    az, el, r, K = _truth([1, 1], [[0.0], [5.0]], [[0.0], [40.0]], [[2.0], [2.0]])
    with pytest.raises(ValueError, match=r"true elevations beyond \+-pi/2 rad \(up to 40\) in "
                                         r"scenes \[1\]: angles are radians here"):
        match_sources(est, az, el.rad2deg(), r, K)
    with pytest.raises(ValueError, match=r"estimated elevations beyond \+-pi/2 rad"):
        match_sources(dataclasses.replace(est, elevation=est.elevation.rad2deg()), az, el, r, K)
    # padding beyond K is never read: a sentinel there (-999) is no elevation in degrees
    pad = lambda t: torch.cat([t, torch.full_like(t, -999.0)], 1)  # noqa: E731
    m = match_sources(dataclasses.replace(est, azimuth=pad(est.azimuth),
                                          elevation=pad(est.elevation), range_m=pad(est.range_m)),
                      pad(az), pad(el), pad(r), K)
    assert m.detected.tolist() == [[True, False], [True, False]]
    straight_up = torch.full_like(el, math.pi / 2)  # the limit itself is a direction
    assert match_sources(est, az, straight_up, r, K).paired.all()
    for gate in (0.0, -1.0, NAN):
        with pytest.raises(ValueError, match="gate_deg must be > 0"):
            match_sources(est, az, el, r, K, gate_deg=gate)
    for w in (-0.5, NAN, math.inf):
        with pytest.raises(ValueError, match="range_weight_deg_per_m must be finite and >= 0"):
            match_sources(est, az, el, r, K, range_weight_deg_per_m=w)
    assert match_sources(est, az, el, r, K, gate_deg=math.inf,
                         range_weight_deg_per_m=0.0).detected.all()


def test_nan_padding_and_empty_scenes():
    est = _est([0, 1], [[NAN, NAN], [NAN, NAN]], [[NAN, NAN], [NAN, NAN]],
               [[NAN, NAN], [NAN, NAN]])
    with pytest.raises(ValueError, match="non-finite estimated"):
        match_sources(est, *_truth([1, 1], [[0.0], [5.0]], [[0.0], [0.0]], [[2.0], [2.0]]))
    est = _est([0, 1], [[NAN, NAN], [4.0, NAN]], [[NAN, NAN], [1.0, NAN]],
               [[NAN, NAN], [2.5, NAN]])
    m = match_sources(est, *_truth([1, 0], [[0.0], [NAN]], [[0.0], [NAN]], [[2.0], [NAN]]))
    s = summarize(m)
    assert (s.n_paired, s.n_missed, s.n_false_alarms) == (0, 1, 1)
    assert s.f1 == 0.0 and math.isnan(s.azimuth_rmse_deg)


def test_hand_computed_median_and_rmse_with_crb():
    # one scene, 4 sources on the horizon (elevation 0): azimuth errors 1, -2, 3, -4 deg and
    # range errors 0.1, 0.2, -0.3, 0.4 m; median |.| = 2.5 deg / 0.25 m,
    # RMSE = sqrt(30/4) deg and sqrt(0.30/4) m
    t_az, t_r = [-45.0, -15.0, 15.0, 45.0], [1.0, 2.0, 3.0, 4.0]
    est = _est([4], [[a + d for a, d in zip(t_az, [1, -2, 3, -4])]], [[0.0] * 4],
               [[r + d for r, d in zip(t_r, [0.1, 0.2, -0.3, 0.4])]])
    truth = _truth([4], [t_az], [[0.0] * 4], [t_r])
    crb_az = torch.deg2rad(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64))
    crb_el = torch.deg2rad(torch.tensor([[0.0, 0.0, 0.0, 2.0]], dtype=torch.float64))
    crb = CRBResult(azimuth=crb_az, elevation=crb_el, range_m=torch.full((1, 4), 0.5,
                    dtype=torch.float64), fim=torch.zeros(1, 12, 12))
    s = summarize(match_sources(est, *truth), crb)
    assert s.azimuth_median_deg == pytest.approx(2.5) and s.elevation_rmse_deg == 0.0
    assert s.azimuth_rmse_deg == pytest.approx(math.sqrt(30 / 4))
    assert s.angle_rmse_deg == pytest.approx(math.sqrt(30 / 4))  # on the horizon
    assert s.range_median_m == pytest.approx(0.25) and s.range_rmse_m == pytest.approx(
        math.sqrt(0.30 / 4))
    assert s.crb_azimuth_median_deg == pytest.approx(2.5)
    assert s.crb_azimuth_rms_deg == pytest.approx(math.sqrt(30 / 4))
    assert s.crb_elevation_median_deg == pytest.approx(0.0)
    assert s.crb_elevation_rms_deg == pytest.approx(1.0)  # sqrt(2^2 / 4), in degrees
    assert s.crb_angle_rms_deg == pytest.approx(math.sqrt((1 + 4 + 9 + 16 + 4) / 4))
    assert s.crb_range_median_m == pytest.approx(0.5) and s.crb_range_rms_m == pytest.approx(0.5)
    # each source against its own bound: |error| / sqrt(CRB) = 1, 1, 1, 1 (azimuth) and
    # 0.2, 0.4, 0.6, 0.8 (range), medians over 0.6745; the elevation's known (0) bounds skipped
    assert s.azimuth_median_over_bound == pytest.approx(1 / 0.6745)
    assert s.range_median_over_bound == pytest.approx(0.5 / 0.6745)
    assert s.elevation_median_over_bound == pytest.approx(0.0)
    # the dict of the users' crb() (degrees) is taken as well (it was an AttributeError)
    as_dict = {"azimuth_deg": crb.azimuth.rad2deg(), "elevation_deg": crb.elevation.rad2deg(),
               "range_m": crb.range_m}
    got = dataclasses.asdict(summarize(match_sources(est, *truth), as_dict))
    assert got == pytest.approx(dataclasses.asdict(s), nan_ok=True)
    with pytest.raises(TypeError, match="crb must be a CRBResult or the dict"):
        summarize(match_sources(est, *truth), {"azimuth": crb.azimuth})


def test_range_term_breaks_angular_ties():
    # both estimates are 3 deg from both truths; only range tells them apart
    truth = _truth([2], [[-3.0, 3.0]], [[0.0, 0.0]], [[1.0, 9.0]])
    est = _est([2], [[0.0, 0.0]], [[0.0, 0.0]], [[9.0, 1.0]])
    m = match_sources(est, *truth)
    assert m.est_index.tolist() == [[1, 0]]
    assert torch.allclose(m.range_error, torch.zeros(1, 2, dtype=torch.float64))


def test_grouping_by_snr_and_K():
    est = _est([3, 2], [[-40.0, 10.0, 35.0], [0.0, 26.0, NAN]],
               [[5.0, -10.0, 20.0], [0.0, 3.0, NAN]], [[1.0, 4.0, 8.0], [2.0, 6.0, NAN]])
    m = match_sources(est, *TRUTH)
    by_K = summarize_by_K(m)
    assert sorted(by_K) == [2, 3]
    assert by_K[3].n_true == 3 and by_K[3].f1 == 1.0
    assert by_K[2].n_detected == 1 and by_K[2].azimuth_median_deg == pytest.approx(3.0)
    by_snr = summarize_by_snr(m, torch.tensor([-5.2, 10.1]), bin_db=5.0)
    assert sorted(by_snr) == [-5.0, 10.0] and by_snr[-5.0] == by_K[3]
    # a scene without an SNR is its own group, not dropped and not another SNR's
    by_snr = summarize_by_snr(m, torch.tensor([NAN, 10.1]), bin_db=5.0)
    assert list(by_snr)[0] == 10.0 and math.isnan(list(by_snr)[1]) and len(by_snr) == 2
    assert by_snr[math.nan] == by_K[3] and by_snr[10.0] == by_K[2]



def test_truth_and_snr_as_numpy_arrays_or_lists_give_the_same_metrics():
    import numpy as np

    est = _est([3, 2], [[-40.0, 10.0, 35.0], [0.0, 26.0, NAN]],
               [[5.0, -10.0, 20.0], [0.0, 3.0, NAN]], [[1.0, 4.0, 8.0], [2.0, 6.0, NAN]])
    ref = match_sources(est, *TRUTH)
    got = match_sources(est, *(t.numpy() for t in TRUTH[:3]), TRUTH[3].tolist())
    assert torch.equal(got.est_index, ref.est_index) and summarize(got) == summarize(ref)
    assert summarize_by_snr(got, np.array([-5.2, 10.1]), bin_db=5.0) == \
        summarize_by_snr(ref, torch.tensor([-5.2, 10.1]), bin_db=5.0)
    assert [label for label, _ in snr_groups(np.array([-5.2, 10.1]))] == \
        [label for label, _ in snr_groups(torch.tensor([-5.2, 10.1]))]


def test_snr_groups_keep_every_scene_and_label_bins_by_their_mean():
    snr = torch.tensor([-2.0, -2.0, 3.0, 6.5, NAN, 12.4, NAN, 0.1])
    groups = snr_groups(snr, bin_db=5.0)
    labels = [g[0] for g in groups]
    assert labels[:-1] == [-1.3, 4.8, 12.4] and math.isnan(labels[-1])  # -2,-2,0.1 | 3,6.5
    masks = torch.stack([g[1] for g in groups])
    assert masks.sum(0).tolist() == [1] * len(snr)  # every scene in exactly one group
    assert masks[-1].tolist() == torch.isnan(snr).tolist()
    # a file at one fixed SNR reads it exactly, whatever the bin
    assert [g[0] for g in snr_groups(torch.full((3,), -2.0), 5.0)] == [-2.0]
    assert [g[0] for g in snr_groups(torch.tensor([-0.01, 0.02]), 5.0)] == [0.0]
    assert str(snr_groups(torch.tensor([-0.04]), 5.0)[0][0]) == "0.0"  # not -0.0
    with pytest.raises(ValueError, match="bin"):
        snr_groups(snr, 0.0)
    # a sweep in steps of half a bin: each value halfway in the upper bin, every bin used
    # (a review: round-half-to-even put 2.5 and 7.5 dB in the 0 and 10 dB bins)
    halves = torch.tensor([-2.5, 2.5, 7.5, 12.5, 17.5, 22.5]).repeat_interleave(2)
    assert [g[0] for g in snr_groups(halves, 5.0)] == [-2.5, 2.5, 7.5, 12.5, 17.5, 22.5]
    # two bins whose means round to one label get more digits (a review: 7.46 and 7.5 dB
    # were two rows both labelled 7.5)
    assert [g[0] for g in snr_groups(torch.tensor([7.46, 7.5]), 5.0)] == [7.46, 7.5]
    assert [g[0] for g in snr_groups(torch.tensor([-2.54, -2.5, 4.0]), 5.0)] == [-2.54, -2.5,
                                                                                  4.0]
    by_snr = summarize_by_snr(match_sources(_est([1] * 2, [[0.0]] * 2, [[0.0]] * 2,
                                                 [[2.0]] * 2),
                                            *_truth([1] * 2, [[0.0]] * 2, [[0.0]] * 2,
                                                    [[2.0]] * 2)),
                              torch.tensor([1.5, 2.5]))
    assert sorted(by_snr) == [2.0, 3.0]


def test_one_scene_of_a_matching_is_a_matching_of_one_scene():
    # a review: m[0] dropped the batch axis, and summarize raised IndexError
    m = match_sources(_est([3, 2], [[35.0, -40.0, 10.0], [20.0, 0.0, NAN]],
                           [[20.0, 5.0, -10.0], [3.0, 0.0, NAN]],
                           [[8.0, 1.0, 4.0], [6.0, 2.0, NAN]]), *TRUTH)
    assert len(m[1]) == 1 and summarize(m[1]) == summarize(m[1:2])
    assert summarize(m[-2]) == summarize(m[0:1])
    with pytest.raises(IndexError, match="scene 2 of a matching of 2 scenes"):
        m[2]


def test_matching_chunk_by_chunk_equals_matching_all_at_once():
    est = _est([3, 2], [[-40.0, 10.0, 35.0], [0.0, 26.0, NAN]],
               [[5.0, -10.0, 20.0], [0.0, 3.0, NAN]], [[1.0, 4.0, 8.0], [2.0, 6.0, NAN]])
    whole = match_sources(est, *TRUTH)
    chunks = concat_matchings([match_sources(est[i:i + 1], *(t[i:i + 1] for t in TRUTH))
                               for i in range(2)])
    for name in ("est_index", "K_true", "K_est", "truth_mask", "est_mask"):
        assert torch.equal(getattr(chunks, name), getattr(whole, name)), name
    torch.testing.assert_close(chunks.angle_error, whole.angle_error, equal_nan=True)
    assert summarize(chunks) == summarize(whole)
    # files of another K_max: a part with fewer true and estimate slots is padded
    narrow = match_sources(_est([2], [[0.0, 26.0]], [[0.0, 3.0]], [[2.0, 6.0]]),
                           *(t[1:2, :2] if t.dim() == 2 else t[1:2] for t in TRUTH))
    mixed = concat_matchings([match_sources(est[:1], *(t[:1] for t in TRUTH)), narrow])
    assert mixed.truth_mask.shape == (2, 3) and mixed.est_index[1, 2] == -1
    assert summarize(mixed) == summarize(whole)
    # the narrower part first: the wider one sets the width all the same
    flipped = concat_matchings([narrow, match_sources(est[:1], *(t[:1] for t in TRUTH))])
    assert flipped.truth_mask.shape == (2, 3) and summarize(flipped) == summarize(whole)
    with pytest.raises(ValueError, match="matchings with different gates cannot be"):
        concat_matchings([whole, dataclasses.replace(whole, gate_deg=2.0)])
    with pytest.raises(ValueError, match="no matchings"):
        concat_matchings([])


def _noisy(truth, K_est, sigma_deg, gen):
    """Estimates near the truth: K_est [B] sources, the first ones at the true positions plus
    Gaussian noise, extra ones far from any source (false alarms)."""
    az, el, r, _ = truth
    B, Kt = az.shape
    slots = int(K_est.max())
    pad = lambda t, v: torch.cat([t, torch.full((B, slots - Kt), v, dtype=t.dtype)], 1)[:, :slots]  # noqa: E731
    noise = lambda: rad(sigma_deg) * torch.randn(B, slots, generator=gen, dtype=torch.float64)  # noqa: E731
    keep = torch.arange(slots) < K_est.unsqueeze(-1)
    nan = torch.tensor(NAN, dtype=torch.float64)
    e_az = torch.where(keep, pad(az, rad(-55.0)) + noise(), nan)
    e_el = torch.where(keep, pad(el, rad(-40.0)) + noise(), nan)
    e_r = torch.where(keep, pad(r, 9.0) * (1 + 0.05 * noise()), nan)
    return Estimates(K=K_est, azimuth=e_az, elevation=e_el, range_m=e_r,
                     score=torch.ones_like(e_az))


def _random_truth(B, gen):
    az = rad(30.0) * torch.tensor([-1.0, 1.0], dtype=torch.float64).repeat(B, 1)
    az = az + rad(5.0) * torch.rand(B, 2, generator=gen, dtype=torch.float64)
    el = rad(10.0) * torch.rand(B, 2, generator=gen, dtype=torch.float64)
    r = 1.0 + 5.0 * torch.rand(B, 2, generator=gen, dtype=torch.float64)
    return az, el, r, torch.full((B,), 2)


def test_an_efficient_estimator_reads_1_against_each_source_s_bound():
    # errors drawn at each source's own bound, the bounds varying 100x between sources (as
    # the range's do): the per-source median reads ~1, while the median error against
    # 0.6745 x the median bound reads well below it (a review of stop 55: 0.75 for range)
    gen = torch.Generator().manual_seed(5)
    B = 2000
    truth = _random_truth(B, gen)
    bound = 10 ** (2 * torch.rand(B, 2, generator=gen, dtype=torch.float64) - 3)  # [m]
    r = truth[2] + bound * torch.randn(B, 2, generator=gen, dtype=torch.float64)
    est = Estimates(K=truth[3], azimuth=truth[0].clone(), elevation=truth[1].clone(),
                    range_m=r, score=torch.ones_like(r))
    small = torch.full((B, 2), 1e-3, dtype=torch.float64)
    crb = CRBResult(azimuth=small, elevation=small, range_m=bound,
                    fim=torch.zeros(B, 6, 6, dtype=torch.float64))
    s = summarize(match_sources(est, *truth), crb)
    assert s.range_median_over_bound == pytest.approx(1.0, abs=0.05)
    assert s.range_median_m / (0.6745 * s.crb_range_median_m) < 0.9  # (0.85 here)


def test_paired_bootstrap_of_one_estimator_against_itself_has_no_spread():
    gen = torch.Generator().manual_seed(1)
    truth = _random_truth(50, gen)
    m = match_sources(_noisy(truth, torch.randint(1, 4, (50,), generator=gen), 1.0, gen),
                      *truth)
    se = paired_bootstrap_se(m, m, reps=200)
    assert set(se) >= {"f1_diff", "K_accuracy_diff", "azimuth_median_ratio",
                       "range_median_ratio_common"}
    assert all(v == 0.0 for v in se.values()), se


def test_one_scene_has_no_standard_error_and_the_snr_bin_must_be_positive():
    # a review: one scene gave standard errors of 0 ("1 (±0)"); a bin of 0 dB put every
    # scene under "unknown SNR", and a scene at -1 dB was keyed -0.0
    est = _est([3, 2], [[-40.0, 10.0, 35.0], [1.0, 20.0, NAN]],
               [[5.0, -10.0, 20.0], [0.0, 3.0, NAN]], [[1.0, 4.0, 8.0], [2.0, 6.0, NAN]])
    m = match_sources(est, *TRUTH)
    se = paired_bootstrap_se(m[:1], m[:1])
    assert se and all(math.isnan(v) for v in se.values()), se
    none = paired_bootstrap_se(m[:0], m[:0])  # no scene: the same NaNs, not a torch error
    assert none.keys() == se.keys() and all(math.isnan(v) for v in none.values())
    empty = summarize(m[:0])  # no scene: F1 NaN beside K accuracy's (a review: F1 1.0)
    assert all(math.isnan(getattr(empty, k)) for k in ("f1", "precision", "recall",
                                                         "K_accuracy"))
    assert math.isfinite(summarize(m[:1]).f1)  # (one scene: a number)
    assert paired_bootstrap_se(m, m)["f1_diff"] == 0.0  # two scenes: a spread (here none)
    # pairs in one scene of two: a resample of the other alone has no median (NaN), not
    # a median of sources it did not draw
    lone = dataclasses.replace(m, est_index=torch.where(torch.arange(2).unsqueeze(-1) == 0,
                                                        m.est_index, -1),
                               azimuth_error=torch.full_like(m.azimuth_error, 0.01))
    assert math.isnan(paired_bootstrap_se(lone, lone, reps=50)["azimuth_median_ratio"])
    for bad in (0.0, -5.0, NAN):
        with pytest.raises(ValueError, match="the SNR bin must be > 0 dB"):
            summarize_by_snr(m, torch.tensor([10.0, 12.0]), bin_db=bad)
    keys = list(summarize_by_snr(m, torch.tensor([-1.0, 12.0]), bin_db=5.0))
    assert keys == [0.0, 10.0] and math.copysign(1.0, keys[0]) == 1.0


def test_paired_bootstrap_se_of_k_accuracy_is_the_binomial_one():
    """a always right, b wrong on a random third: K accuracy difference = mean of a 0/1
    variable, whose standard error is sqrt(p (1 - p) / n)."""
    gen = torch.Generator().manual_seed(2)
    n = 600
    truth = _random_truth(n, gen)
    wrong = torch.rand(n, generator=gen) < 1 / 3
    a = match_sources(_noisy(truth, torch.full((n,), 2), 0.5, gen), *truth)
    b = match_sources(_noisy(truth, torch.where(wrong, 3, 2), 0.5, gen), *truth)
    p = wrong.double().mean()
    se = paired_bootstrap_se(a, b, reps=4000, seed=3)
    assert se["K_accuracy_diff"] == pytest.approx(float((p * (1 - p) / n).sqrt()), rel=0.06)


def test_paired_bootstrap_equals_explicit_resampling():
    """The weighted (vectorised) statistics are those of resampled scene lists: the same
    draws, pooled F1 by summarize(), lower medians of the repeated errors."""
    gen = torch.Generator().manual_seed(4)
    n, reps, seed = 40, 30, 5
    truth = _random_truth(n, gen)
    a = match_sources(_noisy(truth, torch.randint(1, 4, (n,), generator=gen), 1.0, gen), *truth)
    b = match_sources(_noisy(truth, torch.randint(1, 4, (n,), generator=gen), 2.0, gen), *truth)
    draws = torch.randint(0, n, (reps, n), generator=torch.Generator().manual_seed(seed))

    def lower_median(x):
        return x.sort().values[(x.numel() - 1) // 2]

    f1, ratio, common = [], [], []
    for d in draws:
        ra, rb = a[d], b[d]
        f1.append(summarize(ra).f1 - summarize(rb).f1)
        ratio.append(lower_median(ra.range_error[ra.paired].abs())
                     / lower_median(rb.range_error[rb.paired].abs()))
        both = ra.paired & rb.paired
        common.append(lower_median(ra.azimuth_error[both].abs())
                      / lower_median(rb.azimuth_error[both].abs()))
    se = paired_bootstrap_se(a, b, reps=reps, seed=seed)
    f1 = torch.tensor(f1, dtype=torch.float64)
    assert se["f1_diff"] == pytest.approx(float(f1.std()), rel=1e-9)
    assert se["range_median_ratio"] == pytest.approx(float(torch.stack(ratio).std()), rel=1e-9)
    assert se["azimuth_median_ratio_common"] == pytest.approx(
        float(torch.stack(common).std()), rel=1e-9)
    with pytest.raises(ValueError, match="same scenes"):
        paired_bootstrap_se(a, b[:10])


@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_midpoint_median_is_numpy_s(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    assert midpoint_median(x) == pytest.approx(float(np.median(x.numpy())), abs=1e-15)


def test_median_of_more_than_two_to_the_24_values():
    """torch.quantile refuses more than 2^24 values: the pairs of ~5.6 million scenes, which
    `risloc localize` scores in one table (a review crashed it so)."""
    n = 2**24 + 2
    x = torch.arange(n, dtype=torch.float64).flip(0)
    assert midpoint_median(x) == (n - 1) / 2


def test_estimates_without_slots_miss_every_source():
    """A CSV with no rows reads back as Estimates with zero slots (read_estimates(.., 0))."""
    empty = Estimates(K=torch.zeros(2, dtype=torch.int64), azimuth=torch.zeros(2, 0),
                      elevation=torch.zeros(2, 0), range_m=torch.zeros(2, 0),
                      score=torch.zeros(2, 0))
    m = match_sources(empty, *TRUTH)
    s = summarize(m)
    assert (s.n_true, s.n_estimated, s.n_detected, s.f1) == (5, 0, 0, 0.0)
    assert s.K_accuracy == 0.0 and math.isnan(s.azimuth_median_deg)


def test_common_median_ratios_compare_the_sources_both_pair():
    # a: every true source, 1 deg off in azimuth; b: only scene 0's three, 2 deg off in
    # azimuth and 0.5 m in range
    a = _est([3, 2], [[-39.0, 11.0, 36.0], [1.0, 21.0, NAN]],
             [[5.0, -10.0, 20.0], [0.0, 3.0, NAN]], [[1.0, 4.0, 8.0], [2.0, 6.0, NAN]])
    b = _est([3, 0], [[-38.0, 12.0, 37.0], [NAN] * 3], [[5.0, -10.0, 20.0], [NAN] * 3],
             [[1.5, 4.5, 8.5], [NAN] * 3])
    ma, mb = match_sources(a, *TRUTH), match_sources(b, *TRUTH)
    r = common_median_ratios(ma, mb)
    assert r["azimuth_median_ratio_common"] == pytest.approx(0.5)
    assert math.isnan(r["elevation_median_ratio_common"])  # b's median is 0
    assert r["range_median_ratio_common"] == pytest.approx(0.0)
    assert common_median_ratios(mb, ma)["azimuth_median_ratio_common"] == pytest.approx(2.0)


def test_scenes_without_sources_and_estimates_score_perfectly():
    """Nothing there and nothing estimated: precision and recall are 1 (module docstring),
    so F1 is 1; nothing estimated for a real source: precision 1, recall 0 (a mutation
    review: neither convention was checked)."""
    empty = Estimates(K=torch.zeros(1, dtype=torch.int64), azimuth=torch.zeros(1, 2),
                      elevation=torch.zeros(1, 2), range_m=torch.zeros(1, 2),
                      score=torch.zeros(1, 2))
    s = summarize(match_sources(empty, *_truth([0], [[NAN, NAN]], [[NAN, NAN]], [[NAN, NAN]])))
    assert (s.n_true, s.n_estimated, s.precision, s.recall, s.f1) == (0, 0, 1.0, 1.0, 1.0)
    assert s.K_accuracy == 1.0
    s = summarize(match_sources(empty, *_truth([1], [[0.0, NAN]], [[0.0, NAN]], [[2.0, NAN]])))
    assert (s.precision, s.recall, s.f1) == (1.0, 0.0, 0.0)


def test_a_pair_exactly_at_the_gate_is_a_detection_and_one_beyond_is_not():
    """"Within gate_deg": an angle error of exactly 5 deg is detected, 5.5 deg is not."""
    truth = _truth([2], [[-20.0, 20.0]], [[0.0, 0.0]], [[3.0, 3.0]])
    m = match_sources(_est([2], [[-15.0, 25.5]], [[0.0, 0.0]], [[3.0, 3.0]]), *truth)
    assert m.paired.tolist() == [[True, True]]
    assert m.detected.tolist() == [[True, False]]


def test_the_gate_passed_to_match_sources_decides_the_detections():
    """gate_deg is the matching's own: 5.5 deg off is a detection within a 6 deg gate."""
    truth = _truth([2], [[-20.0, 20.0]], [[0.0, 0.0]], [[3.0, 3.0]])
    m = match_sources(_est([2], [[-15.0, 25.5]], [[0.0, 0.0]], [[3.0, 3.0]]), *truth,
                      gate_deg=6.0)
    assert m.gate_deg == 6.0 and m.detected.tolist() == [[True, True]]
    assert summarize(m).f1 == 1.0


def test_pairing_minimises_the_exact_cost_below_a_degree():
    """Sub-degree differences decide the pairing: 1.2 and 0.9 deg estimates of sources at 0
    and 2 deg pair crosswise (0.8 + 0.9 deg), not in slot order (1.2 + 1.1 deg)."""
    truth = _truth([2], [[0.0, 2.0]], [[0.0, 0.0]], [[3.0, 3.0]])
    m = match_sources(_est([2], [[1.2, 0.9]], [[0.0, 0.0]], [[3.0, 3.0]]), *truth)
    assert m.est_index.tolist() == [[1, 0]]
    assert summarize(m).angle_median_deg == pytest.approx(0.85)


def test_the_bound_is_summarised_over_the_paired_sources_only():
    """A missed source's bound stays out of the CRB columns ("the same paired true
    sources")."""
    truth = _truth([2], [[-30.0, 30.0]], [[0.0, 0.0]], [[3.0, 3.0]])
    m = match_sources(_est([1], [[-30.5]], [[0.0]], [[3.0]]), *truth)
    assert m.paired.tolist() == [[True, False]]
    crb = CRBResult(azimuth=torch.deg2rad(torch.tensor([[1.0, 10.0]], dtype=torch.float64)),
                    elevation=torch.deg2rad(torch.tensor([[2.0, 20.0]], dtype=torch.float64)),
                    range_m=torch.tensor([[0.1, 1.0]], dtype=torch.float64),
                    fim=torch.zeros(1, 0, 0, dtype=torch.float64))
    s = summarize(m, crb)
    assert s.crb_azimuth_median_deg == pytest.approx(1.0)
    assert s.crb_elevation_rms_deg == pytest.approx(2.0)
    assert s.crb_range_median_m == pytest.approx(0.1)


def test_errors_are_estimate_minus_truth():
    """The signed errors of a Matching are estimate - truth (its docstring) in azimuth,
    elevation and range (a mutation review: only the azimuth's sign was checked)."""
    m = match_sources(_est([1], [[11.0]], [[-3.0]], [[2.5]]),
                      *_truth([1], [[10.0]], [[-5.0]], [[3.0]]))
    torch.testing.assert_close(m.azimuth_error.rad2deg(), torch.tensor([[1.0]],
                                                                        dtype=torch.float64))
    torch.testing.assert_close(m.elevation_error.rad2deg(), torch.tensor([[2.0]],
                                                                          dtype=torch.float64))
    torch.testing.assert_close(m.range_error, torch.tensor([[-0.5]], dtype=torch.float64))


def test_elevation_errors_are_summarised_in_degrees():
    """(a mutation review: every summarised elevation error was 0, in any unit)"""
    s = summarize(match_sources(_est([2], [[-20.0, 20.0]], [[1.0, -3.0]], [[3.0, 3.0]]),
                                *_truth([2], [[-20.0, 20.0]], [[0.0, 0.0]], [[3.0, 3.0]])))
    assert s.elevation_median_deg == pytest.approx(2.0)
    assert s.elevation_rmse_deg == pytest.approx(math.sqrt(5.0))


def test_range_weight_is_degrees_per_metre_and_defaults_to_half():
    """Cost = angle [deg] + w |range error| [m]. Pairing straight costs 2 + 2 deg of angle
    and 3 + 3 m of range, crossing 4 + 4 deg and no range: with w = 0.5 deg/m (the default,
    2 m worth 1 deg) straight is cheaper (7 < 8), with w = 1 crossing (8 < 10)."""
    truth = _truth([2], [[0.0, 6.0]], [[0.0, 0.0]], [[2.0, 5.0]])
    est = _est([2], [[2.0, 4.0]], [[0.0, 0.0]], [[5.0, 2.0]])
    assert match_sources(est, *truth).est_index.tolist() == [[0, 1]]
    assert match_sources(est, *truth, range_weight_deg_per_m=1.0).est_index.tolist() == [[1, 0]]


def test_pairing_is_optimal_not_greedy():
    """Hungarian: the least total cost, not the closest pair first. Estimate 0 is 1 deg from
    source 0 and 4.5 deg from source 1; estimate 1 is 3 deg from source 0 and 8.5 deg from
    source 1. Closest-first pairs 1 + 8.5 deg (one detection); optimal 4.5 + 3 (two)."""
    truth = _truth([2], [[0.0, 5.5]], [[0.0, 0.0]], [[3.0, 3.0]])
    m = match_sources(_est([2], [[1.0, -3.0]], [[0.0, 0.0]], [[3.0, 3.0]]), *truth)
    assert m.est_index.tolist() == [[1, 0]]
    assert summarize(m).n_detected == 2


def test_elevations_beyond_a_right_angle_are_refused():
    """An elevation of 2 rad (2 deg passed as radians) is beyond +-pi/2: refused, as the
    module's check says (a mutation review: only 40 'rad', beyond pi too, was tried)."""
    est = _est([1], [[0.0]], [[0.0]], [[2.0]])
    az, el, r, K = _truth([1], [[0.0]], [[0.0]], [[2.0]])
    with pytest.raises(ValueError, match=r"true elevations beyond \+-pi/2 rad"):
        match_sources(est, az, torch.full_like(el, 2.0), r, K)


def test_summaries_per_group_carry_each_group_s_bound():
    """summarize_by_K with a CRB: each K's summary holds the bound of its own scenes."""
    est = _est([3, 2], [[-40.0, 10.0, 35.0], [0.0, 26.0, NAN]],
               [[5.0, -10.0, 20.0], [0.0, 3.0, NAN]], [[1.0, 4.0, 8.0], [2.0, 6.0, NAN]])
    m = match_sources(est, *TRUTH)
    bound = torch.tensor([[0.01, 0.01, 0.01], [0.03, 0.03, NAN]], dtype=torch.float64)
    crb = CRBResult(azimuth=bound, elevation=bound, range_m=bound,
                    fim=torch.zeros(2, 9, 9, dtype=torch.float64))
    by_K = summarize_by_K(m, crb)
    assert by_K[3].crb_range_median_m == pytest.approx(0.01)
    assert by_K[2].crb_range_median_m == pytest.approx(0.03)
    assert by_K[2] == summarize(m[1], crb[1:2])
    # a bound computed at the K sources found rather than at the truth's padded slots is
    # refused with the way to compute it (an API review: the error named only the shapes)
    d = {"azimuth_deg": bound[:, :2], "elevation_deg": bound[:, :2], "range_m": bound[:, :2]}
    with pytest.raises(ValueError, match=r"CRB slots \(2, 2\) do not match the true source "
                                         r"slots \(2, 3\): compute the bound at the truth "
                                         r"passed to match_sources, \[B, K_slots\] NaN-padded"):
        summarize(m, d)
    # per group too, before the groups select their scenes: the bound of all scenes beside
    # a matching of some of them (a persona review: torch's IndexError on a mask's shape)
    for grouped in (lambda: summarize_by_K(m[:1], crb),
                    lambda: summarize_by_snr(m[:1], torch.tensor([10.0]), crb)):
        with pytest.raises(ValueError, match=r"CRB slots \(2, 3\) do not match the true "
                                             r"source slots \(1, 3\)"):
            grouped()


def test_summarize_by_snr_names_an_snr_that_is_not_one_per_scene():
    """One number for every scene, as the localizers take it, or another scene count is
    named as snr_db's, with the fix (a persona review: "groups must be [B=2], got ()",
    a parameter the caller never passed)."""
    m = match_sources(_est([3, 2], [[-40.0, 10.0, 35.0], [0.0, 20.0, NAN]],
                           [[5.0, -10.0, 20.0], [0.0, 3.0, NAN]],
                           [[1.0, 4.0, 8.0], [2.0, 6.0, NAN]]), *TRUTH)
    for bad, shape in ((10.0, r"\(\)"), (torch.tensor([10.0]), r"\(1,\)"),
                       (torch.tensor([[10.0], [10.0]]), r"\(2, 1\)")):
        with pytest.raises(ValueError, match=r"snr_db must hold one SNR per scene of the "
                                             r"matching, \[B=2\] .*got shape " + shape +
                                             r": for scenes all at one SNR, summarize"):
            summarize_by_snr(m, bad)
    assert list(summarize_by_snr(m, torch.tensor([10.0, 10.0]))) == [10.0]


def test_common_medians_leave_out_the_sources_only_one_pairs():
    """a: source 0 1 deg off, source 1 3 deg off; b pairs source 0 only, 2 deg off: over
    the source both pair, 1 / 2 (over a's own pairs it would read 2 / 2)."""
    truth = _truth([2], [[-20.0, 20.0]], [[0.0, 0.0]], [[3.0, 3.0]])
    a = match_sources(_est([2], [[-19.0, 23.0]], [[0.0, 0.0]], [[3.0, 3.0]]), *truth)
    b = match_sources(_est([1], [[-18.0, NAN]], [[0.0, NAN]], [[3.0, NAN]]), *truth)
    assert common_median_ratios(a, b)["azimuth_median_ratio_common"] == pytest.approx(0.5)


def test_paired_bootstrap_f1_counts_detections_and_empty_resamples_as_summarize():
    """The bootstrap's F1 is summarize()'s on each resample: pairs beyond the gate are not
    detections, and a resample with no source and no estimate scores 1 (a mutation review:
    counting pairs, or scoring such a resample 0, passed every test)."""
    # scene 0: no source; a estimates one (a false alarm), b nothing
    # scene 1: one source; a 1 deg off, b 10 deg off (paired, not detected)
    # scene 2: one source; both exact
    truth = _truth([0, 1, 1], [[NAN], [0.0], [20.0]], [[NAN], [0.0], [0.0]],
                   [[NAN], [3.0], [3.0]])
    a = match_sources(_est([1, 1, 1], [[30.0], [1.0], [20.0]], [[0.0]] * 3, [[3.0]] * 3),
                      *truth)
    b = match_sources(_est([0, 1, 1], [[NAN], [10.0], [20.0]], [[NAN], [0.0], [0.0]],
                           [[NAN], [3.0], [3.0]]), *truth)
    n, reps, seed = 3, 60, 7
    draws = torch.randint(0, n, (reps, n), generator=torch.Generator().manual_seed(seed))
    f1 = torch.tensor([summarize(a[d]).f1 - summarize(b[d]).f1 for d in draws],
                      dtype=torch.float64)
    se = paired_bootstrap_se(a, b, reps=reps, seed=seed)
    assert se["f1_diff"] == pytest.approx(float(f1.std()), rel=1e-9)


def test_arrays_in_degrees_score_as_the_estimates_they_hold(caplog):
    """Another estimator's NaN-padded arrays in degrees / metres (a dict with
    LocalizationResult.to_numpy()'s keys) pair and score as the Estimates of the same
    sources in radians; a dict of other keys is named; radians passed as degrees (every
    angle within +-pi/2 "degrees" while the truth reaches beyond) are warned of."""
    arrays = {"azimuth_deg": np.array([[35.5, -40.0, NAN], [20.0, NAN, NAN]]),
              "elevation_deg": np.array([[20.0, 5.5, NAN], [3.0, NAN, NAN]]),
              "range_m": np.array([[8.0, 1.2, NAN], [6.0, NAN, NAN]])}  # a source dropped
    m = match_sources(arrays, *TRUTH)
    est = _est([2, 1], *(arrays[k].tolist() for k in ("azimuth_deg", "elevation_deg",
                                                       "range_m")))
    assert summarize(m) == summarize(match_sources(est, *TRUTH))
    s = summarize(m)
    assert (s.n_paired, s.n_missed, s.K_accuracy) == (3, 2, 0.0)
    assert s.azimuth_median_deg == pytest.approx(0.0) and s.range_rmse_m == pytest.approx(
        math.sqrt(0.04 / 3))
    with pytest.raises(ValueError, match=r"est as a dict holds azimuth_deg, elevation_deg, "
                                         r"range_m .*got the keys \['azimuth', 'elevation'"):
        match_sources({"azimuth": 1, "elevation": 2, "range_m": 3}, *TRUTH)
    assert not caplog.records
    as_radians = {k: np.deg2rad(v) if k.endswith("_deg") else v for k, v in arrays.items()}
    wide = _truth([3, 3], [[-40.0, 10.0, 35.0], [0.0, 20.0, 1.0]],
                  [[5.0, -10.0, 20.0], [0.0, 3.0, 1.0]], [[1.0, 4.0, 8.0], [2.0, 6.0, 3.0]])
    match_sources({k: np.concatenate([v, v]) for k, v in as_radians.items()},
                  *(torch.cat([t, t]) for t in wide))  # 6 estimates, within +-0.70 "deg"
    assert "the estimated angles of all 6 sources lie within +-0.70 deg: radians stored as " \
        "degrees? (azimuth_deg and elevation_deg hold degrees" in caplog.text
    caplog.clear()  # sources that are all near boresight, truth and estimates: no warning
    narrow = {k: np.concatenate([v, v]) for k, v in as_radians.items()}
    match_sources(narrow, *_truth([2, 1, 2, 1], *(narrow[k].tolist() for k in (
        "azimuth_deg", "elevation_deg", "range_m"))))
    assert not caplog.records


PROPERTY = settings(max_examples=30, deadline=None, derandomize=True)


@st.composite
def _scenes(draw):
    """(truth, estimates) of 1..4 scenes: K true sources (0..3 slots), Ke estimates (0..3,
    the slots' width padded by up to one more), random positions (a drawn seed: no ties)."""
    B, Kt_slots, Ke_slots = draw(st.integers(1, 4)), draw(st.integers(1, 3)), \
        draw(st.integers(1, 4))
    Kt = [draw(st.integers(0, Kt_slots)) for _ in range(B)]
    Ke = [draw(st.integers(0, Ke_slots)) for _ in range(B)]
    g = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def positions(K, slots):
        az = g.uniform(-math.pi, math.pi, (B, slots))
        el = g.uniform(-math.pi / 2, math.pi / 2, (B, slots))
        r = g.uniform(0.5, 20.0, (B, slots))
        pad = np.arange(slots) >= np.array(K)[:, None]
        return [torch.from_numpy(np.where(pad, NAN, v)) for v in (az, el, r)]

    truth = (*positions(Kt, Kt_slots), torch.tensor(Kt))
    az, el, r = positions(Ke, Ke_slots)
    return truth, Estimates(torch.tensor(Ke), az, el, r, torch.where(torch.isnan(r), NAN, 1.0))


def _permuted_slots(values, K, perm):
    """Each scene's first K slots of [B, S] values reordered by perm (a permutation of
    range(S) restricted to the scene's K: its sources stay in its first slots)."""
    out = values.clone()
    for b, k in enumerate(K.tolist()):
        order = [p for p in perm if p < k]
        out[b, :k] = values[b, order]
    return out


def _summary_close(a, b):
    for key, va in a.as_dict().items():
        vb = b.as_dict()[key]
        assert (va is None) == (vb is None), key
        if va is not None:
            assert math.isclose(va, vb, rel_tol=1e-9, abs_tol=1e-9) or (
                math.isnan(va) and math.isnan(vb)), (key, va, vb)


@PROPERTY
@given(_scenes(), st.permutations(range(4)), st.permutations(range(3)),
       st.sampled_from([0.0, 0.5, 10.0]), st.sampled_from([1.0, 5.0, 90.0]))
def test_a_summary_is_the_same_whatever_the_order_of_the_estimate_and_truth_slots(
        case, est_perm, truth_perm, weight, gate):
    (t_az, t_el, t_r, Kt), est = case
    base = summarize(match_sources(est, t_az, t_el, t_r, Kt, weight, gate))
    perm_e = [p for p in est_perm if p < est.azimuth.shape[-1]]
    perm_t = [p for p in truth_perm if p < t_az.shape[-1]]
    shuffled = Estimates(est.K, *(_permuted_slots(v, est.K, perm_e) for v in (
        est.azimuth, est.elevation, est.range_m, est.score)))
    m = match_sources(shuffled, *(_permuted_slots(v, Kt, perm_t) for v in (t_az, t_el, t_r)),
                      Kt, weight, gate)
    _summary_close(summarize(m), base)


@PROPERTY
@given(_scenes(), st.permutations(range(3)), st.integers(-3, 3))
def test_estimates_equal_to_the_truth_in_any_order_score_perfectly(case, perm, turns):
    """Estimates at the true positions (slots reordered, azimuths turned by whole turns):
    every true source paired with its own estimate, errors 0, F1 and K accuracy 1."""
    (t_az, t_el, t_r, Kt), _ = case
    order = [p for p in perm if p < t_az.shape[-1]]
    est = Estimates(Kt, _permuted_slots(t_az, Kt, order) + 2 * math.pi * turns,
                    *(_permuted_slots(v, Kt, order) for v in (t_el, t_r, t_r)))
    m = match_sources(est, t_az, t_el, t_r, Kt)
    s = summarize(m)
    assert (s.f1, s.precision, s.recall, s.K_accuracy) == (1.0, 1.0, 1.0, 1.0)
    assert s.n_missed == s.n_false_alarms == 0 and s.n_detected == int(Kt.sum())
    for b, k in enumerate(Kt.tolist()):  # slot j of the estimates holds true source order_k[j]
        order_k = [p for p in order if p < k]
        assert [order_k[int(i)] for i in m.est_index[b, :k]] == list(range(k))
    for err in (m.azimuth_error, m.elevation_error, m.range_error, m.angle_error):
        assert torch.allclose(err[m.truth_mask], torch.zeros(()).double(), atol=1e-6)


@PROPERTY
@given(st.floats(-math.pi, math.pi), st.floats(-10.0, 10.0), st.floats(-1.5, 1.5))
def test_azimuth_errors_wrap_into_minus_pi_to_pi(t_az, e_az, el):
    """The azimuth error is e - t wrapped into [-pi, pi): the same direction, a whole turn
    apart, is an error of 0."""
    one = torch.tensor([[1.0]], dtype=torch.float64)
    m = match_sources(_est([1], [math.degrees(e_az)], [math.degrees(el)], [2.0]),
                      one * t_az, one * el, one * 2.0, torch.tensor([1]))
    d = float(m.azimuth_error[0, 0])
    assert -math.pi <= d < math.pi
    turns = (e_az - t_az - d) / (2 * math.pi)
    assert abs(turns - round(turns)) < 1e-9, (d, e_az, t_az)


def test_the_last_scene_by_index_minus_one_is_that_scene():
    # a mutation review: slice(-1, 0) would select no scene at all
    m = match_sources(_est([3, 2], [[35.0, -40.0, 10.0], [20.0, 0.0, NAN]],
                           [[20.0, 5.0, -10.0], [3.0, 0.0, NAN]],
                           [[8.0, 1.0, 4.0], [6.0, 2.0, NAN]]), *TRUTH)
    assert len(m[-1]) == 1 and summarize(m[-1]) == summarize(m[1:2])


def test_errors_of_unpaired_true_sources_are_nan():
    est = _est([1, 0], [[10.0, NAN, NAN], [NAN, NAN, NAN]], [[-10.0, NAN, NAN], [NAN] * 3],
               [[4.0, NAN, NAN], [NAN] * 3])
    m = match_sources(est, *TRUTH)
    unpaired = ~m.paired
    for field in ("azimuth_error", "elevation_error", "angle_error", "range_error"):
        v = getattr(m, field)
        assert torch.isnan(v[unpaired]).all() and not torch.isnan(v[m.paired]).any(), field


def test_paired_bootstrap_ratio_is_nan_when_one_estimator_pairs_nothing():
    gen = torch.Generator().manual_seed(2)
    truth = _random_truth(10, gen)
    good = match_sources(_noisy(truth, truth[3], 1.0, gen), *truth)
    none = match_sources(_est([0] * 10, [[NAN]] * 10, [[NAN]] * 10, [[NAN]] * 10), *truth)
    se = paired_bootstrap_se(none, good, reps=20)
    for name in ("azimuth", "elevation", "range"):
        assert math.isnan(se[f"{name}_median_ratio"]), se
        assert math.isnan(se[f"{name}_median_ratio_common"]), se
    assert not math.isnan(se["f1_diff"])
