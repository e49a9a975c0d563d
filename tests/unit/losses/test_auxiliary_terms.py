"""Slot matching and set losses; the candidate heatmap; the K cross-entropy."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from risloc.losses import auxiliary as aux
from risloc.model.network import ModelConfig, candidate_grid


def _truth(scenes):
    pts = torch.stack([scenes.azimuth, scenes.elevation, 1.0 / scenes.range_m], -1)
    return torch.nan_to_num(pts), scenes.mask


def test_match_slots_equals_scipy_hungarian():
    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(50, 5, 5, generator=gen)
    K = torch.randint(1, 6, (50,), generator=gen)
    valid = torch.arange(5) < K.unsqueeze(-1)
    m = aux.match_slots(cost, valid)
    for b in range(50):
        k = int(K[b])
        r, c = linear_sum_assignment(cost[b, :, :k].T.numpy())  # truths x slots
        best = cost[b, :, :k].T.numpy()[r, c].sum()
        mine = sum(float(cost[b, m.slot[b, t], t]) for t in range(k))
        assert np.isclose(mine, best, atol=1e-6)
        assert len(set(m.slot[b, :k].tolist())) == k
        assert int(m.matched[b].sum()) == k


def test_slot_regression_and_chamfer_zero_at_truth(scenes):
    pts, valid = _truth(scenes)
    perm = torch.tensor([3, 0, 4, 1, 2])
    pred = pts[:, perm]  # the same sources in another slot order
    m = aux.match_slots(aux.slot_cost(pred, pts), valid)
    assert aux.slot_regression(pred, pts, valid, m).abs().max() < 1e-10
    conf = valid[:, perm].float()  # confident only where a source is
    ch = aux.chamfer_angles(pred[..., 0], pred[..., 1], conf, pts[..., 0], pts[..., 1], valid)
    assert ch.max() < 1e-5
    shifted = pred + torch.tensor([math.radians(2.0), 0.0, 0.0])
    m2 = aux.match_slots(aux.slot_cost(shifted, pts), valid)
    # Huber (delta 1) of a 2-unit azimuth error, averaged over 3 coordinates: (2 - 0.5) / 3
    reg = aux.slot_regression(shifted, pts, valid, m2)
    assert torch.allclose(reg, torch.full_like(reg, 0.5), atol=1e-3)


def test_chord_has_finite_gradient_at_zero_distance():
    az = torch.tensor([0.3], requires_grad=True)
    d = aux.chord(az, torch.tensor([0.1]), torch.tensor([0.3]), torch.tensor([0.1]))
    (g,) = torch.autograd.grad(d.sum(), az)
    assert torch.isfinite(g).all() and d.item() < 1e-5


def test_heatmap_focal_prefers_peaks_at_truth_and_offsets_exact(scenes):
    grid = candidate_grid(ModelConfig())
    pts, valid = _truth(scenes)
    B, shape = len(scenes), (8, 16, 31)
    idx = aux.nearest_cells(grid, pts)
    good = torch.full((B, int(np.prod(shape))), -12.0)
    good.scatter_(1, idx, torch.where(valid, 12.0, -12.0))
    good = good.view(B, *shape)
    flat = torch.zeros(B, *shape)
    l_good = aux.heatmap_focal(good, grid, pts, valid)
    assert l_good.max() < 1e-3 and (aux.heatmap_focal(flat, grid, pts, valid) > 1.0).all()
    # exact sub-cell offsets at the true cells give zero offset loss
    cell = aux._cell_coordinates(grid, pts)
    target = (cell - cell.round().clamp_min(0))[..., [2, 1, 0]]  # (B, T, 3) az, el, 1/r
    off = torch.zeros(B, 3, int(np.prod(shape)))
    off.scatter_(2, idx.unsqueeze(1).expand(-1, 3, -1), target.mT)
    loss = aux.offset_at_truth(off.view(B, 3, *shape), grid, pts, valid)
    assert loss.max() < 1e-8


def test_k_cross_entropy():
    logits = torch.randn(4, 5)
    K = torch.tensor([1, 5, 3, 2])
    assert torch.allclose(aux.k_cross_entropy(logits, K),
                          F.cross_entropy(logits, K - 1, reduction="none"))


def test_slot_regression_is_the_huber_loss_of_each_coordinate_in_its_units():
    """One slot off by 0.5 deg in elevation alone: Huber(0.5 / angle_scale) over the 3
    coordinates; 0.02 1/m off in 1/range: Huber(0.02 / inv_range_scale) / 3 (a mutation
    review: the elevation divided by the range's scale passed the zero-at-truth test)."""
    truth = torch.tensor([[[0.2, 0.1, 0.5]]], dtype=torch.float64)
    match = aux.SlotMatch(slot=torch.tensor([[0]]), matched=torch.tensor([[True]]))
    valid = torch.tensor([[True]])

    def huber(x):
        return 0.5 * x * x if abs(x) <= 1 else abs(x) - 0.5

    el = truth + torch.tensor([0.0, math.radians(0.5), 0.0], dtype=torch.float64)
    got = aux.slot_regression(el, truth, valid, match, angle_scale_deg=1.0,
                              inv_range_scale=0.05)
    assert float(got) == pytest.approx(huber(0.5) / 3, rel=1e-9)
    inv = truth + torch.tensor([0.0, 0.0, 0.02], dtype=torch.float64)
    got = aux.slot_regression(inv, truth, valid, match, angle_scale_deg=1.0,
                              inv_range_scale=0.05)
    assert float(got) == pytest.approx(huber(0.4) / 3, rel=1e-9)
    # the azimuth error is wrapped to (-pi, pi]: 1 deg across the +-pi seam is 1 deg (a
    # mutation review: the unwrapped difference passed)
    seam = torch.tensor([[[math.pi - math.radians(0.5), 0.1, 0.5]]], dtype=torch.float64)
    across = seam + torch.tensor([math.radians(1.0) - 2 * math.pi, 0.0, 0.0],
                                 dtype=torch.float64)
    got = aux.slot_regression(across, seam, valid, match, angle_scale_deg=1.0)
    assert float(got) == pytest.approx(huber(1.0) / 3, rel=1e-6)


def test_heatmap_focal_matches_a_cell_by_cell_loop_with_overlapping_sources():
    """CenterNet's focal loss written cell by cell: two sources 1.4 cells apart, whose
    Gaussians overlap, soften each negative by the larger of the two, (1 - max)^beta (a
    mutation review: their sum passed, with sources far apart)."""
    grid = candidate_grid(ModelConfig())
    ax = [grid.inv_range, grid.elevation, grid.azimuth]
    # (az, el, 1/r) of two sources: cells (2, 3, 4) and (2, 3, 5.4)
    pts = [(float(grid.azimuth[4]), float(grid.elevation[3]), float(grid.inv_range[2])),
           (float(grid.azimuth[5] + 0.4 * (grid.azimuth[6] - grid.azimuth[5])),
            float(grid.elevation[3]), float(grid.inv_range[2]))]
    truth = torch.tensor([pts], dtype=torch.float32)
    valid = torch.tensor([[True, True]])
    shape = tuple(len(a) for a in ax)
    logits = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    got = float(aux.heatmap_focal(logits, grid, truth, valid, sigma_cells=1.0))
    centres = [(2.0, 3.0, 4.0), (2.0, 3.0, 5.4)]
    peaks = {(2, 3, 4), (2, 3, 5)}  # nearest cells
    total = 0.0
    for i in range(shape[0]):
        for j in range(shape[1]):
            for k in range(shape[2]):
                x = float(logits[0, i, j, k])
                p = 1 / (1 + math.exp(-x))
                if (i, j, k) in peaks:
                    total += -(1 - p) ** 2 * math.log(p)
                else:
                    soft = max(math.exp(-((i - a) ** 2 + (j - b) ** 2 + (k - c) ** 2) / 2)
                               for a, b, c in centres)
                    total += -(1 - soft) ** 4 * p ** 2 * math.log(1 - p)
    assert got == pytest.approx(total / 2, rel=1e-4)


def test_slot_cost_adds_the_weighted_inverse_range_gap_to_the_chord():
    """chord + w |1/r_s - 1/r_t|: one direction at two ranges costs w |gap| (a mutation
    review: the range term subtracted passed, the matching tests' sources being apart)."""
    pred = torch.tensor([[[0.3, 0.1, 0.5]]])
    truth = torch.tensor([[[0.3, 0.1, 1.5]]])
    got = aux.slot_cost(pred, truth, inv_range_weight=0.05)
    assert float(got) == pytest.approx(0.05, abs=1e-5)
    assert float(aux.slot_cost(pred, pred)) < 1e-5


def test_chamfer_is_coverage_of_the_valid_truths_plus_the_weighted_slot_precision():
    """truth -> nearest slot averaged over the valid truths, plus slot -> nearest *valid*
    truth weighted by the confidences, by hand with a padded truth (at direction 0, 0), a
    half-confident slot there and unconfident far slots (a mutation review: the minimum
    over truths for the one over slots (S = T), the padding read as a truth, and the
    plain mean over slots all passed)."""
    taz = torch.tensor([[0.3, -0.4, 0.0, 0.0, 0.0]])
    tel = torch.tensor([[0.1, 0.2, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, False, False, False]])
    paz = torch.tensor([[0.3, 0.0, 0.9, 0.9, 0.9]])
    pel = torch.tensor([[0.1, 0.0, -0.4, -0.4, -0.4]])
    w = torch.tensor([[1.0, 0.5, 0.0, 0.0, 0.0]])

    def d(a1, e1, a2, e2):
        return float(aux.chord(torch.tensor(a1), torch.tensor(e1), torch.tensor(a2),
                               torch.tensor(e2)))

    slots = list(zip(paz[0].tolist(), pel[0].tolist(), strict=True))
    truths = [(0.3, 0.1), (-0.4, 0.2)]
    cover = sum(min(d(*t, *s) for s in slots) for t in truths) / 2
    precise = (1.0 * min(d(*slots[0], *t) for t in truths)
               + 0.5 * min(d(*slots[1], *t) for t in truths)) / 1.5
    got = aux.chamfer_angles(paz, pel, w, taz, tel, valid)
    assert float(got) == pytest.approx(cover + precise, rel=1e-5)
    assert precise > 0.1  # the half-confident slot is far from every real source
    # the coverage part moves the slot nearest each truth, even with no confident slot
    # (a mutation review: the truth -> slot minimum detached passed)
    paz = paz.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(aux.chamfer_angles(paz, pel + 0.05, torch.zeros_like(w), taz,
                                                  tel, valid), paz)
    assert float(g[0, 0].abs()) > 0 and float(g[0, 2:].abs().max()) == 0.0


def test_nearest_cells_clamps_points_beyond_the_grid_to_its_edge():
    """A point past the grid's far corner (azimuth > max, elevation < min, 1/range > max)
    maps to the corner cell (Nr - 1, 0, Na - 1), not past the end of the flat index (a
    mutation review: clamping to n instead of n - 1 passed, every test point being
    inside the field of view)."""
    grid = candidate_grid(ModelConfig())
    pt = torch.tensor([[[math.radians(80.0), math.radians(-40.0), 5.0]]])
    Nr, Ne, Na = len(grid.inv_range), len(grid.elevation), len(grid.azimuth)
    assert int(aux.nearest_cells(grid, pt)) == ((Nr - 1) * Ne + 0) * Na + Na - 1


def test_heatmap_focal_ignores_padded_truths():
    """A padded (invalid) truth neither marks a positive cell nor softens the negatives
    around it: the loss equals that of the valid truth alone (a mutation review: the
    padding's Gaussian kept passed, the sharp-heatmap test having no mass near it)."""
    grid = candidate_grid(ModelConfig())
    logits = torch.randn(1, 8, 16, 31, generator=torch.Generator().manual_seed(1))
    one = torch.tensor([[[0.4, -0.2, 0.6]]])
    padded = torch.cat([one, torch.zeros(1, 2, 3)], 1)
    alone = aux.heatmap_focal(logits, grid, one, torch.tensor([[True]]))
    got = aux.heatmap_focal(logits, grid, padded, torch.tensor([[True, False, False]]))
    torch.testing.assert_close(got, alone, rtol=1e-6, atol=0)


def test_offset_loss_is_the_huber_sum_over_the_three_coordinates_at_the_true_cell():
    """A truth 0.3 cell past cell (2, 3, 4) in azimuth, offsets (-0.5, 0.8, 0) there: errors
    0.8, 0.8, 0 in cells, Huber(delta 0.5) = 0.5 (0.8 - 0.25) each, summed: 0.55 (a
    mutation review: the mean over the coordinates passed, the test loss being 0)."""
    grid = candidate_grid(ModelConfig())
    az = float(grid.azimuth[4] + 0.3 * (grid.azimuth[5] - grid.azimuth[4]))
    truth = torch.tensor([[[az, float(grid.elevation[3]), float(grid.inv_range[2])]]])
    off = torch.zeros(1, 3, 8, 16, 31)
    off[0, 0, 2, 3, 4], off[0, 1, 2, 3, 4] = -0.5, 0.8
    got = aux.offset_at_truth(off, grid, truth, torch.tensor([[True]]))
    assert float(got) == pytest.approx(0.55, rel=1e-5)


def test_a_padded_truth_in_a_real_sources_cell_leaves_it_positive():
    """truth_of pads absent sources with zeros, whose nearest cell is that of a real source
    near boresight beyond ~4 m; the padding written after it once turned its positive cell
    into a negative (scatter of valid = False over True): a sharp heatmap on the source
    then cost 5e-4 instead of ~0 and the true cell's logit was pushed down."""
    grid = candidate_grid(ModelConfig())
    src = torch.tensor([[[math.radians(0.5), math.radians(-0.5), 1 / 8.0]]])
    pad = torch.zeros(1, 4, 3)
    idx = aux.nearest_cells(grid, src)
    assert torch.equal(idx, aux.nearest_cells(grid, pad[:, :1]))  # the same cell
    sharp = torch.full((1, 8 * 16 * 31), -12.0)
    sharp[0, idx[0]] = 12.0
    valid = torch.tensor([[True, False, False, False, False]])
    got = aux.heatmap_focal(sharp.view(1, 8, 16, 31), grid, torch.cat([src, pad], 1), valid)
    assert float(got) < 1e-10


def test_slot_regression_ignores_nan_in_padded_truths():
    """A padded truth (valid False) may hold NaN (the scenes' range is NaN there): the value
    is that of the real source alone and the gradient stays finite (a mutation review:
    comparing the padded slot with the raw truth passed, every test padding with zeros)."""
    truth = torch.tensor([[[0.2, 0.1, 0.5], [math.nan, math.nan, math.nan]]])
    valid = torch.tensor([[True, False]])
    match = aux.SlotMatch(slot=torch.tensor([[0, 1]]), matched=torch.tensor([[True, False]]))
    pred = torch.tensor([[[0.2, 0.1 + math.radians(0.5), 0.5], [0.0, 0.0, 1.0]]],
                        requires_grad=True)
    got = aux.slot_regression(pred, truth, valid, match)
    assert float(got.detach()) == pytest.approx(0.5 * 0.5**2 / 3, rel=1e-5)
    got.backward()
    assert torch.isfinite(pred.grad).all() and float(pred.grad[0, 1].abs().max()) == 0.0


def test_chamfer_precision_of_a_slot_far_from_every_valid_truth_is_its_full_chord():
    """A confident slot 1.2 rad in azimuth from the only real source, on top of a padded
    truth: its precision term is the full chord 2 sin(0.6) ~ 1.13 to the real source, not
    the padding's 0 nor a fill value (a mutation review: the fill for padded truths lowered
    from 4 to 0.5, below this chord, passed)."""
    taz, tel = torch.tensor([[0.0, 1.2]]), torch.zeros(1, 2)
    valid = torch.tensor([[True, False]])
    paz, pel = torch.tensor([[1.2, 0.0]]), torch.zeros(1, 2)
    w = torch.tensor([[1.0, 0.0]])
    got = aux.chamfer_angles(paz, pel, w, taz, tel, valid)
    # cover: the slot at 0 sits on the source (chord sqrt(EPS)); precise: 2 sin(0.6)
    assert float(got) == pytest.approx(2 * math.sin(0.6), abs=1e-5)


def test_chamfer_and_offset_losses_ignore_nan_in_padded_truths():
    """Padded truths given as NaN (as SceneBatch stores them) leave the chamfer and the
    offset losses and their gradients equal to the zero-padded ones (a mutation review:
    dropping the masking of the padded truths passed, every test padding with zeros)."""
    taz, tel = torch.tensor([[0.3, float("nan")]]), torch.tensor([[0.1, float("nan")]])
    valid = torch.tensor([[True, False]])
    paz = torch.tensor([[0.2, -0.5]], requires_grad=True)
    pel, w = torch.tensor([[0.0, 0.4]]), torch.tensor([[1.0, 0.5]])
    got = aux.chamfer_angles(paz, pel, w, taz, tel, valid)
    (g,) = torch.autograd.grad(got.sum(), paz)
    ref = aux.chamfer_angles(paz, pel, w, torch.nan_to_num(taz), torch.nan_to_num(tel), valid)
    (g_ref,) = torch.autograd.grad(ref.sum(), paz)
    assert torch.isfinite(got).all()
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    torch.testing.assert_close(g, g_ref)

    grid = candidate_grid(ModelConfig())
    az = float(grid.azimuth[4] + 0.3 * (grid.azimuth[5] - grid.azimuth[4]))
    truth = torch.tensor([[[az, float(grid.elevation[3]), float(grid.inv_range[2])],
                           [float("nan")] * 3]])
    off = torch.zeros(1, 3, 8, 16, 31, requires_grad=True)
    loss = aux.offset_at_truth(off, grid, truth, valid)
    (g,) = torch.autograd.grad(loss.sum(), off)
    # only the true source's error 0.3 cell in azimuth: Huber(0.5) = 0.3^2 / 2
    assert float(loss.detach()) == pytest.approx(0.045, rel=1e-5)
    assert torch.isfinite(g).all() and float(g[0, 0, 2, 3, 4]) != 0.0
    g[0, :, 2, 3, 4] = 0.0
    assert float(g.abs().max()) == 0.0  # nothing reaches the cell the padding points to


def test_chamfer_precision_is_the_confidence_weighted_mean_even_below_unit_total():
    """One half-confident slot 0.6 rad in azimuth from the only source: the precision term
    is its full chord 2 sin(0.3) (the weights normalised by their sum 0.5), not half of it
    (a mutation review: the weight sum clamped to at least 1 passed, every test's
    confidences summing to >= 1)."""
    taz, tel = torch.tensor([[0.0]]), torch.zeros(1, 1)
    valid = torch.tensor([[True]])
    paz, pel = torch.tensor([[0.6, 0.0]]), torch.zeros(1, 2)
    w = torch.tensor([[0.5, 0.0]])
    got = aux.chamfer_angles(paz, pel, w, taz, tel, valid)
    # cover: the slot at 0 sits on the source (chord sqrt(EPS))
    assert float(got) == pytest.approx(2 * math.sin(0.3), abs=1e-5)


def test_heatmap_focal_of_a_single_source_is_the_cell_sum_divided_by_one():
    """Zero logits (p = 1/2) and one source on cell (2, 3, 4): the positive cell costs
    (1/2)^2 ln 2, each other cell (1 - g)^4 (1/2)^2 ln 2 with g its Gaussian, and the sum is
    divided by K = 1 (a mutation review: the count clamped to at least 2 passed, the
    one-source tests comparing losses with each other or with 0)."""
    grid = candidate_grid(ModelConfig())
    truth = torch.tensor([[[float(grid.azimuth[4]), float(grid.elevation[3]),
                            float(grid.inv_range[2])]]])
    shape = (len(grid.inv_range), len(grid.elevation), len(grid.azimuth))
    got = float(aux.heatmap_focal(torch.zeros(1, *shape), grid, truth, torch.tensor([[True]])))
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    g = np.exp(-((i - 2) ** 2 + (j - 3) ** 2 + (k - 4) ** 2) / 2.0)
    cell = np.where((i == 2) & (j == 3) & (k == 4), 1.0, (1 - g) ** 4)
    assert got == pytest.approx(float(cell.sum()) * 0.25 * math.log(2), rel=1e-5)
