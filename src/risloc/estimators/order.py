"""Model-order selection: how many sources a scene holds.

Two families:

* Eigenvalue criteria (Wax & Kailath 1985, IEEE Trans. ASSP 33(2)) on a covariance
  estimate with eigenvalues l_1 >= ... >= l_p from n snapshots:

      MDL(k) = -n (p-k) log(g_k / a_k) + 1/2 k (2p - k) log n
      AIC(k) = -2 n (p-k) log(g_k / a_k) + 2 k (2p - k)

  g_k, a_k: geometric / arithmetic mean of the p-k smallest eigenvalues. On this system
  the only covariance an estimator may use is the back-projected R_samp (rank <= L, its
  signal not confined to a K-dimensional subspace): the criteria fail there (measured in
  benchmarks/bench_classical.py). They are kept as reference baselines.

* The measurement-domain residual test (used by the classical localizer). With C_k the
  concentrated ML residual of the best k-source fit (nested, C_0 = sum_l ||y_l||^2), the
  complex-Gaussian log-likelihood at the ML amplitudes is -C_k / sigma^2 + const, so

      K = argmin_{1 <= k <= K_max}  C_k / sigma^2 + k * penalty

  is a penalised likelihood with penalty in nats per source. A spurious source, picked
  as the best of the ~G' effectively independent grid cells, removes the largest of G'
  Gamma(L, 1) energies (~25-32 sigma^2 here, measured; it shrinks with the residual
  dimension M - k); the default penalty L + 6 sqrt(L) = 40 sits above that with margin
  (:func:`default_penalty`). AIC would use 2L + 3 = 35 and MDL (2L + 3) / 2 log(2 L M)
  = 109 nats.

  sigma^2 comes from the SNR when it is known (:func:`noise_var_from_snr`), otherwise
  from the residuals: each candidate K' gives a level C_K' / (L (M - K') - 3 K' / 2)
  (unbiased when K' is right) and the answer is the smallest K' that the rule, run at
  its own level, reproduces. A too large K' deflates the level (its spurious sources
  absorbed noise) and reproduces itself, so the smallest self-consistent K' is taken;
  a too small K' inflates the level with the energy of the missed sources, which then
  still clear the penalty when they are strong, so it does not reproduce itself.

  Measured K accuracy (K in {1..5}, 200 scenes per SNR, -5/0/5/10/20 dB):
  sigma^2 estimated 0.24/0.37/0.69/0.94/1.00; sigma^2 from the SNR
  0.25/0.45/0.76/0.97/1.00 (weak sources at low SNR are below the spurious level:
  the misses are of the data, not of the rule; with K known the localizer's fit then
  has a lower cost than the truth).
"""

from __future__ import annotations

import math

import torch


def _eigenvalues(R: torch.Tensor, n_snapshots: int) -> torch.Tensor:
    """Descending eigenvalues [..., p] of Hermitian R [..., N, N]; p = min(N, n_snapshots)
    (a sample covariance of n snapshots has at most n non-zero eigenvalues)."""
    if R.ndim < 2 or R.shape[-1] != R.shape[-2]:
        raise ValueError(f"R must be [..., N, N], got {tuple(R.shape)}")
    if not bool(torch.isfinite(torch.view_as_real(R.to(torch.complex128))).all()):
        raise ValueError("R contains non-finite values")
    lam = torch.linalg.eigvalsh(0.5 * (R + R.mH).to(torch.complex128)).flip(-1)
    p = min(R.shape[-1], n_snapshots)
    lam = lam[..., :p]
    return lam.clamp_min(1e-12 * lam[..., :1].clamp_min(1e-300))


def _log_ratio(lam: torch.Tensor, K_max: int) -> torch.Tensor:
    """(p-k) log(g_k / a_k) for k = 0..K_max: [..., K_max+1] (<= 0)."""
    p = lam.shape[-1]
    if not 0 < K_max < p:
        raise ValueError(f"K_max={K_max} must lie in 1..p-1 = {p - 1}")
    out = []
    for k in range(K_max + 1):
        tail = lam[..., k:]
        out.append((p - k) * (tail.log().mean(-1) - tail.mean(-1).log()))
    return torch.stack(out, -1)


def mdl_order(R: torch.Tensor, n_snapshots: int, K_max: int) -> torch.Tensor:
    """Wax-Kailath MDL order estimate (module docstring).

    R : [B, N, N] complex Hermitian; n_snapshots : int; K_max : int
    Returns K : [B] int64 in 0..K_max.
    """
    lam = _eigenvalues(R, n_snapshots)
    p = lam.shape[-1]
    k = torch.arange(K_max + 1, dtype=lam.dtype, device=lam.device)
    crit = -n_snapshots * _log_ratio(lam, K_max) + 0.5 * k * (2 * p - k) * math.log(n_snapshots)
    return crit.argmin(-1)


def aic_order(R: torch.Tensor, n_snapshots: int, K_max: int) -> torch.Tensor:
    """Wax-Kailath AIC order estimate; shapes as :func:`mdl_order`."""
    lam = _eigenvalues(R, n_snapshots)
    p = lam.shape[-1]
    k = torch.arange(K_max + 1, dtype=lam.dtype, device=lam.device)
    crit = -2 * n_snapshots * _log_ratio(lam, K_max) + 2 * k * (2 * p - k)
    return crit.argmin(-1)


def noise_var_from_snr(y: torch.Tensor, snr_db: float | torch.Tensor) -> torch.Tensor:
    """sigma^2 = mean |y|^2 / (1 + SNR): E|y|^2 = P_signal + sigma^2 per antenna and snapshot.

    y : [B, L, M] complex;  snr_db : float or [B] — per-antenna SNR [dB] (NaN = unknown)
    Returns sigma^2 : [B] float64 (NaN where the SNR is unknown).
    """
    snr = torch.as_tensor(snr_db, dtype=torch.float64, device=y.device)
    if snr.ndim > 1 or (snr.ndim == 1 and snr.shape[0] != y.shape[0]):
        raise ValueError(f"snr_db must be a float or [B={y.shape[0]}], got {tuple(snr.shape)}")
    if bool(torch.isinf(snr).any()):
        raise ValueError("snr_db must be finite (NaN: unknown)")
    p_y = y.abs().square().to(torch.float64).mean((-1, -2))
    return p_y / (1.0 + 10.0 ** (snr / 10.0))


NOISE_FLOOR_DB = 40.0
"""The K decisions read a noise level more than this many dB below the received power per
antenna as this far below it (:func:`noise_floor`). On noise-free data the nested fits'
residual is their own float32 rounding, 60-70 dB below the received power, and one more
source always "explains" part of it: at 100-200 dB the learned localizer reported one source
too many in 8-14 of 40 scenes, the classical one in 0-3 (10-14 given the SNR); with the
floor in none (validation split, 40 scenes per SNR and power spread; docs/results.md,
"Reliability"). A realised SNR below 40 dB leaves a noise level above the floor, so
decisions there are unchanged by construction (but where a K_max-source fit over-fits the
noise by more than 10 dB); at 40-50 dB they were measured unchanged."""


def noise_floor(costs: torch.Tensor, n_snapshots: int, n_antennas: int) -> torch.Tensor:
    """[B] float64: C_0 / (L M) 10^(-NOISE_FLOOR_DB / 10), the lowest noise level a K
    decision reads, and above 0 (costs [B, K_max+1], C_0 = sum_l ||y_l||^2)."""
    return (costs[:, 0].to(torch.float64) / (n_snapshots * n_antennas)
            * 10 ** (-NOISE_FLOOR_DB / 10)).clamp_min(1e-300)


def _decide(costs: torch.Tensor, sigma2: torch.Tensor, penalty: float,
            floor: torch.Tensor) -> torch.Tensor:
    """argmin_{k>=1} C_k / sigma^2 + k penalty with sigma^2 >= floor [B]: [B] int64 in
    1..K_max."""
    sigma2 = torch.maximum(sigma2, floor)
    k = torch.arange(costs.shape[-1], dtype=costs.dtype, device=costs.device)
    crit = costs / sigma2.unsqueeze(-1) + penalty * k
    return crit[:, 1:].argmin(-1) + 1


def default_penalty(n_snapshots: int) -> float:
    """L + 6 sqrt(L) nats per source (40 for L = 16; module docstring).

    A spurious source removes the largest of ~10^3 effectively independent Gamma(L, 1)
    grid energies, about L + sqrt(2 ln 10^3) sqrt(L) ~ L + 3.7 sqrt(L); the margin to
    6 sqrt(L) puts a false alarm per step at a few percent (calibrated on 1000 scenes,
    K = 1..5, SNR -5..20 dB: 40 maximised the K accuracy among 25..60).
    """
    return n_snapshots + 6.0 * math.sqrt(n_snapshots)


def _estimate_and_decide(costs: torch.Tensor, L: int, M: int, penalty: float) -> torch.Tensor:
    """Unknown sigma^2: the smallest K' whose noise level C_K' / (L (M - K') - 1.5 K') makes
    the penalised rule choose K' itself; if none is self-consistent, the K_max level's K."""
    k_max, floor = costs.shape[-1] - 1, noise_floor(costs, L, M)
    decisions = []
    for kp in range(1, k_max + 1):
        sigma2 = residual_noise_level(costs[:, kp], kp, L, M)
        decisions.append(_decide(costs, sigma2, penalty, floor))
    dec = torch.stack(decisions, -1)  # (B, k_max): decision under the level of K' = 1..k_max
    consistent = dec == torch.arange(1, k_max + 1, device=costs.device)
    first = consistent.to(torch.int64).argmax(-1) + 1
    return torch.where(consistent.any(-1), first, dec[:, -1])


def residual_noise_level(cost: torch.Tensor, k: int, n_snapshots: int,
                         n_antennas: int) -> torch.Tensor:
    """The noise level a k-source fit leaves, C_k / (L (M - k) - 3 k / 2): its residual
    over the residual's degrees of freedom (each source takes L complex amplitudes and 3
    real positions; module docstring). cost : [B] C_k; returns [B] float64."""
    return cost.to(torch.float64) / residual_dof(k, n_snapshots, n_antennas)


def residual_dof(k: int, n_snapshots: int, n_antennas: int) -> float:
    """The degrees of freedom a k-source fit leaves: L (M - k) - 3 k / 2 (<= 0: none)."""
    return n_snapshots * (n_antennas - k) - 1.5 * k


def snr_disagreement(costs: torch.Tensor, n_snapshots: int, n_antennas: int,
                     noise_var: torch.Tensor, margin_db: float = 10.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes whose given noise level (from their SNR) is more than ``margin_db`` off the
    level their data leave after the K_max-source fit (:func:`residual_noise_level`), and
    the SNR that level implies [dB]. A right SNR lands within -0.9..+2.3 dB of it at -10..30
    dB (200 scenes each, powers spread over 0-25 dB) and within -1.9..+2.1 dB with K = 5 in
    seven corners of the scene space (dense, near, edge, Rician 0-0.5 and 10-100, DFT and
    1-bit codes; at -10..30 dB) but for the lowest LoS scene at 30 dB (-5.7 dB; its 5 % point
    -0.5 dB): none of 8,800 scenes beyond 10 dB (``benchmarks/bench_snr_check.py``). Where
    both levels lie below :func:`noise_floor` the scene is never off, and so is every scene
    where the K_max-source fit leaves no degrees of freedom (L (M - K_max) <= 3 K_max / 2,
    e.g. L = 2, M = 4, K_max = 3: no level to compare; implied SNR NaN).

    costs : [B, K_max+1] nested residuals; noise_var : [B] (NaN: no SNR given, never off)
    Returns (off [B] bool, implied_snr_db [B] float64).
    """
    costs = costs.to(torch.float64)
    k_max = costs.shape[-1] - 1
    level = residual_noise_level(costs[:, -1], k_max, n_snapshots, n_antennas)
    if residual_dof(k_max, n_snapshots, n_antennas) <= 0:  # a level < 0: none at all
        level = torch.full_like(level, float("nan"))
    p_y = costs[:, 0] / (n_snapshots * n_antennas)
    implied = 10 * torch.log10((p_y / level.clamp_min(1e-300) - 1).clamp_min(1e-30))
    offset = 10 * torch.log10(noise_var.to(costs) / level.clamp_min(1e-300))
    # both below the noise floor: the K decisions read them alike (noise-free data's float32
    # residual implies ~90 dB where 100 dB is given)
    unseen = torch.maximum(level, noise_var.to(costs)) <= noise_floor(costs, n_snapshots,
                                                                      n_antennas)
    return (offset.abs() > margin_db) & ~unseen, implied  # (NaN offset: False)


def residual_order(costs: torch.Tensor, n_snapshots: int, n_antennas: int,
                   noise_var: torch.Tensor | None = None,
                   penalty: float | None = None) -> torch.Tensor:
    """Measurement-domain order test on nested ML residuals (module docstring).

    costs : [B, K_max+1] float — C_k = residual of the best k-source fit, k = 0..K_max
    n_snapshots, n_antennas : L, M
    noise_var : [B] float or None — sigma^2 (None, or NaN in a scene: estimated from the
        residuals)
    penalty : nats per source (None: :func:`default_penalty`)
    Returns K : [B] int64 in 1..K_max.
    """
    if costs.ndim != 2 or costs.shape[-1] < 2:
        raise ValueError(f"costs must be [B, K_max+1] with K_max >= 1, got {tuple(costs.shape)}")
    if not bool(torch.isfinite(costs).all()) or bool((costs < 0).any()):
        raise ValueError("costs must be finite and non-negative")
    if costs.shape[-1] - 1 >= n_antennas:
        raise ValueError(f"K_max={costs.shape[-1] - 1} must be smaller than M={n_antennas}")
    costs = costs.to(torch.float64)
    penalty = default_penalty(n_snapshots) if penalty is None else float(penalty)
    if noise_var is None:
        return _estimate_and_decide(costs, n_snapshots, n_antennas, penalty)
    sigma2 = torch.as_tensor(noise_var, dtype=torch.float64, device=costs.device)
    sigma2 = sigma2.expand(costs.shape[0])
    known = ~torch.isnan(sigma2)
    if not bool(torch.isfinite(sigma2[known]).all()) or bool((sigma2[known] <= 0).any()):
        raise ValueError("noise_var must be finite and positive (NaN: unknown)")
    decided = _decide(costs, torch.where(known, sigma2, 1.0), penalty,
                      noise_floor(costs, n_snapshots, n_antennas))
    if bool(known.all()):
        return decided
    return torch.where(known, decided, _estimate_and_decide(costs, n_snapshots, n_antennas,
                                                            penalty))
