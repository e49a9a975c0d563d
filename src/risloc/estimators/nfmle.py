"""Near-field deterministic maximum likelihood in the measurement domain (NF-MLE).

Model (docs/conventions.md): y_l = B_l(theta) s_l + n_l with B_l = H diag(c_l) A(theta) [M x K].
With the symbols s_l as free nuisance parameters the log-likelihood concentrates to the
variable-projection cost (Golub & Pereyra 1973; Stoica & Nehorai 1990, "deterministic ML")

    C(theta) = sum_l || y_l - B_l s_l ||^2,   s_l = (B_l^H B_l + lam_l I)^-1 B_l^H y_l,
    lam_l = tikhonov * tr(B_l^H B_l) / K,

which for tikhonov -> 0 is sum_l ||P_perp(B_l) y_l||^2. It is minimised jointly over all K
sources by Levenberg-Marquardt (Marquardt 1963) on theta = (azimuth, elevation, 1/range),
with the exact variable-projection Jacobian (lam_l held fixed):

    dr_l = -(I - B_l G_l^-1 B_l^H) dB_l s_l - B_l G_l^-1 dB_l^H r_l,   G_l = B_l^H B_l + lam_l I,

built from the analytic steering derivatives of :func:`risloc.physics.steering_derivatives`.
Analytic rather than autograd: one batched pass gives all 3K columns; forward-mode
autograd (torch.func.jvp over the 3K directions) gives the same matrix (to ~1e-14 at
tikhonov = 0, checked in the tests) about 10x slower (64 scenes, K = 5, one thread:
0.03-0.05 s against 0.43 s). Steps are projected onto the
field-of-view box (parameters held by an active bound are frozen for the step, projected
Newton) and accepted only if the cost falls (else the damping grows); an accepted step is
doubled while the cost keeps falling, which shortens the linear crawl of Gauss-Newton in
large-residual (low-SNR) valleys. Run to convergence, converged scenes drop out of the
batch.

Padded source slots get zero columns in B_l and an identity block in G_l and in the
normal equations, so they have no influence on the cost or the steps of real slots.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch

from risloc.config import FieldOfView, SystemConfig
from risloc.core.checks import check_measurements, check_positions
from risloc.core.operator import apply_operator
from risloc.core.params import Estimates, pack, steering_at
from risloc.covariance.tools import solve_loaded
from risloc.physics import steering_derivatives

log = logging.getLogger(__name__)

_DAMP_UP, _DAMP_DOWN, _DAMP_MAX = 10.0, 0.25, 1e8


@dataclass(frozen=True)
class NFMLEConfig:
    """Settings of :func:`nfmle_refine`.

    iterations : Gauss-Newton/LM iterations (0 returns the start); None runs to convergence
        (relative cost decrease below ``tolerance``, at most ``max_iterations``).
    tikhonov : relative Tikhonov weight of the amplitude solve (lam = tikhonov tr(B^H B)/K).
        The seeds used 1e-3, which biases noiseless estimates by up to 3e-3 deg (measured,
        K = 3); the default 1e-7 only guards against coinciding sources.
    damping : initial Marquardt damping mu in (J^T J + mu diag(J^T J)) delta = -J^T r.
    retries : damping increases tried within one iteration when a step does not lower the cost.
    fov : the field-of-view box the estimates are projected onto.
    double : work in float64/complex128. float32 is ~1.7x faster and reaches 1.4e-5 deg
        on exact data (float64: exact to the float32 output), ample for noisy data.
    chunk : scenes per batched pass on the CPU (bounds memory, ~1 MB per scene).
    device_chunk : scenes per pass on other devices: a GPU's time goes to launching the
        loop's small operations, whatever the batch (on an H200, 8192 scenes in passes of
        256 spent 1.23 s in the polish, 64 % of the pipeline).
    masked : evaluate all of an LM iteration's retries, then all its step doublings, at
        once for every scene (:func:`_masked_tries`) instead of one after another on the
        shrinking set of pending scenes (the same estimates: tested). Nothing waits for the
        device then (the shrinking sets' sizes are read by the host: 118 times per learned
        call of 256 scenes), and two amplitude fits run per iteration instead of up to
        seven, each on several times the batch. None = masked off the CPU (where the time
        goes to launching operations, not to their size), not on it (where it goes to
        arithmetic).
    """

    iterations: int | None = 10
    tikhonov: float = 1e-7
    damping: float = 1e-3
    retries: int = 4
    max_iterations: int = 100
    tolerance: float = 1e-8
    fov: FieldOfView = FieldOfView()
    double: bool = True
    chunk: int = 256
    device_chunk: int = 8192
    masked: bool | None = None

    def __post_init__(self) -> None:
        if self.iterations is not None and self.iterations < 0:
            raise ValueError(f"iterations must be >= 0 or None, got {self.iterations}")
        if self.tikhonov < 0 or self.damping <= 0 or self.retries < 1 or min(
                self.chunk, self.device_chunk) < 1:
            raise ValueError("tikhonov must be >= 0, damping > 0, retries >= 1, chunk >= 1, "
                             "device_chunk >= 1")
        if not self.tolerance >= 0 or self.max_iterations < 1:  # (NaN: never converged)
            raise ValueError(f"tolerance must be >= 0 and max_iterations >= 1, got "
                             f"{self.tolerance} and {self.max_iterations}")


class Fit(NamedTuple):
    """Amplitude fit at one parameter point.

    cost : [B] real — sum_l ||r_l||^2
    r : [B, L, M] complex — residuals y_l - B_l s_l
    s : [B, L, K] complex — amplitudes (0 in padded slots)
    Bm : [B, L, M, K] complex — B_l (zero columns in padded slots)
    G : [B, L, K, K] complex — B_l^H B_l + lam_l I (+ I on padded slots)
    """

    cost: torch.Tensor
    r: torch.Tensor
    s: torch.Tensor
    Bm: torch.Tensor
    G: torch.Tensor


def amplitude_fit(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, A: torch.Tensor,
                  mask: torch.Tensor, tikhonov: float) -> Fit:
    """Tikhonov amplitude solve and residual.

    y : [B, L, M] complex;  H : [B, M, N] complex;  codes : [B, L, N] complex
    A : [B, K, N] complex — steering rows;  mask : [B, K] bool
    """
    A = torch.where(mask.unsqueeze(-1), A, A.new_zeros(()))
    return _fit_operator(y, apply_operator(H, codes, A), mask, tikhonov)


def _fit_operator(y: torch.Tensor, Bm: torch.Tensor, mask: torch.Tensor,
                  tikhonov: float) -> Fit:
    """:func:`amplitude_fit` given the operator columns Bm [..., B, L, M, K] (zero columns
    in padded slots); y [B, L, M] and mask [B, K] broadcast over Bm's leading dims."""
    G = Bm.mH @ Bm  # (..., B, L, K, K)
    nk = mask.sum(-1).clamp_min(1).to(G.real.dtype)  # (B,)
    tr = torch.diagonal(G, dim1=-2, dim2=-1).real.sum(-1)  # (..., B, L)
    lam = tikhonov * tr / nk.unsqueeze(-1)
    pad = (~mask).to(G.real.dtype).unsqueeze(-2)  # (B, 1, K): identity on padded slots
    diag = lam.unsqueeze(-1) + pad * tr.mean(-1, keepdim=True).clamp_min(1e-30).unsqueeze(-1)
    G.diagonal(dim1=-2, dim2=-1).add_(diag)  # G is this call's own: one op, not three
    s = solve_loaded(G, Bm.mH @ y.unsqueeze(-1)).squeeze(-1)  # (B, L, K)
    r = y - (Bm @ s.unsqueeze(-1)).squeeze(-1)  # (B, L, M)
    cost = torch.view_as_real(r).square().sum(-1).sum((-1, -2))  # (B,): |r|^2 as re^2 + im^2
    return Fit(cost, r, s, Bm, G)


def _jacobian(fit: Fit, H, codes, theta, mask, system) -> torch.Tensor:
    """Exact variable-projection Jacobian dr/dtheta: [B, L, M, 3K] complex (see module doc),
    columns in theta's flattened (source, parameter) order."""
    B_, K, _ = theta.shape
    _, dA = steering_derivatives(theta[..., 0], theta[..., 1], 1.0 / theta[..., 2], system,
                                 fit.r.dtype, inverse_range=True)  # (B, K, 3, N)
    dA = torch.where(mask[..., None, None], dA, dA.new_zeros(())).view(B_, 3 * K, -1)
    D = apply_operator(H, codes, dA)  # (B, L, M, 3K)   H diag(c_l) da_j, source-major
    L, M = D.shape[1:3]
    E = (D.view(B_, L, M, K, 3) * fit.s[:, :, None, :, None]).view(D.shape)  # dB_j s
    w = (D.conj() * fit.r.unsqueeze(-1)).sum(-2)  # (B, L, 3K)   (dB_j)^H r as a scalar
    rhs = fit.Bm.mH @ E  # (B, L, K, 3K); minus w_j in source j's row: its (k, k) blocks
    rhs.view(B_, L, K, K, 3).diagonal(dim1=2, dim2=3).sub_(w.view(B_, L, K, 3).mT)
    return -E + fit.Bm @ solve_loaded(fit.G, rhs)


def _normal_equations(J: torch.Tensor, r: torch.Tensor, theta, mask, lo, hi):
    """J^T J [B, P, P] and J^T r [B, P] of the real-stacked system, restricted to the free
    parameters (:func:`_free_parameters`; the others get an identity row and a zero
    gradient: no step).

    Real stacking (Re, Im as rows) because a complex GEMM with a tiny output is slow here.
    """
    Jr = torch.view_as_real(J).transpose(-1, -2).flatten(1, -2)  # (B, 2LM, P)
    rr = torch.view_as_real(r).flatten(1)  # (B, 2LM)
    g = (Jr.mT @ rr.unsqueeze(-1)).squeeze(-1)  # with every real parameter free
    free = _free_parameters(theta, g, mask, lo, hi)
    Jr = Jr * free.unsqueeze(1)
    return Jr.mT @ Jr + torch.diag_embed((~free).to(Jr.dtype)), g * free


def _free_parameters(theta, g, mask, lo, hi) -> torch.Tensor:
    """[B, 3K] bool: real-slot parameters not held by an active bound (projected Newton,
    Bertsekas 1982): a parameter on its bound whose descent direction -g points outward
    stays fixed, so the step of the others is not computed for a move that cannot happen.
    The gradient g [B, 3K] is evaluated with every real parameter free."""
    tol = 1e-12 * (hi - lo)  # (3,), against theta [B, K, 3]; g in its (source, parameter) order
    g = g.view(theta.shape)
    active = ((theta <= lo + tol) & (g > 0)) | ((theta >= hi - tol) & (g < 0))
    return (mask.unsqueeze(-1) & ~active).flatten(1)


def _rows(t: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """t[idx] (all rows when idx is None, without a copy)."""
    return t if idx is None else t[idx]


def _try(idx, cand, state, y, H, codes, mask, system, cfg, B_):
    """Evaluate candidates cand [b, K, 3] for the scenes idx [b] (all when b = B); accept
    where the cost falls (in place). Returns the accepted mask [b]."""
    theta, fit = state
    sub = functools.partial(_rows, idx=None if idx.numel() == B_ else idx)
    cfit = amplitude_fit(sub(y), sub(H), sub(codes), steering_at(cand, system, y.dtype),
                         sub(mask), cfg.tikhonov)
    ok = cfit.cost < fit.cost[idx]  # monotone acceptance
    # rows idx take the candidate where accepted: selections, not boolean indexing (which
    # waits for the device on a GPU: 679 host synchronisations per call of 256 scenes)
    theta[idx] = torch.where(ok.view(-1, 1, 1), cand, theta[idx])
    for old, new in zip(fit, cfit, strict=True):
        old[idx] = torch.where(ok.view(-1, *(1,) * (new.dim() - 1)), new, old[idx])
    return ok


def _stacked_fits(cands, y, H, codes, mask, system, cfg) -> Fit:
    """Amplitude fits of T candidate sets per scene, cands [T, B, K, 3]: a Fit whose
    fields have the leading dims [T, B]. The T K candidate sources of a scene go through
    its operator as the rows of one product (H and the codes are read once, not copied T
    times; at T K > M the operators' product, the cheaper way there:
    :func:`risloc.core.operator.apply_operator`)."""
    T, B, K, _ = cands.shape
    # the small candidates laid out scene-major, so the steering rows are (B, T K, N) as made
    A = steering_at(cands.transpose(0, 1).contiguous(), system, y.dtype)  # (B, T, K, N)
    A = torch.where(mask.unsqueeze(1).unsqueeze(-1), A, A.new_zeros(()))
    Bm = apply_operator(H, codes, A.view(B, T * K, -1))  # (B, L, M, T K)
    Bm = Bm.unflatten(-1, (T, K)).permute(3, 0, 1, 2, 4).contiguous()  # (T, B, L, M, K)
    return _fit_operator(y, Bm, mask, cfg.tikhonov)


def _take_fit(fits: Fit, idx: torch.Tensor, old: Fit, where: torch.Tensor) -> Fit:
    """Per scene b the fit fits[idx[b], b] where ``where`` [B], else old's."""
    rows = torch.arange(idx.shape[0], device=idx.device)
    return Fit(*(torch.where(where.view(-1, *(1,) * (o.dim() - 1)), f[idx, rows], o)
                 for f, o in zip(fits, old, strict=True)))


def _masked_tries(start, fit, mu, JtJ, dJ, g, y, H, codes, mask, system, cfg, clamp):
    """The retries and step doublings of :func:`_lm_iteration` for all scenes at once:
    the candidates of the cfg.retries dampings (mu, 10 mu, ...) in one batch, the first
    that lowers the cost accepted (what the retries one after another accept: a pending
    scene's cost does not change between them); then the doublings 2x, 4x, 8x of the
    accepted step in one batch, accepted in a chain while each lowers the cost of the one
    before. Two amplitude fits of several times the batch instead of up to seven, and no
    set that shrinks, so nothing waits for the device. Returns (theta, fit, mu)."""
    B, K, _ = start.shape
    R = cfg.retries
    mus = [mu]
    for _ in range(R - 1):  # the damping of retry r, multiplied up as the retries do
        mus.append(mus[-1] * _DAMP_UP)
    damp = torch.stack(mus)  # (R, B)
    lhs = JtJ + torch.diag_embed(damp.unsqueeze(-1) * dJ)  # (R, B, P, P)
    step = -solve_loaded(lhs, g.unsqueeze(-1).expand(R, *g.shape, 1)).squeeze(-1)
    step = step.view(R, B, K, 3)
    fits = _stacked_fits(clamp(start + step), y, H, codes, mask, system, cfg)
    lower = fits.cost < fit.cost  # (R, B)
    first = lower.to(torch.uint8).argmax(0)  # the first retry that lowers the cost
    ok = lower.any(0)
    rows = torch.arange(B, device=start.device)
    steps = torch.where(ok.view(-1, 1, 1), step[first, rows], 0.0)
    fit = _take_fit(fits, first, fit, ok)
    mu = torch.where(ok, damp[first, rows] * _DAMP_DOWN, damp[-1] * _DAMP_UP)
    scales = start.new_full((3,), 2.0).cumprod(0)  # 2, 4, 8 (not from host data)
    grown = _stacked_fits(clamp(start + scales.view(-1, 1, 1, 1) * steps), y, H, codes, mask,
                          system, cfg)
    chain = ok & (steps != 0).flatten(1).any(-1)
    prev, n = fit.cost, torch.zeros(B, dtype=torch.int64, device=start.device)
    for c in grown.cost:  # accepted while each doubling lowers the cost of the one before
        chain = chain & (c < prev)
        n, prev = n + chain, c
    fit = _take_fit(grown, (n - 1).clamp_min(0), fit, n > 0)
    theta = torch.where(ok.view(-1, 1, 1), clamp(start + steps), start)
    doubled = clamp(start + scales[(n - 1).clamp_min(0)].view(-1, 1, 1) * steps)
    theta = torch.where((n > 0).view(-1, 1, 1), doubled, theta)
    return theta, fit, mu.clamp(1e-12, _DAMP_MAX)


def masked_route(cfg: NFMLEConfig, device: torch.device) -> bool:
    """Whether the LM iterations of ``cfg`` run masked on ``device``
    (:attr:`NFMLEConfig.masked`)."""
    return device.type != "cpu" if cfg.masked is None else cfg.masked


def _lm_iteration(state, y, H, codes, mask, system, cfg, lo, hi):
    """One LM iteration; returns the new (theta, fit, mu).

    A rejected step is retried with 10x the damping (up to cfg.retries times), evaluating
    only the scenes still without an accepted step. An accepted step is then doubled while
    that keeps lowering the cost (up to 8x): Gauss-Newton converges only linearly where
    the residual is large (low SNR, weakly identified ranges) and takes many short steps
    along the same valley; the doubling shortens that crawl to a few iterations. On the
    masked route (:func:`masked_route`) all retries, then all doublings, are evaluated at
    once for every scene (:func:`_masked_tries`): the same results, no shrinking sets.
    """
    theta, fit, mu = state
    B_, K, _ = theta.shape
    J = _jacobian(fit, H, codes, theta, mask, system)
    JtJ, g = _normal_equations(J, fit.r, theta, mask, lo, hi)
    dJ = torch.diagonal(JtJ, dim1=-2, dim2=-1).clamp_min(1e-30)
    clamp = lambda t: torch.clamp(t, lo, hi)  # noqa: E731
    if masked_route(cfg, theta.device):  # no set that shrinks: nothing waits for the device
        return _masked_tries(theta, fit, mu, JtJ, dJ, g, y, H, codes, mask, system, cfg,
                             clamp)
    start, mu = theta, mu.clone()  # the shrinking sets update copies in place
    state = (theta.clone(), Fit(*(t.clone() for t in fit)))
    steps = torch.zeros_like(theta)
    todo = torch.arange(B_, device=theta.device)  # scenes without an accepted step yet
    for _ in range(cfg.retries):
        sub = functools.partial(_rows, idx=None if todo.numel() == B_ else todo)
        lhs = sub(JtJ) + torch.diag_embed(sub(mu).unsqueeze(-1) * sub(dJ))
        step = -solve_loaded(lhs, sub(g).unsqueeze(-1)).squeeze(-1).view(-1, K, 3)
        ok = _try(todo, clamp(sub(start) + step), state, y, H, codes, mask, system, cfg, B_)
        steps[todo] = torch.where(ok.view(-1, 1, 1), step, steps[todo])  # no mask indexing
        mu[todo] = torch.where(ok, mu[todo] * _DAMP_DOWN, mu[todo])
        todo = todo[~ok]
        mu[todo] = mu[todo] * _DAMP_UP
        if todo.numel() == 0:
            break
    grow = (steps != 0).flatten(1).any(-1).nonzero().flatten()
    for scale in (2.0, 4.0, 8.0):
        if grow.numel() == 0:
            break
        ok = _try(grow, clamp(start[grow] + scale * steps[grow]), state, y, H, codes, mask,
                  system, cfg, B_)
        grow = grow[ok]
    return state[0], state[1], mu.clamp(1e-12, _DAMP_MAX)


def _start(az, el, r, mask, cfg: NFMLEConfig, real: torch.dtype) -> torch.Tensor:
    """theta [B, K, 3] = (az, el, 1/r); padded slots at the box centre."""
    lo, hi = cfg.fov.bounds(real, az.device)
    theta = pack(az.to(real), el.to(real), r.to(real))
    return torch.where(mask.unsqueeze(-1), theta, 0.5 * (lo + hi))


def ml_residual(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, az: torch.Tensor,
                el: torch.Tensor, r: torch.Tensor, mask: torch.Tensor, system: SystemConfig,
                tikhonov: float = NFMLEConfig.tikhonov) -> torch.Tensor:
    """Concentrated ML residual cost C = sum_l ||y_l - B_l s_l||^2 at given positions.

    y : [B, L, M] complex, H : [B, M, N] complex, codes : [B, L, N] complex
    az, el : [B, K] real — [rad];  r : [B, K] real — [m];  mask : [B, K] bool (real slots)
    Returns cost : [B] float64 — same units as |y|^2. Evaluated in complex128.
    """
    check_measurements(y, H, codes, system)
    check_positions(az, el, r, mask, y.shape[-1])
    real, cplx = torch.float64, torch.complex128
    A = steering_at(pack(az.to(real), el.to(real), r.to(real)), system, cplx, mask)
    return amplitude_fit(y.to(cplx), H.to(cplx), codes.to(cplx), A, mask, tikhonov).cost


def working_dtypes(config: NFMLEConfig) -> tuple[torch.dtype, torch.dtype]:
    """(real, complex) dtypes NF-MLE computes in."""
    return ((torch.float64, torch.complex128) if config.double
            else (torch.float32, torch.complex64))


def lm_solve(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, theta: torch.Tensor,
             mask: torch.Tensor, system: SystemConfig, config: NFMLEConfig):
    """Low-level LM loop on prepared tensors (no input checks).

    y : [B, L, M], H : [B, M, N], codes : [B, L, N] — complex, all of the working dtype
    theta : [B, K, 3] real — (azimuth [rad], elevation [rad], 1/range [1/m]); mask : [B, K]
    Returns theta [B, K, 3] (projected on the box), the final :class:`Fit` and the cost
    history [T+1, B].
    """
    lo, hi = config.fov.bounds(theta.dtype, theta.device)
    theta = torch.clamp(theta, lo, hi)
    fit = amplitude_fit(y, H, codes, steering_at(theta, system, y.dtype), mask,
                        config.tikhonov)
    mu = torch.full_like(fit.cost, config.damping)
    history = [fit.cost.clone()]
    n_iter = config.max_iterations if config.iterations is None else config.iterations
    active = torch.arange(theta.shape[0], device=theta.device)  # scenes still iterating
    for _ in range(n_iter):
        whole = active.numel() == theta.shape[0]
        sub = functools.partial(_rows, idx=None if whole else active)
        prev = sub(fit.cost)
        th, ft, m = _lm_iteration((sub(theta), Fit(*map(sub, fit)), sub(mu)), sub(y), sub(H),
                                  sub(codes), sub(mask), system, config, lo, hi)
        if whole:  # the iteration's own tensors: no copy into the old ones
            theta, fit, mu = th, ft, m
        else:
            theta[active], mu[active] = th, m
            for old, new in zip(fit, ft, strict=True):
                old[active] = new
        history.append(fit.cost.clone())
        if config.iterations is None:  # converged scenes stop; the others go on
            done = (prev - ft.cost <= config.tolerance * prev.clamp_min(1e-300)) | (m >= _DAMP_MAX)
            active = active[~done]
            if active.numel() == 0:
                break
    if config.iterations is None and active.numel():
        log.debug("NF-MLE: %d of %d scenes not converged after %d iterations",
                  active.numel(), theta.shape[0], n_iter)
    return theta, fit, torch.stack(history)


def _refine_chunk(y, H, codes, az, el, r, mask, system, cfg: NFMLEConfig):
    """LM on one chunk of scenes; returns theta [B, K, 3], fit, cost history [T+1, B]."""
    real, cplx = working_dtypes(cfg)
    return lm_solve(y.to(cplx), H.to(cplx), codes.to(cplx), _start(az, el, r, mask, cfg, real),
                    mask, system, cfg)


class Refinement(NamedTuple):
    """Full result of :func:`nfmle_fit`.

    estimates : Estimates — refined positions, score = estimated source power mean_l |s_lk|^2
    cost : [B] float — final residual cost
    history : [T+1, B] float — cost before the first and after every iteration
    energy : [B, K_slots] float — each source's fitted energy (:func:`source_energy`; 0 in
        padded slots)
    """

    estimates: Estimates
    cost: torch.Tensor
    history: torch.Tensor
    energy: torch.Tensor


def source_energy(fit: Fit) -> torch.Tensor:
    """[B, K]: the energy sum_l |s_lk|^2 ||b_lk||^2 each source of ``fit`` explains alone
    (0 in padded slots, whose columns are zero)."""
    return (fit.s.abs().square() * fit.Bm.abs().square().sum(-2)).sum(1)


def nfmle_fit(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, init: Estimates,
              system: SystemConfig, config: NFMLEConfig = NFMLEConfig(),
              check: bool = True) -> Refinement:
    """NF-MLE refinement with diagnostics (cost and its history); see :func:`nfmle_refine`.
    check False skips the checks of the measurements and start positions (for callers
    that made them: they read the device, a GPU's host waits for them)."""
    if check:
        check_measurements(y, H, codes, system)
    if len(init) != y.shape[0]:
        raise ValueError(f"init holds {len(init)} scenes for {y.shape[0]} measurements")
    mask = init.mask
    if check:
        check_positions(init.azimuth, init.elevation, init.range_m, mask, y.shape[-1])
    n = config.chunk if y.device.type == "cpu" else config.device_chunk
    outs = [_refine_chunk(y[i:i + n], H[i:i + n], codes[i:i + n], init.azimuth[i:i + n],
                          init.elevation[i:i + n], init.range_m[i:i + n], mask[i:i + n],
                          system, config)
            for i in range(0, len(init), n)]
    theta = torch.cat([o[0] for o in outs])
    s = torch.cat([o[1].s for o in outs])
    cost = torch.cat([o[1].cost for o in outs])
    energy = torch.cat([source_energy(o[1]) for o in outs])
    steps = max(o[2].shape[0] for o in outs)  # chunks may converge after different counts
    history = torch.cat([torch.cat([o[2], o[2][-1:].expand(steps - o[2].shape[0], -1)])
                         for o in outs], dim=1)
    out_dtype = init.azimuth.dtype
    nan = float("nan")
    est = Estimates(
        K=init.K.clone(),
        azimuth=torch.where(mask, theta[..., 0].to(out_dtype), nan),
        elevation=torch.where(mask, theta[..., 1].to(out_dtype), nan),
        range_m=torch.where(mask, (1.0 / theta[..., 2]).to(out_dtype), nan),
        score=torch.where(mask, s.abs().square().mean(1).to(out_dtype), nan),
    )
    return Refinement(est, cost, history, energy)


def nfmle_refine(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, init: Estimates,
                 system: SystemConfig, config: NFMLEConfig = NFMLEConfig()) -> Estimates:
    """Jointly refine init's K sources per scene by NF-MLE (module docstring).

    y : [B, L, M] complex, H : [B, M, N] complex, codes : [B, L, N] complex
    init : Estimates with K [B] and positions [B, K_slots] (rad, rad, m)
    Returns Estimates (same K and slots): positions in the field-of-view box,
    score [B, K_slots] = estimated source power mean_l |s_lk|^2 (units of |s|^2).
    """
    return nfmle_fit(y, H, codes, init, system, config).estimates
