"""Subspace / spectrum terms built from the true steering vectors."""

import math

import pytest
import torch

from risloc.covariance import normalize_trace
from risloc.losses import subspace as sub
from risloc.losses.covariance import frob2, project
from risloc.physics import steering


def _A(scenes, system):
    return sub.steering_columns(scenes.azimuth, scenes.elevation, scenes.range_m, scenes.mask,
                                system)


def test_steering_columns_unit_and_masked(scenes, system):
    A = _A(scenes, system)
    norms = A.abs().square().sum(-2)  # (B, K_max)
    assert torch.allclose(norms, scenes.mask.float(), atol=1e-5)


def test_gt_alignment_zero_on_truth_and_matches_explicit_projector(scenes, system, R_true):
    A = _A(scenes, system)
    assert sub.gt_subspace_alignment(R_true, A).max() < 1e-4
    eye = torch.eye(144, dtype=torch.complex64).expand_as(R_true)
    # ||P_perp||_F^2 / ||I||_F^2 = (N - K) / N
    expect = (144 - scenes.K.float()) / 144
    assert torch.allclose(sub.gt_subspace_alignment(eye, A), expect, atol=1e-4)
    X = torch.randn(len(scenes), 144, 144, dtype=torch.complex64)
    R = X @ X.mH
    Pp_R = R - project(A, R)
    explicit = frob2(Pp_R - project(A, Pp_R.mH).mH) / frob2(R)
    assert torch.allclose(sub.gt_subspace_alignment(R, A), explicit, rtol=1e-3, atol=1e-5)


def test_predicted_alignment_zero_at_truth(scenes, system, R_true):
    A = _A(scenes, system)
    w = scenes.mask.float()
    assert sub.predicted_subspace_alignment(R_true, scenes.K, A, w).max() < 1e-4
    # a steering vector far from every source is mostly outside the top-K subspace
    far = sub.steering_columns(torch.full_like(scenes.azimuth, 1.2).nan_to_num(),
                               torch.full_like(scenes.elevation, -0.5), torch.ones_like(
                                   scenes.range_m), torch.ones_like(scenes.mask), system)
    assert sub.predicted_subspace_alignment(R_true, scenes.K, far, torch.ones_like(w)).min() > 0.5


def test_capon_spectrum_of_identity_and_peak_contrast(scenes, system, R_true):
    eye = torch.eye(144, dtype=torch.complex64).expand_as(R_true)
    A = _A(scenes, system)[:, :, :1]
    P = sub.capon_spectrum(eye, A, loading=1e-2)  # 1 / (a^H ((1 + eps) I)^-1 a) = 1 + eps
    assert torch.allclose(P, torch.full_like(P, 1.01), atol=1e-5)
    args = (scenes.azimuth, scenes.elevation, scenes.range_m, scenes.mask, system)
    flat = sub.peak_contrast(eye, *args)
    assert torch.allclose(flat, torch.ones_like(flat), atol=1e-4)
    sharp = sub.peak_contrast(R_true, *args)
    assert sharp.max() < 0.05


def test_peak_contrast_gradient_finite_on_rank_deficient_covariance(scenes, system):
    F = torch.randn(len(scenes), 144, 2, dtype=torch.complex64, requires_grad=True)
    R = normalize_trace(F @ F.mH)
    loss = sub.peak_contrast(R, scenes.azimuth, scenes.elevation, scenes.range_m, scenes.mask,
                             system).sum()
    (g,) = torch.autograd.grad(loss, F)
    assert math.isfinite(float(loss.detach()))
    assert torch.isfinite(torch.view_as_real(g)).all() and g.abs().sum() > 0


def test_gt_alignment_is_the_explicit_projector_with_close_sources_and_low_rank_r():
    """||P_perp R P_perp||^2 / ||R||^2 with P = A (A^H A)^-1 A^H formed explicitly, in
    float64, for two nearly collinear columns and a rank-3 R, where the tr((G^-1 M)^2) term
    matters (a mutation review: GM @ GM.mH for GM @ GM passed the float32 check above)."""
    g = torch.Generator().manual_seed(4)

    def cn(*shape):
        return torch.randn(*shape, dtype=torch.complex128, generator=g)

    a1 = cn(2, 8, 1)
    A = torch.cat([a1, a1 + 0.3 * cn(2, 8, 1)], -1)  # (B, N, K): |cos| about 0.95
    W = torch.cat([A, cn(2, 8, 1)], -1) @ cn(2, 3, 3)  # rank 3, partly inside span(A)
    R = W @ W.mH
    P = A @ torch.linalg.solve(A.mH @ A, A.mH)
    Pp = torch.eye(8, dtype=torch.complex128) - P
    want = frob2(Pp @ R @ Pp) / frob2(R)
    got = sub.gt_subspace_alignment(R, A, ridge=0.0)
    assert torch.allclose(got, want, rtol=1e-9) and float(want.min()) > 0.01


def test_predicted_alignment_is_the_weighted_mean_of_the_slots_distances(scenes, system,
                                                                         R_true):
    """sum_s w_s (1 - ||U_K^H a_s||^2) / sum_s w_s with uneven and zero weights (a mutation
    review: dividing by the slot count passed, as every test weighed slots alike)."""
    far = sub.steering_columns(torch.full_like(scenes.azimuth, 1.2).nan_to_num(),
                               torch.full_like(scenes.elevation, -0.5), torch.ones_like(
                                   scenes.range_m), torch.ones_like(scenes.mask), system)
    ones = torch.ones_like(scenes.mask, dtype=torch.float32)
    dist = torch.stack([sub.predicted_subspace_alignment(R_true, scenes.K, far[..., s:s + 1],
                                                         ones[:, :1])
                        for s in range(far.shape[-1])], -1)  # each slot alone: (B, S)
    w = torch.zeros_like(ones)
    w[:, 0], w[:, 2] = 3.0, 1.0
    want = (3 * dist[:, 0] + dist[:, 2]) / 4
    assert torch.allclose(sub.predicted_subspace_alignment(R_true, scenes.K, far, w), want,
                          atol=1e-6)


def test_peak_contrast_is_the_mean_spectrum_of_the_six_neighbours_over_the_source(
        scenes, system, R_true):
    """The neighbours are +-delta in azimuth, in elevation and in 1/range (exactly), and the
    contrast the mean of their Capon spectrum over the source's, averaged over the sources;
    built here point by point (a mutation review: +delta twice, or the largest neighbour
    for the mean, passed the bounds 'flat -> 1, sharp < 0.05')."""
    d, dr = math.radians(3.0), 0.2
    offs = sub.neighbour_offsets(d, dr)
    assert torch.equal(offs, torch.tensor([[d, 0, 0], [0, d, 0], [0, 0, dr], [-d, 0, 0],
                                           [0, -d, 0], [0, 0, -dr]], dtype=offs.dtype))
    R = 30 * torch.eye(144, dtype=torch.complex64) + R_true  # a peak of finite contrast
    b = 0
    k = int(scenes.K[b])
    # one source beyond 1 / dr = 5 m: its -dr neighbour is clamped to 1/range = 0.02 (a
    # mutation review: |1/r - dr| passed, every source of scene 0 being nearer than 5 m)
    rng = scenes.range_m[b:b + 1].clone()
    rng[0, 0] = 8.0
    ratios = []
    for s in range(k):
        az, el, r = (float(v[0, s]) for v in (scenes.azimuth[b:b + 1],
                                              scenes.elevation[b:b + 1], rng))
        pts = [(az, el, 1 / r), (az + d, el, 1 / r), (az, el + d, 1 / r),
               (az, el, 1 / r + dr), (az - d, el, 1 / r), (az, el - d, 1 / r),
               (az, el, max(1 / r - dr, 0.02))]
        a = steering(torch.tensor([p[0] for p in pts]), torch.tensor([p[1] for p in pts]),
                     torch.tensor([1 / p[2] for p in pts]), system, torch.complex64)
        P = sub.capon_spectrum(R[b:b + 1], a.T.unsqueeze(0))[0]
        ratios.append(float(P[1:].mean() / P[0]))
    got = sub.peak_contrast(R[b:b + 1], scenes.azimuth[b:b + 1], scenes.elevation[b:b + 1],
                            rng, scenes.mask[b:b + 1], system)
    assert float(got) == pytest.approx(sum(ratios) / k, rel=1e-4)
    assert 0.05 < float(got) < 0.95  # (neither bound of the test above)


def test_gt_alignment_reads_only_the_hermitian_part_of_r(scenes, system, R_true):
    """R is Hermitised before ||P_perp R P_perp||^2 / ||R||^2 (its formula holds for
    Hermitian R only): an anti-Hermitian part added changes nothing (a mutation review:
    the Hermitisation dropped passed, every test input being Hermitian)."""
    A = _A(scenes, system)
    X = torch.randn(*R_true.shape, dtype=torch.complex64,
                    generator=torch.Generator().manual_seed(8))
    R = 30 * torch.eye(144, dtype=torch.complex64) + R_true
    torch.testing.assert_close(sub.gt_subspace_alignment(R + X - X.mH, A),
                               sub.gt_subspace_alignment(R, A), rtol=1e-4, atol=1e-6)


def test_predicted_alignment_uses_exactly_the_top_k_eigenvectors():
    """R with known eigenvectors u_1..u_6 (eigenvalues 6..1): with K = 1 the slot at u_1 is
    inside (distance 0) and the slot at u_2 outside (distance 1); with K = 2 both inside
    (a mutation review: the top K + 1 eigenvectors passed, the truth's spectrum having
    nothing above its K-th)."""
    Q, _ = torch.linalg.qr(torch.randn(1, 6, 6, dtype=torch.complex128,
                                       generator=torch.Generator().manual_seed(9)))
    R = Q @ torch.diag(torch.arange(6.0, 0.0, -1.0).to(Q.dtype)) @ Q.mH
    slots, w = Q[..., :2], torch.ones(1, 2, dtype=torch.float64)
    d1 = sub.predicted_subspace_alignment(R, torch.tensor([1]), slots, w)
    d2 = sub.predicted_subspace_alignment(R, torch.tensor([2]), slots, w)
    assert float(d1) == pytest.approx(0.5, abs=1e-9) and float(d2) == pytest.approx(0, abs=1e-9)


def test_capon_spectrum_of_a_factor_equals_the_dense_one_and_ignores_r_scale():
    """1 / (a^H R_l^-1 a), R_l the trace-N R loaded: the Woodbury path of c I + W W^H gives
    the dense value, and a rescaled R the same (a mutation review: * c for / c in the
    Woodbury path, and the trace normalisation dropped, both passed: peak_contrast, the only
    caller, takes a ratio at one R)."""
    from risloc.covariance.tools import LowRank

    g = torch.Generator().manual_seed(10)
    W = torch.randn(2, 16, 3, dtype=torch.complex128, generator=g)
    c = torch.tensor([0.5, 2.0], dtype=torch.float64)
    A = torch.randn(2, 16, 4, dtype=torch.complex128, generator=g)
    A = A / A.norm(dim=-2, keepdim=True)
    R = LowRank(c, W)
    dense = sub.capon_spectrum(R.dense(), A)
    torch.testing.assert_close(sub.capon_spectrum(R, A), dense, rtol=1e-9, atol=0)
    torch.testing.assert_close(sub.capon_spectrum(7.0 * R.dense(), A), dense, rtol=1e-9,
                               atol=0)


def test_predicted_alignment_of_a_slot_half_in_the_subspace_is_one_half():
    """The distance is 1 - ||U_K^H a||^2, not its square root: a slot (u_1 + u_2) / sqrt 2
    with K = 1 has ||U_1^H a||^2 = 1/2, distance 0.5 (a mutation review: 1 - sqrt(.), 0.29
    here, passed, every slot of the tests lying wholly inside or outside)."""
    Q, _ = torch.linalg.qr(torch.randn(1, 6, 6, dtype=torch.complex128,
                                       generator=torch.Generator().manual_seed(9)))
    R = Q @ torch.diag(torch.arange(6.0, 0.0, -1.0).to(Q.dtype)) @ Q.mH
    slot = (Q[..., :1] + Q[..., 1:2]) / math.sqrt(2)
    d = sub.predicted_subspace_alignment(R, torch.tensor([1]), slot,
                                         torch.ones(1, 1, dtype=torch.float64))
    assert float(d) == pytest.approx(0.5, abs=1e-12)


def test_capon_spectrum_reads_only_the_hermitian_part_of_r():
    """R + X - X^H has R's Hermitian part: the same spectrum (a mutation review: dropping
    the Hermitisation passed, Cholesky reading only the lower triangle of the Hermitian R
    of every test)."""
    g = torch.Generator().manual_seed(11)
    W = torch.randn(2, 16, 3, dtype=torch.complex128, generator=g)
    R = W @ W.mH + 0.5 * torch.eye(16, dtype=torch.complex128)
    X = torch.randn(2, 16, 16, dtype=torch.complex128, generator=g)
    A = torch.randn(2, 16, 4, dtype=torch.complex128, generator=g)
    A = A / A.norm(dim=-2, keepdim=True)
    torch.testing.assert_close(sub.capon_spectrum(R + X - X.mH, A), sub.capon_spectrum(R, A),
                               rtol=1e-9, atol=0)


def test_capon_spectrum_scales_as_the_inverse_squared_norm_of_a():
    """1 / (a^H R_l^-1 a) is homogeneous of degree -2 in a: steering 1e-3 times shorter gives
    a spectrum 1e6 times larger, dense and by Woodbury alike (a mutation review: the
    Woodbury path's eps guard raised to 1e-3, clipping such values, passed)."""
    from risloc.covariance.tools import LowRank

    g = torch.Generator().manual_seed(11)
    W = torch.randn(1, 16, 3, dtype=torch.complex128, generator=g)
    A = torch.randn(1, 16, 4, dtype=torch.complex128, generator=g)
    A = A / A.norm(dim=-2, keepdim=True)
    R = LowRank(torch.tensor([1.0], dtype=torch.float64), W)
    for r in (R, R.dense()):
        torch.testing.assert_close(sub.capon_spectrum(r, 1e-3 * A),
                                   1e6 * sub.capon_spectrum(r, A), rtol=1e-9, atol=0)


def test_subspace_alignments_are_never_negative_at_the_truth(scenes, system, R_true):
    """Both alignments are squared norms, >= 0: float32 cancellation at the truth (where
    they are ~0) must not give a negative loss (a mutation review: dropping either
    clamp_min(0) passed, the tests bounding only the maximum)."""
    A = _A(scenes, system)
    assert float(sub.gt_subspace_alignment(R_true, A).min()) >= 0.0
    w = scenes.mask.float()
    assert float(sub.predicted_subspace_alignment(R_true, scenes.K, A, w).min()) >= 0.0
