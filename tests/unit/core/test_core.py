"""The inference core: operator, parameter layout, input checks, the missing-SNR rule."""

import math

import hypothesis
import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from risloc.config import SceneConfig
from risloc.core import (
    Estimates,
    apply_operator,
    check_measurements,
    check_shapes,
    check_source_counts,
    normalise_scale,
    operators,
    pack,
    scene_problems,
    snr_per_scene,
    steering_at,
    unpack,
)
from risloc.physics import steering
from risloc.simulation import simulate_range


@pytest.fixture(scope="module")
def scenes(system):
    return simulate_range(0, 4, system, SceneConfig(), split="test")


def test_operators_shape_and_values(scenes):
    b = scenes
    Phi = operators(b.H, b.codes)
    assert Phi.shape == (4, 16, 16, 144)  # the full operator H diag(c_l), not H c_l
    assert torch.allclose(Phi[1, 5], b.H[1] @ torch.diag(b.codes[1, 5]))
    with pytest.raises(ValueError):
        operators(b.H, b.codes[:, :, :10])


def test_apply_operator_per_scene_and_shared_rows_match_the_explicit_operator(scenes):
    b = scenes
    H, c = b.H.to(torch.complex128), b.codes.to(torch.complex128)
    for P in (3, 16, 17, 40):  # both routes: P <= M and P > M (M = 16)
        V = torch.randn(4, P, 144, dtype=torch.complex128)
        ref = operators(H, c) @ V.mT.unsqueeze(1)  # (B, L, M, P)
        assert apply_operator(H, c, V).shape == (4, 16, 16, P)
        assert torch.allclose(apply_operator(H, c, V), ref, atol=1e-12)
    shared = torch.randn(7, 144, dtype=torch.complex128)
    ref2 = operators(H, c) @ shared.T
    assert torch.allclose(apply_operator(H, c, shared), ref2, atol=1e-12)
    assert apply_operator(H, c, shared).shape == (4, 16, 16, 7)
    buf = torch.empty(4, 16 * 16, 7, dtype=torch.complex128)
    into = apply_operator(H, c, shared, out=buf)  # the product lands in the caller's buffer
    assert into.data_ptr() == buf.data_ptr() and torch.equal(into, apply_operator(H, c, shared))
    with pytest.raises(ValueError, match="shared rows"):
        apply_operator(H, c, torch.randn(4, 3, 144, dtype=torch.complex128), out=buf)


def test_apply_operator_keeps_snapshots_and_rows_apart_where_L_and_M_differ():
    """L != M (the scenes above have L = M = 16, where reading the [B, L*M, P] product as
    (B, M, L, P) passed a mutation review): every route gives [B, L, M, P] of Phi_l v_p."""
    g = torch.Generator().manual_seed(0)
    B, L, M, N = 2, 3, 5, 7
    H, c = (torch.randn(B, M, N, dtype=torch.complex128, generator=g),
            torch.randn(B, L, N, dtype=torch.complex128, generator=g))
    for V in (torch.randn(B, 2, N, dtype=torch.complex128, generator=g),  # P <= M
              torch.randn(B, 9, N, dtype=torch.complex128, generator=g),  # P > M
              torch.randn(4, N, dtype=torch.complex128, generator=g)):    # shared rows
        rows = V if V.ndim == 3 else V.expand(B, -1, -1)
        ref = operators(H, c) @ rows.mT.unsqueeze(1)
        got = apply_operator(H, c, V)
        assert got.shape == (B, L, M, rows.shape[1]) and torch.allclose(got, ref, atol=1e-12)


def test_pack_unpack_and_estimates_theta_round_trip(system):
    az, el, r = torch.tensor([[0.3, -0.2]]), torch.tensor([[0.1, 0.05]]), torch.tensor([[2.0,
                                                                                         4.0]])
    theta = pack(az, el, r)
    assert theta.shape == (1, 2, 3) and theta[0, 1, 2] == pytest.approx(0.25)
    back = unpack(theta)
    for a, b in zip(back, (az, el, r), strict=True):
        assert torch.allclose(a, b)
    est = Estimates.from_theta(torch.tensor([1]), theta)
    assert int(est.K) == 1 and math.isnan(float(est.azimuth[0, 1]))
    assert torch.allclose(est.theta[0, 0], theta[0, 0])


def test_steering_at_matches_steering_and_zeroes_masked_nan_slots(system):
    theta = torch.tensor([[[0.3, 0.1, 0.5], [math.nan, math.nan, math.nan]]],
                         dtype=torch.float64)
    mask = torch.tensor([[True, False]])
    A = steering_at(theta, system, torch.complex128, mask)
    ref = steering(torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64),
                   torch.tensor(2.0, dtype=torch.float64), system, torch.complex128)
    assert torch.allclose(A[0, 0], ref) and bool((A[0, 1] == 0).all())


def test_check_shapes_names_the_array(system, scenes):
    b = scenes
    with pytest.raises(ValueError, match="codes"):
        check_shapes(b.y, b.H, b.codes[:, :3], system)
    with pytest.raises(TypeError, match="H must be complex"):
        check_shapes(b.y, b.H.real, b.codes, system)
    with pytest.raises(ValueError, match="M=8"):
        check_shapes(b.y[..., :8], b.H[:, :8], b.codes, system)
    with pytest.raises(TypeError, match="tensor"):
        check_shapes(b.y.numpy(), b.H, b.codes, system)
    # y [B, M, L] where L != M: named as transposed (it read as a system of another L)
    y, c = b.y[:, :8], b.codes[:, :8]
    with pytest.raises(ValueError, match=r"y \(\d+, 16, 8\) looks transposed: codes have "
                                         r"L=8 snapshots and H M=16 antennas"):
        check_shapes(y.transpose(1, 2), b.H, c, system.model_copy(update={"L": 8}))
    check_shapes(y, b.H, c)
    # H [B, N, M]: named as transposed (a review: "the measurements have N=16", a system)
    for given in (system, None):
        with pytest.raises(ValueError, match=r"H \(\d+, 144, 16\) looks transposed: y has "
                                             r"M=16 antennas and the codes N=144 elements"):
            check_shapes(b.y, b.H.transpose(1, 2), b.codes, given)


def test_check_shapes_names_a_batch_with_its_scene_axis_last(system, scenes):
    """A MATLAB user's review: a batch kept scenes last, y [L, M, S] (or each array's axes
    reversed, as h5py reads MATLAB's files) was told "the measurements have M=3 (the
    system's: 16), N=3" and, by the learned localizer, that it was another system's."""
    b = scenes
    last = [t.movedim(0, -1) for t in (b.y, b.H, b.codes)]
    with pytest.raises(ValueError, match=r"the scene axis comes last .*scenes go first, "
                                         r"y \[B, L, M\].*np.moveaxis\(x, -1, 0\)"):
        check_shapes(*last, system)
    rev = [t.permute(2, 1, 0) for t in (b.y, b.H, b.codes)]
    with pytest.raises(ValueError, match=r"the scene axis comes last .*np.transpose\(x, "
                                         r"\(2, 1, 0\)\)"):
        check_shapes(*rev, system)
    check_shapes(b.y, b.H, b.codes, system)  # scenes first: as it was


def test_check_shapes_scenes_last_needs_one_layout_for_all_three_arrays():
    """A transposed y with B = L = N (y as is, H and codes "reversed" scenes-last) was
    named a batch with its scene axis last, with a fix that scrambles H and codes; and
    with L = M = N, where the shapes cannot tell as-is from reversed, only one fix was
    named."""
    from risloc.config import SystemConfig
    z = lambda *shape: torch.zeros(shape, dtype=torch.complex64)  # noqa: E731
    s = SystemConfig(L=2, M=3, N_H=2, N_V=1, K_max=1)
    with pytest.raises(ValueError, match=r"y \(2, 3, 2\) looks transposed"):
        check_shapes(z(2, 3, 2), z(2, 3, 2), z(2, 2, 2), s)  # y [B, M, L], B = L = N = 2
    sq = SystemConfig(L=3, M=3, N_H=3, N_V=1, K_max=1)
    with pytest.raises(ValueError, match=r"scene axis comes last.*np.moveaxis.*"
                                         r"np.transpose\(x, \(2, 1, 0\)\)"):
        check_shapes(z(3, 3, 2), z(3, 3, 2), z(3, 3, 2), sq)
    # B = L = M (y scenes-last reads as a valid y): H and codes tell (a mutation review)
    with pytest.raises(ValueError, match=r"scene axis comes last.*np.moveaxis\(x, -1, 0\) in "
                                         r"NumPy$"):
        check_shapes(z(3, 3, 3), z(3, 2, 3), z(3, 2, 3),
                     SystemConfig(L=3, M=3, N_H=2, N_V=1, K_max=1))


def test_scene_problems_reports_each_bad_scene_once_with_its_reason(system, scenes):
    y, H, c = scenes.y.clone(), scenes.H.clone(), scenes.codes.clone()
    y[0, 2, 3] = math.nan
    y[1] = 0
    c[2, 0, 5] = 0.5  # not unit modulus
    H[3] = 0
    check = scene_problems(y, H, c)
    assert check.ok.tolist() == [False, False, False, False]
    reasons = dict(check.reasons)
    assert "non-finite values in y" in reasons[0] and "all-zero measurements" in reasons[1]
    assert "unit modulus" in reasons[2] and "all-zero channel" in reasons[3]
    good = scene_problems(scenes.y, scenes.H, scenes.codes)
    assert bool(good.ok.all()) and good.reasons == ()
    with pytest.raises(ValueError, match=r"scenes \[3\]"):
        check_measurements(scenes.y, H, scenes.codes, system)
    # what an estimator called directly refuses (a mutation review): an all-zero y (its
    # docstring's promise, unkept), non-finite codes, an H of another N
    with pytest.raises(ValueError, match=r"^all-zero measurements y in scenes \[1\]$"):
        check_measurements(y.nan_to_num(0.0), scenes.H, scenes.codes, system)
    with pytest.raises(ValueError, match=r"^all-zero channel H in scenes \[3\]; all-zero "
                                         r"measurements y in scenes \[1\]$"):  # both named
        check_measurements(y.nan_to_num(0.0), H, scenes.codes, system)
    nan_codes = scenes.codes.clone()
    nan_codes[1, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) in scenes \[1\]"):
        check_measurements(scenes.y, scenes.H, nan_codes, system)
    assert "non-finite values in codes" in dict(scene_problems(scenes.y, scenes.H,
                                                               nan_codes).reasons)[1]
    with pytest.raises(ValueError, match="N=100"):
        check_measurements(scenes.y, scenes.H[..., :100], scenes.codes[..., :100], system)
    with pytest.raises(ValueError, match="N=100"):
        check_shapes(scenes.y, scenes.H[..., :100], scenes.codes[..., :100], system)
    with pytest.raises(ValueError, match="empty batch"):
        check_shapes(scenes.y[:0], scenes.H[:0], scenes.codes[:0])
    # reasons in scene order, whichever rule found them
    for nan_scene in (0, 1):
        y2, H2 = scenes.y[:2].clone(), scenes.H[:2].clone()
        y2[nan_scene, 0, 0] = math.nan
        H2[1 - nan_scene] = 0
        assert [i for i, _ in scene_problems(y2, H2, scenes.codes[:2]).reasons] == [0, 1]
    # phases stored where the codes belong: said so; real +-1 codes (a 1-bit RIS) are codes
    phases = torch.complex(torch.rand(c.shape) * 6.28, torch.zeros(c.shape))
    assert ("exp(1j * phase), exp(1i * phase) in MATLAB, phase in radians"
            in dict(scene_problems(y, H, phases).reasons)[2])
    degrees = torch.complex(torch.randint(0, 8, c.shape) * 45.0, torch.zeros(c.shape))
    assert ("phases in degrees? store the codes themselves, exp(1j * np.deg2rad(phase)), "
            "exp(1i * deg2rad(phase)) in MATLAB" in dict(scene_problems(y, H, degrees).reasons)[2])
    bits = torch.complex(torch.randint(0, 2, c.shape) * 1.0, torch.zeros(c.shape))
    assert "bits? a 1-bit RIS's codes are 1 - 2 b" in dict(scene_problems(y, H, bits).reasons)[2]
    signs = torch.complex(torch.randint(0, 2, c.shape) * 2.0 - 1, torch.zeros(c.shape))
    assert bool(scene_problems(scenes.y, scenes.H, signs).ok.all())


def test_normalise_scale_survives_float32_underflow_and_overflow(scenes):
    y = scenes.y * 1e-30  # |y|^2 underflows in float32
    yn, Hn = normalise_scale(y, scenes.H * 1e30)
    assert yn.dtype == torch.complex128
    rms = yn.abs().square().mean((-1, -2)).sqrt()
    assert torch.allclose(rms, torch.ones(4, dtype=torch.float64))
    assert torch.allclose(yn, normalise_scale(scenes.y, scenes.H)[0], rtol=1e-5)
    assert torch.isfinite(torch.view_as_real(Hn)).all()
    again = normalise_scale(scenes.y.numpy(), scenes.H.numpy())  # NumPy arrays: the same
    assert torch.equal(again[0], normalise_scale(scenes.y, scenes.H)[0])


def test_code_tolerance_is_1e_3_and_complex_codes_of_real_part_0_or_1_are_not_bits(scenes):
    """(a third mutation review: a tolerance of 1e-2 and a bits hint for complex codes
    passed)"""
    y, H, c = scenes.y[:1], scenes.H[:1], scenes.codes[:1]
    assert bool(scene_problems(y, H, c * 1.0005).ok.all())  # within CODE_TOLERANCE
    assert (dict(scene_problems(y, H, c * 1.005).reasons)[0]
            == "codes are not unit modulus (| |c| - 1 | > 0.001)")
    half = torch.complex(torch.zeros(c.shape), torch.full(c.shape, 0.5))  # real part 0
    assert dict(scene_problems(y, H, half).reasons)[0].startswith("codes are not unit modulus")


def test_normalise_scale_leaves_an_all_zero_scene_as_it_is(scenes):
    y, H = scenes.y.clone(), scenes.H.clone()
    y[1], H[2] = 0, 0  # (its docstring's promise; 0 / 0 would make it NaN)
    yn, Hn = normalise_scale(y, H)
    assert not bool(yn[1].any()) and not bool(Hn[2].any())
    assert bool(torch.isfinite(torch.view_as_real(yn)).all())
    assert bool(torch.isfinite(torch.view_as_real(Hn)).all())


def test_one_scene_given_where_a_batch_is_expected_is_named(scenes):
    """A single scene's 2-D arrays would broadcast into nonsense (16 'scenes'); batches of
    other sizes are not broadcast either (a mutation review)."""
    with pytest.raises(ValueError, match=r"must be batches of the same scenes.*y\[None\]"):
        normalise_scale(scenes.y[0], scenes.H[0])
    with pytest.raises(ValueError, match="must be batches of the same scenes"):
        normalise_scale(scenes.y[:2], scenes.H[:3])
    with pytest.raises(ValueError):
        operators(scenes.H[:1], scenes.codes)
    with pytest.raises(ValueError, match="y must be 3-dimensional"):
        scene_problems(scenes.y[0], scenes.H[0], scenes.codes[0])


def test_snr_rule_nan_means_unknown_in_that_scene_only():
    assert snr_per_scene(None, 3) is None
    assert snr_per_scene(10.0, 3).tolist() == [10.0, 10.0, 10.0]
    part = snr_per_scene([5.0, math.nan, 20.0], 3)
    assert part[0] == 5 and math.isnan(part[1]) and part[2] == 20
    assert snr_per_scene([math.nan] * 3, 3) is None
    with pytest.raises(ValueError, match="one value per scene"):
        snr_per_scene([1.0, 2.0], 3)
    with pytest.raises(TypeError, match="numeric"):
        snr_per_scene("10", 3)
    with pytest.raises(ValueError, match="inf"):
        snr_per_scene([1.0, math.inf, 2.0], 3)
    # 1e4 dB: 10^(-1000) underflows, and the classical order rule was told noise_var = 0
    with pytest.raises(ValueError, match=r"snr_db must lie within \+-300 dB .* got 10000 in "
                                         r"scene 1"):
        snr_per_scene([1.0, 1e4, 2.0], 3)
    assert snr_per_scene([-300.0, 300.0, 0.0], 3).tolist() == [-300.0, 300.0, 0.0]


def test_long_double_arrays_are_read_in_double_precision():
    """NumPy's float128 / complex256 (an HDF5 file of long doubles) have no torch dtype."""
    from risloc.core.checks import as_tensor

    z = (np.arange(6) + 1j * np.arange(6)).reshape(2, 3)
    assert torch.equal(as_tensor("y", z.astype(np.clongdouble)), torch.from_numpy(z))
    assert as_tensor("snr_db", np.ones(3, np.longdouble)).dtype == torch.float64


def test_a_flipped_numpy_view_is_read_as_its_values():
    """Negative strides (np.flip, y[:, ::-1]), which torch.from_numpy refuses, are read as
    the values they show (a mutation review)."""
    from risloc.core.checks import as_tensor

    z = (np.arange(24) + 1j * np.arange(24)).reshape(2, 3, 4).astype(np.complex64)
    assert torch.equal(as_tensor("y", z[:, ::-1]), torch.from_numpy(z[:, ::-1].copy()))


def test_concatenated_estimates_pad_narrow_parts_with_nan():
    """Slots a narrower part lacks are NaN, never sources at (0, 0, 0 m) (a mutation
    review)."""
    from risloc.core.params import concat_estimates

    one = Estimates(torch.tensor([1]), *(torch.ones(1, 1) for _ in range(4)))
    three = Estimates(torch.tensor([3]), *(torch.ones(1, 3) for _ in range(4)))
    both = concat_estimates([one, three])
    assert both.K.tolist() == [1, 3] and both.azimuth.shape == (2, 3)
    for t in (both.azimuth, both.elevation, both.range_m, both.score):
        assert bool(torch.isnan(t[0, 1:]).all()) and bool((t[1] == 1).all())


def test_estimates_mask_from_theta_and_float_keep_their_contract():
    """mask is True on the first K slots only; from_theta leaves the fields in theta's
    dtype unless told, scores zero when none are given; float() casts the positions and
    scores, never K (an int64 count)."""
    theta = torch.tensor([[[0.1, 0.2, 0.5], [0.3, 0.0, 0.25], [0.0, 0.0, 1.0]]] * 2,
                         dtype=torch.float64)
    est = Estimates.from_theta(torch.tensor([1, 3]), theta)
    assert est.mask.tolist() == [[True, False, False], [True, True, True]]
    assert est.azimuth.dtype == torch.float64 and est.score.tolist()[1] == [0.0, 0.0, 0.0]
    assert math.isnan(float(est.score[0, 1]))
    f = est.float()
    assert f.K.dtype == torch.int64 and f.azimuth.dtype == torch.float32
    assert f.score.dtype == torch.float32 and torch.equal(f.K, est.K)
    assert Estimates.from_theta(est.K, theta, dtype=torch.float32).range_m.dtype == torch.float32


def test_concatenated_estimates_are_float32_and_need_a_part():
    """concat_estimates: float32 fields (its docstring) and a clear error on no parts."""
    from risloc.core.params import concat_estimates

    one = Estimates(torch.tensor([1]), *(torch.ones(1, 2, dtype=torch.float64)
                                         for _ in range(4)))
    both = concat_estimates([one, one])
    assert all(getattr(both, n).dtype == torch.float32
               for n in ("azimuth", "elevation", "range_m", "score"))
    with pytest.raises(ValueError, match="at least one part"):
        concat_estimates([])


def test_estimates_from_degrees_invert_to_numpy_and_name_what_they_refuse():
    """Estimates.from_degrees: a user's NaN-padded arrays in degrees / metres (NumPy), K by
    their padding or given, become radians; what to_numpy() gives reads back; a source NaN
    in part, a NaN before a scene's last source or within its K, an elevation beyond 90 deg,
    a range <= 0 and K that is no count are named by scene and slot."""
    az = np.array([[10.0, -20.0, np.nan], [np.nan, np.nan, np.nan], [45.0, np.nan, np.nan]])
    el = np.array([[5.0, 90.0, np.nan], [np.nan] * 3, [-30.0, np.nan, np.nan]])
    r = np.array([[2.0, 7.5, np.nan], [np.nan] * 3, [0.6, np.nan, np.nan]])
    est = Estimates.from_degrees(az, el, r)
    assert est.K.tolist() == [2, 0, 1] and est.K.dtype == torch.int64
    assert torch.allclose(est.azimuth[0, :2], torch.deg2rad(torch.tensor([10.0, -20.0],
                                                                         dtype=torch.float64)))
    assert float(est.elevation[0, 1]) == pytest.approx(math.pi / 2)
    assert est.range_m[2, 0] == 0.6 and bool(torch.isnan(est.score[0, 2]))
    assert est.score[0, :2].tolist() == [0.0, 0.0]
    given = Estimates.from_degrees(az, el, r, K=[1, 0, 1.0], score=np.ones((3, 3)))
    assert given.K.tolist() == [1, 0, 1] and bool(torch.isnan(given.azimuth[0, 1]))
    assert given.score[0, 0] == 1.0
    column = Estimates.from_degrees(az, el, r, K=np.array([[1], [0], [1]]))  # MATLAB / pandas
    assert column.K.tolist() == [1, 0, 1] and column.K.shape == (3,)
    one = Estimates.from_degrees(az[0], el[0], r[0])  # one scene's [K_slots]
    assert one.K.tolist() == [2] and one.azimuth.shape == (1, 3)
    back = Estimates.from_degrees(np.rad2deg(est.azimuth.float().numpy()),  # float32's pi / 2
                                  np.rad2deg(est.elevation.float().numpy()), r)
    assert torch.equal(back.K, est.K)
    part = el.copy()
    part[0, 1] = np.nan  # an elevation lost, its azimuth and range kept
    for bad, match in (
            ((az, part, r), r"scene 0, slot 1; a source needs azimuth, elevation and range "
                            r"all finite"),
            ((az[:, ::-1], el[:, ::-1], r[:, ::-1]), r"scene 0, slot 0; NaN before the scene's"),
            ((az, el + 1.0, r), r"scene 0, slot 1: elevation 91 deg, range 7.5 m; an elevation "
                                r"lies within \+-90 deg"),
            ((az, el, -r), r"scene 0, slot 0: elevation 5 deg, range -2 m"),
            ((az, el[:, :2], r), r"must each be \[S, K_slots\].*\(3, 3\), \(3, 2\), \(3, 3\)")):
        with pytest.raises(ValueError, match=match):
            Estimates.from_degrees(*bad)
    with pytest.raises(ValueError, match=r"scene 1, slot 0; NaN before the scene's last source "
                                         r"or within its K"):
        Estimates.from_degrees(az, el, r, K=[2, 1, 1])
    for K in ([2, 0], [2.5, 0, 1], [4, 0, 1], [-1, 0, 1], [2, np.nan, 1], [True, False, True]):
        with pytest.raises(ValueError, match=r"K must be \[S=3\] whole numbers in 0..K_slots=3"):
            Estimates.from_degrees(az, el, r, K=K)
    with pytest.raises(ValueError, match=r"score must be \[S, K_slots\]"):
        Estimates.from_degrees(az, el, r, score=np.ones(3))
    with pytest.raises(TypeError, match="must be real arrays"):
        Estimates.from_degrees(az + 0j, el, r)
    with pytest.raises(TypeError, match=r"must be real arrays; elevation_deg is "
                                        r"torch.complex128 \(pass elevation_deg.real"):
        Estimates.from_degrees(az, el + 0j, r)  # (the one that came complex, named)


def test_estimates_from_degrees_of_one_scene_take_its_k_and_scores_as_its_positions():
    """One scene's [K_slots] positions take its K as a number and its scores as [K_slots]
    (a review: K=2 failed inside the error message, 'int' object is not subscriptable, and
    one scene's scores were refused as not [S, K_slots])."""
    one = Estimates.from_degrees([10.0, -20.0, 30.0], [5.0, 0.0, 1.0], [2.0, 3.0, 4.0], K=2,
                                 score=[0.9, 0.5, 0.1])
    assert one.K.tolist() == [2] and one.score.shape == (1, 3)
    assert one.score[0, :2].tolist() == [0.9, 0.5] and bool(torch.isnan(one.azimuth[0, 2]))
    with pytest.raises(ValueError, match=r"K must be \[S=2\] whole numbers"):
        Estimates.from_degrees(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3)), K=2)


def test_steering_at_without_a_mask_reads_the_third_coordinate_as_inverse_range(system):
    """theta's last axis is u = 1/r (the module docstring): steering_at with no mask steers
    to range 1/u, as the masked path does (a mutation review: the unmasked path reading u
    as the range passed)."""
    theta = torch.tensor([[[0.3, 0.1, 0.5], [-0.4, 0.2, 0.125]]], dtype=torch.float64)
    A = steering_at(theta, system, torch.complex128)
    for k, r in ((0, 2.0), (1, 8.0)):
        ref = steering(theta[0, k, 0], theta[0, k, 1], torch.tensor(r, dtype=torch.float64),
                       system, torch.complex128)
        assert torch.allclose(A[0, k], ref)
    assert torch.equal(A, steering_at(theta, system, torch.complex128,
                                      torch.ones(1, 2, dtype=torch.bool)))


def test_estimates_from_theta_keep_the_scores_given():
    """from_theta's score [B, S] lands in the first K slots, NaN after them (a mutation
    review: the given scores dropped for zeros passed)."""
    theta = torch.tensor([[[0.1, 0.2, 0.5], [0.3, 0.0, 0.25]]])
    est = Estimates.from_theta(torch.tensor([1]), theta, torch.tensor([[0.7, 0.4]]))
    assert est.score[0, 0] == pytest.approx(0.7) and math.isnan(float(est.score[0, 1]))


def test_estimates_index_truncate_move_and_concat_keep_k_an_int64_count():
    """A mutation review of core.params: indexing selects K with the fields;
    truncate keeps min(K, self.K) slots (scores too, NaN after) and K in self.K's dtype;
    from_theta and concat_estimates give int64 K; to() moves K with the fields."""
    from risloc.core.params import concat_estimates

    theta = torch.tensor([[[0.1, 0.2, 0.5], [0.3, 0.0, 0.25], [0.0, 0.1, 1.0]]] * 2)
    est = Estimates.from_theta(torch.tensor([1, 3], dtype=torch.int32), theta,
                               torch.ones(2, 3))
    assert est.K.dtype == torch.int64
    one = est[torch.tensor([False, True])]
    assert one.K.tolist() == [3] and len(one) == 1 and one.azimuth.shape == (1, 3)
    cut = est.truncate(torch.tensor([2, 2], dtype=torch.int32))
    assert cut.K.dtype == torch.int64 and cut.K.tolist() == [1, 2]
    assert cut.mask.tolist() == [[True, False, False], [True, True, False]]
    assert cut.score[1, :2].tolist() == [1.0, 1.0] and bool(torch.isnan(cut.score[1, 2]))
    assert bool(torch.isnan(cut.score[0, 1:]).all())
    assert concat_estimates([est, one]).K.dtype == torch.int64
    assert est.to("meta").K.device.type == "meta"


def test_estimates_from_degrees_take_float32_pi_over_2_as_an_elevation():
    """An elevation of float32's pi / 2 written in degrees (90.0000025, as to_numpy()
    gives it) is a source, not refused (a mutation review: the limit set to 90 passed)."""
    el = np.rad2deg(np.float64(np.float32(np.pi / 2)))
    assert el > 90
    est = Estimates.from_degrees([[0.0]], [[el]], [[2.0]])
    assert est.K.tolist() == [1]


def test_estimates_from_degrees_bounds_are_the_documented_ones():
    """K may fill every slot; a range of exactly 0 m and an elevation past 90 deg by more
    than float32 rounding (90.01 deg) are refused (a mutation review: K = K_slots refused,
    r = 0 accepted, and a 1 % elevation slack passed)."""
    az, el, r = np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]]), np.array([[1.0, 2.0]])
    assert Estimates.from_degrees(az, el, r, K=[2]).K.tolist() == [2]
    with pytest.raises(ValueError, match=r"scene 0, slot 1: elevation 4 deg, range 0 m"):
        Estimates.from_degrees(az, el, np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"scene 0, slot 0: elevation 90.01 deg"):
        Estimates.from_degrees(az, np.array([[90.01, 4.0]]), r)


def test_as_tensor_reads_big_endian_and_conjugated_views_and_refuses_sparse():
    """A second mutation review: a big-endian array (another machine's file) is read in
    native order, a lazily conjugated tensor is made a plain one (view_as_real refuses a
    conjugate view), and a sparse tensor is named, not read."""
    from risloc.core.checks import InputTypeError, as_tensor

    big = np.arange(4, dtype=">f8")
    assert as_tensor("snr_db", big).tolist() == [0.0, 1.0, 2.0, 3.0]
    conj = as_tensor("y", torch.tensor([[1 + 2j, 3 - 1j]]).conj())
    assert not conj.is_conj() and conj.tolist() == [[1 - 2j, 3 + 1j]]
    with pytest.raises(InputTypeError, match=r"y must be a dense array.*\.to_dense\(\)"):
        as_tensor("y", torch.eye(3).to_sparse())


def test_as_tensor_copies_read_only_arrays_without_a_torch_warning(tmp_path):
    """The NumPy user's review: a read-only array (setflags(write=False), a read-only
    memmap, as np.load(mmap_mode="r") gives) is copied, not shared: torch warned "The given
    NumPy array is not writable" to the user, and a write to the tensor reached the array."""
    import warnings

    from risloc.core.checks import as_tensor

    ro = np.array([[1 + 2j, 3 - 1j]], dtype=np.complex64)
    ro.setflags(write=False)
    np.save(tmp_path / "y.npy", ro)
    for a in (ro, np.load(tmp_path / "y.npy", mmap_mode="r")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            t = as_tensor("y", a)
        assert not np.shares_memory(t.numpy(), a)
        t.add_(1)  # the caller's read-only array stays as it was
        assert a.tolist() == [[1 + 2j, 3 - 1j]] and t.tolist() == [[2 + 2j, 4 - 1j]]


def test_check_shapes_square_batches_pass_and_mismatches_are_named():
    """A second mutation review: B = L = M = N (the shapes cannot tell an axis order) is a
    batch as given, not 'scene axis last' or 'H looks transposed'; a 4-D array, a batch
    size that differs between y and H, and a codes array of another N are named."""
    from risloc.config import SystemConfig
    z = lambda *shape: torch.zeros(shape, dtype=torch.complex64)  # noqa: E731
    sq = SystemConfig(L=3, M=3, N_H=3, N_V=1, K_max=1)
    for given in (sq, None):
        check_shapes(z(3, 3, 3), z(3, 3, 3), z(3, 3, 3), given)
        with pytest.raises(ValueError, match=r"^shape mismatch: y \(3, 3, 3\) needs H "
                                             r"\(3, 3, 3\) and codes \(3, 3, 3\); got "
                                             r"\(3, 3, 3\), \(3, 3, 5\)$"):
            check_shapes(z(3, 3, 3), z(3, 3, 3), z(3, 3, 5), given)
    with pytest.raises(ValueError, match=r"shape mismatch: y \(4, 3, 3\) needs H \(4, 3, 3\)"):
        check_shapes(z(4, 3, 3), z(3, 3, 3), z(4, 3, 3))
    with pytest.raises(ValueError, match=r"y must be 3-dimensional .*\(1, 3, 3, 3\)"):
        check_shapes(z(1, 3, 3, 3), z(3, 3, 3), z(3, 3, 3))


def test_scene_checks_read_both_parts_of_a_complex_value(system, scenes):
    """A second mutation review: a NaN in an imaginary part is non-finite, a purely
    imaginary y or H is not empty; the raising form lists the bad scenes."""
    y = scenes.y.clone()
    y.imag[0, 0, 0] = math.nan
    y.imag[1, 1, 1] = math.inf
    assert "non-finite values in y" in dict(scene_problems(y, scenes.H, scenes.codes)
                                            .reasons)[0]
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) in scenes "
                                         r"\[0, 1\]$"):
        check_measurements(y, scenes.H, scenes.codes, system)
    imag_y, imag_H = 1j * scenes.y.abs().to(scenes.y.dtype), 1j * scenes.H.abs().to(
        scenes.H.dtype)
    assert bool(scene_problems(imag_y, imag_H, scenes.codes).ok.all())
    check_measurements(imag_y, imag_H, scenes.codes, system)


def test_snr_rule_refuses_bool_and_either_sign_beyond_the_limit_and_reads_matlab_rows():
    """A second mutation review: True is no SNR, -1e4 dB is as far out as +1e4 dB, a
    MATLAB row (1, B) or column (B, 1) is B values, and a row of another length is named."""
    with pytest.raises(TypeError, match=r"snr_db must be numeric, got bool"):
        snr_per_scene(True, 3)
    with pytest.raises(TypeError, match=r"snr_db must be numeric, got ndarray"):
        snr_per_scene(np.ones(3, bool), 3)
    with pytest.raises(ValueError, match=r"within \+-300 dB .* got -10000 in scene 2"):
        snr_per_scene([0.0, 1.0, -1e4], 3)
    assert snr_per_scene(np.array([[1.0, 2.0, 3.0]]), 3).tolist() == [1.0, 2.0, 3.0]
    assert snr_per_scene(np.array([[1.0], [2.0], [3.0]]), 3).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match=r"one value per scene \(3\), got shape \(1, 5\)"):
        snr_per_scene(np.ones((1, 5)), 3)


@st.composite
def _degree_arrays(draw):
    """K [S] and NaN-padded azimuth_deg, elevation_deg, range_m, score [S, K_slots] float64,
    as to_numpy() gives them: 1..4 scenes, 0..3 slots, any K per scene."""
    S, slots = draw(st.integers(1, 4)), draw(st.integers(0, 3))
    K = np.array([draw(st.sampled_from(range(slots, -1, -1))) for _ in range(S)],
                 dtype=np.int64)  # (full ones first: K inferred as the widest)
    arr = {n: np.full((S, slots), np.nan) for n in ("azimuth_deg", "elevation_deg", "range_m",
                                                      "score")}
    for b, k in enumerate(K):
        for s in range(k):
            arr["azimuth_deg"][b, s] = draw(st.floats(-180, 180))
            arr["elevation_deg"][b, s] = draw(st.floats(-90, 90))
            arr["range_m"][b, s] = draw(st.floats(1e-6, 1e6))
            arr["score"][b, s] = draw(st.floats(-1e9, 1e9))
    return K, arr


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
@hypothesis.given(_degree_arrays(), st.booleans())  # (given: a loop variable here)
def test_estimates_from_degrees_and_back_and_through_theta_are_the_same(case, with_K):
    """from_degrees (K given or inferred from the padding) inverts to_numpy()'s degrees;
    from_theta(K, theta) and unpack(pack(...)) give the same Estimates back."""
    K, arr = case
    est = Estimates.from_degrees(**arr, **({"K": K} if with_K else {}))
    assert est.K.tolist() == K.tolist() and est.azimuth.dtype == torch.float64
    assert torch.equal(est.mask, torch.from_numpy(~np.isnan(arr["range_m"])))
    back = {"azimuth_deg": torch.rad2deg(est.azimuth), "elevation_deg":
            torch.rad2deg(est.elevation), "range_m": est.range_m, "score": est.score}
    for name, v in back.items():
        np.testing.assert_allclose(v.numpy(), arr[name], rtol=1e-14, atol=1e-12)
    again = Estimates.from_theta(est.K, est.theta, est.score)
    for name in ("azimuth", "elevation", "range_m", "score"):
        torch.testing.assert_close(getattr(again, name), getattr(est, name), equal_nan=True,
                                   rtol=1e-15, atol=0)
    az, el, r = unpack(pack(est.azimuth, est.elevation, est.range_m))
    torch.testing.assert_close(r, est.range_m, equal_nan=True, rtol=1e-15, atol=0)
    assert torch.equal(az.nan_to_num(7), est.azimuth.nan_to_num(7))
    assert torch.equal(el.nan_to_num(7), est.elevation.nan_to_num(7))


def test_source_counts_any_form_of_whole_counts_reads_as_int64_per_scene():
    """check_source_counts: a number for all scenes, a sequence, a MATLAB row or column,
    whole floats and integers of any width all give [B] int64 (K_max itself included)."""
    for K in (2, np.int64(2), 2.0, torch.tensor(2, dtype=torch.int16)):
        t = check_source_counts("K", K, 3, 5)
        assert t.dtype == torch.int64 and t.tolist() == [2, 2, 2], K
    for K in ([1, 2, 5], np.array([1.0, 2.0, 5.0]), np.array([1, 2, 5], np.uint8),
              torch.tensor([[1], [2], [5]]), np.array([[1, 2, 5]])):
        t = check_source_counts("K", K, 3, 5)
        assert t.dtype == torch.int64 and t.tolist() == [1, 2, 5], K


def test_source_counts_refused_name_the_argument_the_scene_and_the_value():
    """Each refusal names the argument, the first offending scene and its value (a number
    for all scenes names no scene); 1e20 and inf are named as given, not overflowed."""
    cases = (([1, 2.5, 3], r"^K must hold whole numbers of sources, got 2.5 in scene 1$"),
             ([1, math.nan, math.nan], r"got nan in scene 1 \(and 1 more\)$"),
             (1.5, r"^K must hold whole numbers of sources, got 1.5$"),
             ([1, 0, 2], r"^K must lie in 1..K_max=5, got 0 in scene 1 \(K = 0 would return no "
                         r"sources\)$"),
             ([1, 2, 6], r"^K must lie in 1..K_max=5, got 6 in scene 2$"),
             (-1, r"^K must lie in 1..K_max=5, got -1$"),
             (math.inf, r"got inf$"), (1e20, r"got 1e\+20$"),
             ([1, 2], r"^K must be a number or hold one value per scene \(3\), got shape \(2,\)"))
    for K, match in cases:
        with pytest.raises(ValueError, match=match):
            check_source_counts("K", K, 3, 5)
    with pytest.raises(ValueError, match=r"^polish: K must lie in 1..K_max=2, got 3 in scene 0"):
        check_source_counts("polish: K", [3, 1, 1], 3, 2)
    for K in (True, [True, True, True], np.array([1 + 0j, 2, 3]), "2"):  # no counts
        with pytest.raises(TypeError, match=r"^K must be an integer or integers"):
            check_source_counts("K", K, 3, 5)


def test_phase_hints_split_at_2_pi_and_scene_lists_name_the_first_ten(system, scenes):
    """(a fourth mutation review: a degrees threshold of 2 pi + 1 and lists of 3 scenes
    passed) Real codes up to 2 pi (a hair above it: a phase rounded up) are phases in
    radians; 6.5 is beyond any radian phase: degrees."""
    y, H, c = scenes.y[:1], scenes.H[:1], scenes.codes[:1]
    for top, hint in ((2 * math.pi + 1e-9, "phase in radians"), (6.5, "phases in degrees?")):
        real = torch.full(c.shape, 0.5, dtype=torch.complex128)
        real[0, 0, 0] = top
        assert hint in dict(scene_problems(y, H, real).reasons)[0], top
    y12, H12 = scenes.y.repeat(3, 1, 1), scenes.H.repeat(3, 1, 1)
    c12 = scenes.codes.repeat(3, 1, 1)
    first10 = r"scenes \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]$"
    with pytest.raises(ValueError, match=r"\(NaN or inf\) in " + first10):
        check_measurements(y12 * math.nan, H12, c12, system)
    with pytest.raises(ValueError, match=r"^all-zero channel H in " + first10):
        check_measurements(y12, H12 * 0, c12, system)


def test_source_counts_of_unsigned_widths_are_read_and_never_alias_the_callers_K():
    """(a fourth mutation review) uint16..uint64 counts compare as int64 (torch has no
    '<' for them); the counts returned are a copy, never the caller's tensor; a str is
    refused by name, not by NumPy's message."""
    for dt in (np.uint16, np.uint32, np.uint64):
        assert check_source_counts("K", np.array([1, 2, 5], dt), 3, 5).tolist() == [1, 2, 5]
    K = torch.tensor([1, 2, 3])
    check_source_counts("K", K, 3, 5)[0] = 4
    assert K.tolist() == [1, 2, 3]
    for K in ("2", b"2"):
        with pytest.raises(TypeError,
                           match=r"^K must be an integer or integers, got (str|bytes)$"):
            check_source_counts("K", K, 3, 5)


def test_snr_rule_names_inf_itself_and_gives_a_writable_tensor_for_a_number():
    """(a fourth mutation review: dropping the inf check, or returning one number expanded
    without a copy, passed)"""
    with pytest.raises(ValueError, match=r"^snr_db holds \+-inf; use NaN"):
        snr_per_scene([1.0, -math.inf, 2.0], 3)
    snr = snr_per_scene(10.0, 3)
    snr[0] = 1.0
    assert snr.tolist() == [1.0, 10.0, 10.0]


def test_the_snr_of_each_scene_is_never_the_caller_s_own_tensor():
    """A float32 [B] SNR came back as the caller's tensor (check_source_counts copies):
    writing into the result changed the caller's SNR."""
    given = torch.tensor([5.0, 10.0], dtype=torch.float32)
    snr = snr_per_scene(given, 2)
    snr[0] = 0.0
    assert given.tolist() == [5.0, 10.0]


def test_estimates_from_degrees_refuse_a_complex_score():
    """A complex score is refused as complex positions are (it was cast, the imaginary part
    dropped with only torch's warning)."""
    with pytest.raises(TypeError, match="score must be a real array, got torch.complex"):
        Estimates.from_degrees([[0.0]], [[10.0]], [[2.0]], score=np.array([[1 + 1j]]))


def test_real_parts_of_unit_modulus_codes_are_named_as_such(scenes):
    """Codes stored as their real part only (values in [-1, 1], not +-1) are not phases:
    the reason says to store the complex codes."""
    y, H, c = scenes.y[:1], scenes.H[:1], scenes.codes[:1]
    real = torch.complex(c.real, torch.zeros(c.shape, dtype=c.real.dtype))
    reason = dict(scene_problems(y, H, real).reasons)[0]
    assert "real part only? store the complex codes" in reason
