"""Cramer-Rao bounds against textbook forms, closed forms and brute-force FIMs.

Independent references are computed here in NumPy, with steering derivatives taken by
central finite differences of ``steering`` (not ``steering_jacobian``).
"""

import math
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from risloc.config import SceneConfig, SystemConfig
from risloc.evaluation.crb import (
    SingularFIMError,
    crb,
    crb_deterministic,
    crb_for_scenes,
    crb_stochastic,
    noise_var_for_snr,
)
from risloc.physics import steering
from risloc.simulation import simulate_batch

NAN = float("nan")
FD_STEP = 1e-6


def _t(values):
    # (one array first: a list of arrays is torch's slow path, with a warning)
    return torch.tensor(np.asarray(values, dtype=np.float64))


def _cn(shape, seed):
    g = np.random.default_rng(seed)
    return (g.standard_normal(shape) + 1j * g.standard_normal(shape)) / math.sqrt(2)


def _np_steering(az, el, r, system):
    """A [N, K] complex128 and D = [dA/dphi, dA/dtheta, dA/dr] [N, 3K] by central differences."""
    def st(a, e, q):
        return steering(_t(a), _t(e), _t(q), system, torch.complex128).numpy().T

    A = st(az, el, r)
    blocks = []
    for p in range(3):
        cols = []
        for k in range(len(az)):
            params = [list(az), list(el), list(r)]
            plus = [list(v) for v in params]
            minus = [list(v) for v in params]
            plus[p][k] += FD_STEP
            minus[p][k] -= FD_STEP
            cols.append((st(*plus)[:, k] - st(*minus)[:, k]) / (2 * FD_STEP))
        blocks.append(np.stack(cols, axis=1))
    return A, np.concatenate(blocks, axis=1)


def _identity_problem(system, L):
    """H = I_N, all-ones codes (M = N): y_l = A s_l + n_l."""
    H = torch.eye(system.N, dtype=torch.complex128).unsqueeze(0)
    codes = torch.ones(1, L, system.N, dtype=torch.complex128)
    return H, codes


def _perp(A):
    return np.eye(A.shape[0]) - A @ np.linalg.pinv(A)


SYS4 = SystemConfig(N_H=4, N_V=4, M=16, K_max=4)
# three sources in slots 0, 1, 3; slot 2 is padding (NaN) to check it changes nothing
AZ4, EL4, R4 = [0.3, -0.4, NAN, 0.1], [0.1, -0.2, NAN, 0.35], [0.8, 1.6, NAN, 1.1]
REAL4 = [0, 1, 3]


def _real(values):
    return [values[k] for k in REAL4]


def test_deterministic_identity_matches_stoica_nehorai():
    """CRB = sigma^2/2 {sum_l Re[(D^H P_perp_A D) (.) (1_3x3 kron s_l s_l^H)^T]}^-1 (SN 1989)."""
    L, sigma2 = 10, 0.3
    H, codes = _identity_problem(SYS4, L)
    s = _cn((L, 4), 1)
    s[:, 2] = 5.0  # padded slot: must be ignored
    out = crb_deterministic(_t([AZ4]), _t([EL4]), _t([R4]), torch.from_numpy(s)[None], H, codes,
                            _t([sigma2]), SYS4)
    A, D = _np_steering(_real(AZ4), _real(EL4), _real(R4), SYS4)
    s_real = s[:, REAL4]
    Phat = s_real.T @ s_real.conj()  # sum_l s_l s_l^H
    J = (2 / sigma2) * np.real((D.conj().T @ _perp(A) @ D) * np.kron(np.ones((3, 3)), Phat.T))
    ref = np.sqrt(np.diag(np.linalg.inv(J))).reshape(3, 3)
    got = torch.stack([out.azimuth[0], out.elevation[0], out.range_m[0]])
    np.testing.assert_allclose(got[:, REAL4].numpy(), ref, rtol=1e-6)
    assert torch.isnan(got[:, 2]).all()
    idx = [k + 4 * p for p in range(3) for k in REAL4]
    np.testing.assert_allclose(out.fim[0][idx][:, idx].numpy(), J, rtol=1e-6, atol=1e-6 * J.max())


def _slg_inverse(A, D, P, sigma2, L):
    """Stoica-Larsson-Gershman 2001: (2L/s2) Re{(D^H P_perp D) (.) (P A^H R^-1 A P)^T}."""
    R = A @ P @ A.conj().T + sigma2 * np.eye(A.shape[0])
    G = P @ A.conj().T @ np.linalg.solve(R, A) @ P
    return (2 * L / sigma2) * np.real((D.conj().T @ _perp(A) @ D) * np.kron(np.ones((3, 3)), G.T))


def test_stochastic_identity_matches_stoica_larsson_gershman():
    L, sigma2 = 7, 0.5
    H, codes = _identity_problem(SYS4, L)
    powers = _t([[1.0, 2.5, 9.0, 0.7]])  # slot 2 is padding
    args = (_t([AZ4]), _t([EL4]), _t([R4]), powers, H, codes, _t([sigma2]), SYS4)
    full = crb_stochastic(*args, source_covariance="full")
    diag = crb_stochastic(*args)
    A, D = _np_steering(_real(AZ4), _real(EL4), _real(R4), SYS4)
    J = _slg_inverse(A, D, np.diag(powers[0, REAL4].numpy()), sigma2, L)
    ref = np.sqrt(np.diag(np.linalg.inv(J))).reshape(3, 3)
    for res in (full, diag):
        got = torch.stack([res.azimuth[0], res.elevation[0], res.range_m[0]])[:, REAL4].numpy()
        if res is full:
            np.testing.assert_allclose(got, ref, rtol=1e-6)
        else:  # knowing the sources are uncorrelated can only help
            assert (got <= ref * (1 + 1e-9)).all() and (got < ref * 0.9999).any()


def _ula(N):
    return SystemConfig(N_H=N, N_V=1, M=N, K_max=1)


@pytest.mark.parametrize("wavefront,rng_m,rtol", [("fresnel", 2.0, 1e-9),
                                                 ("spherical", 1e4, 1e-3)])
def test_far_field_ula_single_source_closed_form(wavefront, rng_m, rtol):
    """Single source, ULA, angle only: CRB(phi) = 6 sigma^2 / (E (N^2-1) (k0 d cos phi)^2),
    E = sum_l |s_l|^2 (deterministic); E -> L p^2/(p + sigma^2) (stochastic)."""
    N, L, sigma2, p, az = 8, 12, 0.4, 1.3, math.radians(25.0)
    system = _ula(N).model_copy(update={"wavefront": wavefront})
    H, codes = _identity_problem(system, L)
    s = _cn((1, L, 1), 3)
    geo = (_t([[az]]), _t([[0.0]]), _t([[rng_m]]))
    known = ("elevation", "range")
    det = crb_deterministic(*geo, torch.from_numpy(s), H, codes, _t([sigma2]), system,
                            known=known)
    sto = crb_stochastic(*geo, _t([[p]]), H, codes, _t([sigma2]), system, known=known)
    gain = (N**2 - 1) * (system.k0 * system.spacing * math.cos(az)) ** 2
    energy = {"det": float(np.sum(np.abs(s) ** 2)), "sto": L * p**2 / (p + sigma2)}
    assert det.azimuth.item() == pytest.approx(math.sqrt(6 * sigma2 / (energy["det"] * gain)),
                                               rel=rtol)
    assert sto.azimuth.item() == pytest.approx(math.sqrt(6 * sigma2 / (energy["sto"] * gain)),
                                               rel=rtol)
    assert det.elevation.item() == 0 and det.range_m.item() == 0  # declared known


def _el_korso_crb(N, az, r, system, energy, sigma2):
    """Single near-field source on a ULA, derived here from the phase model
    tau_u = omega u + psi u^2 (u = n - (N-1)/2 centred index, n = 0..N-1):
    J(omega, psi) = (2 E / sigma^2) [[m2 - m1^2, m3 - m1 m2], [m3 - m1 m2, m4 - m2^2]],
    m_k = (1/N) sum u^k; our "fresnel" phase k0 x sin(phi) - k0 x^2/(2r) gives
    omega = k0 d sin(phi), psi = -k0 d^2 / (2 r) (no cos^2 factor, unlike El Korso et al.),
    mapped to (phi, r) by the Jacobian G = diag(k0 d cos(phi), k0 d^2 / (2 r^2))."""
    u = np.arange(N) - (N - 1) / 2
    m = [np.mean(u**k) for k in range(5)]
    J = (2 * energy / sigma2) * np.array([[m[2] - m[1] ** 2, m[3] - m[1] * m[2]],
                                          [m[3] - m[1] * m[2], m[4] - m[2] ** 2]])
    d, k0 = system.spacing, system.k0
    G = np.diag([k0 * d * math.cos(az), k0 * d**2 / (2 * r**2)])
    crb = np.linalg.inv(G.T @ J @ G)
    # the same in polynomial closed form (m1 = m3 = 0, m4 - m2^2 = (N^2-1)(N^2-4)/180)
    poly_az = 6 * sigma2 / (energy * (N**2 - 1) * G[0, 0] ** 2)
    poly_r = 90 * sigma2 / (energy * (N**2 - 1) * (N**2 - 4) * G[1, 1] ** 2)
    np.testing.assert_allclose(np.diag(crb), [poly_az, poly_r], rtol=1e-12)
    return np.sqrt(np.diag(crb))


@pytest.mark.parametrize("N,az_deg,r", [(9, 20.0, 1.5), (16, -35.0, 3.0)])
def test_near_field_ula_single_source_closed_form(N, az_deg, r):
    L, sigma2, p, az = 10, 0.2, 0.8, math.radians(az_deg)
    system = _ula(N).model_copy(update={"wavefront": "fresnel"})
    H, codes = _identity_problem(system, L)
    s = _cn((1, L, 1), 4)
    geo = (_t([[az]]), _t([[0.0]]), _t([[r]]))
    det = crb_deterministic(*geo, torch.from_numpy(s), H, codes, _t([sigma2]), system,
                            known=("elevation",))
    sto = crb_stochastic(*geo, _t([[p]]), H, codes, _t([sigma2]), system, known=("elevation",))
    ref_det = _el_korso_crb(N, az, r, system, float(np.sum(np.abs(s) ** 2)), sigma2)
    ref_sto = _el_korso_crb(N, az, r, system, L * p**2 / (p + sigma2), sigma2)
    np.testing.assert_allclose([det.azimuth.item(), det.range_m.item()], ref_det, rtol=1e-9)
    np.testing.assert_allclose([sto.azimuth.item(), sto.range_m.item()], ref_sto, rtol=1e-9)


SYS3 = SystemConfig(N_H=3, N_V=3, M=5, K_max=2)
AZ3, EL3, R3 = [0.2, -0.5], [0.15, -0.1], [0.9, 2.0]


def _compressive(L, seed):
    H = torch.from_numpy(_cn((1, 5, 9), seed))
    codes = torch.from_numpy(np.exp(2j * np.pi * np.random.default_rng(seed + 1).random((1, L, 9))))
    return H, codes


def _operators(H, codes):
    return [H[0].numpy() * codes[0, l].numpy()[None, :] for l in range(codes.shape[1])]


def test_deterministic_compressive_matches_brute_force_fim():
    """Full FIM over (eta, Re s, Im s) of the stacked mean, inverted, eta block."""
    L, sigma2 = 4, 0.05
    H, codes = _compressive(L, 10)
    s = _cn((L, 2), 11)
    out = crb_deterministic(_t([AZ3]), _t([EL3]), _t([R3]), torch.from_numpy(s)[None], H, codes,
                            _t([sigma2]), SYS3)
    A, D = _np_steering(AZ3, EL3, R3, SYS3)
    Phi = _operators(H, codes)
    K = 2
    cols = []
    for i in range(3 * K):  # d mu / d eta_i: D column i times s_{l, k(i)}
        cols.append(np.concatenate([Ph @ D[:, i] * s[l, i % K] for l, Ph in enumerate(Phi)]))
    for unit in (1.0, 1j):  # d mu / d Re s_lk and d Im s_lk
        for l in range(L):
            for k in range(K):
                col = np.zeros(L * 5, complex)
                col[5 * l:5 * l + 5] = unit * Phi[l] @ A[:, k]
                cols.append(col)
    G = np.stack(cols, axis=1)
    crb = np.linalg.inv((2 / sigma2) * np.real(G.conj().T @ G))[:3 * K, :3 * K]
    got = torch.cat([out.azimuth[0], out.elevation[0], out.range_m[0]]).numpy()
    np.testing.assert_allclose(got, np.sqrt(np.diag(crb)), rtol=1e-6)


def test_stochastic_compressive_matches_brute_force_slepian_bangs():
    """Slepian-Bangs per snapshot with finite-difference dR_l over (eta, p, sigma^2)."""
    L, sigma2, p = 6, 0.1, np.array([1.0, 0.6])
    H, codes = _compressive(L, 20)
    out = crb_stochastic(_t([AZ3]), _t([EL3]), _t([R3]), torch.from_numpy(p)[None], H, codes,
                         _t([sigma2]), SYS3)
    Phi = _operators(H, codes)

    def covs(x):  # x = (az1, az2, el1, el2, r1, r2, p1, p2, sigma2)
        A = steering(_t(x[0:2]), _t(x[2:4]), _t(x[4:6]), SYS3, torch.complex128).numpy().T
        return [Ph @ A @ np.diag(x[6:8]) @ (Ph @ A).conj().T + x[8] * np.eye(5) for Ph in Phi]

    x0 = np.array(AZ3 + EL3 + R3 + list(p) + [sigma2])
    dR = []
    for i in range(len(x0)):
        e = np.zeros_like(x0)
        e[i] = FD_STEP
        dR.append([(a - b) / (2 * FD_STEP) for a, b in zip(covs(x0 + e), covs(x0 - e))])
    W = [np.linalg.inv(R) for R in covs(x0)]
    J = np.array([[sum(np.trace(W[l] @ dR[i][l] @ W[l] @ dR[j][l]).real for l in range(L))
                   for j in range(len(x0))] for i in range(len(x0))])
    crb = np.linalg.inv(J)[:6, :6]
    got = torch.cat([out.azimuth[0], out.elevation[0], out.range_m[0]]).numpy()
    np.testing.assert_allclose(got, np.sqrt(np.diag(crb)), rtol=1e-5)


def _compressive_args(L, seed, sigma2=0.05):
    H, codes = _compressive(L, seed)
    return dict(azimuth=_t([AZ3]), elevation=_t([EL3]), range_m=_t([R3]), H=H, codes=codes,
                noise_var=_t([sigma2]), system=SYS3)


def _stack(res):
    return torch.stack([res.azimuth, res.elevation, res.range_m])


def test_crb_scales_with_noise_and_snapshots():
    L = 5
    args = _compressive_args(L, 30, sigma2=1e-5)
    s = torch.from_numpy(_cn((1, L, 2), 31))
    twice = dict(args, codes=torch.cat([args["codes"]] * 2, dim=1))
    base = _stack(crb_deterministic(symbols=s, **args))
    noisy = _stack(crb_deterministic(symbols=s, **dict(args, noise_var=args["noise_var"] * 10)))
    longer = _stack(crb_deterministic(symbols=torch.cat([s, s], dim=1), **twice))
    torch.testing.assert_close(noisy, base * math.sqrt(10), rtol=1e-10, atol=0)
    torch.testing.assert_close(longer, base / math.sqrt(2), rtol=1e-10, atol=0)
    powers = _t([[1.0, 1.0]])
    base = _stack(crb_stochastic(powers=powers, **args))
    noisy = _stack(crb_stochastic(powers=powers, **dict(args, noise_var=args["noise_var"] * 10)))
    longer = _stack(crb_stochastic(powers=powers, **twice))
    torch.testing.assert_close(longer, base / math.sqrt(2), rtol=1e-10, atol=0)
    # 1/SNR holds for the stochastic bound only asymptotically (high SNR: 40 -> 50 dB here)
    torch.testing.assert_close(noisy, base * math.sqrt(10), rtol=1e-2, atol=0)


@pytest.mark.parametrize("kind", ["deterministic", "stochastic"])
def test_crb_invariant_to_source_order_and_padding(kind):
    L = 8
    H, codes = _identity_problem(SYS4, L)
    s = torch.from_numpy(_cn((1, L, 4), 40))
    powers = _t([[1.0, 2.0, 0.0, 0.5]])
    geo = (_t([AZ4]), _t([EL4]), _t([R4]))
    common = dict(H=H, codes=codes, noise_var=_t([0.2]), system=SYS4)

    def run(perm):
        az, el, r = (g[:, perm] for g in geo)
        if kind == "deterministic":
            return _stack(crb_deterministic(az, el, r, s[:, :, perm], **common))
        return _stack(crb_stochastic(az, el, r, powers[:, perm], **common))

    base = run([0, 1, 2, 3])
    perm = [3, 2, 0, 1]
    torch.testing.assert_close(run(perm), base[:, :, perm], rtol=1e-9, atol=0, equal_nan=True)
    compact = run([0, 1, 3])  # the same sources without the padded slot
    torch.testing.assert_close(compact, base[:, :, REAL4], rtol=1e-9, atol=0)


def test_default_system_k5_low_snr_finite_and_positive(system):
    scenes = simulate_batch(4, system, SceneConfig(), torch.Generator().manual_seed(5),
                            snr_db=-5.0, K=5)
    for kind in ("deterministic", "stochastic"):
        res = crb_for_scenes(scenes, system, kind, chunk_size=3)
        out = _stack(res)
        assert out.shape == (3, 4, 5) and res.fim.shape == (4, 15, 15)
        assert torch.isfinite(out).all() and (out > 0).all()
        torch.testing.assert_close(res.fim, res.fim.mT)


def test_crb_for_scenes_padded_slots_are_nan(system):
    scenes = simulate_batch(3, system, SceneConfig(), torch.Generator().manual_seed(6), K=2)
    res = crb_for_scenes(scenes, system)
    assert torch.isnan(res.azimuth[:, 2:]).all() and torch.isfinite(res.azimuth[:, :2]).all()
    assert (res.fim[:, 2:5] == 0).all()


def test_crb_for_scenes_takes_the_system_as_crb_does_a_dict_or_its_json(system):
    # (a user's review: crb takes a dict or the JSON text, crb_for_scenes raised
    # AttributeError "'dict' object has no attribute 'N'")
    scenes = simulate_batch(2, system, SceneConfig(), torch.Generator().manual_seed(6), K=2)
    want = crb_for_scenes(scenes, system)
    for as_given in (system.model_dump(), system.model_dump_json()):
        got = crb_for_scenes(scenes, as_given)
        torch.testing.assert_close(got.azimuth, want.azimuth, equal_nan=True)
        torch.testing.assert_close(got.range_m, want.range_m, equal_nan=True)


def test_crb_for_scenes_of_a_file_names_the_bound_that_serves_them(system):
    """A scene file's scenes carry no noise_var: the error says so and names crb(...,
    snr_db=scenes.snr_db), which gives them the bound crb_for_scenes gives at the noise
    that SNR implies (equal powers: the stochastic bound)."""
    scenes = simulate_batch(2, system, SceneConfig(), torch.Generator().manual_seed(6), K=2)
    from_file = replace(scenes, noise_var=None, powers=None, symbols=None)
    with pytest.raises(ValueError, match=r"a scene file's do not: for those, crb\(scenes.H, "
                                         r"scenes.codes, .*snr_db=scenes.snr_db\)"):
        crb_for_scenes(from_file, system, kind="stochastic")
    with pytest.raises(ValueError, match=r"needs the truth \(positions, K\) of the scenes$"):
        crb_for_scenes(replace(scenes, K=None), system)
    deg = [torch.rad2deg(t) for t in (scenes.azimuth, scenes.elevation)]
    bound = crb(scenes.H, scenes.codes, *deg, scenes.range_m, system, snr_db=scenes.snr_db)
    sigma2 = noise_var_for_snr(scenes.azimuth, scenes.elevation, scenes.range_m, scenes.H,
                               scenes.codes, scenes.snr_db, system, scenes.mask)
    same = crb_for_scenes(replace(from_file, noise_var=sigma2), system,
                          kind="stochastic")
    assert torch.allclose(bound["range_m"], same.range_m, rtol=1e-6, equal_nan=True)


def test_a_singular_scene_is_named_by_its_index_in_the_batch(system):
    # the bound is computed in chunks; the error names the batch's scene, not the chunk's
    scenes = simulate_batch(6, system, SceneConfig(), torch.Generator().manual_seed(7), K=2)
    for name in ("azimuth", "elevation", "range_m"):
        getattr(scenes, name)[5, 1] = getattr(scenes, name)[5, 0]  # one source twice
    with pytest.raises(SingularFIMError, match=r"singular in scenes \[5\]") as err:
        crb_for_scenes(scenes, system, chunk_size=4)
    assert err.value.scenes == [5] and isinstance(err.value, ValueError)


def test_bad_inputs_raise():
    L = 3
    H, codes = _identity_problem(SYS4, L)
    s = torch.ones(1, L, 4, dtype=torch.complex128)
    args = dict(H=H, codes=codes, noise_var=_t([0.1]), system=SYS4)
    geo = (_t([AZ4]), _t([EL4]), _t([R4]))
    with pytest.raises(ValueError, match="non-finite"):
        crb_deterministic(*geo, s, mask=torch.ones(1, 4, dtype=torch.bool), **args)
    with pytest.raises(ValueError, match="all-zero channel"):
        crb_deterministic(*geo, s, **dict(args, H=H * 0))
    with pytest.raises(ValueError, match="noise_var"):
        crb_deterministic(*geo, s, **dict(args, noise_var=_t([0.0])))
    with pytest.raises(ValueError, match="symbols must be"):
        crb_deterministic(*geo, s[:, :2], **args)
    with pytest.raises(ValueError, match="powers must be finite and positive"):
        crb_stochastic(*geo, _t([[1.0, -1.0, 0.0, 1.0]]), **args)
    with pytest.raises(ValueError, match="K >= M"):
        small = SystemConfig(N_H=4, N_V=4, M=3, K_max=2)
        crb_deterministic(*geo, s, **dict(args, system=small, H=H[:, :3]))
    ula = _ula(6)
    H6, c6 = _identity_problem(ula, L)
    with pytest.raises(ValueError, match="singular"):  # elevation of a linear array
        crb_deterministic(_t([[0.2]]), _t([[0.0]]), _t([[2.0]]), s[:, :, :1], H6, c6,
                          _t([0.1]), ula)
    # (a mutation review: each of these passed)
    with pytest.raises(ValueError, match="non-positive range"):  # not only crb() checks it
        crb_deterministic(*geo[:2], _t([[0.8, 1.6, NAN, 0.0]]), s, **args)
    with pytest.raises(ValueError, match="known must name parameters among"):  # a typo
        crb_deterministic(*geo, s, known=("elevaton",), **args)


def test_k_up_to_m_minus_1_sources_are_bounded_and_coincident_ones_named():
    """K = M - 1 sources are resolvable (K >= M is refused); two sources at one position
    make every snapshot's measured columns dependent, and the fit of noise and powers at
    them says so instead of returning the garbage of a failed factorisation (a mutation
    review: K >= M - 1 refused, and the Gram matrix's check dropped, passed)."""
    from risloc.evaluation.crb import noise_and_powers_at

    g = np.random.default_rng(60)
    sys5 = SystemConfig(N_H=3, N_V=3, M=5, K_max=4, L=8)
    H = torch.from_numpy(_cn((1, 5, 9), 61))
    codes = torch.from_numpy(np.exp(2j * np.pi * g.random((1, 8, 9))))
    geo = (_t([[0.2, -0.5, 0.6, -0.1]]), _t([[0.15, -0.1, 0.3, -0.4]]),
           _t([[0.9, 2.0, 1.3, 3.0]]))
    det = crb_deterministic(*geo, torch.from_numpy(_cn((1, 8, 4), 62)), H, codes, _t([0.05]),
                            sys5)
    sto = crb_stochastic(*geo, _t([[1.0, 1.0, 1.0, 1.0]]), H, codes, _t([0.05]), sys5)
    for res in (det, sto):
        assert torch.isfinite(_stack(res)).all() and (_stack(res) > 0).all()
    twice = (_t([[0.2, 0.2]]), _t([[0.15, 0.15]]), _t([[0.9, 0.9]]))
    y = torch.from_numpy(_cn((1, 8, 5), 63))
    with pytest.raises(SingularFIMError, match="Gram matrix of the measured steering columns "
                                               r"is singular in scenes \[0\]"):
        noise_and_powers_at(*twice, y, H, codes, sys5.model_copy(update={"K_max": 2}))


def test_deterministic_bound_names_too_few_measurements_for_the_unknowns():
    """Each snapshot leaves 2 (M - K) real measurements once its symbols are fitted; 3 K
    unknown coordinates beyond 2 L (M - K) make J singular whatever the geometry. Here
    (M=4, K=3, L=3: 9 > 6) the old code factorised the rounding of a rank-6 J and returned
    bounds of ~2e8 deg (a review, h69crb); the stochastic bound and the deterministic one with
    two coordinates known (3 <= 6) are finite."""
    g = np.random.default_rng(1)
    sys4 = SystemConfig(N_H=3, N_V=3, M=4, L=3, K_max=3)
    g.integers(3, 7, size=3)  # (the draws of the review's script, seed 1)
    H = g.standard_normal((4, 9)) + 1j * g.standard_normal((4, 9))
    codes = np.exp(2j * np.pi * g.random((3, 9)))
    sym = g.standard_normal((3, 3)) + 0j
    pos = (g.uniform(-50, 50, 3), g.uniform(-20, 20, 3), g.uniform(0.5, 4, 3))
    with pytest.raises(SingularFIMError, match=r"outnumber the 2 L \(M - K\) real measurements"
                                               r".*L=3, M=4, K=3"):
        crb(H, codes, *pos, sys4, snr_db=10.0, kind="deterministic", symbols=sym)
    two_known = crb(H, codes, *pos, sys4, snr_db=10.0, kind="deterministic", symbols=sym,
                    known=("elevation", "range"))
    sto = crb(H, codes, *pos, sys4, snr_db=10.0)
    for got in (two_known["azimuth_deg"], *sto.values()):
        assert torch.isfinite(got).all() and (got > 0).all() and (got < 90).all()


def test_padded_slots_take_any_symbols_and_powers_nan_included(system):
    """Values in padded slots are ignored (documented), NaN too: the deterministic bound,
    the stochastic one and the noise of an SNR equal those with zeros there (a review: the
    symbols were masked by a product, NaN * 0 = NaN, and refused as 'not finite in real
    source slots')."""
    L = 6
    H, codes = _identity_problem(SYS4, L)
    common = dict(H=H, codes=codes, noise_var=_t([0.2]), system=SYS4)
    geo = (_t([AZ4]), _t([EL4]), _t([R4]))
    s = torch.from_numpy(_cn((1, L, 4), 64))
    s[:, :, 2] = 0
    nan_s = s.clone()
    nan_s[:, :, 2] = complex(NAN, NAN)
    torch.testing.assert_close(_stack(crb_deterministic(*geo, nan_s, **common)),
                               _stack(crb_deterministic(*geo, s, **common)), equal_nan=True)
    p = _t([[1.0, 2.0, 0.0, 0.5]])
    nan_p = p.clone()
    nan_p[0, 2] = NAN
    torch.testing.assert_close(_stack(crb_stochastic(*geo, nan_p, **common)),
                               _stack(crb_stochastic(*geo, p, **common)), equal_nan=True)
    sc = simulate_batch(1, system, SceneConfig(), torch.Generator().manual_seed(65), K=2)
    deg = [torch.rad2deg(t[:, :3]) for t in (sc.azimuth, sc.elevation)]
    sym = sc.symbols[:, :, :3].to(torch.complex128)
    sym[:, :, 2] = complex(NAN, NAN)
    got = crb(sc.H, sc.codes, *deg, sc.range_m[:, :3], system, snr_db=5.0,
              kind="deterministic", symbols=sym)
    want = crb(sc.H, sc.codes, *deg, sc.range_m[:, :3], system, snr_db=5.0,
               kind="deterministic", symbols=torch.nan_to_num(sym))
    for k in want:
        torch.testing.assert_close(got[k], want[k], equal_nan=True)
        assert torch.isfinite(got[k][:, :2]).all()


def test_user_crb_from_an_snr_equals_the_bound_at_the_implied_noise_level(system):
    """crb(...) for users' arrays: degrees in and out, a single scene or a batch, the noise
    given as sigma^2 or as the per-antenna SNR it implies (the conventions' definition);
    at high SNR the bound falls as 1/sqrt(SNR)."""
    from risloc.evaluation import crb
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 2, system, SceneConfig(), split="test", K=2, snr_db=10.0)
    az, el = torch.rad2deg(sc.azimuth[:, :2]), torch.rad2deg(sc.elevation[:, :2])
    r = sc.range_m[:, :2]
    one = crb(sc.H[0].numpy(), sc.codes[0].numpy(), az[0].numpy(), el[0].numpy(),
              r[0].numpy(), system, snr_db=10.0)
    batch = crb(sc.H, sc.codes, az, el, r, system, snr_db=10.0)
    torch.testing.assert_close(one["azimuth_deg"][0], batch["azimuth_deg"][0])
    # the noise level the SNR implies: (1/(L M)) sum_l ||Phi_l A||_F^2 / 10 (unit powers)
    A = steering(sc.azimuth[:1, :2].double(), sc.elevation[:1, :2].double(),
                 sc.range_m[:1, :2].double(), system, torch.complex128)
    Bm = (sc.codes[0].to(torch.complex128).unsqueeze(1) * A[0].unsqueeze(0)) @ \
        sc.H[0].to(torch.complex128).T  # (L, K, M)
    sigma2 = float(Bm.abs().square().sum() / (system.L * system.M) / 10.0)
    direct = crb(sc.H[0], sc.codes[0], az[0], el[0], r[0], system, noise_var=sigma2)
    for k in ("azimuth_deg", "elevation_deg", "range_m"):
        torch.testing.assert_close(direct[k], one[k], rtol=1e-6, atol=0)
    hi = crb(sc.H, sc.codes, az, el, r, system, snr_db=40.0)
    lo = crb(sc.H, sc.codes, az, el, r, system, snr_db=30.0)
    ratio = hi["azimuth_deg"] / lo["azimuth_deg"]
    assert torch.allclose(ratio, torch.full_like(ratio, 10 ** -0.5), rtol=0.02)
    with pytest.raises(ValueError, match="exactly one"):
        crb(sc.H, sc.codes, az, el, r, system)
    # given the SNR, the units of H do not matter, at any scale complex128 holds
    H = sc.H.to(torch.complex128)
    for f in (1e170, 1e-170):
        scaled = crb(H * f, sc.codes, az, el, r, system, snr_db=10.0)
        for k in ("azimuth_deg", "elevation_deg", "range_m"):
            torch.testing.assert_close(scaled[k], batch[k], rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="snr_db must be finite"):
        crb(sc.H, sc.codes, az, el, r, system, snr_db=math.nan)


def test_user_crb_takes_any_layout_shared_positions_and_one_scenes_symbols(system):
    """Fortran-order and big-endian arrays give the same bound; [K] positions with a batch
    are the same sources in every scene; a single scene's symbols may be [L, K]."""
    import numpy as np

    from risloc.evaluation import crb
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 2, system, SceneConfig(), split="test", K=2, snr_db=10.0)
    geo = ([10.0, -20.0], [5.0, 3.0], [3.0, 4.0])
    ref = crb(sc.H[0], sc.codes[0], *geo, system, snr_db=10.0)
    H0, c0 = sc.H[0].numpy(), sc.codes[0].numpy()
    for H, c in ((np.asfortranarray(H0), np.asfortranarray(c0)),
                 (H0.astype(H0.dtype.newbyteorder(">")), c0.T.copy().T)):
        got = crb(H, c, *geo, system, snr_db=10.0)
        torch.testing.assert_close(got["range_m"], ref["range_m"], rtol=1e-12, atol=0)
    both = crb(sc.H, sc.codes, *geo, system, snr_db=10.0)
    assert both["azimuth_deg"].shape == (2, 2)
    torch.testing.assert_close(both["azimuth_deg"][:1], ref["azimuth_deg"])
    sym = torch.randn(system.L, 2, dtype=torch.complex128, generator=torch.Generator()
                      .manual_seed(0))
    one = crb(sc.H[0], sc.codes[0], *geo, system, noise_var=0.1, kind="deterministic",
              symbols=sym)
    batched = crb(sc.H[:1], sc.codes[:1], *([v] for v in geo), system, noise_var=0.1,
                  kind="deterministic", symbols=sym.unsqueeze(0))
    torch.testing.assert_close(one["range_m"], batched["range_m"])
    with pytest.raises(ValueError, match="kind must be"):
        crb(sc.H, sc.codes, *geo, system, snr_db=10.0, kind="stochastc")
    # symbols given to the (default) stochastic bound were silently unused
    with pytest.raises(ValueError, match="symbols are read by the deterministic bound only"):
        crb(sc.H[0], sc.codes[0], *geo, system, noise_var=0.1, symbols=sym)
    with pytest.raises(TypeError, match="SystemConfig"):
        crb(sc.H, sc.codes, *geo, 42, snr_db=10.0)
    as_dict = crb(sc.H, sc.codes, *geo, system.model_dump(), snr_db=10.0)
    torch.testing.assert_close(as_dict["range_m"], both["range_m"], rtol=0, atol=0)


def test_user_crb_of_scenes_without_sources_and_per_scene_noise(system):
    """A scene the localizer left empty (K = 0, NaN positions) has a NaN bound, with the
    noise given as an SNR too; no sources at all is an empty bound; a per-scene SNR or
    noise of the wrong length is named."""
    from risloc.evaluation import crb
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 3, system, SceneConfig(), split="test", K=1, snr_db=10.0)
    nan = float("nan")
    az, el, r = [[10.0], [nan], [-5.0]], [[0.0], [nan], [3.0]], [[3.0], [nan], [4.0]]
    got = crb(sc.H, sc.codes, az, el, r, system, snr_db=15.0)
    assert torch.isnan(got["azimuth_deg"][1]).all()
    assert torch.isfinite(got["azimuth_deg"][[0, 2]]).all()
    alone = crb(sc.H[2], sc.codes[2], [-5.0], [3.0], [4.0], system, snr_db=15.0)
    torch.testing.assert_close(got["range_m"][2], alone["range_m"][0], rtol=1e-12, atol=0)
    per_scene = crb(sc.H, sc.codes, az, el, r, system, snr_db=[15.0, 0.0, 15.0])
    torch.testing.assert_close(per_scene["range_m"], got["range_m"], equal_nan=True)
    none = crb(sc.H[0], sc.codes[0], [], [], [], system, snr_db=15.0)
    assert none["azimuth_deg"].shape == (1, 0)
    for key in ("snr_db", "noise_var"):
        with pytest.raises(ValueError, match=f"{key} must be one number or one per scene"):
            crb(sc.H, sc.codes, az, el, r, system, **{key: [1.0, 2.0]})
    with pytest.raises(ValueError, match="with the B = 3 scenes of H"):
        crb(sc.H, sc.codes, az[:2], el[:2], r[:2], system, snr_db=15.0)


def test_user_crb_names_bad_inputs_instead_of_a_wrong_bound_or_a_traceback(system):
    """Found by an API review: a NaN in one coordinate dropped the source (the others'
    bounds changed), bad powers were blamed on noise_var or gave torch's broadcast errors,
    powers requiring grad leaked into the result, codes off the unit circle, real H and
    arrays of another system's L or M were taken, and a 150 dB SNR gave a LinAlgError."""
    from risloc.evaluation import crb
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 2, system, SceneConfig(), split="test", K=2, snr_db=10.0)
    H, c = sc.H[0], sc.codes[0]
    az, el, r = [10.0, -20.0], [0.0, 5.0], [3.0, 5.0]
    nan = float("nan")
    for kw, says in (
            ({"elevation_deg": [0.0, nan]}, "scene 0, source 1: azimuth, elevation and "
                                            "range are NaN only in part"),
            ({"elevation_deg": [0.0, 95.0]}, r"scene 0, source 1: elevation 95 deg, range .* "
                                             r"an elevation lies within \+-90 deg"),
            ({"range_m": [2.0, -1.0]}, r"scene 0, source 1: .*range -1 m; .*a range is > 0"),
            # (a mutation review: a range of 0 and codes 1 % off the circle were let by)
            ({"range_m": [2.0, 0.0]}, r"scene 0, source 1: .*range 0 m; .*a range is > 0"),
            ({"powers": -1.0}, "powers must be finite and positive"),
            ({"powers": [1.0, nan]}, "powers must be finite and positive"),
            ({"powers": [1.0, 1.0, 1.0]}, r"powers must be one number, \[K\] or \[B, K\]"),
            ({"codes": 2 * c}, "codes must lie on the unit circle"),
            ({"codes": 0 * c}, "codes must lie on the unit circle"),
            ({"codes": 1.01 * c}, "codes must lie on the unit circle"),
            ({"H": H[:8]}, r"of the system given \(M=16, L=16, N=144\); got \(8, 144\) and "
                           r"\(16, 144\)"),
            ({"codes": sc.codes}, r"one scene's \[M, N\] and \[L, N\] or a batch's "
                                  r"\[B, M, N\] and \[B, L, N\].*got \(16, 144\) and "
                                  r"\(2, 16, 144\)"),
            ({"kind": "deterministic", "symbols": torch.ones(16, 3, dtype=torch.complex64)},
             r"symbols must be \[L=16, K=2\] \(one scene\) or \[B=1, L, K\], got "
             r"\(1, 16, 3\)"),
            ({"snr_db": 150.0}, "singular in float64 .*an SNR above ~100 dB"),
            # (an API review: the bare "needs the symbols" named neither the argument nor
            # the stochastic bound that needs none)
            ({"kind": "deterministic"}, r"needs the symbols: pass symbols= \[L, K\].*or use "
                                        r"kind='stochastic'")):
        args = {"H": H, "codes": c, "azimuth_deg": az, "elevation_deg": el, "range_m": r,
                "snr_db": 10.0, **kw}
        with pytest.raises(ValueError, match=says):
            crb(args.pop("H"), args.pop("codes"), args.pop("azimuth_deg"),
                args.pop("elevation_deg"), args.pop("range_m"), system, **args)
    with pytest.raises(TypeError, match="H must be complex"):  # as the guide says
        crb(H.real, c, az, el, r, system, snr_db=10.0)
    # a complex coordinate or power: refused, not cast to its real part with a warning
    with pytest.raises(TypeError, match="azimuth_deg must be real, got complex128"):
        crb(H, c, [10 + 1j, -20.0], el, r, system, snr_db=10.0)
    with pytest.raises(TypeError, match="powers must be real, got complex64"):
        crb(H, c, az, el, r, system, snr_db=10.0, powers=torch.ones(2, dtype=torch.complex64))
    p = torch.ones(2, requires_grad=True)
    got = crb(H, c, az, el, r, system, snr_db=10.0, powers=p)
    assert not got["range_m"].requires_grad
    assert torch.equal(got["range_m"], crb(H, c, az, el, r, system, snr_db=10.0)["range_m"])
    assert torch.isfinite(crb(H, c.real.sign() + 0j, az, el, r, system,  # 1-bit codes
                              snr_db=10.0)["range_m"]).all()


def test_user_deterministic_crb_at_an_snr_is_that_of_the_realised_signal(system):
    """Given the symbols and the SNR, sigma^2 comes from the realised signal with those
    symbols (the conventions' SNR): symbols 10x stronger at the same SNR are the same
    scene, the same bound (sigma^2 from the powers made it 10x tighter: 20 dB more)."""
    from risloc.evaluation import crb
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 1, system, SceneConfig(), split="test", K=2, snr_db=10.0)
    geo = ([10.0, -20.0], [5.0, -5.0], [2.0, 4.0])
    sym = torch.randn(system.L, 2, dtype=torch.complex128,
                      generator=torch.Generator().manual_seed(1))
    one, ten = (crb(sc.H[0], sc.codes[0], *geo, system, snr_db=10.0, kind="deterministic",
                    symbols=sym * k) for k in (1.0, 10.0))
    for key in one:
        torch.testing.assert_close(ten[key], one[key], rtol=1e-9, atol=0)
    # and the noise it takes is the realised signal's over the SNR
    A = steering(_t(np.radians(geo[0])), _t(np.radians(geo[1])), _t(geo[2]), system,
                 torch.complex128)  # (K, N)
    H, c = sc.H[0].to(torch.complex128), sc.codes[0].to(torch.complex128)
    y = torch.stack([H @ (c[l] * (A.T @ sym[l])) for l in range(system.L)])  # (L, M)
    sigma2 = float(y.abs().square().sum() / (system.L * system.M) / 10.0)
    direct = crb(H, c, *geo, system, noise_var=sigma2, kind="deterministic", symbols=sym)
    for key in one:
        torch.testing.assert_close(direct[key], one[key], rtol=1e-6, atol=0)


def test_evaluate_bounds_simulated_scenes_at_their_powers_and_files_at_equal_ones(system,
                                                                                 tmp_path):
    """The harness's bound: simulated scenes (powers spread) at their true powers and
    noise, the stochastic one too; a file's scenes (no powers, no symbols) the stochastic
    bound for equal powers at each scene's SNR, as crb(...) gives it from the SNR."""
    from risloc.evaluation import crb
    from risloc.experiments.harness import scene_crb
    from risloc.io import read_scenes, write_scenes
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 6, system, SceneConfig(power_spread_db=20.0), split="test", K=3,
                        snr_db=10.0)
    for kind in ("deterministic", "stochastic"):
        got = scene_crb(sc, system, kind)
        ref = crb_for_scenes(sc, system, kind)
        torch.testing.assert_close(got.azimuth, ref.azimuth, rtol=0, atol=0, equal_nan=True)
    # against equal powers, the weakest source's bound loosens more than the strongest's
    ratio = (scene_crb(sc, system, "stochastic").azimuth[:, :3]
             / crb_for_scenes(replace(sc, powers=None), system, "stochastic").azimuth[:, :3])
    rows = torch.arange(6)
    assert bool((ratio[rows, sc.powers[:, :3].argmin(1)]
                 > 1.5 * ratio[rows, sc.powers[:, :3].argmax(1)]).all())
    write_scenes(tmp_path / "s.h5", sc, system)
    back, _ = read_scenes(tmp_path / "s.h5")
    assert back.powers is None  # a file carries no source powers
    got = scene_crb(back, system, "deterministic")
    deg = crb(back.H, back.codes, torch.rad2deg(back.azimuth[:, :3]),
              torch.rad2deg(back.elevation[:, :3]), back.range_m[:, :3], system,
              snr_db=back.snr_db, kind="stochastic")
    torch.testing.assert_close(torch.rad2deg(got.azimuth[:, :3]), deg["azimuth_deg"],
                               rtol=1e-5, atol=0)
    # scenes without an SNR (most users' files): at the noise and powers their measurements
    # give at the truth, crb(..., y=...); the scenes with one keep theirs
    back = replace(back, snr_db=torch.where(torch.arange(6) % 2 == 0, torch.nan, back.snr_db))
    mixed = scene_crb(back, system, "stochastic")
    fitted = crb(back.H, back.codes, torch.rad2deg(back.azimuth[:, :3]),
                 torch.rad2deg(back.elevation[:, :3]), back.range_m[:, :3], system, y=back.y)
    torch.testing.assert_close(torch.rad2deg(mixed.azimuth[0::2, :3]),
                               fitted["azimuth_deg"][0::2], rtol=1e-5, atol=0)
    torch.testing.assert_close(mixed.range_m[1::2, :3], got.range_m[1::2, :3], rtol=1e-9,
                               atol=0)


def test_user_crb_takes_a_coordinate_as_known_as_its_error_advises(system):
    """A review: the singular-FIM error advised known=(...), which crb() did not take. A
    source at the zenith has no azimuth to tell: singular, unless the azimuth is known; the
    bound given a known coordinate is the one crb_stochastic gives with it known."""
    from risloc.evaluation import crb
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 1, system, SceneConfig(), split="test", K=1, snr_db=10.0)
    H, c = sc.H[0], sc.codes[0]
    with pytest.raises(SingularFIMError, match=r"known=\(\.\.\.\).*the azimuth of a source"):
        crb(H, c, [10.0], [90.0], [3.0], system, snr_db=10.0)
    zenith = crb(H, c, [10.0], [90.0], [3.0], system, snr_db=10.0, known=("azimuth",))
    assert zenith["azimuth_deg"].item() == 0.0
    one_name = crb(H, c, [10.0], [90.0], [3.0], system, snr_db=10.0, known="azimuth")
    assert all(torch.equal(one_name[k], zenith[k]) for k in zenith)  # (not 'a', 'z', ...)
    assert 0 < zenith["elevation_deg"].item() < 10 and 0 < zenith["range_m"].item()
    free = crb(H, c, [10.0], [20.0], [3.0], system, noise_var=0.1)
    given_range = crb(H, c, [10.0], [20.0], [3.0], system, noise_var=0.1, known=("range",))
    assert given_range["range_m"].item() == 0.0
    assert given_range["azimuth_deg"].item() <= free["azimuth_deg"].item()  # (more known)
    want = crb_stochastic(torch.deg2rad(torch.tensor([[10.0]], dtype=torch.float64)),
                          torch.deg2rad(torch.tensor([[20.0]], dtype=torch.float64)),
                          torch.tensor([[3.0]], dtype=torch.float64),
                          torch.ones(1, 1, dtype=torch.float64), H[None].to(torch.complex128),
                          c[None].to(torch.complex128), torch.tensor([0.1], dtype=torch.float64),
                          system, known=("range",))
    assert given_range["azimuth_deg"].item() == pytest.approx(
        math.degrees(want.azimuth.item()), rel=1e-12)


def test_the_noise_of_an_snr_weighs_each_source_by_its_power(system):
    """sigma^2 = (1/(L M)) sum_l sum_k p_k ||H diag(c_l) a_k||^2 / 10^(SNR/10) for
    uncorrelated sources of unequal powers (docs/conventions.md), written out here (a
    mutation review: every test had unit powers, so p_k^2 for p_k passed)."""
    from risloc.evaluation.crb import noise_var_for_snr

    g = torch.Generator().manual_seed(3)
    H = torch.randn(1, system.M, system.N, dtype=torch.complex128, generator=g)
    codes = torch.polar(torch.ones(1, system.L, system.N, dtype=torch.float64),
                        torch.rand(1, system.L, system.N, dtype=torch.float64, generator=g) * 6)
    az, el, r = (torch.tensor([[0.3, -0.5]], dtype=torch.float64),
                 torch.tensor([[0.1, 0.2]], dtype=torch.float64),
                 torch.tensor([[2.0, 6.0]], dtype=torch.float64))
    p = torch.tensor([[1.0, 4.0]], dtype=torch.float64)
    a = steering(az, el, r, system, torch.complex128)[0]  # (K, N)
    signal = sum(float(p[0, k]) * float((H[0] @ (codes[0, l] * a[k])).abs().square().sum())
                 for l in range(system.L) for k in range(2)) / (system.L * system.M)
    got = noise_var_for_snr(az, el, r, H, codes, torch.tensor([7.0]), system, powers=p)
    assert float(got[0]) == pytest.approx(signal / 10 ** 0.7, rel=1e-10)
    # crb(..., snr_db=, powers=) sets that noise: the bound at a given SNR depends on the
    # powers only through their ratios (a mutation review: crb() ignoring them passed)
    deg = [torch.rad2deg(v[0]) for v in (az, el)]
    at = {c: crb(H[0], codes[0], *deg, r[0], system, snr_db=7.0, powers=c * p[0])
          for c in (1.0, 100.0)}
    direct = crb(H[0], codes[0], *deg, r[0], system, noise_var=float(got[0]), powers=p[0])
    for k in direct:
        torch.testing.assert_close(at[1.0][k], direct[k], rtol=1e-9, atol=0)
        torch.testing.assert_close(at[100.0][k], direct[k], rtol=1e-9, atol=0)


@pytest.mark.parametrize("known", [("range",), ("elevation",), ("azimuth", "range")])
def test_a_known_coordinate_leaves_the_inverse_of_the_unknowns_fim_block(known):
    """With some coordinates known, the bound of the others is sqrt(diag((J_uu)^-1)), J_uu
    the FIM block of the unknown ones (every source's), and 0 for the known (a mutation
    review: with two sources, the known slots taken source-major passed)."""
    args = _compressive_args(6, 50)
    s = torch.from_numpy(_cn((1, 6, 2), 51))
    full = crb_deterministic(symbols=s, **args)
    given = crb_deterministic(symbols=s, known=known, **args)
    K = 2
    unknown = [i for i, p in enumerate(("azimuth", "elevation", "range")) if p not in known]
    idx = [K * p + k for p in unknown for k in range(K)]
    J = full.fim[0][idx][:, idx].numpy()
    want = np.sqrt(np.diag(np.linalg.inv(J)))
    got = _stack(given)[unknown, 0].reshape(-1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9)
    for p, name in enumerate(("azimuth", "elevation", "range")):
        if name in known:
            assert (_stack(given)[p] == 0).all()


def test_the_effective_fim_is_zero_in_padded_slots():
    """CRBResult.fim has zero rows and columns for padded slots (documented), for both
    bounds (a mutation review: the stochastic one's identity padding leaking out passed)."""
    L = 6
    H, codes = _identity_problem(SYS4, L)
    common = dict(H=H, codes=codes, noise_var=_t([0.2]), system=SYS4)
    geo = (_t([AZ4]), _t([EL4]), _t([R4]))
    det = crb_deterministic(*geo, torch.from_numpy(_cn((1, L, 4), 52)), **common)
    sto = crb_stochastic(*geo, _t([[1.0, 2.0, 1.0, 0.5]]), **common)
    pad = [2, 6, 10]  # slot 2 in the azimuth, elevation and range blocks
    for res in (det, sto):
        assert (res.fim[0, pad] == 0).all() and (res.fim[0, :, pad] == 0).all()


def test_user_crb_converts_degrees_at_the_edges_only(system):
    """crb() takes and returns angles in degrees and ranges in metres: its result is
    crb_stochastic's in radians converted, the range untouched (a mutation review: the range
    passed through rad2deg passed)."""
    from risloc.evaluation import crb
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 1, system, SceneConfig(), split="test", K=2, snr_db=10.0)
    H, c = sc.H[0], sc.codes[0]
    az_deg, el_deg, r = [12.0, -35.0], [5.0, -18.0], [1.7, 6.0]
    got = crb(H, c, az_deg, el_deg, r, system, noise_var=0.3, powers=[1.0, 0.4])
    want = crb_stochastic(torch.deg2rad(_t([az_deg])), torch.deg2rad(_t([el_deg])), _t([r]),
                          _t([[1.0, 0.4]]), H[None].to(torch.complex128),
                          c[None].to(torch.complex128), _t([0.3]), system)
    torch.testing.assert_close(got["azimuth_deg"], torch.rad2deg(want.azimuth), rtol=1e-12,
                               atol=0)
    torch.testing.assert_close(got["elevation_deg"], torch.rad2deg(want.elevation),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(got["range_m"], want.range_m, rtol=1e-12, atol=0)


def test_noise_and_powers_at_the_truth_written_out_and_near_the_true_ones(system):
    """A file without an SNR: sigma^2 and the powers from its measurements at the true
    positions. Noise orthogonal to every snapshot's columns leaves the least-squares symbols
    exact: sigma^2 = sum ||n_l||^2 / (L (M - K)), p_k = mean |s_lk|^2 - sigma^2 mean
    [(B_l^H B_l)^-1]_kk. On simulated scenes (powers spread over 12 dB, 10 dB) both are
    close to the truth, and so is the bound they give."""
    from risloc.core.operator import apply_operator
    from risloc.evaluation.crb import noise_and_powers_at
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 48, system, SceneConfig(power_spread_db=12.0), split="test", K=3,
                        snr_db=10.0)
    az, el, r = (t.double() for t in (sc.azimuth, sc.elevation, sc.range_m))
    A = steering(torch.where(sc.mask, az, 0), torch.where(sc.mask, el, 0),
                 torch.where(sc.mask, r, 1), system, torch.complex128) * sc.mask.unsqueeze(-1)
    Bm = apply_operator(sc.H.to(torch.complex128), sc.codes.to(torch.complex128), A)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(*sc.symbols.shape, 2, generator=g, dtype=torch.float64)
    s = torch.view_as_complex(s) * sc.mask.unsqueeze(1)
    n = torch.view_as_complex(torch.randn(*sc.y.shape, 2, generator=g, dtype=torch.float64))
    P = Bm @ torch.linalg.pinv(Bm)  # (B, L, M, M): the projector onto the columns
    n = n.unsqueeze(-1) - P @ n.unsqueeze(-1)
    y = (Bm @ s.unsqueeze(-1) + n).squeeze(-1)
    sigma2, powers = noise_and_powers_at(az, el, r, y, sc.H, sc.codes, system, sc.mask)
    M, L = system.M, system.L
    want = n.abs().square().sum((1, 2, 3)) / (L * (M - 3))
    torch.testing.assert_close(sigma2, want, rtol=1e-9, atol=0)
    inv = torch.linalg.pinv(Bm.mH @ Bm).diagonal(dim1=-2, dim2=-1).real.mean(1)
    held = want.unsqueeze(-1) * inv  # the noise each estimate holds; the powers at least
    want_p = s.abs().square().mean(1) - held  # 1e-6 times it:
    floor = want_p <= 1e-6 * held  # a source the noise buries (one here)
    assert 0 < int(floor[:, :3].sum()) < 5
    want_p = torch.where(floor, 1e-6 * held, want_p)
    torch.testing.assert_close(powers[:, :3], want_p[:, :3], rtol=1e-7, atol=1e-12)
    assert bool((powers[:, 3:] == 0).all())
    # simulated scenes: the noise within 10 %, the bound's median within 10 %
    sigma2, powers = noise_and_powers_at(az, el, r, sc.y, sc.H, sc.codes, system, sc.mask)
    assert 0.9 < float((sigma2 / sc.noise_var.double()).median()) < 1.1
    ref = crb_for_scenes(sc, system, "stochastic").azimuth[sc.mask]
    got = crb_for_scenes(replace(sc, noise_var=sigma2, powers=powers), system,
                         "stochastic").azimuth[sc.mask]
    assert 0.9 < float(got.median() / ref.median()) < 1.1


def test_user_crb_from_measurements_needs_no_snr_and_no_units(system):
    """crb(..., y=...): the bound of measured scenes whose SNR nobody knows, at the noise and
    powers they give at the positions; the units of y and H do not matter; y goes with
    neither powers nor the deterministic bound, nor with another noise."""
    from risloc.evaluation import crb
    from risloc.evaluation.crb import noise_and_powers_at
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 4, system, SceneConfig(power_spread_db=12.0), split="test", K=2,
                        snr_db=15.0)
    deg = [torch.rad2deg(t[:, :2]) for t in (sc.azimuth, sc.elevation)]
    got = crb(sc.H, sc.codes, *deg, sc.range_m[:, :2], system, y=sc.y)
    sigma2, p = noise_and_powers_at(sc.azimuth[:, :2], sc.elevation[:, :2], sc.range_m[:, :2],
                                    sc.y, sc.H, sc.codes, system)
    ref = crb(sc.H, sc.codes, *deg, sc.range_m[:, :2], system, noise_var=sigma2, powers=p)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-6, atol=0)
    scaled = crb(sc.H * 1e5, sc.codes, *deg, sc.range_m[:, :2], system, y=sc.y.numpy() * 1e-3)
    for k in ref:
        torch.testing.assert_close(scaled[k], ref[k], rtol=1e-6, atol=0)
    one = crb(sc.H[1], sc.codes[1], deg[0][1], deg[1][1], sc.range_m[1, :2], system, y=sc.y[1])
    torch.testing.assert_close(one["range_m"][0], ref["range_m"][1], rtol=1e-6, atol=0)
    args = (sc.H, sc.codes, *deg, sc.range_m[:, :2], system)
    with pytest.raises(ValueError, match="exactly one of noise_var, snr_db and y"):
        crb(*args, y=sc.y, snr_db=10.0)
    with pytest.raises(ValueError, match="neither powers= nor kind='deterministic'"):
        crb(*args, y=sc.y, powers=2.0)
    with pytest.raises(ValueError, match="neither powers= nor kind='deterministic'"):
        crb(*args, y=sc.y, kind="deterministic", symbols=sc.symbols[:, :, :2])
    with pytest.raises(ValueError, match=r"y must be \[L=16, M=16\]"):
        crb(*args, y=sc.y.transpose(1, 2)[:, :8])
    dead = sc.y.clone()
    dead[2] = 0  # (it said "noise_var must be finite and positive": none was given)
    with pytest.raises(ValueError, match=r"y is all zero in scenes \[2\]"):
        crb(*args, y=dead)
    # a review: a real y (one I/Q part, MATLAB's real()) gave a bound 3-6x too large
    # without a word, where H real and the localizers' real y are a TypeError (docs/guide.md)
    for real in (sc.y.real, sc.y.real.numpy().astype(np.float64)):
        with pytest.raises(TypeError, match=r"y must be complex"):
            crb(*args, y=real)
    # a mutation review: a NaN in y is named (not a NaN bound), and units far apart, whose
    # squares float64 cannot hold, give the same bound (each scaled before the fit)
    gap = sc.y.clone()
    gap[1, 3, 5] = complex("nan")
    with pytest.raises(ValueError, match=r"y must be finite"):
        crb(*args, y=gap)
    far = crb(sc.H.numpy().astype(np.complex128) * 1e160, sc.codes, *deg, sc.range_m[:, :2],
              system, y=sc.y.numpy().astype(np.complex128) * 1e-160)
    for k in ref:
        torch.testing.assert_close(far[k], ref[k], rtol=1e-6, atol=0)


def test_the_fitted_noise_and_powers_follow_the_units_of_y_and_h(system):
    """A file's y and H in any units (docs/guide.md): sigma^2 is in those of |y|^2 and the
    powers in those of |y|^2 / |H|^2, a buried source's floor included, so the bound
    evaluate prints for a file without an SNR is the same in any units (a review: the floor
    was 1e-6 sigma^2, in other units than the powers: H in units 1e4 times larger floored
    every source, and the bound dropped 60-fold)."""
    from dataclasses import replace

    from risloc.evaluation.crb import noise_and_powers_at
    from risloc.experiments.harness import scene_crb
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 4, system, SceneConfig(power_spread_db=12.0), split="test", K=3,
                        snr_db=0.0)
    pos = (sc.azimuth, sc.elevation, sc.range_m)
    sigma2, p = noise_and_powers_at(*pos, sc.y, sc.H, sc.codes, system, sc.mask)
    s2, p2 = noise_and_powers_at(*pos, sc.y * 1e3, sc.H * 1e4, sc.codes, system, sc.mask)
    torch.testing.assert_close(s2, sigma2 * 1e6, rtol=1e-6, atol=0)
    torch.testing.assert_close(p2, p * 1e-2, rtol=1e-6, atol=0)
    file = replace(sc, noise_var=None, powers=None, symbols=None,
                   snr_db=torch.full_like(sc.snr_db, torch.nan))
    want = scene_crb(file, system, "stochastic")
    got = scene_crb(replace(file, y=sc.y * 1e5, H=sc.H * 1e5), system, "stochastic")
    for k in ("azimuth", "elevation", "range_m"):
        torch.testing.assert_close(getattr(got, k), getattr(want, k), rtol=1e-6, atol=0,
                                   equal_nan=True)


def test_user_crb_warns_of_angles_that_look_like_radians(system, caplog):
    """A review: crb() given radians returned a plausible, wrong bound (sources near
    boresight) without a word, where `risloc localize` and `evaluate` warn of a file's; it
    now warns by their rule (at least 5 sources, every angle within +-pi/2 'degrees', not
    all at boresight)."""
    import logging

    from risloc.evaluation import crb
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 3, system, SceneConfig(), split="test", K=2, snr_db=10.0)
    deg = [torch.rad2deg(t[:, :2]) for t in (sc.azimuth, sc.elevation)]
    rad = [t[:, :2] for t in (sc.azimuth, sc.elevation)]
    r = sc.range_m[:, :2]
    with caplog.at_level(logging.WARNING, logger="risloc.evaluation.crb"):
        crb(sc.H, sc.codes, *deg, r, system, snr_db=10.0)
        crb(sc.H[:2], sc.codes[:2], *(t[:2] for t in rad), r[:2], system,
            snr_db=10.0)  # 4 sources prove nothing
        # one source near boresight given for every scene ([K]: the same in each) is one
        # source, not 3 (a review: 6 scenes of it warned of "all 6 sources")
        crb(sc.H[[0, 1, 2, 0, 1, 2]], sc.codes[[0, 1, 2, 0, 1, 2]], [1.2], [0.5], [3.0],
            system, snr_db=10.0)
        assert not caplog.records
        crb(sc.H, sc.codes, *rad, r, system, snr_db=10.0)
    assert [rec.getMessage() for rec in caplog.records] == [
        f"the given angles of all 6 sources lie within +-"
        f"{float(torch.cat(rad).abs().max()):.2f} deg: radians stored as "
        "degrees? (azimuth_deg and elevation_deg hold degrees, docs/conventions.md)"]


def test_user_crb_takes_the_elevation_to_numpy_writes_for_a_zenith_source(system):
    """A mutation review: Estimates accepts float32's pi / 2 (90.0000025 deg, what
    to_numpy() writes for a source at the zenith) but crb() refused it as beyond +-90 deg,
    naming 'elevation 90 deg'; both now share the one limit."""
    from risloc.evaluation import crb
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 1, system, SceneConfig(), split="test", K=2, snr_db=10.0)
    zenith = float(np.rad2deg(np.float64(np.float32(np.pi / 2))))
    assert zenith > 90
    got = crb(sc.H[0], sc.codes[0], [10.0, -20.0], [0.0, zenith], [3.0, 5.0], system,
              snr_db=10.0)
    assert torch.isfinite(got["range_m"]).all()
    with pytest.raises(ValueError, match="an elevation lies within"):
        crb(sc.H[0], sc.codes[0], [10.0, -20.0], [0.0, 90.001], [3.0, 5.0], system,
            snr_db=10.0)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(1, 3), st.integers(0, 2**32 - 1), st.permutations(range(4)),
       st.floats(1e-3, 1e3))
def test_the_deterministic_crb_scales_with_the_noise_and_follows_the_sources_slots(
        K, seed, perm, scale):
    """sigma^2 -> c sigma^2: every sqrt-CRB times sqrt(c), the FIM over c; the sources (and
    a NaN padded slot) in other slots: the same bounds in those slots."""
    g = np.random.default_rng(seed)
    az, el, r = g.uniform(-0.6, 0.6, K), g.uniform(-0.4, 0.4, K), g.uniform(0.8, 3.0, K)
    apart = [math.hypot(az[i] - az[j], el[i] - el[j]) for i in range(K) for j in range(i)]
    assume(min(apart, default=1.0) > 0.15)
    L, sigma2 = 6, 0.2
    H, codes = _identity_problem(SYS4, L)
    s = torch.from_numpy(_cn((1, L, 4), seed % 1000))
    pos = [np.r_[v, [NAN] * (4 - K)] for v in (az, el, r)]  # slots K.. padded

    def bound(order, noise):
        return crb_deterministic(*(_t([v[order]]) for v in pos), s[..., order], H, codes,
                                 _t([noise]), SYS4)

    base = bound(list(range(4)), sigma2)
    noisier = bound(list(range(4)), sigma2 * scale)
    for name in ("azimuth", "elevation", "range_m"):
        torch.testing.assert_close(getattr(noisier, name), getattr(base, name) * math.sqrt(scale),
                                   rtol=1e-7, atol=0, equal_nan=True)
    torch.testing.assert_close(noisier.fim, base.fim / scale, rtol=1e-9, atol=0)
    moved = bound(perm, sigma2)  # slot j holds source perm[j]
    for name in ("azimuth", "elevation", "range_m"):
        torch.testing.assert_close(getattr(moved, name)[0], getattr(base, name)[0, perm],
                                   rtol=1e-7, atol=0, equal_nan=True)


def test_a_bound_fitted_from_y_warns_where_the_noise_buries_the_source(system, caplog):
    """An edge review: crb(..., y=...) of a source at -20 dB (or of a position with no
    source) returned an azimuth bound of 4.8e5 deg, set by the power floor alone, without a
    word (and `evaluate` of a file without an SNR averaged it into its bound's RMS); it
    now warns, naming the scene. A source well above the noise passes silently."""
    import logging

    from risloc.core.operator import apply_operator
    from risloc.evaluation import crb
    from risloc.evaluation.crb import noise_and_powers_at
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 2, system, SceneConfig(), split="test", K=1, snr_db=20.0)
    deg = [torch.rad2deg(t[:, :1]) for t in (sc.azimuth, sc.elevation)]
    args = (sc.H, sc.codes, *deg, sc.range_m[:, :1], system)
    with caplog.at_level(logging.WARNING, logger="risloc.evaluation.crb"):
        crb(*args, y=sc.y)
        assert not caplog.records
        # scene 1: noise orthogonal to the source's measured columns, nothing of it in y
        az, el, r = (t[:, :1].double() for t in (sc.azimuth, sc.elevation, sc.range_m))
        Bm = apply_operator(sc.H.to(torch.complex128), sc.codes.to(torch.complex128),
                            steering(az, el, r, system, torch.complex128))
        n = torch.view_as_complex(torch.randn(*sc.y.shape, 2, dtype=torch.float64,
                                              generator=torch.Generator().manual_seed(0)))
        n = (n.unsqueeze(-1) - Bm @ torch.linalg.pinv(Bm) @ n.unsqueeze(-1)).squeeze(-1)
        y = torch.where(torch.tensor([True, False]).view(2, 1, 1), sc.y.to(n.dtype), n)
        got = crb(*args, y=y)
    assert float(got["azimuth_deg"][1, 0]) > 1e3  # (the floor's bound, as before)
    assert [rec.getMessage() for rec in caplog.records] == [
        "1 source(s) in scenes [1]: no power above the noise at the position given (a source "
        "the noise buries, or none there): the bound fitted from y is set by a power floor of "
        "1e-6 times that noise and means nothing; give snr_db or the powers if they are known"]
    caplog.clear()  # `evaluate` fits 64 scenes at a time: the scenes named are the file's
    with caplog.at_level(logging.WARNING, logger="risloc.evaluation.crb"):
        noise_and_powers_at(az, el, r, y, sc.H, sc.codes, system,
                            index=torch.tensor([64, 65]))
    assert "in scenes [65]:" in caplog.records[0].getMessage()
    caplog.clear()  # a scene whose bound takes its SNR, not the fit, is not named
    with caplog.at_level(logging.WARNING, logger="risloc.evaluation.crb"):
        noise_and_powers_at(az, el, r, y, sc.H, sc.codes, system,
                            said=torch.tensor([True, False]))
    assert not caplog.records


def test_stochastic_crb_with_a_full_source_covariance_is_never_below_the_deterministic():
    """Stoica & Nehorai (1990): for y_l = A s_l + n_l the deterministic CRB, at symbols
    whose sample covariance is the P of the stochastic one, is not larger than the
    stochastic CRB with P unknown ("full"): J_det - J_sto is positive semi-definite. (The
    default "diagonal" knows the sources are uncorrelated and may fall below it.)"""
    L, K = 4, 3
    H, codes = _identity_problem(SYS4, L)
    az, el, r = (_t([_real(v)]) for v in (AZ4, EL4, R4))
    p = _t([[1.0, 0.5, 2.0]])
    lk = torch.outer(torch.arange(L, dtype=torch.float64), torch.arange(K, dtype=torch.float64))
    s = (p[0].sqrt() * torch.exp(2j * math.pi * lk / L))[None]  # (1/L) sum_l s_l s_l^H = P
    for sigma2 in (1e-3, 0.1, 30.0):
        det = crb_deterministic(az, el, r, s, H, codes, _t([sigma2]), SYS4)
        sto = crb_stochastic(az, el, r, p, H, codes, _t([sigma2]), SYS4,
                             source_covariance="full")
        assert (_stack(sto) >= _stack(det) * (1 - 1e-9)).all()
        gap = torch.linalg.eigvalsh(det.fim[0] - sto.fim[0])
        assert gap.min() >= -1e-9 * gap.abs().max()
    assert (_stack(sto) > 3 * _stack(det)).all()  # (far apart at low SNR, equal at high)


@pytest.mark.parametrize("kind", ["deterministic", "stochastic"])
def test_an_added_interferer_never_lowers_a_sources_bound(kind):
    """A third source only adds unknowns (deterministic: the FIM of the first two is a
    Schur complement of one whose block is theirs alone) and power to the covariance."""
    L = 8
    H = torch.from_numpy(_cn((1, 6, 9), 60))
    codes = torch.from_numpy(np.exp(2j * np.pi * np.random.default_rng(61).random((1, L, 9))))
    sys = SYS3.model_copy(update=dict(M=6, K_max=3))
    s = torch.from_numpy(_cn((1, L, 3), 62))
    third = ([0.6], [0.3], [1.4])
    common = dict(H=H, codes=codes, noise_var=_t([0.05]), system=sys)

    def run(k):
        az, el, r = (_t([(v + w)[:k]]) for v, w in zip((AZ3, EL3, R3), third))
        if kind == "deterministic":
            return _stack(crb_deterministic(az, el, r, s[:, :, :k], **common))
        return _stack(crb_stochastic(az, el, r, _t([[1.0, 0.6, 2.0][:k]]), **common))

    two, three = run(2), run(3)
    assert (three[:, :, :2] >= two * (1 - 1e-9)).all()
    assert (three[:, :, :2] > two * 1.001).any()


def test_the_range_bound_of_a_far_source_grows_as_its_range_squared():
    """Near-field range information is the wavefront curvature |x_n|^2 / (2 r): its
    derivative falls as 1/r^2, so the range bound grows as r^2 far away (log-slope -> 2),
    while the angle bounds settle to their far-field values."""
    H, codes = _compressive(6, 70)
    s = torch.from_numpy(_cn((1, 6, 1), 71))
    out = [_stack(crb_deterministic(_t([AZ3[:1]]), _t([EL3[:1]]), _t([[q]]), s, H, codes,
                                    _t([0.05]), SYS3))[:, 0, 0] for q in (8.0, 16.0, 32.0)]
    slopes = [math.log2(float(b[2] / a[2])) for a, b in zip(out, out[1:])]
    assert all(1.9 < sl < 2.05 for sl in slopes), slopes
    torch.testing.assert_close(out[2][:2], out[1][:2], rtol=0.02, atol=0)


def test_a_mirrored_scene_has_the_bound_of_its_mirrored_operator():
    """azimuth -> -azimuth mirrors the RIS columns (x -> -x; elevation: the rows): the
    mirrored scene seen through H and codes with those elements swapped has the same bound;
    with a mirror-symmetric operator (H = I, equal codes) the mirrored scene itself has."""
    sys = SystemConfig(N_H=4, N_V=3, M=8, L=6, K_max=2)
    g = torch.Generator().manual_seed(3)
    H = torch.randn(1, sys.M, sys.N, dtype=torch.complex128, generator=g)
    codes = torch.polar(torch.ones(1, sys.L, sys.N, dtype=torch.float64),
                        torch.rand(1, sys.L, sys.N, dtype=torch.float64, generator=g) * 6.3)
    grid = torch.arange(sys.N).view(sys.N_V, sys.N_H)
    az, el, r, p = _t([[0.35, -0.6]]), _t([[0.17, 0.44]]), _t([[2.0, 4.0]]), _t([[1.0, 0.5]])
    base = _stack(crb_stochastic(az, el, r, p, H, codes, _t([0.01]), sys))
    for flip, (a, e) in ((grid.flip(1), (-az, el)), (grid.flip(0), (az, -el))):
        idx = flip.reshape(-1)
        got = _stack(crb_stochastic(a, e, r, p, H[..., idx], codes[..., idx], _t([0.01]), sys))
        torch.testing.assert_close(got, base, rtol=1e-9, atol=0)
    assert not torch.allclose(  # (the operator's own asymmetry shows: the swap is needed)
        _stack(crb_stochastic(-az, el, r, p, H, codes, _t([0.01]), sys)), base, rtol=1e-3)
    Hi, ci = _identity_problem(SYS4, 3)
    az, el, r, p = _t([[0.3, -0.4]]), _t([[0.1, -0.2]]), _t([[0.8, 1.6]]), _t([[1.0, 2.0]])
    torch.testing.assert_close(_stack(crb_stochastic(-az, el, r, p, Hi, ci, _t([0.2]), SYS4)),
                               _stack(crb_stochastic(az, el, r, p, Hi, ci, _t([0.2]), SYS4)),
                               rtol=1e-9, atol=0)


def test_bounds_are_in_radians_and_metres_scaling_with_the_wavelength():
    """Wavelength, spacing and range all 3x longer: the same phases, so the same angle
    bounds in degrees and a range bound 3x as large in metres (crb() and crb_for_scenes
    alike report radians -> degrees and metres as documented)."""
    g = torch.Generator().manual_seed(4)
    sys = SystemConfig(N_H=4, N_V=4, M=8, L=6, K_max=2)
    big = sys.model_copy(update=dict(wavelength=0.9, spacing=0.45))
    H = torch.randn(sys.M, sys.N, dtype=torch.complex128, generator=g)
    codes = torch.polar(torch.ones(sys.L, sys.N, dtype=torch.float64),
                        torch.rand(sys.L, sys.N, dtype=torch.float64, generator=g) * 6.3)
    a = crb(H, codes, [20.0, -35.0], [10.0, 25.0], [1.0, 2.0], sys, noise_var=0.01)
    b = crb(H, codes, [20.0, -35.0], [10.0, 25.0], [3.0, 6.0], big, noise_var=0.01)
    for k, factor in (("azimuth_deg", 1.0), ("elevation_deg", 1.0), ("range_m", 3.0)):
        torch.testing.assert_close(b[k], a[k] * factor, rtol=1e-9, atol=0)
    rad = crb_stochastic(torch.deg2rad(_t([[20.0, -35.0]])), torch.deg2rad(_t([[10.0, 25.0]])),
                         _t([[1.0, 2.0]]), _t([[1.0, 1.0]]), H[None], codes[None], _t([0.01]),
                         sys)
    for k, want in (("azimuth_deg", torch.rad2deg(rad.azimuth)),
                    ("elevation_deg", torch.rad2deg(rad.elevation)), ("range_m", rad.range_m)):
        torch.testing.assert_close(a[k], want, rtol=1e-12, atol=0)
    assert float(a["azimuth_deg"].max()) < 90  # (degrees of a resolvable source, not rad*1e3)


def test_a_zenith_source_s_azimuth_is_refused_by_the_geometry_on_every_machine(system):
    """cos(pi/2) is 6e-17 in float64: the scaled Cholesky factored the FIM on an AMD EPYC (a
    1e22 deg azimuth bound) and refused it on an Intel Xeon; both bounds, with the source at
    exactly +-90 deg, now refuse it by the geometry, naming the scene, and take it with the
    azimuth known."""
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 2, system, SceneConfig(), split="test", K=1, snr_db=10.0)
    H, c = sc.H.to(torch.complex128), sc.codes.to(torch.complex128)
    az = torch.tensor([[0.2], [0.2]], dtype=torch.float64)
    el = torch.tensor([[0.3], [-math.pi / 2]], dtype=torch.float64)
    r = torch.tensor([[3.0], [3.0]], dtype=torch.float64)
    nv = torch.full((2,), 0.1, dtype=torch.float64)
    p, s = torch.ones(2, 1, dtype=torch.float64), torch.ones(2, system.L, 1, dtype=torch.complex128)
    for bound in (lambda **kw: crb_stochastic(az, el, r, p, H, c, nv, system, **kw),
                  lambda **kw: crb_deterministic(az, el, r, s, H, c, nv, system, **kw)):
        with pytest.raises(SingularFIMError, match=r"scenes \[1\]: .*azimuth of a source at"):
            bound()
        known = bound(known=("azimuth",))
        assert known.azimuth[1].item() == 0 and torch.isfinite(known.range_m).all()


def test_edges_of_the_input_checks_a_third_mutation_review():
    """A third mutation review: each of these passed a mutant. A zero power in a real slot
    is named as such (not a singular FIM); a misspelt source_covariance is refused (not
    read as "diagonal"); a coordinate named twice in known is that coordinate known; the
    scenes an error names are the first 10, and how many more."""
    L = 3
    H, codes = _identity_problem(SYS4, L)
    args = dict(H=H, codes=codes, noise_var=_t([0.1]), system=SYS4)
    geo = (_t([AZ4]), _t([EL4]), _t([R4]))
    with pytest.raises(ValueError, match="powers must be finite and positive"):
        crb_stochastic(*geo, _t([[1.0, 0.0, 1.0, 1.0]]), **args)
    with pytest.raises(ValueError, match="source_covariance must be 'diagonal' or 'full'"):
        crb_stochastic(*geo, _t([[1.0] * 4]), source_covariance="ful", **args)
    s = torch.from_numpy(_cn((1, L, 4), 7))
    once = crb_deterministic(*geo, s, known=("range",), **args)
    twice = crb_deterministic(*geo, s, known=("range", "range"), **args)
    for f in ("azimuth", "elevation", "range_m", "fim"):
        torch.testing.assert_close(getattr(twice, f), getattr(once, f), rtol=0, atol=0,
                                   equal_nan=True)
    assert torch.equal(once.range_m[:, REAL4], torch.zeros(1, 3, dtype=torch.float64))
    B = 12
    bad_r = _t([R4]).repeat(B, 1)
    bad_r[:, 0] = -1.0
    with pytest.raises(ValueError, match=r"scenes \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] and 2 more$"):
        crb_stochastic(*(g.repeat(B, 1) for g in geo[:2]), bad_r, _t([[1.0] * 4]).repeat(B, 1),
                       H.repeat(B, 1, 1), codes.repeat(B, 1, 1), _t([0.1] * B), SYS4)


def test_deterministic_bound_with_as_many_measurements_as_unknowns_is_finite():
    """3 K = 2 L (M - K) (M=5, K=2, L=1: 6 = 6): J is generically invertible, so a bound, not
    the too-few-measurements error (a mutation review: refusing at equality passed)."""
    g = np.random.default_rng(5)
    sys5 = SystemConfig(N_H=3, N_V=3, M=5, L=1, K_max=2)
    H = torch.from_numpy(_cn((1, 5, 9), 51))
    codes = torch.from_numpy(np.exp(2j * np.pi * g.random((1, 1, 9))))
    res = crb_deterministic(_t([[0.2, -0.5]]), _t([[0.15, -0.1]]), _t([[0.9, 2.0]]),
                            torch.from_numpy(_cn((1, 1, 2), 52)), H, codes, _t([0.01]), sys5)
    assert torch.isfinite(_stack(res)).all() and (_stack(res) > 0).all()


def test_a_power_fitted_within_the_floor_of_the_noise_is_named_buried(caplog):
    """y_l = b_l s + n_l with n_l orthogonal to b_l: sigma^2 and the noise the estimate of
    s holds are known in closed form, so |s|^2 = (1 + 1e-7) x that noise leaves a fitted
    power of 1e-7 times it, below the 1e-6 floor: warned of (a mutation review: warning
    only at a fitted power <= 0 passed)."""
    import logging

    from risloc.evaluation.crb import noise_and_powers_at

    sys1 = SystemConfig(N_H=3, N_V=3, M=5, L=4, K_max=1)
    g = np.random.default_rng(8)
    H = torch.from_numpy(_cn((1, 5, 9), 81))
    codes = torch.from_numpy(np.exp(2j * np.pi * g.random((1, 4, 9))))
    geo = (_t([[0.2]]), _t([[0.1]]), _t([[1.5]]))
    a = steering(*geo, sys1, torch.complex128)[0, 0]  # (N,)
    b = (H[0].unsqueeze(0) * codes[0].unsqueeze(1)) @ a  # (L, M)   b_l = H diag(c_l) a
    n = torch.from_numpy(_cn((4, 5), 82))
    n = n - b * ((b.conj() * n).sum(-1, keepdim=True) / b.abs().square().sum(-1, keepdim=True))
    sigma2 = n.abs().square().sum() / (4 * (5 - 1))
    held = sigma2 * (1 / b.abs().square().sum(-1)).mean()
    y = b * torch.sqrt(held * (1 + 1e-7)) + n
    with caplog.at_level(logging.WARNING, logger="risloc.evaluation.crb"):
        got_sigma2, _ = noise_and_powers_at(*geo, y[None], H, codes, sys1)
    assert got_sigma2.item() == pytest.approx(sigma2.item(), rel=1e-9)
    assert "1 source(s) in scenes [0]: no power above the noise" in caplog.text


def test_user_crb_refuses_the_azimuth_of_a_source_in_the_ris_plane(system):
    """A map over azimuth -90..90 deg: at +-90 deg the source lies in the RIS plane, its
    azimuth moves it off the plane, where no element distance changes (first order): the
    bound is infinite, yet crb() gave 1.5e15 deg, float64's rounding of cos(pi/2). Refused
    as at the zenith, naming the scene; known=("azimuth",) gives the others' bound; so is
    the elevation at +-90 deg elevation and azimuth 0 (off-plane motion again)."""
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 1, system, SceneConfig(), split="test", K=1, snr_db=10.0)
    H, c = np.broadcast_to(sc.H[0].numpy(), (3, *sc.H.shape[1:])), sc.codes[0].expand(3, -1, -1)
    with pytest.raises(SingularFIMError, match=r"scenes \[1, 2\].*azimuth of a source at "
                                               r"\+-90 deg elevation or azimuth") as err:
        crb(H, c, [[30.0], [90.0], [-90.0]], [[0.0], [0.0], [20.0]], [[3.0]] * 3, system,
            snr_db=10.0)
    assert err.value.scenes == [1, 2]
    given = crb(H[0], c[0], [90.0], [0.0], [3.0], system, snr_db=10.0, known=("azimuth",))
    assert 0 < given["elevation_deg"].item() < 10
    with pytest.raises(SingularFIMError, match="the elevation of one at"):
        crb(H[0], c[0], [0.0], [90.0], [3.0], system, snr_db=10.0, known=("azimuth",))
    off = crb(H[0], c[0], [30.0], [90.0], [3.0], system, snr_db=10.0, known=("azimuth",))
    assert 0 < off["elevation_deg"].item() < 10
    both = crb(H[0], c[0], [0.0], [90.0], [3.0], system, snr_db=10.0,
               known=("azimuth", "elevation"))  # both angles known: the range is bounded
    assert both["elevation_deg"].item() == 0 and 0 < both["range_m"].item() < math.inf


def test_user_crb_takes_a_map_in_chunks_and_names_the_whole_batchs_scenes(system, monkeypatch):
    """A CRB map of 2,500 positions in one call held 4.2 GB (the stochastic bound's
    derivatives for all scenes at once): crb() now bounds CRB.CHUNK scenes per pass, with
    the same bounds, and a singular scene (the interferer on the grid) named by its index
    in the whole batch, for the user to mask."""
    crb_module = sys.modules["risloc.evaluation.crb"]
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 1, system, SceneConfig(), split="test", K=1, snr_db=10.0)
    B = 10
    H, c = sc.H[0].expand(B, -1, -1), sc.codes[0].expand(B, -1, -1)
    az = np.stack([np.linspace(-50, 50, B), np.full(B, 20.0)], axis=1)
    el, r = np.zeros((B, 2)), np.stack([np.linspace(1, 8, B), np.full(B, 4.0)], axis=1)
    whole = crb(H, c, az, el, r, system, snr_db=10.0)
    monkeypatch.setattr(crb_module, "CHUNK", 3)
    parts = crb(H, c, az, el, r, system, snr_db=10.0)
    for k in whole:
        torch.testing.assert_close(parts[k], whole[k], rtol=1e-9, atol=0)
    az[7], r[7] = 20.0, 4.0  # the grid point on the interferer
    with pytest.raises(SingularFIMError, match=r"scenes \[7\]") as err:
        crb(H, c, az, el, r, system, snr_db=10.0)
    assert err.value.scenes == [7]
    # every failing pass's scenes, all of them named in .scenes (the message: the first 10)
    az[[1, 2, 4, 9]], r[[1, 2, 4, 9]] = 20.0, 4.0
    with pytest.raises(SingularFIMError, match=r"scenes \[1, 2, 4, 7, 9\]: ") as err:
        crb(H, c, az, el, r, system, snr_db=10.0)
    assert err.value.scenes == [1, 2, 4, 7, 9]
    monkeypatch.setattr(crb_module, "CHUNK", 64)
    many = 14
    H, c = sc.H[0].expand(many, -1, -1), sc.codes[0].expand(many, -1, -1)
    on = np.full((many, 2), 20.0), np.zeros((many, 2)), np.full((many, 2), 4.0)
    with pytest.raises(SingularFIMError, match=r"scenes \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] and "
                       r"4 more: ") as err:
        crb(H, c, *on, system, snr_db=10.0)
    assert err.value.scenes == list(range(many))


def test_user_crb_names_a_maps_points_of_every_kind_of_failure_in_one_pass(system):
    """A map over azimuth -90..90 deg beside an interferer: the RIS-plane points are refused
    by the geometry before any matrix is factored, and the point on the interferer (in the
    same pass of 64) went unnamed: masked, the map failed again, one retry per kind. All of
    them are named at once, each kind with its cause."""
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 1, system, SceneConfig(), split="test", K=1, snr_db=10.0)
    B = 5
    H, c = sc.H[0].expand(B, -1, -1), sc.codes[0].expand(B, -1, -1)
    az = np.array([[-90.0, 20.0], [0.0, 20.0], [20.0, 20.0], [45.0, 20.0], [90.0, 20.0]])
    el, r = np.zeros((B, 2)), np.array([[3.0, 4.0], [2.0, 4.0], [4.0, 4.0], [5.0, 4.0],
                                        [6.0, 4.0]])
    with pytest.raises(SingularFIMError, match=r"scenes \[0, 2, 4\]: .*RIS plane.*; nuisance "
                                               r"block of the FIM is singular in scenes \[2\]"
                       ) as err:
        crb(H, c, az, el, r, system, snr_db=10.0)
    assert err.value.scenes == [0, 2, 4]
    keep = [1, 3]  # masked: the others' bound
    out = crb(H[keep], c[keep], az[keep], el[keep], r[keep], system, snr_db=10.0)
    assert torch.isfinite(out["azimuth_deg"]).all()


def test_user_crb_names_each_kind_of_failure_once_over_its_passes(system):
    """A kind of failure met in several passes of 64 (a point on the interferer in each) was
    told once per pass, its cause repeated; told once, with the scenes of every pass."""
    from risloc.simulation import simulate_range

    sc = simulate_range(0, 1, system, SceneConfig(), split="test", K=1, snr_db=10.0)
    B = 129  # three passes
    H, c = sc.H[0].expand(B, -1, -1), sc.codes[0].expand(B, -1, -1)
    az, el = np.full((B, 2), 20.0), np.zeros((B, 2))
    r = np.tile([[3.0, 4.0]], (B, 1))
    az[0, 0] = 90.0  # in the RIS plane
    r[[70, 128], 0] = 4.0  # on the interferer
    with pytest.raises(SingularFIMError) as err:
        crb(H, c, az, el, r, system, snr_db=10.0)
    assert err.value.scenes == [0, 70, 128]
    assert str(err.value).count("nuisance block") == 1
    assert "nuisance block of the FIM is singular in scenes [70, 128]: " in str(err.value)


def test_user_crb_of_no_scene_is_empty(system):
    """An empty batch (a map's empty selection) failed in the noise's operator, 'cannot
    reshape tensor of 0 elements'; its bound is [0, K]."""
    H = torch.zeros(0, system.M, system.N, dtype=torch.complex128)
    c = torch.ones(0, system.L, system.N, dtype=torch.complex128)
    for noise in ({"snr_db": 10.0}, {"noise_var": 1.0}):
        out = crb(H, c, np.zeros((0, 2)), np.zeros((0, 2)), np.ones((0, 2)), system, **noise)
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "azimuth_deg": (0, 2), "elevation_deg": (0, 2), "range_m": (0, 2)}


def test_singular_fim_error_is_public():
    """docs/guide.md tells users to catch SingularFIMError around a CRB map: it is importable
    from risloc.evaluation, the package that exports crb, and is the class crb raises."""
    import risloc.evaluation as evaluation

    assert "SingularFIMError" in evaluation.__all__
    assert evaluation.SingularFIMError is SingularFIMError
