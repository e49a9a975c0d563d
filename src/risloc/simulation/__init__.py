"""Scene simulation: the measurement model, seeded split-disjoint streams, R_true."""

from risloc.simulation.scenes import (
    SceneBatch,
    draw_sources,
    scene_true_covariance,
    simulate_batch,
    true_covariance,
    true_covariance_factor,
)
from risloc.simulation.streams import (
    BLOCK,
    SPLITS,
    block_generator,
    concat_batches,
    scene_stream,
    simulate_mixture,
    simulate_range,
)

__all__ = [
    "BLOCK", "SPLITS", "SceneBatch", "block_generator", "concat_batches", "draw_sources",
    "scene_stream", "scene_true_covariance", "simulate_batch", "simulate_mixture",
    "simulate_range", "true_covariance", "true_covariance_factor",
]
