"""Reproducible, split-disjoint scene streams.

Scenes are generated in blocks of ``BLOCK`` scenes. Block ``b`` of split ``s`` and stream
``t`` draws from a generator seeded by ``SeedSequence(seed, spawn_key=(s, t, b))``, so
* the same (seed, split, index) always gives the same scene, however a file is chunked;
* train, validation and test draw from disjoint seed streams and cannot share a scene
  (unlike the previous attempt's seed+i / seed+123+i offsets).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from risloc.config import Mixture, SceneConfig, SystemConfig, validate_scene, validate_system
from risloc.simulation.scenes import (
    SceneBatch,
    SceneDraws,
    draw_scenes,
    simulate_batch,
    synthesize,
)

BLOCK = 1024
SPLITS = {"train": 0, "validation": 1, "test": 2}


def block_generator(seed: int, split: str, block: int, stream: int = 0,
                    device: torch.device | str | None = None) -> torch.Generator:
    """The torch.Generator of one block of one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if seed < 0 or block < 0 or stream < 0:
        raise ValueError("seed, stream and block must be non-negative")
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(SPLITS[split], stream, block))
    gen = torch.Generator(device=device or "cpu")
    gen.manual_seed(int(ss.generate_state(1, np.uint64)[0]))
    return gen


@dataclass(frozen=True)
class MixtureDraws:
    """The draws of :func:`simulate_mixture`: each kind's scene config with its scenes'
    draws, and the order that puts the kinds' scenes back where they were drawn (None:
    one kind)."""

    kinds: list[tuple[SceneConfig, SceneDraws]]
    order: torch.Tensor | None


def simulate_mixture(batch: int, system: SystemConfig, scene: SceneConfig | Mixture,
                     generator: torch.Generator | None = None, snr_db: float | None = None,
                     K: int | None = None, device: torch.device | str | None = None,
                     compute: torch.device | str | None = None) -> SceneBatch:
    """``batch`` scenes of one scene config (then exactly :func:`simulate_batch`) or of a
    mixture (:func:`risloc.config.scene_mixture`): each scene's kind is drawn by its
    share, then each kind's scenes are simulated in turn and put back in the drawn order.
    Drawn on ``device``, computed on ``compute`` (:func:`simulate_batch`)."""
    return synthesize_mixture(draw_mixture(batch, system, scene, generator, snr_db, K, device),
                              system, compute)


def draw_mixture(batch: int, system: SystemConfig, scene: SceneConfig | Mixture,
                 generator: torch.Generator | None = None, snr_db: float | None = None,
                 K: int | None = None,
                 device: torch.device | str | None = None) -> MixtureDraws:
    """The random part of :func:`simulate_mixture` (its draws, in its order)."""
    if isinstance(scene, SceneConfig):
        return MixtureDraws([(scene, draw_scenes(batch, system, scene, generator, snr_db, K,
                                                 device))], None)
    shares = torch.tensor([share for share, _ in scene], dtype=torch.float64,
                          device=generator.device if generator is not None else device)
    kind = torch.multinomial(shares, batch, replacement=True, generator=generator)
    kinds, where = [], []
    for c, (_, sc) in enumerate(scene):  # a handful of kinds
        idx = (kind == c).nonzero().squeeze(1)
        if len(idx):
            kinds.append((sc, draw_scenes(len(idx), system, sc, generator, snr_db, K, device)))
            where.append(idx)
    return MixtureDraws(kinds, torch.argsort(torch.cat(where)))


def synthesize_mixture(draws: MixtureDraws, system: SystemConfig,
                       device: torch.device | str | None = None) -> SceneBatch:
    """The scenes of ``draws``, computed on ``device`` (default: the draws')."""
    parts = [synthesize(d, system, sc, device) for sc, d in draws.kinds]
    if draws.order is None:
        return parts[0]
    return concat_batches(parts)[draws.order.to(parts[0].y.device)]


def simulate_range(start: int, stop: int, system: SystemConfig,
                   scene: SceneConfig | Mixture | None = None, seed: int = 0,
                   split: str = "train", stream: int = 0,
                   snr_db: float | None = None, K: int | None = None,
                   device: torch.device | str | None = None) -> SceneBatch:
    """Scenes ``start .. stop-1`` of a split (any range; blocks are cut as needed) of one
    scene config or a mixture (:func:`simulate_mixture`). ``system`` and ``scene`` may be
    dicts of their fields (``scene`` None: the default scene); ``snr_db`` and ``K``, one
    number fixing it in every scene."""
    system, scene = _as_configs(system, scene)
    for name, value in (("snr_db", snr_db), ("K", K)):
        if value is not None and np.ndim(value) != 0:
            raise TypeError(f"{name} must be one number, fixed in every scene (or None: "
                            f"drawn from the scene's range), got {type(value).__name__}")
    if not 0 <= start <= stop:
        raise ValueError(f"bad scene range {start}..{stop}")
    if start == stop:
        raise ValueError(f"empty scene range {start}..{stop}: no scenes to simulate")
    parts = []
    for b in range(start // BLOCK, (stop + BLOCK - 1) // BLOCK):
        gen = block_generator(seed, split, b, stream, device)
        blk = simulate_mixture(BLOCK, system, scene, gen, snr_db=snr_db, K=K, device=device)
        lo, hi = max(start - b * BLOCK, 0), min(stop - b * BLOCK, BLOCK)
        parts.append(blk[lo:hi])
    out = concat_batches(parts)
    # (y alone: a non-finite H or steering entry reaches every y it multiplies, and the
    # noise scaled by the signal's power; H, M x N per scene, would cost 15 % of a block)
    bad = ~torch.isfinite(torch.view_as_real(out.y)).flatten(1).all(1)
    if bool(bad.any()):  # (a value of the configuration beyond float32's reach)
        raise ValueError(f"the simulated measurements are not finite in {int(bad.sum())} of "
                         f"{len(out)} scenes: a value of the system or scene configuration "
                         "leaves float32's range (e.g. a Rician factor near 1e38, a "
                         "wavelength of 1e-40 m)")
    return out


def _as_configs(system, scene) -> tuple[SystemConfig, SceneConfig | Mixture]:
    """The system and scene of :func:`simulate_range` from themselves or dicts."""
    if isinstance(system, dict):
        system = validate_system(system)
    if not isinstance(system, SystemConfig):
        raise TypeError(f"system must be a SystemConfig or a dict of its fields, got "
                        f"{type(system).__name__}")
    if scene is None or isinstance(scene, dict):
        scene = validate_scene(scene or {})
    if not isinstance(scene, SceneConfig | tuple):  # a Mixture: ((share, scene), ...)
        raise TypeError(f"scene must be a SceneConfig, a dict of its fields or a Mixture, got "
                        f"{type(scene).__name__}")
    return system, scene


def concat_batches(parts: list[SceneBatch]) -> SceneBatch:
    """Concatenate scene batches along the scene axis."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    out = {}
    for name in first.__dataclass_fields__:
        vals = [getattr(p, name) for p in parts]
        out[name] = None if any(v is None for v in vals) else torch.cat(vals)
    return SceneBatch(**out)


def scene_stream(batch_size: int, system: SystemConfig, scene: SceneConfig, seed: int = 0,
                 split: str = "train", stream: int = 1, start_batch: int = 0,
                 device: torch.device | str | None = None) -> Iterator[SceneBatch]:
    """Infinite seeded stream of batches for on-the-fly training.

    Batch ``i`` depends only on (seed, split, stream, i), so a resumed run picks up at
    ``start_batch`` and sees exactly the batches it would have seen.
    """
    i = start_batch
    while True:
        gen = block_generator(seed, split, i, stream, device)
        yield simulate_batch(batch_size, system, scene, gen, device=device)
        i += 1
