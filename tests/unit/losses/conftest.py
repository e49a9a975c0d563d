"""Shared fixtures of the loss tests: a few scenes with truth and their R_true."""

import pytest
import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.simulation import scene_true_covariance, simulate_batch


@pytest.fixture(scope="module")
def system() -> SystemConfig:
    return SystemConfig()


@pytest.fixture(scope="module")
def scenes(system):
    gen = torch.Generator().manual_seed(3)
    return simulate_batch(6, system, SceneConfig(), gen, snr_db=10.0)


@pytest.fixture(scope="module")
def R_true(scenes, system):
    return scene_true_covariance(scenes, system)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test (restored afterwards): on a shared 2-core machine batched
    LAPACK calls with 2 OpenMP threads were measured 100-600x slower than with one."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
