"""Input checks: the one path that decides, before any estimator runs, which scenes of a
batch can be localized (and why not), and the one rule for a missing SNR.

* :func:`as_tensor` — a user's array (NumPy or torch, any memory layout or byte order) as a
  contiguous tensor in native byte order, or an InputTypeError naming it.
* :func:`check_shapes` — shapes and dtypes of a batch: a ValueError naming the array.
* :func:`scene_problems` — per scene: non-finite values, an empty measurement (all-zero y),
  an all-zero channel, codes that are not unit modulus (docs/conventions.md). Magnitudes are
  not a problem: :func:`normalise_scale` rescales y and H per scene first, so only a truly
  empty scene fails.
* :func:`check_measurements` — the raising form the estimators call on their inputs.
* :func:`snr_per_scene` — the SNR of a batch: None, a number or one per scene; NaN marks
  a scene whose SNR is unknown, and only that scene.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from risloc.config import (
    SNR_LIMIT_DB,
    ConfigError,
    SystemConfig,
    system_from_json,
    validate_system,
)

CODE_TOLERANCE = 1e-3  # largest | |c| - 1 | accepted for a RIS code entry


class InputError(ValueError):
    """Input that risloc cannot use: a wrong shape, value or system (names the problem)."""


class InputTypeError(TypeError):
    """Input of the wrong type: not an array, not complex, not numeric."""


class SceneCheck(NamedTuple):
    """ok : [B] bool — scenes the estimators can process; reasons : (scene index, why) for
    every other scene, in index order."""

    ok: torch.Tensor
    reasons: tuple[tuple[int, str], ...]


def is_whole(value) -> bool:
    """Whether ``value`` is a whole number (Python's or NumPy's int), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_tensor(name: str, x) -> torch.Tensor:
    """``x`` as a contiguous torch tensor in native byte order, outside any autograd graph
    (data, not parameters). Users' arrays come as they come: Fortran order from
    ``scipy.io.loadmat``, transposed or flipped views, big-endian from another machine's
    file, tensors that require grad; inside, reshapes assume a contiguous layout."""
    if x is None:
        raise InputTypeError(f"{name} is required, got None")
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided:
            raise InputTypeError(f"{name} must be a dense array, got a {x.layout} tensor "
                                 "(.to_dense() makes one)")
        # (a lazily conjugated or negated view, as x.conj() gives, made a plain tensor)
        return x.detach().resolve_conj().resolve_neg().contiguous()
    try:
        a = np.asarray(x)
        if a.dtype.byteorder not in "=|":
            a = a.astype(a.dtype.newbyteorder("="))
        if a.dtype.kind in "fc" and a.dtype.itemsize > (8 if a.dtype.kind == "f" else 16):
            a = a.astype(np.float64 if a.dtype.kind == "f" else np.complex128)  # long double
        # a read-only array (np.load(mmap_mode="r"), setflags(write=False)) copied: torch cannot
        # share it without a warning to the user; (np.ascontiguousarray would make a 0-d
        # array, a number, 1-d)
        return torch.from_numpy(a if a.flags.c_contiguous and a.flags.writeable else
                                np.array(a, order="C"))
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputTypeError(f"{name} must be a numeric array ({err})") from None


def check_shapes(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                 system: SystemConfig | None = None) -> None:
    """ValueError / TypeError unless y [B, L, M], H [B, M, N], codes [B, L, N] are complex
    tensors of consistent shapes (and of ``system``'s L, M, N when given)."""
    for name, t in (("y", y), ("H", H), ("codes", codes)):
        if not isinstance(t, torch.Tensor):
            raise InputTypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.ndim != 3:
            raise InputError(f"{name} must be 3-dimensional (scenes first), got shape "
                             f"{tuple(t.shape)}")
        if t.dtype not in (torch.complex64, torch.complex128):  # (complex32: half precision)
            raise InputTypeError(f"{name} must be complex (complex64 or complex128), got "
                                 f"{t.dtype}")
    if system is not None:  # a MATLAB user's batch, scenes last (as is, or read reversed)
        dims = {"y": (system.L, system.M), "H": (system.M, system.N),
                "codes": (system.L, system.N)}
        got = {"y": tuple(y.shape), "H": tuple(H.shape), "codes": tuple(codes.shape)}
        # every array as is, or every one reversed: a mix is no layout of one batch (a
        # transposed y with B = L = N has y as is and H reversed, and is named below)
        as_is = all(g[:2] == dims[n] for n, g in got.items())
        flip = all(g[:2] == dims[n][::-1] for n, g in got.items())
        if (len({g[-1] for g in got.values()}) == 1 and (as_is or flip)
                and any(g[1:] != dims[n] for n, g in got.items())):
            moved = ": np.moveaxis(x, -1, 0) in NumPy"
            reversed_ = (": np.transpose(x, (2, 1, 0)) in NumPy, each array's axes reversed "
                         "(as MATLAB's files hold them)")
            raise InputError(
                f"the scene axis comes last (y {got['y']}, H {got['H']}, codes "
                f"{got['codes']}): scenes go first, y [B, L, M], H [B, M, N], codes [B, L, N]"
                + (moved if not flip else reversed_ if not as_is else
                   f"{moved} where they were kept scenes last, or{reversed_[1:]}: with L = M "
                   "= N the shapes cannot tell, and the wrong one is localized wrongly "
                   "without a word"))
    (B, L, M), N = y.shape, H.shape[-1]
    L_codes, M_H = codes.shape[1], H.shape[1]
    if (L, M) != (L_codes, M_H) and (M, L) == (L_codes, M_H):  # L == M: cannot be seen
        raise InputError(f"y {tuple(y.shape)} looks transposed: codes have L={L_codes} "
                         f"snapshots and H M={M_H} antennas, so y must be [B, L, M] "
                         f"(snapshots first), e.g. y.transpose(-1, -2)")
    N_codes = codes.shape[2]
    if tuple(H.shape[1:]) == (N_codes, M) and M != N_codes:  # (M == N: cannot be seen)
        raise InputError(f"H {tuple(H.shape)} looks transposed: y has M={M} antennas and the "
                         f"codes N={N_codes} elements, so H must be [B, M, N] (antennas "
                         f"first), e.g. H.transpose(-1, -2)")
    if system is not None:
        bad = [f"{name}={got} (the system's: {want})" for name, got, want in
               (("L", L, system.L), ("M", M, system.M), ("N", N, system.N)) if got != want]
        if bad:
            raise InputError(f"the measurements have {', '.join(bad)}")
    if B == 0:
        raise InputError("empty batch: y has no scenes")
    if tuple(H.shape) != (B, M, N) or tuple(codes.shape) != (B, L, N):
        raise InputError(f"shape mismatch: y {tuple(y.shape)} needs H ({B}, {M}, {N}) and "
                         f"codes ({B}, {L}, {N}); got {tuple(H.shape)}, {tuple(codes.shape)}")


def _finite(t: torch.Tensor) -> torch.Tensor:
    """[B] bool — every entry of the scene finite."""
    return torch.isfinite(torch.view_as_real(t)).flatten(1).all(1)


def _nonzero(t: torch.Tensor) -> torch.Tensor:
    """[B] bool — some entry of the scene non-zero."""
    return (torch.view_as_real(t) != 0).flatten(1).any(1)


def scene_problems(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor) -> SceneCheck:
    """Per-scene check of a batch (module docstring): y [B, L, M], H [B, M, N], codes
    [B, L, N] complex tensors of consistent shapes (:func:`check_shapes`, which names what
    is wrong otherwise)."""
    check_shapes(y, H, codes)
    finite = {name: _finite(t) for name, t in (("y", y), ("H", H), ("codes", codes))}
    modulus = codes.abs().to(torch.float64)
    unit = ((modulus - 1.0).abs() <= CODE_TOLERANCE).flatten(1).all(1)
    real = (codes.imag == 0).flatten(1).all(1)
    bits = ((codes.real == 0) | (codes.real == 1)).flatten(1).all(1)
    rules = [
        (~finite["y"] | ~finite["H"] | ~finite["codes"], None),
        (~_nonzero(y), "all-zero measurements y (nothing received)"),
        (~_nonzero(H), "all-zero channel H"),
        (~unit & real & bits,
         "codes of 0 and 1 (bits? a 1-bit RIS's codes are 1 - 2 b, +-1)"),
        (~unit & real & (codes.real.abs() > 2 * math.pi + 1e-6).flatten(1).any(1),
         "codes are real and beyond 2 pi (phases in degrees? store the codes themselves, "
         "exp(1j * np.deg2rad(phase)), exp(1i * deg2rad(phase)) in MATLAB)"),
        (~unit & real & (codes.real.abs() <= 1.0 + CODE_TOLERANCE).flatten(1).all(1),
         "codes are real and not +-1, all within [-1, 1] (their real part only? store the "
         "complex codes, codes_re + 1j * codes_im in NumPy, complex(re, im) in MATLAB; "
         "phases in radians: exp(1j * phase))"),
        (~unit & real,
         "codes are real and not +-1 (phases? store the codes themselves, exp(1j * phase), "
         "exp(1i * phase) in MATLAB, phase in radians)"),
        (~unit, f"codes are not unit modulus (| |c| - 1 | > {CODE_TOLERANCE:g})"),
    ]
    ok = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
    why: dict[int, str] = {}
    for bad, text in rules:
        bad = bad & ok
        for i in torch.nonzero(bad).flatten().tolist():
            why[i] = text or "non-finite values in " + ", ".join(
                n for n in ("y", "H", "codes") if not bool(finite[n][i]))
        ok &= ~bad
    return SceneCheck(ok, tuple(sorted(why.items())))


def normalise_scale(y: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y / rms(y) and H / rms(H) per scene, computed in double precision (complex128 out).

    Every estimator's positions and K are invariant to the units of y and H (tested); this
    keeps float32 arithmetic away from under- and overflow (y x 1e-30 squared is 0 in
    float32). Scenes with an all-zero y or H are left as they are. y [B, L, M] and
    H [B, M, N] (a batch, scenes first: one scene is y[None], H[None]).
    """
    y, H = as_tensor("y", y), as_tensor("H", H)
    if y.ndim != 3 or H.ndim != 3 or y.shape[0] != H.shape[0]:
        raise InputError(f"y and H must be batches of the same scenes, [B, L, M] and "
                         f"[B, M, N]; got {tuple(y.shape)} and {tuple(H.shape)} (one scene: "
                         "y[None], H[None])")

    def unit_rms(t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.complex128)
        scale = torch.view_as_real(t).abs().flatten(1).amax(1)  # pre-scale: no overflow
        t = t / torch.where(scale > 0, scale, 1.0).view(-1, 1, 1)
        rms = torch.view_as_real(t).square().flatten(1).mean(1).mul(2).sqrt()
        return t / torch.where(rms > 0, rms, 1.0).view(-1, 1, 1)

    return unit_rms(y), unit_rms(H)


def check_measurements(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                       system: SystemConfig) -> None:
    """Raise ValueError unless y [B, L, M], H [B, M, N], codes [B, L, N] are consistent
    (N from ``system``), finite, with non-empty y and H in every scene."""
    check_shapes(y, H, codes)
    if H.shape[-1] != system.N:
        raise InputError(f"H has N={H.shape[-1]} columns but the system has N={system.N}")
    finite = _finite(y) & _finite(H) & _finite(codes)
    empty_H, empty_y = ~_nonzero(H), ~_nonzero(y)
    if not bool((empty_H | empty_y | ~finite).any()):  # the one read of the device on good input
        return
    if not bool(finite.all()):
        raise InputError(f"non-finite values (NaN or inf) in scenes "
                         f"{torch.nonzero(~finite).flatten()[:10].tolist()}")
    raise InputError("; ".join(
        f"all-zero {which} in scenes {torch.nonzero(empty).flatten()[:10].tolist()}"
        for which, empty in (("channel H", empty_H), ("measurements y", empty_y))
        if bool(empty.any())))


def check_positions(az: torch.Tensor, el: torch.Tensor, r: torch.Tensor, mask: torch.Tensor,
                    M: int) -> None:
    """Raise ValueError on bad start positions [B, K] / too many sources (K >= M)."""
    if not (az.shape == el.shape == r.shape == mask.shape) or az.ndim != 2:
        raise InputError(f"positions and mask must share one [B, K] shape; got "
                         f"{tuple(az.shape)}, {tuple(el.shape)}, {tuple(r.shape)}, "
                         f"{tuple(mask.shape)}")
    K = mask.sum(-1)
    finite = torch.isfinite(torch.stack([az, el, r])).all(0)
    bad = torch.stack([(K >= M).any(), (mask & ~finite).any(),
                       (mask & (r <= 0)).any()]).tolist()  # one read of the device
    if bad[0]:
        raise InputError(f"K >= M={M} sources cannot be resolved (got K up to {int(K.max())})")
    if bad[1]:
        raise InputError("start positions of real source slots must be finite")
    if bad[2]:
        raise InputError("ranges must be positive")


def matlab_vector(t: torch.Tensor, n: int) -> torch.Tensor:
    """A row (1, n) or column (n, 1) of n values, as scipy.io.loadmat returns MATLAB's
    vectors, read as the vector (n,); anything else as it is."""
    if t.ndim == 2 and t.numel() == n and 1 in t.shape:
        return t.reshape(n)
    return t


def check_source_counts(name: str, K, n_scenes: int, k_max: int) -> torch.Tensor:
    """A user's known source counts as [B] int64 on the CPU, each in 1..k_max.

    K : a number for every scene, or ``n_scenes`` numbers (tensor / array / sequence, a
        MATLAB row or column read as a vector); whole floats pass, as do integers of any
        width. InputTypeError for no number (str, bool, complex); InputError naming ``name``,
        the first offending scene and its value for a fraction, NaN, a count outside
        1..k_max (K = 0 would return no sources) or the wrong number of values.
    """
    if isinstance(K, str | bytes):
        raise InputTypeError(f"{name} must be an integer or integers, got {type(K).__name__}")
    try:  # any byte order, device or autograd state (as_tensor)
        t = as_tensor(name, K).cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputTypeError(f"{name} must be an integer or integers, got {type(K).__name__} "
                             f"({err})") from None
    if t.dtype == torch.bool or t.is_complex():  # (a mask, not counts)
        raise InputTypeError(f"{name} must be an integer or integers, got {t.dtype}")
    if t.dtype == torch.uint64:  # (one above int64's range would read as negative: named as
        t = t.to(torch.float64)  # a float, 1.8e+19; whole counts in 1..k_max stay exact)
    elif not t.is_floating_point():  # (torch compares no unsigned type but uint8)
        t = t.to(torch.int64)
    scalar = t.ndim == 0
    t = matlab_vector(t.expand(n_scenes) if scalar else t, n_scenes)
    if t.shape != (n_scenes,):
        raise InputError(f"{name} must be a number or hold one value per scene ({n_scenes}), "
                         f"got shape {tuple(t.shape)}")
    # in K's own type: 1e20 or inf named as given, NaN as not whole
    for bad, rule in ((t != t.round(), "hold whole numbers of sources"),
                      ((t < 1) | (t > k_max), f"lie in 1..K_max={k_max}")):
        where = torch.nonzero(bad).flatten()
        if where.numel():
            i, value = int(where[0]), t[int(where[0])].item()
            scene = "" if scalar else f" in scene {i}" + (
                f" (and {where.numel() - 1} more)" if where.numel() > 1 else "")
            hint = " (K = 0 would return no sources)" if value == 0 else ""
            raise InputError(f"{name} must {rule}, got {value:g}{scene}{hint}")
    return t.to(torch.int64).clone()  # (never a view of the caller's K)


def snr_per_scene(snr_db, n_scenes: int, device: torch.device | str | None = None
                  ) -> torch.Tensor | None:
    """The one rule for a missing SNR: [B] float32 [dB] with NaN where a scene's SNR is
    unknown, or None when no scene has one.

    snr_db : None, a number, or B numbers (tensor / array / sequence); a NaN marks that
        scene's SNR as unknown and leaves the others alone. +-inf is an error.
    """
    if snr_db is None:
        return None
    if isinstance(snr_db, str | bytes):
        raise InputTypeError(f"snr_db must be numeric, got {type(snr_db).__name__}")
    try:  # any byte order or layout, as the measurements (as_tensor)
        snr = as_tensor("snr_db", snr_db)
        if snr.is_complex() or snr.dtype == torch.bool:
            raise TypeError(f"dtype {snr.dtype}")
        snr = snr.to(device=device, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputTypeError(f"snr_db must be numeric, got {type(snr_db).__name__} "
                             f"({err})") from None
    if snr.ndim == 0:
        snr = snr.expand(n_scenes).clone()
    snr = matlab_vector(snr, n_scenes)
    if snr.shape != (n_scenes,):
        raise InputError(f"snr_db must be a number or hold one value per scene ({n_scenes}), "
                         f"got shape {tuple(snr.shape)}")
    if bool(torch.isinf(snr).any()):
        raise InputError("snr_db holds +-inf; use NaN for a scene whose SNR is unknown")
    beyond = torch.nonzero(snr.abs() > SNR_LIMIT_DB).flatten()
    if beyond.numel():
        i = int(beyond[0])
        raise InputError(f"snr_db must lie within +-{SNR_LIMIT_DB:g} dB (beyond about +-380 dB "
                         "the noise-to-signal power ratio leaves float32's range), got "
                         f"{float(snr[i]):g} in scene {i}; use NaN for a scene whose SNR is "
                         "unknown")
    # (never the caller's own tensor, as check_source_counts: a float32 [B] came back as is)
    return None if bool(torch.isnan(snr).all()) else snr.clone()


__all__ = ["CODE_TOLERANCE", "InputError", "InputTypeError", "SceneCheck",
           "check_measurements", "check_positions", "check_shapes", "check_source_counts",
           "normalise_scale", "scene_problems", "snr_per_scene"]


def same_device(**tensors: torch.Tensor) -> torch.device:
    """The one device of ``tensors`` (InputError naming each one's where they differ, or
    where it is the 'meta' device, which holds shapes but no values)."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise InputError("the inputs must be on one device, got " + ", ".join(
            f"{name} on {dev}" for name, dev in devices.items()))
    dev = next(iter(devices.values()))
    if dev.type == "meta":
        raise InputError("the inputs are on the 'meta' device, which holds shapes but no "
                         "values: give the arrays themselves")
    return dev


@contextlib.contextmanager
def float32_default() -> Iterator[None]:
    """Torch's default dtype float32 inside: the package builds its constants (grids,
    stencils, network buffers) in the default dtype, and a caller's
    ``torch.set_default_dtype(torch.float64)`` would make them float64 beside float32
    weights. (Process-wide state: set by the caller's thread around the whole call.)"""
    old = torch.get_default_dtype()
    if old == torch.float32:  # the usual case: nothing process-wide is touched
        yield
        return
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def as_system(system: Any, name: str = "system") -> SystemConfig:
    """A SystemConfig from itself, a dict of its fields, or its JSON text (a str, bytes or
    0-d NumPy array, as ``np.load`` returns a scene file's ``system``); TypeError for any
    other type, ValueError naming the fields of an invalid one."""
    if isinstance(system, SystemConfig):
        return system
    if isinstance(system, np.ndarray) and system.ndim == 0:
        system = system.item()
    try:
        if isinstance(system, dict):
            return validate_system(system)
        if isinstance(system, str | bytes):
            if system.lstrip()[:1] not in ("{", b"{"):  # e.g. Localizer("classical")
                raise InputTypeError(f"{name} must be a SystemConfig, a dict of its fields "
                                     f"or its JSON text, got the string {system!r:.40}")
            return system_from_json(system)
    except ConfigError as err:
        raise InputError(f"{name}: {err}") from None
    raise InputTypeError(f"{name} must be a SystemConfig, a dict of its fields or its JSON "
                         f"text, got {type(system).__name__}")
