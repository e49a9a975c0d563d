import pytest
import torch

from risloc.config import SceneConfig
from risloc.covariance import (
    abs2,
    abs2_,
    back_projection,
    blend,
    hermitise,
    load_diagonal,
    normalize_trace,
    orthonormal_basis,
    sample_covariance,
    shrink,
    subspace_overlap,
    trace,
)
from risloc.covariance.tools import (
    LowRank,
    _eigenpair_by_squaring,
    _gram_schmidt,
    blend_factor,
    leading_eigenpair,
    snapshot_covariance,
)
from risloc.simulation import scene_true_covariance, simulate_range, true_covariance_factor


def _rand_psd(B=3, N=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, N, 2 * N, generator=g, dtype=torch.complex128)
    return X @ X.mH


def test_hermitise_trace_normalise():
    R = _rand_psd() + 0.3j * torch.eye(6, dtype=torch.complex128)  # break Hermitian symmetry
    Rh = hermitise(R)
    assert torch.allclose(Rh, Rh.mH)
    # the Hermitian part itself, at its scale: a Hermitian R is returned as it is (the loss
    # reads eigenvalues of hermitise(W^H W); a mutation review: R + R^H passed every test)
    assert torch.allclose(Rh, _rand_psd())
    assert torch.allclose(hermitise(Rh), Rh)
    Rn = normalize_trace(Rh, 10)
    assert torch.allclose(trace(Rn), torch.full((3,), 10.0, dtype=torch.float64))
    assert torch.all(torch.isfinite(normalize_trace(torch.zeros(2, 4, 4, dtype=torch.complex64))))
    # eps guards only an all-zero matrix: a small trace is still scaled to N (a mutation
    # review: eps at 1 passed every test)
    small = 1e-6 * torch.eye(3, dtype=torch.complex128).expand(2, 3, 3)
    assert torch.allclose(normalize_trace(small), torch.eye(3, dtype=torch.complex128))
    # the real part of the trace, signed (a mutation review: |diagonal| passed every test)
    D = torch.diag(torch.tensor([-1.0 + 2j, 3.0 - 1j, -0.5 + 0j], dtype=torch.complex128))
    assert trace(D).item() == pytest.approx(1.5)
    # a non-square or 1-D input is refused with the shape message (a second mutation review:
    # `and` for `or` in the square check, or no check on ndim, passed every test)
    for bad in (torch.ones(2, 3, 4, dtype=torch.complex128), torch.ones(3)):
        with pytest.raises(ValueError, match="must be"):
            normalize_trace(bad)
        with pytest.raises(ValueError, match="must be"):
            hermitise(bad)


def test_shrink_and_loading_keep_eigenvectors():
    R = _rand_psd()
    ev, U = torch.linalg.eigh(R)
    mu = (trace(R) / 6).view(-1, 1)
    ev_s = torch.linalg.eigvalsh(shrink(R, 0.25))
    assert torch.allclose(ev_s, 0.75 * ev + 0.25 * mu)
    ev_l = torch.linalg.eigvalsh(load_diagonal(R, 0.1))
    assert torch.allclose(ev_l, ev + 0.1 * mu)
    assert torch.allclose(trace(shrink(R, 0.5)), trace(R))
    with pytest.raises(ValueError):
        shrink(R, 1.5)
    with pytest.raises(ValueError):
        load_diagonal(R, -1.0)
    # the closed ends are allowed: a = 0 and eps = 0 leave R as it is, a = 1 gives tr(R)/N I
    # (a second mutation review: rejecting a = 0 or eps = 0 passed every test)
    assert torch.equal(shrink(R, 0.0), R) and torch.equal(load_diagonal(R, 0.0), R)
    assert torch.allclose(shrink(R, 1.0), mu.view(-1, 1, 1) * torch.eye(6, dtype=R.dtype))


def test_blend_endpoints_trace_and_no_grad_into_samp():
    Rp = _rand_psd(seed=1).requires_grad_()
    Rs = _rand_psd(seed=2).requires_grad_()
    for beta in (0.0, 0.3, 1.0):
        Rb = blend(Rp, Rs, beta)
        assert torch.allclose(trace(Rb), torch.full((3,), 6.0, dtype=torch.float64))
        assert torch.allclose(Rb, Rb.mH)
    assert torch.allclose(blend(Rp, Rs, 0.0), normalize_trace(Rp))
    assert torch.allclose(blend(Rp, Rs, 1.0), normalize_trace(Rs))
    blend(Rp, Rs, 0.3).real.sum().backward()
    assert Rp.grad is not None and Rs.grad is None  # R_samp is detached
    per_scene = blend(Rp.detach(), Rs.detach(), torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(per_scene[2], normalize_trace(Rs.detach())[2])
    with pytest.raises(ValueError, match="differ"):
        blend(Rp, Rs[:, :5, :5], 0.3)
    # closed form at an interior beta with R_samp far from trace N: both inputs are scaled
    # to trace N before mixing, and the result is at the N asked for, not R's size (a
    # mutation review: R_samp unnormalised, or the last step at trace R.shape[-1], passed)
    P, S = Rp.detach(), 5.0 * Rs.detach()
    unit = lambda R, n: R * (n / trace(R)).view(-1, 1, 1)  # noqa: E731
    for n in (6, 10):
        want = unit(0.7 * unit(P, n) + 0.3 * unit(S, n), n)
        # to double precision: beta in R's real dtype (a mutation review: beta in float32,
        # 1e-8 off, passed)
        assert torch.allclose(blend(P, S, 0.3, n), want, rtol=1e-12, atol=1e-12)


def test_back_projection_is_tikhonov_least_squares(system):
    b = simulate_range(0, 2, system, SceneConfig(), split="test")
    y, H, c = (t.to(torch.complex128) for t in (b.y, b.H, b.codes))
    a = back_projection(y, H, c, alpha=1e-3)
    Phi = H[0] @ torch.diag(c[0, 3])
    lam = 1e-3 * torch.trace(Phi.mH @ Phi).real / 144
    direct = torch.linalg.solve(Phi.mH @ Phi + lam * torch.eye(144, dtype=Phi.dtype),
                                Phi.mH @ y[0, 3])
    assert torch.allclose(a[0, 3], direct, rtol=1e-6, atol=1e-8)
    # unloaded (alpha 0) a singular system is an error, not silent NaN: the checked solve
    # (a mutation review: the unchecked solve_ex at alpha 0 passed every test)
    dead = c.clone()
    dead[:, 0] = 0  # a snapshot with every element off: Phi_0 = 0
    with pytest.raises(torch.linalg.LinAlgError):
        back_projection(y, H, dead, alpha=0.0)


def test_sample_covariance_rank_trace_and_weakness(system):
    """R_samp has rank <= min(L, ...) (LESSONS: a helper once returned rank 1) and is a weak
    estimate of R_true when M < N: its top-K subspace overlap is far below 1."""
    b = simulate_range(0, 32, system, SceneConfig(snr_db=(20.0, 20.0)), split="test")
    Rs = sample_covariance(b.y, b.H, b.codes)
    assert Rs.shape == (32, 144, 144)
    assert torch.allclose(trace(Rs), torch.full((32,), 144.0), rtol=1e-4)
    assert torch.allclose(Rs, Rs.mH, atol=1e-4)
    ranks = torch.linalg.matrix_rank(Rs.to(torch.complex128), hermitian=True, rtol=1e-6)
    assert bool((ranks == system.L).all())  # one back-projected snapshot per rank
    ov = subspace_overlap(Rs, scene_true_covariance(b, system), b.K)
    assert 0.05 < float(ov.mean()) < 0.6
    assert torch.allclose(subspace_overlap(Rs, Rs, b.K), torch.ones(32), atol=1e-4)
    # the units of y and H do not matter, even far from the simulator's (y in uV, H x 1e9)
    for y_gain, H_gain in ((1e-13, 1.0), (1.0, 1e9), (1e6, 1e-3)):
        other = sample_covariance(y_gain * b.y, H_gain * b.H, b.codes)
        assert torch.allclose(other, Rs, atol=1e-4), (y_gain, H_gain)


def test_subspace_overlap_of_factors_equals_the_dense_one(system):
    """R_true as its K_max-column factor and R_samp (L back-projected snapshots) as c I +
    W W^H give the overlap of the dense matrices; the factor of R_true reproduces it."""
    b = simulate_range(0, 32, system, SceneConfig(snr_db=(10.0, 10.0)), split="test")
    W_true = true_covariance_factor(b, system)
    R_true = scene_true_covariance(b, system)
    assert (W_true @ W_true.mH - R_true).abs().max() < 1e-5 * R_true.abs().max()
    a = back_projection(b.y, b.H, b.codes)
    F = torch.zeros(32, system.N, 1, dtype=torch.complex64)  # beta = 1: R_samp alone
    Rs = sample_covariance(b.y, b.H, b.codes)
    factor = blend_factor(F, a, 1.0).loaded(0.01)
    true = LowRank(torch.zeros(32), W_true)
    dense = subspace_overlap(load_diagonal(Rs, 0.01), R_true, b.K)
    for est, ref in ((factor, true), (factor, R_true), (load_diagonal(Rs, 0.01), true)):
        assert (subspace_overlap(est, ref, b.K) - dense).abs().max() < 1e-4
    assert 0.05 < float(dense.mean()) < 0.6


def test_sample_covariance_shape_errors(system):
    b = simulate_range(0, 2, system, SceneConfig(), split="test")
    with pytest.raises(ValueError, match="y must be"):
        sample_covariance(b.y[:, :, :5], b.H, b.codes)
    # codes for one snapshot beside L of them: refused, not broadcast over the snapshots
    # (a mutation review: dropping the check on L passed every test)
    with pytest.raises(ValueError, match="y must be"):
        sample_covariance(b.y, b.H, b.codes[:, :1])
    # H and codes of one scene beside y of two: refused, not broadcast over the scenes (a
    # second mutation review: dropping the check on B passed every test)
    with pytest.raises(ValueError, match="y must be"):
        back_projection(b.y, b.H[:1], b.codes[:1])
    # N sets the trace (a mutation review: N not passed on passed every test)
    assert torch.allclose(trace(sample_covariance(b.y, b.H, b.codes, N=10)),
                          torch.full((2,), 10.0), rtol=1e-4)


def test_abs2_matches_abs_squared_with_finite_gradient_at_zero():
    z = torch.randn(50, dtype=torch.complex128)
    z[0] = 0
    assert torch.allclose(abs2(z), z.abs().square())
    assert torch.equal(abs2(torch.tensor([-3.0])), torch.tensor([9.0]))
    w = z.clone().requires_grad_(True)
    abs2(w).sum().backward()
    assert bool(torch.isfinite(torch.view_as_real(w.grad)).all())


def test_abs2_in_place_equals_abs2_bit_for_bit_and_keeps_gradients_and_conjugates():
    a = torch.randn(8, 3, 40, dtype=torch.complex64)
    b = torch.randn(8, 40, 500, dtype=torch.complex64)
    ref = abs2(a @ b)
    tmp = a @ b
    orig = tmp.clone()
    out = abs2_(tmp)
    assert torch.equal(out, ref) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(tmp.real, orig.real.square())  # squared in its own storage
    w = (a @ b).requires_grad_(True)  # needs a gradient: abs2, w untouched
    abs2_(w).sum().backward()
    assert torch.allclose(w.grad, 2 * w.detach())
    c = (a @ b).conj()  # a lazy conjugate: abs2, its storage untouched
    kept = c.resolve_conj().clone()
    assert torch.equal(abs2_(c), ref) and torch.equal(c.resolve_conj(), kept)
    assert torch.equal(abs2_(torch.tensor([-3.0])), torch.tensor([9.0]))
    buf = torch.empty(8, 3, 500)
    into = abs2_(a @ b, out=buf)  # into the caller's buffer
    assert into.data_ptr() == buf.data_ptr() and torch.equal(into, ref)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("repeated", [False, True])
def test_orthonormal_basis_spans_the_columns_and_zeroes_the_ones_that_add_nothing(dtype,
                                                                                 repeated):
    """Both routes (LAPACK QR on the CPU, Gram-Schmidt on other devices, run here on the
    CPU) give orthonormal columns spanning A's, column j from A's first j + 1, and zero
    columns for zero (padded, last) or repeated ones (a source found twice: not last, where
    the CPU route hands the batch to Gram-Schmidt)."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(64, 9, 5, generator=g, dtype=dtype)
    keep = torch.ones(64, 5, dtype=torch.bool)
    A[:8, :, 4] = 0
    keep[:8, 4] = False
    if repeated:
        A[8:16, :, 3] = 2j * A[8:16, :, 1]
        keep[8:16, 3] = False
    tol = 10 * torch.finfo(A.real.dtype).eps
    eps = 50 * torch.finfo(A.real.dtype).eps
    routes = [orthonormal_basis(A), _gram_schmidt(A, tol)]
    for Q in routes:
        assert Q.transpose(-1, -2)[~keep].abs().amax() == 0
        assert (Q.mH @ Q - torch.diag_embed(keep.to(dtype))).abs().amax() < eps
        for j in range(5):  # the span of A's first j + 1 columns: P_j A_j = A_j
            P = Q[..., : j + 1] @ Q[..., : j + 1].mH
            Aj = A[..., : j + 1]
            assert ((P @ Aj - Aj).abs().amax() / Aj.abs().amax()) < eps
    # the same projectors (the columns may differ by a unit phase)
    P0, P1 = (Q @ Q.mH for Q in routes)
    assert (P0 - P1).abs().amax() < eps
    if not repeated:  # the CPU route is the QR's Q, bit for bit
        assert torch.equal(routes[0], torch.linalg.qr(A)[0] * keep.unsqueeze(-2))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_leading_eigenpair_both_routes_match_eigh(dtype):
    """eigh on the CPU, repeated squaring elsewhere (run here on the CPU): the largest
    eigenvalue and its eigenvector (up to a phase) of channel Gram matrices H H^H, to
    rounding where the eigenvalues are apart (ratio up to 0.99 here); with two equal top
    eigenvalues the squaring's vector lies in their eigenspace and its value is theirs."""
    g = torch.Generator().manual_seed(4)
    H = torch.randn(256, 8, 144, generator=g, dtype=dtype)
    G = H @ H.mH
    lam, U = torch.linalg.eigh(G)
    assert float((lam[:, -2] / lam[:, -1]).max()) > 0.95  # some hard cases among them
    eps = 100 * torch.finfo(lam.dtype).eps
    for value, u in (leading_eigenpair(G), _eigenpair_by_squaring(G, 12)):
        assert ((value - lam[:, -1]).abs() / lam[:, -1]).max() < eps
        assert (1 - (u.conj() * U[:, :, -1]).sum(-1).abs()).abs().max() < 10 * eps
        assert (torch.linalg.vector_norm(u, dim=-1) - 1).abs().max() < eps
    # a double top eigenvalue: diag(3, 3, 1) in a random unitary basis
    Q = torch.linalg.qr(torch.randn(16, 3, 3, generator=g, dtype=dtype))[0]
    D = torch.tensor([3.0, 3.0, 1.0], dtype=lam.dtype).to(dtype)
    G2 = Q @ torch.diag_embed(D) @ Q.mH
    value, u = _eigenpair_by_squaring(G2, 12)
    assert ((value - 3).abs() < 1e3 * eps).all()
    top = Q[:, :, :2]
    assert (torch.linalg.vector_norm(top.mH @ u.unsqueeze(-1), dim=(-2, -1)) - 1).abs().max() \
        < 10 * eps
    # a diagonal G: the eigenvector is a unit vector, read from the projector's column of the
    # largest diagonal (the others are zero; a mutation review: the smallest passed on dense
    # eigenvectors, every column of whose projector is the vector up to a factor)
    G3 = torch.diag_embed(torch.tensor([[1.0, 5.0, 2.0], [3.0, 1.0, 0.5]], dtype=lam.dtype))
    value, u = _eigenpair_by_squaring(G3.to(dtype), 12)
    assert torch.allclose(value, torch.tensor([5.0, 3.0], dtype=lam.dtype))
    assert torch.equal(u.abs(), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=lam.dtype))


@pytest.mark.parametrize("beta", [0.3, torch.tensor([0.3, 0.7])])
def test_the_blend_factor_is_the_blend_of_its_parts(beta):
    """W W^H of blend_factor(F, a, beta) equals blend(F F^H, snapshot_covariance(a), beta)
    for a number and for per-scene betas (a mutation review: the number's branch could
    weigh by 1 - beta instead of its square root unseen)."""
    g = torch.Generator().manual_seed(8)
    F = torch.randn(2, 40, 3, dtype=torch.complex128, generator=g)
    a = torch.randn(2, 6, 40, dtype=torch.complex128, generator=g)
    got = blend_factor(F, a, beta).dense()
    want = blend(F @ F.mH, snapshot_covariance(a), beta)
    assert torch.allclose(got, want, atol=1e-10)
    # a zero R_pred: R_samp alone, at trace N as in blend (a mutation review: the factor
    # left at trace N beta passed every test)
    zero = torch.zeros_like(F)
    got = blend_factor(zero, a, beta).dense()
    assert torch.allclose(got, blend(zero @ zero.mH, snapshot_covariance(a), beta), atol=1e-10)
    assert torch.allclose(trace(got), torch.full((2,), 40.0, dtype=torch.float64))
    # no factor where it would be no smaller than R: S + L >= N (S + L = N: None)
    assert blend_factor(F[:, :9], a[..., :9], beta) is None
    assert blend_factor(F[:, :10], a[..., :10], beta).W.shape == (2, 10, 9)
    # a is detached as in blend: no gradient reaches the snapshots (a mutation review)
    Fg, ag = F.clone().requires_grad_(), a.clone().requires_grad_()
    abs2(blend_factor(Fg, ag, beta).W).sum().backward()
    assert Fg.grad is not None and ag.grad is None


def test_low_rank_operations_equal_their_dense_counterparts():
    """LowRank c I + W W^H: shrunk, loaded, scaled_to_trace, trace, frob2 and matmul are
    shrink, load_diagonal, normalize_trace, trace, ||.||_F^2 and R @ A of the dense matrix
    (a mutation review: W (1 - a) for W sqrt(1 - a) in shrunk passed every test)."""
    g = torch.Generator().manual_seed(11)
    W = torch.randn(3, 10, 4, generator=g, dtype=torch.complex128)
    c = torch.tensor([0.0, 0.3, 2.0], dtype=torch.float64)
    R = LowRank(c, W)
    D = R.dense()
    for a in (0.2, 0.7):
        assert torch.allclose(R.shrunk(a).dense(), shrink(D, a), atol=1e-12)
    assert torch.allclose(R.loaded(0.1).dense(), load_diagonal(D, 0.1), atol=1e-12)
    assert torch.allclose(R.scaled_to_trace(7).dense(), normalize_trace(D, 7), atol=1e-12)
    assert torch.allclose(R.trace(), trace(D))
    assert torch.allclose(R.frob2(), D.abs().square().sum((-2, -1)))
    A = torch.randn(3, 10, 2, generator=g, dtype=torch.complex128)
    assert torch.allclose(R.matmul(A), D @ A, atol=1e-12)
    # of(W) is W W^H with c = 0, and first(n) the first n scenes (a mutation review: c = 1
    # in of, or the last n scenes in first, passed every test)
    assert torch.equal(LowRank.of(W).c, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(LowRank.of(W).dense(), W @ W.mH, atol=1e-12)
    assert torch.equal(R.first(2).c, c[:2]) and torch.equal(R.first(2).W, W[:2])


def test_gram_schmidt_stays_orthonormal_on_nearly_dependent_columns():
    """CGS2 (Giraud et al. 2005): orthonormal to working precision even when the columns
    are nearly dependent (condition ~1e6), where one classical Gram-Schmidt pass loses
    orthogonality as eps cond^2 (a mutation review: one pass passed every test)."""
    g = torch.Generator().manual_seed(5)
    B = torch.randn(16, 12, 4, generator=g, dtype=torch.complex128)
    A = B.clone()
    for j in range(1, 4):  # each column the previous one plus a 1e-6 perturbation
        A[..., j] = A[..., j - 1] + 1e-6 * B[..., j]
    Q = _gram_schmidt(A, 10 * torch.finfo(torch.float64).eps)
    eye = torch.eye(4, dtype=torch.complex128)
    assert (Q.mH @ Q - eye).abs().amax() < 1e-12
    # a column adding 1e-12 of its norm is kept (the tolerance is 10 ulp; a mutation
    # review: 1e6 ulp passed every test), by both routes
    A[..., 1] = A[..., 0] + 1e-12 * B[..., 1]
    for Q in (orthonormal_basis(A[..., :2]), _gram_schmidt(A[..., :2], 10 * 2.0 ** -52)):
        assert (Q.mH @ Q - eye[:2, :2]).abs().amax() < 1e-3
    # the tolerance is relative to the column's norm, not absolute: columns of norm ~1e-20
    # are kept, by both routes (a second mutation review: an absolute tol passed every test)
    tiny = 1e-20 * B
    for Q in (orthonormal_basis(tiny), _gram_schmidt(tiny, 10 * 2.0 ** -52)):
        assert (Q.mH @ Q - eye).abs().amax() < 1e-12
