"""Shared fixtures of the loss tests: a few scenes with truth and their R_true."""

import pytest
import torch

from risloc.config import SceneConfig
from risloc.simulation import scene_true_covariance, simulate_batch


@pytest.fixture(scope="module")
def scenes(system):
    gen = torch.Generator().manual_seed(3)
    return simulate_batch(6, system, SceneConfig(), gen, snr_db=10.0)


@pytest.fixture(scope="module")
def R_true(scenes, system):
    return scene_true_covariance(scenes, system)

