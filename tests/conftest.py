import pytest

from risloc.config import SceneConfig, SystemConfig


@pytest.fixture(scope="session")
def system() -> SystemConfig:
    return SystemConfig()


@pytest.fixture(scope="session")
def scene() -> SceneConfig:
    return SceneConfig()
