"""Fixtures of the model tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test (restored afterwards): on a shared 2-core machine batched
    LAPACK calls with 2 OpenMP threads were measured 100-600x slower than with one."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
