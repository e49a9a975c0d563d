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
def _threads():
    torch.set_num_threads(2)
    yield
