"""The localizer users run: their scenes in, sources out.

``Localizer.from_checkpoint()`` (the learned pipeline of the shipped model, or of a
checkpoint) or ``Localizer(system, "classical")``. ``.localize(y, H, codes, snr_db=None,
K=None, system=None)`` takes NumPy arrays or torch tensors, complex64 or complex128, one
scene ([L, M], [M, N], [L, N]) or a batch ([B, L, M], ...). Before any estimator runs:

* shapes and dtypes are checked (a ValueError / TypeError naming the array);
* a ``system`` passed with the scenes (a SystemConfig, a dict of its fields, or its JSON
  text as scene files store it) is checked against the localizer's, floats to a relative
  1e-6 (rounding, such as 0.1 * 3 for 0.3, passes; the wavelength of 1 GHz with the physical
  c, 0.29979 m, is another system than the conventions' 0.3 m and is refused), naming the
  field that differs; a smaller K_max is accepted and caps the number of sources reported;
* every scene is checked (:func:`risloc.core.scene_problems`); a scene that cannot be
  localized is reported by index in ``LocalizationResult.bad`` with its reason, and the
  others are still localized;
* y and H are rescaled per scene (:func:`risloc.core.normalise_scale`): positions and K do
  not depend on their units, and float32 arithmetic stays clear of under- and overflow;
* ``snr_db``: None, a number, or one per scene with NaN where unknown
  (:func:`risloc.core.snr_per_scene`). The learned pipeline does not use it; the classical
  localizer takes the noise level from it where it is known.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from risloc.config import FieldOfView, SystemConfig
from risloc.core.checks import (
    InputError,
    InputTypeError,
    as_system,
    as_tensor,
    check_shapes,
    check_source_counts,
    float32_default,
    is_whole,
    normalise_scale,
    same_device,
    scene_problems,
    snr_per_scene,
)
from risloc.core.params import Estimates, concat_estimates
from risloc.estimators.classical import ClassicalConfig, classical_localize
from risloc.estimators.order import default_penalty, residual_dof
from risloc.parallel import MAX_CHUNK, run_in_chunks
from risloc.physics.geometry import alias_free_spacing, source_position
from risloc.pipeline.graphs import GraphedLocalize
from risloc.pipeline.learned import LearnedPipeline, load_learned_pipeline

log = logging.getLogger(__name__)

METHODS = ("learned", "classical")
_REL_TOL = 1e-6


@dataclass(frozen=True)
class LocalizationResult:
    """Estimates of a batch plus the scenes that could not be localized.

    estimates : Estimates with [B] scenes (bad scenes: K = 0, all slots NaN)
    bad : tuple of (scene index, reason)
    """

    estimates: Estimates
    bad: tuple[tuple[int, str], ...] = ()

    def __len__(self) -> int:
        return len(self.estimates)

    def to_numpy(self) -> dict[str, np.ndarray]:
        """K [B] and NaN-padded azimuth_deg, elevation_deg, range_m, score [B, K_slots]:
        copies, so editing them leaves the result as it is."""
        e = self.estimates
        return {"K": e.K.cpu().numpy().copy(),
                "azimuth_deg": torch.rad2deg(e.azimuth).cpu().numpy(),
                "elevation_deg": torch.rad2deg(e.elevation).cpu().numpy(),
                "range_m": e.range_m.cpu().numpy().copy(),
                "score": e.score.cpu().numpy().copy()}

    def xyz(self) -> np.ndarray:
        """Cartesian source positions [B, K_slots, 3] in metres (docs/conventions.md geometry:
        RIS in the x-y plane, boresight +z), NaN-padded."""
        e = self.estimates
        return source_position(e.azimuth.double(), e.elevation.double(),
                               e.range_m.double()).cpu().numpy()

    def records(self) -> list[dict]:
        """One dict per estimated source: scene, source, azimuth_deg, elevation_deg,
        range_m, score (the rows of the estimates CSV)."""
        arr = self.to_numpy()
        return [{"scene": b, "source": k, **{n: float(arr[n][b, k]) for n in
                                            ("azimuth_deg", "elevation_deg", "range_m",
                                             "score")}}
                for b in range(len(arr["K"])) for k in range(int(arr["K"][b]))]


def _as_tensor(name: str, x) -> torch.Tensor:
    t = as_tensor(name, x)
    if name == "codes" and not t.is_complex() and t.dtype != torch.bool:
        return t.to(torch.complex64)  # real codes: a 1-bit RIS's +-1 (as scene files allow)
    if not t.is_complex():  # named as the caller's array names it (a NumPy dtype for NumPy)
        got = x.dtype if isinstance(x, (np.ndarray, torch.Tensor)) else t.dtype
        pair = (f" of shape {tuple(t.shape)}: real and imaginary parts on a last axis of 2? "
                f"pass {name}[..., 0] + 1j * {name}[..., 1]") if t.shape[-1:] == (2,) else ""
        bits = (" (bits? codes are unit-modulus phases: a 1-bit RIS's are +-1, pass "
                "1 - 2 * codes.astype(np.int8) for NumPy's, 1 - 2 * codes.to(torch.int8) "
                "for torch's)") if name == "codes" and t.dtype == torch.bool else ""
        raise InputTypeError(f"{name} must be complex (complex64 or complex128), got {got}"
                             f"{pair}{bits}")
    return t


def _differing_fields(ours: SystemConfig, theirs: SystemConfig, whose: str) -> list[str]:
    out = []
    for name, a in ours.model_dump().items():
        b = getattr(theirs, name)
        if name == "K_max":
            continue
        if isinstance(a, float):
            if not math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=0.0):
                out.append(f"{name} {b!r} ({whose}: {a!r})")
        elif a != b:
            out.append(f"{name} {b!r} ({whose}: {a!r})")
    return out


def train_command(system: SystemConfig) -> str:
    """The ``risloc train`` command of a model for ``system``: ``--set system.FIELD=VALUE``
    for each field that differs from the default system's (the spacing only where it is not
    lambda/2, which follows the wavelength)."""
    base = SystemConfig()
    # (the spacing by the wavelength, not the default's: 0.15 m with a wavelength of 0.1 m
    # must be set, else the model gets lambda/2 = 0.05 m)
    sets = [f"--set system.{name}={value}" for name, value in system.model_dump().items()
            if (not math.isclose(value, system.wavelength / 2) if name == "spacing"
                else value != getattr(base, name))]
    return " ".join(["risloc train", *sets])


def check_system(ours: SystemConfig, theirs: SystemConfig | dict | str | None,
                 whose: str = "model") -> int:
    """The K_max to report: ValueError naming every field in which ``theirs`` (the scenes'
    system, in any form :func:`as_system` takes) differs from ``ours`` (``whose``: what
    holds it, as the message names it); K_max may be smaller than ours (it caps K)."""
    if theirs is None:
        return ours.K_max
    theirs = as_system(theirs, "the scenes' system")
    bad = _differing_fields(ours, theirs, whose)
    if bad:
        raise InputError(f"the scenes' system differs from the {whose}'s: " + "; ".join(bad))
    if theirs.K_max > ours.K_max:
        raise InputError(f"the scenes' K_max={theirs.K_max} exceeds the localizer's "
                         f"K_max={ours.K_max}")
    return theirs.K_max


def resolve_K(K, n_scenes: int, k_max: int) -> torch.Tensor | None:
    """Known source counts as [B] int64 in 1..k_max (:func:`check_source_counts`), or None."""
    return None if K is None else check_source_counts("K", K, n_scenes, k_max)


def _scatter(est: Estimates, ok: torch.Tensor, slots: int) -> Estimates:
    """Estimates of the good scenes placed back into the full batch (bad: K = 0, NaN)."""
    B = ok.shape[0]
    K = torch.zeros(B, dtype=torch.int64)
    K[ok] = est.K.cpu()
    out = {}
    for f in fields(Estimates):
        if f.name == "K":
            continue
        full = torch.full((B, slots), math.nan, dtype=torch.float32)
        part = getattr(est, f.name).float().cpu()[:, :slots]
        full[ok, :part.shape[1]] = part
        out[f.name] = full
    return Estimates(K=K, **out)


_WARNED: list[tuple[SystemConfig, FieldOfView]] = []  # those warned of in this process


def _warn_system_limits(system: SystemConfig, penalty: float, fov: FieldOfView) -> None:
    """Warn where the classical localizer's greedy search loses sources: K within 2 of M
    (a residual of M - K dimensions per snapshot; noise-free measurements in the guide),
    where its order test without an SNR cannot call a source beyond k (``penalty``: its
    nats per source), where elements so far apart put a grating lobe in the field of view
    ``fov``, and where a linear RIS cannot tell both angles (one element: nothing)."""
    if (system, fov) in _WARNED:  # (once per system: evaluate builds a Localizer per chunk)
        return
    _WARNED.append((system, fov))
    # (a review: spacing = lambda put MUSIC on the true covariance 48-65 deg off, at an alias
    # of the same cost as the truth)
    wide = [f"{axis} {limit / system.wavelength:.3g}" for axis, limit, n in zip(
        ("x", "y"), alias_free_spacing(system, fov), (system.N_H, system.N_V), strict=True)
        if n > 1 and system.spacing > limit * (1 + 1e-9)]
    if wide:
        log.warning("element spacing %.3g lambda: a source and its grating-lobe alias both "
                    "lie in the field of view searched (alias-free up to lambda over the span "
                    "of the direction cosine: %s lambda), and look alike to every localizer: "
                    "estimates may land at the alias", system.spacing / system.wavelength,
                    ", ".join(wide))
    M, k_max = system.M, system.K_max
    # (K = 1: no greedy step to go wrong; M = 2, K = 1 at 30 dB missed 1 of 16 scenes by > 1 deg)
    lost = [f"most of the scenes with K = M - 1 = {M - 1}"] if k_max >= M - 1 >= 2 else []
    if M >= 6 and k_max >= M - 2:
        lost.insert(0, f"about a third of the scenes with K = M - 2 = {M - 2}")
    if lost:
        log.warning("%d base-station antennas and up to K_max = %d sources: the classical "
                    "localizer misses sources in %s (docs/guide.md, 'The two localizers')",
                    M, k_max, " and ".join(lost))
    # without an SNR the order test reads the noise level a k-source fit leaves, C_k over its
    # L (M - k) - 1.5 k residual dimensions; where these are at most the penalty, the k-th
    # level keeps k sources whatever the next one explains (a review: M = 4, L = 10, K = 2
    # noise-free came back K = 1 in 3 of 3 scenes)
    stuck = [k for k in range(1, k_max) if residual_dof(k, system.L, M) <= penalty]
    if stuck:
        k = stuck[0]
        log.warning("%d snapshots and %d base-station antennas: without an SNR (and K) the "
                    "classical localizer's order test cannot call more than %d source(s) in "
                    "most scenes (a %d-source fit leaves L (M - k) - 1.5 k = %g residual "
                    "dimensions, not above its penalty of %.1f per source): give the SNR or "
                    "K for scenes with more sources", system.L, M, k, k,
                    residual_dof(k, system.L, M), penalty)
    if system.N == 1:  # (a user's review: it was said to tell an angle and the range)
        log.warning("a RIS of one element tells neither angle nor the range of a source: "
                    "every estimate of a position is arbitrary (its steering is the same "
                    "for every direction and range)")
    elif 1 in (system.N_H, system.N_V):
        log.warning("a linear RIS (%d x %d elements) tells one angle of a source, its angle "
                    "to the line, and its range: azimuth and elevation themselves come back "
                    "arbitrary along that cone (risloc.evaluation.crb names the bound "
                    "singular: take a coordinate as known)", system.N_H, system.N_V)


class Localizer:
    """Localize sources from scene measurements (module docstring).

    system : the system of the scenes; method : "learned" (needs ``pipeline``) or
    "classical"; fov : the field of view the classical localizer searches (default: the
    conventions' -60..60 deg x -30..30 deg x 0.5..10 m; the learned pipeline searches its
    network's); workers : CPU threads a batch is split over (None: one per core, at most 8); chunk :
    scenes per pass on CPU (None: one pass per worker; memory grows with the batch);
    graph_batch : learned method on CUDA: run the scenes in passes of this many, each the
    replay of a captured CUDA graph (:class:`risloc.pipeline.graphs.GraphedLocalize`;
    None: eager calls; ignored on the CPU). A pass that does not fit in the device's
    memory is an error then, not halved: choose a smaller graph_batch.
    """

    def __init__(self, system: SystemConfig, method: str = "classical",
                 pipeline: LearnedPipeline | None = None, workers: int | None = None,
                 fov: FieldOfView | None = None, chunk: int | None = MAX_CHUNK,
                 graph_batch: int | None = None):
        for name, value in (("workers", workers), ("chunk", chunk),
                            ("graph_batch", graph_batch)):
            if value is not None and not is_whole(value):
                raise InputTypeError(f"{name} must be a whole number or None, got "
                                     f"{type(value).__name__} {value!r}")
        if workers is not None and workers < 1:
            raise InputError(f"workers must be >= 1, got {workers}")
        if chunk is not None and chunk < 1:
            raise InputError(f"chunk must be >= 1 or None, got {chunk}")
        if graph_batch is not None and graph_batch < 1:
            raise InputError(f"graph_batch must be >= 1 or None, got {graph_batch}")
        system = as_system(system)
        if isinstance(fov, dict):  # (as the system may be)
            unknown = set(fov) - {"azimuth_deg", "elevation_deg", "range_m"}
            if unknown:
                raise InputError(f"fov: unknown field(s) {sorted(unknown)}; a field of view "
                                 "has azimuth_deg, elevation_deg and range_m")
            fov = FieldOfView(**fov)
        elif fov is not None and not isinstance(fov, FieldOfView):
            raise InputTypeError(f"fov must be a FieldOfView, a dict of its fields or None, "
                                 f"got {type(fov).__name__}")
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}")
        if method == "learned" and pipeline is None:
            raise InputError("the learned method needs a pipeline: use "
                             "Localizer.from_checkpoint")
        if method == "learned" and fov is not None and fov != pipeline.fov:
            raise InputError(f"the learned pipeline searches its network's field of view "
                             f"{pipeline.fov}; it cannot search {fov}")
        self.system, self.method, self.pipeline, self.workers = system, method, pipeline, workers
        self.chunk = chunk
        self.fov = pipeline.fov if method == "learned" else (fov or FieldOfView())
        # (its grid as dense for this system and field of view as the default's for theirs)
        self.classical_config = ClassicalConfig().with_fov(self.fov).for_system(self.system)
        if method == "classical":
            penalty = self.classical_config.penalty
            _warn_system_limits(system, default_penalty(system.L) if penalty is None
                                else penalty, self.fov)
        self.graphed = (GraphedLocalize(pipeline, graph_batch)
                        if method == "learned" and graph_batch is not None else None)

    def __repr__(self) -> str:
        return (f"Localizer({self.method!r}, {self.system.describe()}; searching "
                f"{self.fov.describe()})")

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, workers: int | None = None,
                        graph_batch: int | None = None, chunk: int | None = MAX_CHUNK
                        ) -> Localizer:
        """The learned localizer of a checkpoint (None = the shipped default model); the
        other arguments as the constructor's."""
        pipeline = load_learned_pipeline(path)
        return cls(pipeline.system, "learned", pipeline, workers, chunk=chunk,
                   graph_batch=graph_batch)

    def localize(self, y, H, codes, snr_db=None, K=None,
                 system: SystemConfig | dict | None = None) -> LocalizationResult:
        """Localize one scene or a batch (module docstring).

        y [B, L, M] or [L, M], H [B, M, N] or [M, N], codes [B, L, N] or [L, N]: complex
        arrays; snr_db : None, a number or [B] (NaN = unknown) [dB]; K : None (estimated),
        an int or [B] ints (known counts); system : the scenes' system, checked.
        """
        y, H, codes = (_as_tensor(n, t) for n, t in (("y", y), ("H", H), ("codes", codes)))
        same_device(y=y, H=H, codes=codes)
        with float32_default():
            return self._localize(y, H, codes, snr_db, K, system)

    def _localize(self, y, H, codes, snr_db, K, system) -> LocalizationResult:
        dims = (y.ndim, H.ndim, codes.ndim)
        if dims == (2, 2, 2):
            y, H, codes = y.unsqueeze(0), H.unsqueeze(0), codes.unsqueeze(0)
        elif 2 in dims and set(dims) <= {2, 3}:
            raise InputError(f"y, H and codes have {dims[0]}, {dims[1]} and {dims[2]} "
                             "dimensions: give one scene (all 2-dimensional: [L, M], [M, N], "
                             "[L, N]) or a batch (all 3-dimensional, scenes first), not a mix")
        try:  # the whole difference named before the shapes it implies are checked
            k_max = check_system(self.system, system,
                                 "model" if self.method == "learned" else "localizer")
        except InputError as err:
            if self.method != "learned":
                raise
            raise InputError(f"{err} (a model serves the system it was trained for; the "
                             "classical localizer takes any: Localizer(system, "
                             "'classical'), in the CLI --method or --estimators "
                             "classical)") from None
        try:
            check_shapes(y, H, codes, self.system)
        except InputError as err:
            if self.method != "learned" or "the measurements have" not in str(err):
                raise
            raise InputError(f"{err}: scenes of another system than the model's (a model "
                             "serves the system it was trained for; the classical localizer "
                             "takes any: Localizer(system, 'classical'))") from None
        B = y.shape[0]
        snr = snr_per_scene(snr_db, B)
        Kt = resolve_K(K, B, k_max)
        check = scene_problems(y, H, codes)
        for i, reason in check.reasons:
            log.warning("scene %d skipped: %s", i, reason)
        ok = check.ok.cpu()
        if not bool(ok.any()):
            nan = [torch.full((B, k_max), math.nan) for _ in range(4)]
            return LocalizationResult(Estimates(torch.zeros(B, dtype=torch.int64), *nan),
                                      check.reasons)
        dev = y.device
        keep = None if bool(ok.all()) else ok.nonzero().flatten()  # None: every scene
        snr = snr if snr is None or keep is None else snr[keep]
        Kt = Kt if Kt is None or keep is None else Kt[keep]

        def run(lo: int, hi: int) -> Estimates:
            # scaled and converted per pass (per scene, so as for the whole batch): memory
            # does not grow with the batch beyond the caller's arrays
            rows = slice(lo, hi) if keep is None else keep[lo:hi].to(dev)
            yn, Hn = normalise_scale(y[rows], H[rows])
            return self._run(yn.to(torch.complex64), Hn.to(torch.complex64),
                             codes[rows].to(torch.complex64),
                             None if snr is None else snr[lo:hi],
                             None if Kt is None else Kt[lo:hi], k_max)

        parts = run_in_chunks(run, B if keep is None else keep.numel(), self.workers, dev,
                              self.chunk)
        # the slots of the scenes' system: K_max of them (a smaller K_max caps K)
        est = _scatter(concat_estimates([p.to("cpu") for p in parts]), ok, k_max)
        return LocalizationResult(est, check.reasons)

    def _run(self, y, H, codes, snr, K, k_max: int) -> Estimates:
        if self.method == "classical":
            return classical_localize(y, H, codes, self.system.model_copy(
                update={"K_max": k_max}), K=K, snr_db=snr, config=self.classical_config)
        if self.graphed is not None and y.device.type == "cuda":
            return self._replayed(y, H, codes, snr, K, k_max)
        return self.pipeline.localize(y, H, codes, snr, K, k_max=k_max)

    def _replayed(self, y, H, codes, snr, K, k_max: int) -> Estimates:
        """The graphed call. Its passes are padded to graph_batch scenes, so one that runs
        out of memory is not retried on halves (as eager passes are: each half would be
        padded back to the same size); an error that says what to change instead."""
        try:
            return self.graphed(y, H, codes, snr, K, k_max=k_max)
        except torch.cuda.OutOfMemoryError:
            raise InputError(
                f"a CUDA graph of the learned call on {self.graphed.batch} scenes does not fit "
                "in the GPU's memory: choose a smaller graph_batch (risloc localize --graphs: "
                "a smaller --batch-size), or none (eager passes, halved where they do not "
                "fit)") from None
