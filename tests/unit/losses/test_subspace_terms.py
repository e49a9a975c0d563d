"""Subspace / spectrum terms built from the true steering vectors."""

import math

import torch

from risloc.covariance import normalize_trace
from risloc.losses import subspace as sub
from risloc.losses.covariance import frob2, project


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
