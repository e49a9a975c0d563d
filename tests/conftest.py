import pytest
import torch

from risloc.config import SceneConfig, SystemConfig


@pytest.fixture(scope="session")
def system() -> SystemConfig:
    return SystemConfig()


@pytest.fixture(scope="session")
def scene() -> SceneConfig:
    return SceneConfig()


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch intra-op thread per test (restored afterwards): the suite's small batched
    ops are latency-bound, and on a shared 2-core machine batched LAPACK calls with two
    OpenMP threads were measured 10-600x slower than with one."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
