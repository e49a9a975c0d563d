"""Cramer-Rao bounds on (azimuth, elevation, range) for the compressive RIS model.

Model of one scene (docs/conventions.md, "Measurement model"):
    y_l = B_l s_l + n_l,   B_l = Phi_l A(eta),   Phi_l = H diag(c_l),   n_l ~ CN(0, sigma^2 I_M).

Parameter order of every FIM here: eta = [phi_1..phi_K, theta_1..theta_K, r_1..r_K]
(K = K_max slots; azimuth block, then elevation block, then range block). With
D_l = Phi_l [dA/dphi, dA/dtheta, dA/dr] in C^{M x 3K} (derivatives from
``risloc.physics.steering_jacobian``):

* deterministic (conditional) bound, s_l unknown complex nuisance (Stoica & Nehorai,
  IEEE TASSP 37(5), 1989, extended to a snapshot-dependent B_l):
      J = (2 / sigma^2) sum_l Re{ (D_l^H P_perp(B_l) D_l) (.) (s~_l s~_l^H)^T },
  s~_l = [s_l; s_l; s_l]; the projector P_perp(B_l) = I - B_l (B_l^H B_l)^-1 B_l^H
  concentrates out the symbols.
* stochastic (unconditional) bound, s_l ~ CN(0, P): Slepian-Bangs for independent, not
  identically distributed snapshots, R_l = B_l P B_l^H + sigma^2 I_M,
      J_ij = sum_l tr(R_l^-1 dR_l/dxi_i R_l^-1 dR_l/dxi_j),
  over xi = (eta, source-covariance parameters, sigma^2); the (eta, eta) block of J^-1 is
  the bound. With H diag(c_l) = I it reduces to Stoica, Larsson & Gershman, IEEE SPL 8(5),
  2001: CRB^-1 = (2L/sigma^2) Re{ (D^H P_perp D) (.) (P A^H R^-1 A P)^T } for a full
  unknown P (``source_covariance="full"``). The default "diagonal" knows the sources are
  uncorrelated (unknown powers p_k only), which gives a bound <= the "full" one.

``CRBResult.fim`` is the *effective* FIM of eta (nuisance parameters concentrated out:
the deterministic J above, the Schur complement of the nuisance block for the stochastic
one); rows/columns of padded slots are zero. Padded slots never enter B_l, so they do not
change the bound of the real sources; their bounds are NaN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Literal, NamedTuple

import torch

from risloc.config import SystemConfig
from risloc.core.checks import as_system, as_tensor
from risloc.core.operator import apply_operator
from risloc.core.params import ELEVATION_LIMIT_DEG
from risloc.physics import steering_jacobian
from risloc.simulation import SceneBatch

log = logging.getLogger(__name__)

PARAMETERS = ("azimuth", "elevation", "range")


@dataclass(frozen=True)
class CRBResult:
    """Square-root Cramer-Rao bounds of a batch of scenes.

    azimuth, elevation : [B, K_max] float64 — [rad], sqrt of diag(J^-1); NaN in padded slots,
        0 for parameters declared known
    range_m : [B, K_max] float64 — [m], idem
    fim : [B, 3 K_max, 3 K_max] float64 — effective FIM of eta = [phi_1..K, theta_1..K, r_1..K]
        (units 1/rad^2, 1/(rad m), 1/m^2); zero rows/columns in padded slots
    """

    azimuth: torch.Tensor
    elevation: torch.Tensor
    range_m: torch.Tensor
    fim: torch.Tensor

    def __len__(self) -> int:
        return self.azimuth.shape[0]

    def __getitem__(self, idx) -> CRBResult:
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self)})


class _Inputs(NamedTuple):
    azimuth: torch.Tensor  # (B, K) float64, padded slots filled with a harmless value
    elevation: torch.Tensor
    range_m: torch.Tensor
    H: torch.Tensor  # (B, M, N) complex128
    codes: torch.Tensor  # (B, L, N) complex128
    noise_var: torch.Tensor  # (B,) float64
    mask: torch.Tensor  # (B, K) bool


def _bad_scenes(bad: torch.Tensor) -> list[int]:
    """The indices where ``bad`` [B] holds, all of them (a map masks them at once)."""
    return torch.nonzero(bad).flatten().tolist()


def _scenes_text(scenes: list[int]) -> str:
    """Scene indices in a message: the first 10, and how many more."""
    more = len(scenes) - 10
    return f"{scenes[:10]}" + (f" and {more} more" if more > 0 else "")


class SingularFIMError(ValueError):
    """A Fisher information matrix or measurement covariance that float64 cannot factor.

    what : the matrix;  scenes : the batch indices where it fails (every one: the message
    names the first 10);  why : the likely causes;  how : how it was factored (e.g. " in
    float64"), or ""."""

    def __init__(self, what: str, scenes: list[int], why: str, how: str = ""):
        super().__init__(f"{what} is singular{how} in scenes {_scenes_text(scenes)}: {why}")
        self.what, self.scenes, self.why, self.how = what, scenes, why, how

    def shifted(self, offset: int) -> SingularFIMError:
        """The same error with the scene indices of a batch that starts at ``offset``."""
        return SingularFIMError(self.what, [i + offset for i in self.scenes], self.why,
                                self.how)


def _prepare(azimuth, elevation, range_m, H, codes, noise_var, system: SystemConfig,
             mask) -> _Inputs:
    """Validate shapes and values; move everything to float64 / complex128."""
    if azimuth.dim() != 2 or elevation.shape != azimuth.shape or range_m.shape != azimuth.shape:
        raise ValueError("azimuth, elevation and range_m must all be [B, K_max], got "
                         f"{tuple(azimuth.shape)}, {tuple(elevation.shape)}, "
                         f"{tuple(range_m.shape)}")
    B = azimuth.shape[0]
    if H.dim() != 3 or H.shape[0] != B or H.shape[-1] != system.N:
        raise ValueError(f"H must be [B={B}, M, N={system.N}], got {tuple(H.shape)}")
    if codes.dim() != 3 or codes.shape[0] != B or codes.shape[-1] != system.N:
        raise ValueError(f"codes must be [B={B}, L, N={system.N}], got {tuple(codes.shape)}")
    if noise_var.shape != (B,):
        raise ValueError(f"noise_var must be [B={B}], got {tuple(noise_var.shape)}")
    mask = torch.isfinite(azimuth) if mask is None else mask.to(torch.bool)
    if mask.shape != azimuth.shape:
        raise ValueError(f"mask must be {tuple(azimuth.shape)}, got {tuple(mask.shape)}")
    az, el, r = (t.to(torch.float64) for t in (azimuth, elevation, range_m))
    bad = (~(torch.isfinite(az) & torch.isfinite(el) & torch.isfinite(r) & (r > 0)) & mask)
    if bad.any():
        raise ValueError("non-finite angle or non-positive range in a real source slot, "
                         f"scenes {_scenes_text(_bad_scenes(bad.any(-1)))}")
    M = H.shape[-2]
    if (mask.sum(-1) >= M).any():
        raise ValueError(f"K >= M={M} sources cannot be resolved, scenes "
                         f"{_scenes_text(_bad_scenes(mask.sum(-1) >= M))}")
    H, codes = H.to(torch.complex128), codes.to(torch.complex128)
    if not (torch.isfinite(torch.view_as_real(H)).all()
            and torch.isfinite(torch.view_as_real(codes)).all()):
        raise ValueError("H and codes must be finite")
    if (H.abs().amax(dim=(-1, -2)) == 0).any():
        raise ValueError(f"all-zero channel H in scenes "
                         f"{_scenes_text(_bad_scenes(H.abs().sum((-1, -2)) == 0))}")
    nv = noise_var.to(torch.float64)
    if not (torch.isfinite(nv) & (nv > 0)).all():
        raise ValueError("noise_var must be finite and positive")
    zero, one = torch.zeros_like(az), torch.ones_like(r)
    return _Inputs(torch.where(mask, az, zero), torch.where(mask, el, zero),
                   torch.where(mask, r, one), H, codes, nv, mask)


#: |cos(elevation)| below which a source's azimuth is undefined: float64's rounding of 90 deg
#: (cos 6e-17), not float32's pi/2 (cos 4e-8, 90.0000025 deg: a finite, huge azimuth bound)
ZENITH_COS = 1e-12


def _check_zenith(inp: _Inputs, known: tuple[str, ...]) -> None:
    """SingularFIMError naming the scenes with a source in the RIS plane (+-90 deg elevation,
    or +-90 deg azimuth) whose off-plane motion is not identifiable: every distance to the
    elements is stationary under it, so a column of J is exactly zero in exact arithmetic,
    but cos(pi/2) is 6e-17 in float64, and the scaled Cholesky then factored J or not
    depending on the machine's rounding (a bound of 1e15..1e22 deg on one CPU, this error
    on another); decided here, by the geometry. In the plane the azimuth is never
    identifiable, the elevation (azimuth known) only away from azimuth 0 and 180 deg at
    +-90 deg elevation."""
    cos_el, cos_az = inp.elevation.cos().abs(), inp.azimuth.cos().abs()
    plane = inp.mask & (cos_el * cos_az < ZENITH_COS)
    top = plane & ((torch.zeros_like(plane) if "azimuth" in known else plane)
                   | ((inp.azimuth.sin().abs() < ZENITH_COS) & (cos_el < ZENITH_COS)
                      & ("elevation" not in known)))
    if top.any():
        raise SingularFIMError("Fisher information matrix", _bad_scenes(top.any(-1)),
                               "a parameter is not identifiable, one to declare with "
                               "known=(...): the azimuth of a source at +-90 deg elevation "
                               "or azimuth, in the RIS plane (known=('azimuth',)), "
                               "or the elevation of one at +-90 deg elevation and azimuth 0 "
                               "or 180 deg")


def _measured_columns(inp: _Inputs, system: SystemConfig):
    """B_l = Phi_l A [B, L, M, K] and D_l = Phi_l [dA/dphi, dA/dtheta, dA/dr] [B, L, M, 3K].

    Columns of padded slots are zero, so they take no part in projectors or covariances.
    """
    jac = steering_jacobian(inp.azimuth, inp.elevation, inp.range_m, system,
                            torch.complex128)  # each (B, K, N)
    keep = inp.mask.unsqueeze(-1).to(torch.complex128)  # (B, K, 1)
    A = jac.a * keep
    D = torch.cat([jac.d_azimuth * keep, jac.d_elevation * keep, jac.d_range * keep], dim=1)
    return apply_operator(inp.H, inp.codes, A), apply_operator(inp.H, inp.codes, D)


def _gram_cholesky(Bm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of each snapshot's Gram matrix B_l^H B_l [B, L, K, K] (padded slots:
    1 on the diagonal); SingularFIMError naming the scenes whose columns are dependent."""
    pad = torch.diag_embed((~mask).to(Bm.dtype)).unsqueeze(1)
    chol, info = torch.linalg.cholesky_ex(Bm.mH @ Bm + pad)
    if (info != 0).any():
        raise SingularFIMError("the Gram matrix of the measured steering columns",
                               _bad_scenes((info != 0).any(-1)),
                               "the columns are linearly dependent (coincident sources?)")
    return chol


def _scaled_cholesky(J: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Cholesky factor of the Jacobi-scaled J [B, P, P] and the scale [B, P]; ValueError
    naming the scenes where J is not positive definite."""
    d = torch.diagonal(J, dim1=-2, dim2=-1)
    bad = (d <= 0).any(-1)
    scale = torch.where(d > 0, d, torch.ones_like(d)).rsqrt()
    chol, info = torch.linalg.cholesky_ex(J * scale.unsqueeze(-1) * scale.unsqueeze(-2))
    bad = bad | (info != 0)
    if bad.any():
        raise SingularFIMError(what, _bad_scenes(bad), "a parameter is not identifiable "
                               "(coincident sources, zero symbols; or one to declare with "
                               "known=(...): the elevation of a linear array, the azimuth of "
                               "a source at +-90 deg elevation) or the noise is too weak for "
                               "float64 (an SNR above ~100 dB)")
    return chol, scale


def _restrict(J: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """J [B, P, P] with the rows and columns of invalid parameters (valid [B, P]) zeroed."""
    keep = valid.unsqueeze(-1) & valid.unsqueeze(-2)
    return torch.where(keep, J, torch.zeros_like(J))


def _masked_identity(J: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """J restricted to valid rows/columns, identity elsewhere (decouples padded slots)."""
    return _restrict(J, valid) + torch.diag_embed((~valid).to(J.dtype))


def _crb_from_fim(fim: torch.Tensor, mask: torch.Tensor, known: tuple[str, ...]) -> CRBResult:
    """sqrt(diag(J^-1)) of the valid, unknown parameters of eta; J [B, 3K, 3K]."""
    unknown_names = [p for p in PARAMETERS if p not in known]
    if len(unknown_names) + len(set(known)) != len(PARAMETERS):
        raise ValueError(f"known must name parameters among {PARAMETERS}, got {known}")
    K = mask.shape[-1]
    free = torch.tensor([p not in known for p in PARAMETERS], device=mask.device)
    real3 = mask.repeat(1, 3)  # (B, 3K)
    valid = real3 & free.repeat_interleave(K)
    chol, scale = _scaled_cholesky(_masked_identity(fim, valid), "Fisher information matrix")
    cov = torch.cholesky_inverse(chol) * scale.unsqueeze(-1) * scale.unsqueeze(-2)
    var = torch.where(valid, torch.diagonal(cov, dim1=-2, dim2=-1), torch.zeros_like(scale))
    std = torch.where(real3, var.clamp_min(0).sqrt(), torch.full_like(var, float("nan")))
    az, el, r = std.split(K, dim=-1)
    return CRBResult(azimuth=az, elevation=el, range_m=r, fim=fim)


def _real_slots(symbols: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """symbols [B, L, K] as complex128 with padded slots (mask [B, K] False) zero, whatever
    they hold: NaN too (NaN * 0 is NaN, so a where, not a product)."""
    return torch.where(mask.unsqueeze(1), symbols.to(torch.complex128),
                       torch.zeros((), dtype=torch.complex128))


def crb_deterministic(azimuth: torch.Tensor, elevation: torch.Tensor, range_m: torch.Tensor,
                      symbols: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                      noise_var: torch.Tensor, system: SystemConfig,
                      mask: torch.Tensor | None = None,
                      known: tuple[str, ...] = ()) -> CRBResult:
    """Deterministic (conditional) CRB of the source positions given the symbols s_l.

    J = (2/sigma^2) sum_l Re{ (D_l^H P_perp(B_l) D_l) (.) (s~_l s~_l^H)^T }  (module docstring).

    Parameters
    ----------
    azimuth, elevation : [B, K_max] real — [rad], NaN in padded slots
    range_m : [B, K_max] real — [m], NaN in padded slots
    symbols : [B, L, K_max] complex — s_l (values in padded slots are ignored)
    H : [B, M, N] complex; codes : [B, L, N] complex; noise_var : [B] real — sigma^2
    mask : [B, K_max] bool — real source slots (default: finite azimuth)
    known : names among ("azimuth", "elevation", "range") treated as known (bound 0)

    Returns
    -------
    CRBResult (float64; parameter order of ``fim`` in the module docstring)
    """
    inp = _prepare(azimuth, elevation, range_m, H, codes, noise_var, system, mask)
    _check_zenith(inp, known)
    if symbols.shape != (*codes.shape[:2], azimuth.shape[-1]):
        raise ValueError(f"symbols must be [B, L, K_max] = {(*codes.shape[:2], azimuth.shape[-1])},"
                         f" got {tuple(symbols.shape)}")
    s = _real_slots(symbols, inp.mask)  # (B, L, K)
    if not torch.isfinite(torch.view_as_real(s)).all():
        raise ValueError("symbols must be finite in real source slots")
    # each snapshot leaves 2 (M - K) real measurements once its symbols are fitted: fewer
    # in all than the unknown coordinates make J singular whatever the geometry
    L, M, K = codes.shape[1], H.shape[1], inp.mask.sum(-1)
    free = sum(p not in known for p in PARAMETERS)
    few = free * K > 2 * L * (M - K)
    if few.any():
        raise SingularFIMError("Fisher information matrix", _bad_scenes(few),
                               f"its {free} K unknown coordinates outnumber the 2 L (M - K) "
                               f"real measurements the symbols leave (L={L}, M={M}, K="
                               f"{K[few][0].item()}): more snapshots, fewer sources, a known "
                               "coordinate, or the stochastic bound")
    Bm, Dm = _measured_columns(inp, system)  # (B, L, M, K), (B, L, M, 3K)
    chol = _gram_cholesky(Bm, inp.mask)  # (B, L, K, K)
    perp_D = Dm - Bm @ torch.cholesky_solve(Bm.mH @ Dm, chol)  # (B, L, M, 3K)  P_perp D_l
    Q = Dm.mH @ perp_D  # (B, L, 3K, 3K)
    s3 = s.repeat(1, 1, 3)  # (B, L, 3K)
    S = s3.conj().unsqueeze(-1) * s3.unsqueeze(-2)  # (s~ s~^H)^T
    fim = (Q * S).real.sum(1) * (2.0 / inp.noise_var).view(-1, 1, 1)
    return _crb_from_fim(fim, inp.mask, known)


def _covariance_derivatives(Bm: torch.Tensor, Dm: torch.Tensor, powers: torch.Tensor,
                            mask: torch.Tensor, source_covariance: str):
    """dR_l/dxi for xi = (eta [3K], source-covariance parameters, sigma^2).

    Returns dR [B, L, P, M, M] complex128 and valid [B, P] bool (False: padded slots).
    """
    B, L, M, K = Bm.shape
    Q = Bm * powers.unsqueeze(1).unsqueeze(1).to(Bm.dtype)  # (B, L, M, K)   B_l P
    X = Dm.mT.unsqueeze(-1) * Q.repeat(1, 1, 1, 3).mT.conj().unsqueeze(-2)  # d_i q_k^H
    d_eta = X + X.mH  # (B, L, 3K, M, M)
    b = Bm.mT  # (B, L, K, M)
    outer = b[:, :, :, None, :, None] * b.conj()[:, :, None, :, None, :]  # [.., i, j] = b_i b_j^H
    idx = torch.arange(K, device=Bm.device)
    d_cov, valid_cov = [outer[:, :, idx, idx]], [mask]  # unknown powers p_k
    if source_covariance == "full":
        i, j = torch.triu_indices(K, K, offset=1, device=Bm.device)
        sym, anti = outer[:, :, i, j], outer[:, :, j, i]
        d_cov += [sym + anti, 1j * (sym - anti)]  # Re and Im of P_ij
        valid_cov += [mask[:, i] & mask[:, j]] * 2
    elif source_covariance != "diagonal":
        raise ValueError(f"source_covariance must be 'diagonal' or 'full', got "
                         f"{source_covariance!r}")
    eye = torch.eye(M, dtype=Bm.dtype, device=Bm.device).expand(B, L, 1, M, M)
    dR = torch.cat([d_eta, *d_cov, eye], dim=2)
    valid = torch.cat([mask.repeat(1, 3), *valid_cov, torch.ones_like(mask[:, :1])], dim=-1)
    return dR, valid


def crb_stochastic(azimuth: torch.Tensor, elevation: torch.Tensor, range_m: torch.Tensor,
                   powers: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                   noise_var: torch.Tensor, system: SystemConfig,
                   mask: torch.Tensor | None = None, known: tuple[str, ...] = (),
                   source_covariance: Literal["diagonal", "full"] = "diagonal") -> CRBResult:
    """Stochastic (unconditional) CRB: Slepian-Bangs over independent, non-identically
    distributed snapshots, R_l = B_l diag(p) B_l^H + sigma^2 I_M (module docstring).

    The unknown source powers ("diagonal") or the whole source covariance ("full", K^2 real
    parameters) and sigma^2 are nuisance parameters, concentrated out by a Schur complement.

    Parameters
    ----------
    azimuth, elevation, range_m, H, codes, noise_var, mask, known : as in crb_deterministic
    powers : [B, K_max] real — p_k > 0 in real slots (ignored in padded slots)

    Returns
    -------
    CRBResult (float64)
    """
    inp = _prepare(azimuth, elevation, range_m, H, codes, noise_var, system, mask)
    _check_zenith(inp, known)
    if powers.shape != azimuth.shape:
        raise ValueError(f"powers must be {tuple(azimuth.shape)}, got {tuple(powers.shape)}")
    p = torch.where(inp.mask, powers.to(torch.float64), torch.zeros((), dtype=torch.float64))
    if not (torch.isfinite(p) & ((p > 0) | ~inp.mask)).all():
        raise ValueError("powers must be finite and positive in real source slots")
    Bm, Dm = _measured_columns(inp, system)
    R = (Bm * p.view(p.shape[0], 1, 1, -1)) @ Bm.mH  # (B, L, M, M)
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
    R = R + inp.noise_var.view(-1, 1, 1, 1) * eye
    dR, valid = _covariance_derivatives(Bm, Dm, p, inp.mask, source_covariance)
    chol_R, info = torch.linalg.cholesky_ex(R)
    if (info != 0).any():
        raise SingularFIMError("the measurement covariance", _bad_scenes((info != 0).any(-1)),
                               "the noise is too weak against the sources (an SNR above ~100 "
                               "dB) for the stochastic bound to be computed", " in float64")
    W = torch.cholesky_inverse(chol_R)  # (B, L, M, M)   R_l^-1
    WdR = W.unsqueeze(2) @ dR  # (B, L, P, M, M)
    J = torch.einsum("blpij,blqji->bpq", WdR, WdR).real  # (B, P, P)
    n_eta = 3 * inp.mask.shape[-1]
    J = _masked_identity(J, valid)
    chol, scale = _scaled_cholesky(J[:, n_eta:, n_eta:], "nuisance block of the FIM")
    cross = J[:, n_eta:, :n_eta] * scale.unsqueeze(-1)  # scaled J_n,eta
    fim = J[:, :n_eta, :n_eta] - cross.mT @ torch.cholesky_solve(cross, chol)
    fim = _restrict(fim, valid[:, :n_eta])
    return _crb_from_fim(fim, inp.mask, known)


def _concat(parts: list[CRBResult]) -> CRBResult:
    return CRBResult(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                        for f in fields(CRBResult)})


def noise_var_for_snr(azimuth: torch.Tensor, elevation: torch.Tensor, range_m: torch.Tensor,
                      H: torch.Tensor, codes: torch.Tensor, snr_db: torch.Tensor,
                      system: SystemConfig, mask: torch.Tensor | None = None,
                      powers: torch.Tensor | None = None,
                      symbols: torch.Tensor | None = None) -> torch.Tensor:
    """sigma^2 [B] that gives each scene the per-antenna SNR ``snr_db`` (a number or [B];
    docs/conventions.md: (1/(L M)) sum_l ||H diag(c_l) A s_l||^2 / sigma^2): the realised
    signal where the ``symbols`` s_l [B, L, K] are given, else its expectation for
    uncorrelated sources of ``powers`` [B, K] (1 each by default). Positions [B, K] in
    radians and metres, H [B, M, N], codes [B, L, N]. A scene without sources has no signal
    to set the noise by: its sigma^2 is 1 (its bound is NaN whatever sigma^2)."""
    B = azimuth.shape[0]
    inp = _prepare(azimuth, elevation, range_m, H, codes, torch.ones(B, dtype=torch.float64),
                   system, mask)
    Bm, _ = _measured_columns(inp, system)  # Phi_l A [B, L, M, K], padded columns zero
    if symbols is not None:
        y = torch.einsum("blmk,blk->blm", Bm, _real_slots(symbols, inp.mask))
        signal = y.abs().square().sum((1, 2))
    else:
        p = torch.ones_like(inp.azimuth) if powers is None else powers.to(torch.float64)
        signal = (Bm.abs().square() * torch.where(inp.mask, p, 0.0).unsqueeze(1).unsqueeze(1)
                  ).sum((1, 2, 3))
    signal = signal / (Bm.shape[1] * Bm.shape[2])
    snr = torch.as_tensor(snr_db, dtype=torch.float64).reshape(-1)
    return torch.where(inp.mask.any(1), signal / 10.0 ** (snr / 10.0), 1.0)


def noise_and_powers_at(azimuth: torch.Tensor, elevation: torch.Tensor,
                        range_m: torch.Tensor, y: torch.Tensor, H: torch.Tensor,
                        codes: torch.Tensor, system: SystemConfig,
                        mask: torch.Tensor | None = None, index: torch.Tensor | None = None,
                        said: torch.Tensor | None = None,
                        buried: list[tuple[int, int]] | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma^2 [B], powers [B, K]) of measured scenes, fitted at given (true) positions: the
    bound's inputs for a file without an SNR. Each snapshot's symbols by least squares,
    s_l = (B_l^H B_l)^-1 B_l^H y_l; sigma^2 = sum_l ||y_l - B_l s_l||^2 / (L (M - K)), unbiased
    for y_l = B_l s_l + n_l; p_k = mean_l |s_lk|^2 less the noise it holds, sigma^2 mean_l
    [(B_l^H B_l)^-1]_kk, and at least 1e-6 times that noise (a source the noise buries gets
    a large bound, not none, and a warning that it is the floor's; a floor in the units of
    the powers, |y|^2 / |H|^2, so that the bound does not depend on the units of y and H).
    Positions [B, K] in radians and metres (NaN padded), y [B, L, M]; the powers of padded
    slots are 0. Whatever the model misses (calibration, a source not in the truth) counts
    as noise here. The warning names the buried sources' scenes by ``index`` ([B]: their
    indices in a file; default their place in the batch), among the scenes ``said`` ([B]
    bool; default all: those whose fit is used). Where a list ``buried`` is given, the
    buried sources' (scene index, count) are appended to it and not warned of: a caller
    fitting a file in chunks warns once for all of them (:func:`warn_buried`)."""
    B = azimuth.shape[0]
    inp = _prepare(azimuth, elevation, range_m, H, codes, torch.ones(B, dtype=torch.float64),
                   system, mask)
    L, M = codes.shape[1], H.shape[1]
    if y.shape != (B, L, M):
        raise ValueError(f"y must be [B={B}, L={L}, M={M}], got {tuple(y.shape)}")
    Bm, _ = _measured_columns(inp, system)  # (B, L, M, K), padded columns zero
    chol = _gram_cholesky(Bm, inp.mask)  # (B, L, K, K)
    y = y.to(torch.complex128).unsqueeze(-1)  # (B, L, M, 1)
    s = torch.cholesky_solve(Bm.mH @ y, chol)  # (B, L, K, 1)
    residual = (y - Bm @ s).abs().square().sum((1, 2, 3))
    K = inp.mask.sum(-1)
    sigma2 = residual / (L * (M - K))
    eye = torch.eye(Bm.shape[-1], dtype=Bm.dtype).expand_as(chol)
    spread = torch.cholesky_solve(eye, chol).diagonal(dim1=-2, dim2=-1).real.mean(1)  # (B, K)
    held = sigma2.unsqueeze(-1) * spread  # the noise each source's estimate holds
    fitted = s.squeeze(-1).abs().square().mean(1) - held
    under = inp.mask & (fitted <= 1e-6 * held)
    under = under if said is None else under & said.to(under.device).unsqueeze(-1)
    found = [(i if index is None else int(index[i]), int(under[i].sum()))
             for i in _bad_scenes(under.any(-1))]
    if buried is not None:
        buried.extend(found)
    else:
        warn_buried(found)
    powers = torch.maximum(fitted, 1e-6 * held)
    return sigma2, torch.where(inp.mask, powers, 0.0)


def warn_buried(buried: list[tuple[int, int]]) -> None:
    """One warning for the sources the noise buries, (scene index, count) as
    :func:`noise_and_powers_at` finds them (none: no warning). Their bound is the power
    floor's, 1e5 deg and more: no bound at all."""
    if buried:
        log.warning("%d source(s) in scenes %s: no power above the noise at the position "
                    "given (a source the noise buries, or none there): the bound fitted "
                    "from y is set by a power floor of 1e-6 times that noise and means "
                    "nothing; give snr_db or the powers if they are known",
                    sum(n for _, n in buried), _scenes_text(sorted(i for i, _ in buried)))


def crb_for_scenes(scenes: SceneBatch, system: SystemConfig | dict | str,
                   kind: Literal["deterministic", "stochastic"] = "deterministic",
                   known: tuple[str, ...] = (), chunk_size: int = 64) -> CRBResult:
    """CRB of each scene of a simulated batch (truth, noise_var, and for the deterministic
    bound the symbols are needed). Scenes are processed in chunks to bound memory.
    system : a SystemConfig, a dict of its fields or its JSON text (as :func:`crb`).
    Returns a CRBResult in radians and metres (:func:`crb`: a dict in degrees); the default
    ``kind`` is the deterministic bound (:func:`crb`'s: the stochastic one).
    """
    system = as_system(system)
    if not scenes.has_truth:
        raise ValueError("the CRB needs the truth (positions, K) of the scenes")
    if scenes.noise_var is None:  # (a scene file holds no noise_var, nor powers or symbols)
        raise ValueError("the CRB needs the noise_var of the scenes, which simulated scenes "
                         "carry and a scene file's do not: for those, crb(scenes.H, "
                         "scenes.codes, <true positions in degrees>, system, "
                         "snr_db=scenes.snr_db) (or y=scenes.y where the SNR is unknown)")
    if kind not in ("deterministic", "stochastic"):
        raise ValueError(f"kind must be 'deterministic' or 'stochastic', got {kind!r}")
    if kind == "deterministic" and scenes.symbols is None:
        raise ValueError("the deterministic CRB needs the symbols (simulated scenes only)")
    parts = []
    for lo in range(0, len(scenes), chunk_size):
        sc = scenes[lo:lo + chunk_size]
        common = dict(H=sc.H, codes=sc.codes, noise_var=sc.noise_var, system=system,
                      mask=sc.mask, known=known)
        try:
            if kind == "deterministic":
                parts.append(crb_deterministic(sc.azimuth, sc.elevation, sc.range_m,
                                               sc.symbols, **common))
            else:
                powers = sc.powers if sc.powers is not None else sc.mask.to(torch.float64)
                parts.append(crb_stochastic(sc.azimuth, sc.elevation, sc.range_m, powers,
                                            **common))
        except SingularFIMError as err:  # name the scenes of the whole batch, not the chunk
            raise err.shifted(lo) from None
    return _concat(parts)


def _array(name: str, x, dtype: torch.dtype) -> torch.Tensor:
    t = as_tensor(name, x)
    if t.is_complex() and not dtype.is_complex:  # (torch would drop the imaginary part)
        raise TypeError(f"{name} must be real, got {str(t.dtype).removeprefix('torch.')}")
    return t.to(dtype)


def _symbols(symbols) -> torch.Tensor:
    sym = _array("symbols", symbols, torch.complex128)
    return sym.unsqueeze(0) if sym.ndim == 2 else sym  # one scene's [L, K]


def _warn_radians(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor,
                  mask: torch.Tensor) -> None:
    """Warn where the angles given look like radians, by the rule `risloc localize` and
    `evaluate` apply to files (at least 5 sources, every angle within +-pi/2 "degrees", not
    all at boresight): such a bound is of sources near boresight, plausible and wrong (a
    review). Fewer sources prove nothing and pass silently."""
    from risloc.io.scenefile import radians_hint  # (h5py: imported only where it is asked)

    if bool(mask.any()):
        widest = float(torch.maximum(azimuth_deg.abs(), elevation_deg.abs())[mask].max())
        hint = radians_hint(int(mask.sum()), widest, "given", "azimuth_deg and elevation_deg")
        if hint:
            log.warning(hint)


#: scenes per pass of :func:`crb` (memory ~1.7 MB per scene and source slot, stochastic)
CHUNK = 64


def crb(H, codes, azimuth_deg, elevation_deg, range_m, system: SystemConfig | dict | str, *,
        powers=1.0, noise_var: float | None = None, snr_db: float | None = None,
        kind: Literal["stochastic", "deterministic"] = "stochastic",
        symbols=None, known: tuple[str, ...] = (), y=None) -> dict[str, torch.Tensor]:
    """Square-root CRB of sources at given positions, for users' arrays.

    H [M, N] or [B, M, N], codes [L, N] or [B, L, N]: complex (NumPy or torch);
    azimuth_deg, elevation_deg [K] or [B, K] — [deg]; range_m [K] or [B, K] — [m] (NaN
    pads a batch whose scenes hold fewer sources; [K] with a batch: the same sources in
    every scene); powers : a number or [.., K] source powers p_k (stochastic bound);
    symbols [B, L, K] or one scene's [L, K] (read by, and needed by, the deterministic
    bound only). Any memory layout and byte order (``scipy.io.loadmat``'s Fortran order
    included).
    The noise: ``noise_var`` (sigma^2, per antenna and snapshot) or ``snr_db``, the
    per-antenna SNR it implies for these sources, codes and channel (docs/conventions.md:
    (1/(L M)) sum_l E||Phi_l A s_l||^2 / sigma^2), or the measurements ``y`` [L, M] or
    [B, L, M] of the scenes, which give the noise and the source powers at these (true)
    positions (:func:`noise_and_powers_at`; the stochastic bound, ``powers`` not given): the
    bound of a measured scene whose SNR nobody knows. Exactly one of the three.
    system : a SystemConfig, a dict of its fields or its JSON text (as scene files store it).
    known : coordinates among "azimuth", "elevation", "range" taken as known (their bound 0;
    the others' bound given them): one the array cannot tell, e.g. a linear array's elevation.
    Returns {"azimuth_deg", "elevation_deg", "range_m"}: [B, K] float64 (NaN where padded;
    a scene without sources, all NaN as localizers report it, is NaN throughout).
    """
    if sum(v is not None for v in (noise_var, snr_db, y)) != 1:
        raise ValueError("give exactly one of noise_var, snr_db and y (the measurements)")
    if y is not None and (kind != "stochastic" or not (isinstance(powers, float | int)
                                                       and powers == 1.0)):
        raise ValueError("y gives the noise and the source powers of the stochastic bound: "
                         "pass neither powers= nor kind='deterministic' with it")
    known = (known,) if isinstance(known, str) else tuple(known)  # ("elevation": one name)
    if kind not in ("stochastic", "deterministic"):
        raise ValueError(f"kind must be 'stochastic' or 'deterministic', got {kind!r}")
    if kind == "stochastic" and symbols is not None:
        raise ValueError("symbols are read by the deterministic bound only: pass "
                         "kind='deterministic' (the stochastic bound takes powers=)")
    system = as_system(system)
    H, codes = as_tensor("H", H), as_tensor("codes", codes)
    if not torch.is_complex(H):
        raise TypeError(f"H must be complex (the channel's amplitude and phase), got "
                         f"{H.dtype}")
    shapes = {"H": tuple(H.shape), "codes": tuple(codes.shape)}
    if H.ndim == 2 and codes.ndim == 2:  # one scene
        H, codes = H.unsqueeze(0), codes.unsqueeze(0)
    H, codes = H.to(torch.complex128), codes.to(torch.complex128)
    want = {"H": (H.shape[0], system.M, system.N), "codes": (H.shape[0], system.L, system.N)}
    if (tuple(H.shape), tuple(codes.shape)) != (want["H"], want["codes"]):
        raise ValueError(f"H and codes must be one scene's [M, N] and [L, N] or a batch's "
                         f"[B, M, N] and [B, L, N], of the system given (M={system.M}, "
                         f"L={system.L}, N={system.N}); got {shapes['H']} and "
                         f"{shapes['codes']}")
    if not bool(torch.isclose(codes.abs(), torch.ones((), dtype=torch.float64),
                              atol=1e-3).all()):
        raise ValueError("codes must lie on the unit circle (|c| = 1, phase-only RIS "
                         "elements; docs/conventions.md)")
    B = H.shape[0]
    pos = [_array(n, v, torch.float64) for n, v in (("azimuth_deg", azimuth_deg),
                                                    ("elevation_deg", elevation_deg),
                                                    ("range_m", range_m))]
    shared = all(p.ndim <= 1 for p in pos)  # the same sources in every scene: counted once
    pos = [p.reshape(1, -1).expand(B, -1) if p.ndim <= 1 else p for p in pos]  # shared [K]
    shapes = {tuple(p.shape) for p in pos}
    if len(shapes) > 1 or pos[0].ndim != 2 or pos[0].shape[0] != B:
        raise ValueError(f"azimuth_deg, elevation_deg and range_m must each be [K] or [B, K] "
                         f"with the B = {B} scenes of H; got shapes "
                         f"{[tuple(p.shape) for p in pos]}")
    for name, value in (("snr_db", snr_db), ("noise_var", noise_var)):
        given = None if value is None else _array(name, value, torch.float64)
        if given is not None and given.numel() not in (1, B):
            raise ValueError(f"{name} must be one number or one per scene ({B}), got shape "
                             f"{tuple(given.shape)}")
    if pos[0].shape[1] == 0 or B == 0:  # no source in any scene, or no scene: no bound
        empty = torch.empty(B, pos[0].shape[1], dtype=torch.float64)
        return {"azimuth_deg": empty, "elevation_deg": empty.clone(), "range_m": empty.clone()}
    az, el, r = torch.deg2rad(pos[0]), torch.deg2rad(pos[1]), pos[2]
    finite = torch.stack([torch.isfinite(t) for t in (az, el, r)])
    mask = finite.all(0)  # a padded slot is NaN in all three coordinates
    partial = finite.any(0) & ~mask
    if partial.any():
        b, k = torch.nonzero(partial)[0].tolist()
        raise ValueError(f"scene {b}, source {k}: azimuth, elevation and range are NaN only "
                         "in part; a source needs all three finite (a padded slot: all NaN)")
    beyond = mask & ((pos[1].abs() > ELEVATION_LIMIT_DEG) | (r <= 0))
    if beyond.any():
        b, k = torch.nonzero(beyond)[0].tolist()
        raise ValueError(f"scene {b}, source {k}: elevation {float(pos[1][b, k]):g} deg, range "
                         f"{float(r[b, k]):g} m; an elevation lies within +-90 deg and a range "
                         "is > 0 (docs/conventions.md: not a zenith angle, degrees not radians)")
    _warn_radians(*((pos[0][:1], pos[1][:1], mask[:1]) if shared else (pos[0], pos[1], mask)))
    p = _array("powers", powers, torch.float64)
    try:
        p = p.expand_as(az)
    except RuntimeError:
        raise ValueError(f"powers must be one number, [K] or [B, K] for the {tuple(az.shape)} "
                         f"sources, got shape {tuple(p.shape)}") from None
    if not bool((torch.isfinite(p) & (p > 0))[mask].all()):
        raise ValueError("powers must be finite and positive for every source")
    sym = None if kind == "stochastic" or symbols is None else _symbols(symbols)
    if sym is not None and (sym.ndim != 3 or sym.shape != (B, system.L, az.shape[1])):
        raise ValueError(f"symbols must be [L={system.L}, K={az.shape[1]}] (one scene) or "
                         f"[B={B}, L, K], got {tuple(sym.shape)}")
    if y is not None:
        y = as_tensor("y", y)
        if not torch.is_complex(y):  # (a real y, one I/Q part, read as the whole signal)
            raise TypeError(f"y must be complex (the measurements' amplitude and phase), "
                            f"got {y.dtype}")
        y = y.to(torch.complex128)
        y = y.unsqueeze(0) if y.ndim == 2 else y
        if tuple(y.shape) != (B, system.L, system.M):
            raise ValueError(f"y must be [L={system.L}, M={system.M}] (one scene) or [B={B}, "
                             f"L, M], got {tuple(y.shape)}")
        if not bool(torch.isfinite(torch.view_as_real(y)).all()):
            raise ValueError("y must be finite")
        if bool((y == 0).all((1, 2)).any()):  # (its noise would read 0: no bound)
            raise ValueError("y is all zero in scenes "
                             f"{_scenes_text(_bad_scenes((y == 0).all((1, 2))))}: "
                             "no measurements to take the noise and powers from")
        peak = H.abs().amax((1, 2), keepdim=True)  # the bound is independent of both scales
        rms = y.abs().square().mean((1, 2), keepdim=True).sqrt()
        H, y = H / torch.where(peak > 0, peak, 1.0), y / torch.where(rms > 0, rms, 1.0)
        sigma2, p = noise_and_powers_at(az, el, r, y, H, codes, system, mask)
    elif noise_var is None:
        snr = _array("snr_db", snr_db, torch.float64).reshape(-1)
        if not bool(torch.isfinite(snr).all()):
            raise ValueError("snr_db must be finite: the bound needs the noise level (a NaN "
                             "SNR is 'unknown'; give it, or noise_var)")
        # given the SNR, the bound does not depend on the units of H: scaled to a peak of 1,
        # H of any scale (1e-170 .. 1e170 in complex128) gives no over- or underflow
        peak = H.abs().amax((1, 2), keepdim=True)
        H = H / torch.where(peak > 0, peak, 1.0)
        sigma2 = noise_var_for_snr(az, el, r, H, codes, snr, system, mask, p, sym)
    else:
        sigma2 = _array("noise_var", noise_var, torch.float64).reshape(-1).expand(B)
    if kind == "deterministic" and symbols is None:
        raise ValueError("the deterministic bound needs the symbols: pass symbols= [L, K] "
                         "or [B, L, K] (the sources' transmitted symbols, a simulated "
                         "SceneBatch's .symbols), or use kind='stochastic' (the default)")
    parts, failed = [], []  # in chunks: memory flat in B (a map's 2,500 points held 4.2 GB)
    for lo in range(0, B, CHUNK):
        c = torch.arange(lo, min(lo + CHUNK, B))
        while len(c):  # a chunk's scenes that pass one check may fail a later one: retried
            try:  # without the refused ones until none is left, to name every failing scene
                if kind == "stochastic":
                    part = crb_stochastic(az[c], el[c], r[c], p[c], H[c], codes[c],
                                          sigma2[c], system, mask[c], known=known)
                else:
                    part = crb_deterministic(az[c], el[c], r[c], sym[c], H[c], codes[c],
                                             sigma2[c], system, mask[c], known=known)
            except SingularFIMError as err:  # the scenes of the whole batch, not the chunk's
                if not err.scenes:  # (none named: nothing to leave out and retry without)
                    raise
                failed.append(SingularFIMError(err.what, c[err.scenes].tolist(), err.why,
                                               err.how))
                c = c[~torch.isin(c, c[err.scenes])]
            else:
                if not failed:
                    parts.append(part)
                break
    if failed:  # each kind once, with its scenes of every pass (not once per pass of 64)
        kinds: dict[tuple[str, str, str], list[int]] = {}
        for e in failed:
            kinds.setdefault((e.what, e.why, e.how), []).extend(e.scenes)
        scenes = sorted(i for e in failed for i in e.scenes)
        if len(kinds) == 1:
            ((what, why, how), _), = kinds.items()
            raise SingularFIMError(what, scenes, why, how)
        raise SingularFIMError("the bound", scenes, "; ".join(  # each kind with its own scenes
            f"{w} is singular{h} in scenes {_scenes_text(sorted(s))}: {y}"
            for (w, y, h), s in kinds.items()))
    res = _concat(parts)
    return {"azimuth_deg": torch.rad2deg(res.azimuth),
            "elevation_deg": torch.rad2deg(res.elevation), "range_m": res.range_m}
