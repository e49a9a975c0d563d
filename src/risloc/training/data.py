"""Training batches and the fixed validation set.

Micro-batch ``i`` of a run is a pure function of (data seed, i, epoch): from the seeded
simulator (the block generator of ``risloc.simulation.streams``, split "train") or from
a scene file, shuffled per pass by a seeded permutation. A resumed run therefore sees
exactly the batches it would have seen.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import multiprocessing
import os
import shlex
import signal
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import torch

from risloc.core.checks import InputError, scene_problems
from risloc.io.scenefile import read_scenes
from risloc.parallel import read_ahead
from risloc.pipeline.localizer import check_system
from risloc.simulation.scenes import SceneBatch
from risloc.simulation.streams import (
    MixtureDraws,
    block_generator,
    concat_batches,
    draw_mixture,
    simulate_range,
    synthesize_mixture,
)
from risloc.training.config import TrainConfig
from risloc.training.schedules import snr_range_at

log = logging.getLogger(__name__)
T = TypeVar("T")

SNR_HIDE_STREAM = 900  # train-split stream of the draws that hide a batch's SNRs


def _as_float32(scenes: SceneBatch) -> SceneBatch:
    """File truth comes as float64; the losses work in float32."""
    def cast(t):
        return t.float() if t is not None and t.is_floating_point() else t
    return SceneBatch(y=scenes.y, H=scenes.H, codes=scenes.codes, snr_db=cast(scenes.snr_db),
                      K=scenes.K, azimuth=cast(scenes.azimuth),
                      elevation=cast(scenes.elevation), range_m=cast(scenes.range_m),
                      powers=cast(scenes.powers), noise_var=cast(scenes.noise_var),
                      symbols=scenes.symbols)


def _to_slots(scenes: SceneBatch, k_max: int) -> SceneBatch:
    """The truth in the recipe's K_max slots: a file of a smaller K_max, or truth arrays
    wider than their K (NaN beyond it), padded with NaN or cut (its K <= both, as
    :func:`risloc.io.scenefile.truth_problems` checked)."""
    width = scenes.azimuth.shape[1]
    if width == k_max:
        return scenes

    def fit(t, fill):
        if t is None:
            return None
        if width > k_max:
            return t[..., :k_max].contiguous()
        return torch.nn.functional.pad(t, (0, k_max - width), value=fill)

    return replace(scenes, azimuth=fit(scenes.azimuth, math.nan),
                   elevation=fit(scenes.elevation, math.nan),
                   range_m=fit(scenes.range_m, math.nan), powers=fit(scenes.powers, 0.0),
                   symbols=None if scenes.symbols is None else fit(scenes.symbols, 0.0))


def read_training_file(cfg: TrainConfig, field: str) -> SceneBatch:
    """The scenes of the recipe's ``data.<field>`` ("train_file" or "val_file"), checked up
    front: the truth present, the file's system that of the recipe (every differing field
    named), and every scene one the localizers can take (ValueError naming the first bad
    scenes), so that a run never stops mid-epoch on a scene it could have refused at the
    start."""
    path = getattr(cfg.data, field)
    what = {"train_file": "training file", "val_file": "validation file"}[field]
    where = f"{what} {path}"
    if not Path(path).exists():
        raise ValueError(f"{where} not found (the recipe's data.{field}; relative paths are "
                         "taken from the current folder)")
    scenes, info = read_scenes(path)
    if len(scenes) == 0:
        raise ValueError(f"{where} holds no scenes")
    if not scenes.has_truth:
        raise ValueError(f"{where} must carry the truth (K, azimuth, elevation, range)")
    if info.system_assumed:
        log.warning("%s has no system attribute: taken to be the recipe's", where)
    else:
        try:
            check_system(cfg.system, info.system, "recipe")
        except InputError as err:
            raise ValueError(f"{where}: {err} (the recipe's system is `system.*`)") from None
    bad = scene_problems(scenes.y, scenes.H, scenes.codes).reasons
    if bad:
        listed = "; ".join(f"scene {i}: {why}" for i, why in bad[:3])
        raise ValueError(f"{where}: {len(bad)} scene(s) cannot be trained on ({listed}"
                         f"{'; ...' if len(bad) > 3 else ''}); `risloc info "
                         f"{shlex.quote(str(path))}` lists them")
    if int(scenes.K.max()) > cfg.system.K_max:  # (a file without a system attribute)
        raise ValueError(f"{where}: a scene has K={int(scenes.K.max())} sources, more than "
                         f"the recipe's system.K_max={cfg.system.K_max}")
    return _as_float32(_to_slots(scenes, cfg.system.K_max))


class TrainData:
    """Source of training micro-batches (simulator stream or scene file).

    With ``data.shards`` S > 1 the global micro-batch i is S shards of batch_size / S
    scenes, shard r simulated from its own generator (block i * S + r of the stream);
    ``shards_here`` picks the ones this process trains on (all of them in one process,
    shard r in rank r of S data-parallel processes); several shards in one process come
    interleaved (scene 0 of each shard, then scene 1, ...). Simulated batches are drawn on
    the host and computed on ``compute`` (None: the host; TrainConfig.simulate_on).
    """

    def __init__(self, cfg: TrainConfig, shards_here: tuple[int, ...] | None = None,
                 compute: torch.device | str | None = None):
        self.cfg, self.compute = cfg, compute
        S = cfg.data.shards
        if cfg.optim.batch_size % S:
            raise ValueError(f"optim.batch_size={cfg.optim.batch_size} must be a multiple of "
                             f"data.shards={S}")
        if S > 1 and cfg.data.train_file is not None:
            raise ValueError("data.shards > 1 needs simulated training data (no train_file)")
        self.shards_here = tuple(range(S)) if shards_here is None else shards_here
        self.scenes = None
        if cfg.data.train_file is not None:
            self.scenes = read_training_file(cfg, "train_file")
            log.info("training on %d scenes from %s", len(self.scenes), cfg.data.train_file)
            if cfg.schedule.snr_curriculum:  # (it draws the simulated scenes' SNRs only)
                log.warning("schedule.snr_curriculum has no effect on the scenes of "
                            "data.train_file: their SNRs are the file's")

    def _scene_config(self, epoch: int):
        """The epoch's scene distribution (a mixture with ``data.scene_mix``)."""
        s, sch = self.cfg.scene, self.cfg.schedule
        if not sch.snr_curriculum:
            return self.cfg.scenes()
        snr = snr_range_at(epoch, sch.epochs, s.snr_db, sch.curriculum_start_db,
                           sch.curriculum_frac)
        return self.cfg.scenes(s.model_copy(update={"snr_db": snr}))

    def _from_file(self, index: int) -> SceneBatch:
        n, bs, seed = len(self.scenes), self.cfg.optim.batch_size, self.cfg.data.seed
        pos = torch.arange(index * bs, (index + 1) * bs)
        passes = pos // n
        order = torch.empty_like(pos)
        for p in torch.unique(passes).tolist():  # (more than two where batch > 2 n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + p))
            sel = passes == p
            order[sel] = perm[pos[sel] % n]
        return self.scenes[order]

    def batch(self, index: int, epoch: int) -> SceneBatch:
        """Micro-batch ``index`` (global count from the start of the run), its SNR hidden
        (NaN) in a seeded share ``1 - data.snr_shown`` of its scenes."""
        return self.finish(self.draw(index, epoch))

    def draw(self, index: int, epoch: int) -> SceneBatch | list[tuple[MixtureDraws, int]]:
        """The host's part of :meth:`batch`: a file's batch whole; a simulated one's draws,
        per shard with its block (what :meth:`finish` turns into the batch on
        ``compute``). A prefetching thread runs this part alone where ``compute`` is a
        GPU: a thread's copies to the GPU would meet the sync check of a CUDA graph's
        capture in the training step (torch's sync debug mode is process-wide)."""
        d = self.cfg.data
        if self.scenes is not None:
            return self._hide(self._from_file(index), index)
        size = self.cfg.optim.batch_size // d.shards
        # one generator per batch (the streams of unsharded recipes), else per shard
        blocks = [index] if d.shards == 1 else [index * d.shards + r for r in self.shards_here]
        return [(draw_mixture(size, self.cfg.system, self._scene_config(epoch),
                              block_generator(d.seed, "train", block, d.stream)), block)
                for block in blocks]

    def finish(self, drawn: SceneBatch | list[tuple[MixtureDraws, int]]) -> SceneBatch:
        """The batch of :meth:`draw`'s result, computed on ``compute``."""
        if isinstance(drawn, SceneBatch):
            return drawn
        parts = [self._hide(synthesize_mixture(m, self.cfg.system, self.compute), block)
                 for m, block in drawn]
        if len(parts) == 1:
            return parts[0]
        # interleaved (scene j of every shard, then j + 1): the first n scenes of the batch
        # are the first n / S of each shard, the scenes a rank of S processes factorises
        # for loss.spectral_scenes = n (Trainer.loss_config)
        size = len(parts[0])
        return concat_batches(parts)[torch.arange(size * len(parts)).view(len(parts), size)
                                     .T.reshape(-1)]

    def _hide(self, scenes: SceneBatch, block: int) -> SceneBatch:
        d = self.cfg.data
        if d.snr_shown >= 1:
            return scenes
        gen = block_generator(d.seed, "train", block, SNR_HIDE_STREAM)
        return hide_snr(scenes, torch.rand(len(scenes), generator=gen) >= d.snr_shown)


class _Fetches(torch.utils.data.Dataset):
    """fetch(indices[j]) as item j (the process route of :func:`prefetched`)."""

    def __init__(self, fetch: Callable[[int], T], indices: range):
        self.fetch, self.indices = fetch, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> T:
        return self.fetch(self.indices[j])


def _as_is(x: T) -> T:
    return x


def prefetched(fetch: Callable[[int], T], indices: range, ahead: bool | str) -> Iterator[T]:
    """fetch(i) for each i of ``indices`` in order. With ``ahead`` True (or "thread") the
    next one is computed in a background thread while the caller works on the current one
    (torch releases the GIL in its kernels, not in the Python between them); with
    "process", up to two ahead in two worker processes (DataLoader workers forked from
    this one: fetch is inherited, not pickled; the results come back through shared
    memory, about 20 MB per batch of 512 default scenes), which share no interpreter with
    the caller. fetch must not depend on shared state the caller changes: the batches are
    functions of their index (seeded generators), so they are the same."""
    if not ahead:
        yield from map(fetch, indices)
        return
    if ahead == "process":
        if "fork" not in multiprocessing.get_all_start_methods():
            raise ValueError("prefetch=process needs the fork start method (Linux); use "
                             "prefetch=thread here")
        # two workers, one batch ahead each: a DataLoader worker simulates on one thread
        # (more are not safe after a fork), and one alone may not keep up with a GPU; the
        # batches still come in index order. The private generator only seeds the workers
        # (unused: every fetch draws from its own seeded generators), so the caller's
        # global RNG is left as the other routes leave it.
        loader = torch.utils.data.DataLoader(
            _Fetches(fetch, indices), batch_size=None, num_workers=2, prefetch_factor=1,
            multiprocessing_context="fork", collate_fn=_as_is,
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=functools.partial(_leave_signals_to_the_parent,
                                             parent=os.getpid()))
        # the workers are forked with SIGINT/SIGTERM blocked: a signal to the whole group
        # during the fork neither kills a worker that has not left the group yet nor is
        # swallowed in the parent (raised inside os.fork's at-fork hooks, it was lost)
        group_signals = {signal.SIGINT, signal.SIGTERM}
        before = signal.pthread_sigmask(signal.SIG_BLOCK, group_signals)
        try:
            it = iter(loader)
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
            raise
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)  # a pending one is raised here
            yield from it
        finally:  # at once, also when the caller stops early or a fetch raised
            it._shutdown_workers()
            for worker in getattr(it, "_workers", ()):  # (one stuck past terminate())
                if worker.is_alive():
                    worker.kill()
        return
    yield from read_ahead(map(fetch, indices), "risloc-data")


def _leave_signals_to_the_parent(worker: int, parent: int | None = None) -> None:
    """A worker leaves the parent's process group, so Ctrl-C and SIGTERM sent to the whole
    group (a terminal, a batch system's preemption) reach the parent alone, which,
    interrupted, shuts the worker down. Killed by them, the worker's death raised
    "DataLoader worker ... is killed by signal" in the parent: a traceback instead of the
    interrupted run's message. Its own signals stay as they were, so the DataLoader's
    terminate() of a worker that does not leave still ends it. Out of the group, a SIGKILL
    to the whole group (torchrun's escalation, a container's stop) would miss it: on Linux
    it is killed as its parent dies (prctl PR_SET_PDEATHSIG; the DataLoader's own check of
    its parent took up to 5 s). ``parent``: the parent's pid, read before the fork (read
    here, a parent already dead would read as the process that adopted the worker)."""
    _die_with_the_parent(os.getppid() if parent is None else parent)
    os.setpgid(0, 0)
    group = {signal.SIGINT, signal.SIGTERM}
    take = getattr(signal, "sigtimedwait", None)  # (not on macOS)
    for s in signal.sigpending() & group:  # sent to the group before it left: taken, unheard
        if take is not None:  # its handlers (torch's own included) left as they were
            take({s}, 0)
        else:  # (SIG_IGN discards a pending signal; the handler Python knows put back)
            signal.signal(s, signal.signal(s, signal.SIG_IGN))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, group)


def _die_with_the_parent(parent: int) -> None:
    """SIGKILL to this process when the thread that forked it ends (Linux; elsewhere
    nothing), and an exit at once where the parent (its pid) has already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        set_death_signal = libc.prctl
    except (OSError, AttributeError):  # not Linux
        return
    set_death_signal(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # the parent died before it was set
        os._exit(1)


def hide_snr(scenes: SceneBatch, hide: torch.Tensor | bool = True) -> SceneBatch:
    """The scenes with snr_db NaN (unknown) where ``hide`` [B] bool (or everywhere)."""
    hide = torch.as_tensor(hide, device=scenes.snr_db.device).expand(len(scenes))
    return replace(scenes, snr_db=torch.where(hide, torch.full_like(scenes.snr_db, math.nan),
                                              scenes.snr_db))


def validation_set(cfg: TrainConfig) -> SceneBatch:
    """The fixed validation scenes: a file, or scenes val_offset.. of the validation split."""
    d = cfg.data
    if d.val_file is not None:
        if d.train_file is not None and d.val_file.resolve() == d.train_file.resolve():
            log.warning("data.val_file is data.train_file (%s): the epochs are chosen on "
                        "the training scenes, so the validation numbers flatter the model",
                        d.val_file)
        scenes = read_training_file(cfg, "val_file")
    else:
        scenes = simulate_range(d.val_offset, d.val_offset + d.n_val, cfg.system,
                                cfg.scenes(), d.seed, "validation")
    return scenes if d.snr_shown == 1 else hide_snr(scenes)


def chunks(scenes: SceneBatch, size: int) -> list[SceneBatch]:
    """Consecutive slices of at most ``size`` scenes."""
    return [scenes[i:i + size] for i in range(0, len(scenes), size)]

