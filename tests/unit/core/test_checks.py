"""Input checks (risloc.core.checks): boundaries that the broader tests in test_core.py
leave open (mutation review)."""

import numpy as np
import pytest
import torch

from risloc.core.checks import (
    InputError,
    check_positions,
    check_source_counts,
    float32_default,
    same_device,
    snr_per_scene,
)


def test_check_positions_refuses_k_equal_to_m_and_a_zero_range():
    az = el = torch.zeros(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(InputError, match=r"K >= M=2 sources cannot be resolved \(got K up to 2\)"):
        check_positions(az, el, torch.ones(1, 2), mask, M=2)
    check_positions(az, el, torch.ones(1, 2), mask, M=3)  # K = 2 < M passes
    with pytest.raises(InputError, match="ranges must be positive"):
        check_positions(az, el, torch.tensor([[1.0, 0.0]]), mask, M=3)


def test_a_square_matrix_of_n_values_is_no_matlab_vector():
    with pytest.raises(InputError, match=r"got shape \(2, 2\)"):
        check_source_counts("K", torch.ones(2, 2, dtype=torch.int64), 4, 3)
    with pytest.raises(InputError, match=r"got shape \(2, 2\)"):
        snr_per_scene(torch.zeros(2, 2), 4)


def test_source_counts_name_how_many_more_scenes_are_wrong():
    with pytest.raises(InputError, match=r"in scene 0 \(and 2 more\)"):
        check_source_counts("K", [9, 9, 9, 1], 4, 3)


def test_same_device_names_the_meta_device():
    with pytest.raises(InputError, match="'meta' device"):
        same_device(y=torch.zeros(1, device="meta"))


def test_float32_default_sets_and_restores_a_float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with float32_default():
            assert torch.get_default_dtype() == torch.float32
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(old)


def test_a_uint64_K_beyond_int64_is_named_as_given_not_wrapped():
    """A review: a uint64 K above int64's range (a user's file) read as a negative count in
    the error (-1 for 2**64 - 1); it is named as given. Whole uint64 counts still pass."""
    with pytest.raises(InputError, match=r"K must lie in 1\.\.K_max=4, got 1\.84467e\+19 in "
                                         r"scene 1"):
        check_source_counts("K", np.array([2, 2**64 - 1], dtype=np.uint64), 2, 4)
    with pytest.raises(InputError, match=r"got 9\.22337e\+18$"):
        check_source_counts("K", np.uint64(2**63 + 2), 3, 4)
    out = check_source_counts("K", np.array([3, 1], dtype=np.uint64), 2, 4)
    assert out.dtype == torch.int64 and out.tolist() == [3, 1]
