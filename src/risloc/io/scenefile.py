"""Scene files (docs/conventions.md, "Scene file"): HDF5 (.h5) or NumPy (.npz).

| name | dtype | shape | required |
| y | complex64 | (S, L, M) | yes |
| H | complex64 | (S, M, N) | yes |
| codes | complex64 | (S, L, N) | yes |
| snr_db | float32 | (S,) | no |
| K | int | (S,) | no (truth) |
| azimuth_deg, elevation_deg, range_m | float32 | (S, K_max) | no (truth, NaN-padded) |

The system is a JSON string in the attribute (HDF5) / array (NPZ) ``system``; risloc also
records the full configuration (``config``), the split, seed and package version.

Writing is atomic (:mod:`risloc.io.atomic`): data go to a temporary file and are renamed
when complete, so an interrupted run never leaves a truncated file under the final name,
and the next run removes the temporary a killed one left.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from risloc.config import (
    MATLAB_SYSTEM,
    SNR_LIMIT_DB,
    ConfigError,
    FieldOfView,
    SystemConfig,
    system_from_json,
)
from risloc.core.checks import as_system, as_tensor, is_whole
from risloc.io.atomic import (
    atomic_path,
    commit_temporary,
    remove_stale_temporaries,
    temporary_name,
)
from risloc.simulation.scenes import SceneBatch

REQUIRED = ("y", "H", "codes")
TRUTH = ("azimuth_deg", "elevation_deg", "range_m")


H5_SUFFIXES = (".h5", ".hdf5")  # compared case-insensitively (a file named DATA.H5 is HDF5)


def is_npz(path: str | Path) -> bool:
    """Whether ``path`` names a NumPy .npz scene file (any case); every other name is read
    as HDF5."""
    return Path(path).suffix.lower() == ".npz"


class SceneFileError(ValueError):
    """A scene file is unreadable or inconsistent."""


def _system_json(system: SystemConfig) -> str:
    return system.model_dump_json()


@dataclass(frozen=True)
class SceneFileInfo:
    """What a scene file holds (without loading the arrays)."""

    path: Path
    n_scenes: int
    system: SystemConfig
    has_truth: bool
    has_snr: bool
    K_slots: int
    attrs: dict[str, Any]
    truth_problems: tuple[tuple[int, str], ...] = ()  # (scene, reason): at most TRUTH_LISTED
    n_truth_problems: int = 0  # scenes whose truth cannot be scored (all of them)
    notes: tuple[str, ...] = ()  # how its truth is read where not as written, or not used
    unread: tuple[tuple[str, str | None], ...] = ()  # (entry, the contract name it resembles)

    @property
    def system_assumed(self) -> bool:
        """The file has no ``system`` attribute: the default system is assumed."""
        return "system" not in self.attrs


# ----------------------------------------------------------------------------- writing

def scene_file_bytes(n: int, system: SystemConfig) -> int:
    """About the bytes of ``n`` scenes of ``system`` in a scene file (complex64)."""
    s = system
    return n * 8 * (s.L * s.M + s.M * s.N + s.L * s.N + 4 * s.K_max + 2)


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux's MemAvailable); None
    where it cannot be told."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_room(path: Path, n: int, system: SystemConfig, built: bool = False) -> None:
    """SceneFileError before any work where ``n`` scenes will not fit: on the disk of
    ``path``'s folder, and for an .npz not yet ``built`` (simulated whole in memory, then
    copied as written), in the memory available."""
    path = Path(path)
    need = scene_file_bytes(n, system)
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    if need > free:
        raise SceneFileError(f"{path}: {n} scenes need about {need / 1e6:.0f} MB, and "
                             f"{folder} has {free / 1e6:.0f} MB free")
    memory = available_memory()
    if is_npz(path) and not built and memory is not None and 3 * need > memory:  # 2.7x
        raise SceneFileError(f"{path}: an .npz is built whole in memory: {n} scenes need "
                             f"about {3 * need / 1e6:.0f} MB of it, and {memory / 1e6:.0f} MB "
                             "are available; write an .h5 (written chunk by chunk) or fewer "
                             "scenes (--shard splits them over files)")


class SceneFileWriter:
    """Write scenes to an HDF5 file in chunks, atomically.

    >>> with SceneFileWriter(path, n, system, attrs) as w:
    ...     w.write(0, batch0); w.write(len(batch0), batch1)
    """

    def __init__(self, path: str | Path, n_scenes: int, system: SystemConfig | dict | str,
                 attrs: dict[str, Any] | None = None, with_truth: bool = True):
        self.path = Path(path)
        system = as_system(system)  # (a dict or JSON text, as write_scenes takes it)
        if self.path.suffix.lower() not in H5_SUFFIXES:
            raise SceneFileError(f"{self.path}: scene files are written as .h5 / .hdf5 "
                                 "(HDF5; MATLAB reads them with h5read) or, whole "
                                 f"(write_scenes), .npz; got {self.path.name!r}")
        if n_scenes < 1:
            raise SceneFileError(f"{self.path}: nothing to write (0 scenes)")
        _refuse_folder(self.path)
        self.tmp = temporary_name(self.path)
        self.n, self.system = n_scenes, system
        self.attrs = _check_attrs(attrs, self.path, system)
        self.with_truth = with_truth
        self._f: h5py.File | None = None
        self._covered = np.zeros(0, dtype=bool)  # scenes written so far (sized on entry)

    def __enter__(self) -> SceneFileWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        check_room(self.path, self.n, self.system)  # (HDF5 may crash on a full disk)
        self._covered = np.zeros(self.n, dtype=bool)  # (after the check: n may be absurd)
        # no chunk cache: a write the disk refuses (full, a quota, a file-size limit) fails
        # in write() as an OSError; cached, it failed as HDF5 evicted the chunk, in a
        # dataset's __del__, and the process crashed at exit (segfault)
        self._f = h5py.File(self.tmp, "w", rdcc_nbytes=0)
        try:
            self._layout()
        except BaseException:  # nothing left behind (a full disk, a bad attribute)
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _layout(self) -> None:
        """The file's datasets and attributes (the scenes come with :meth:`write`)."""
        f, s, n = self._f, self.system, self.n
        chunk = max(1, min(n, 256))
        f.create_dataset("y", (n, s.L, s.M), np.complex64, chunks=(chunk, s.L, s.M))
        f.create_dataset("H", (n, s.M, s.N), np.complex64, chunks=(chunk, s.M, s.N))
        f.create_dataset("codes", (n, s.L, s.N), np.complex64, chunks=(chunk, s.L, s.N))
        f.create_dataset("snr_db", (n,), np.float32)
        if self.with_truth:
            f.create_dataset("K", (n,), np.int32)
            for name in TRUTH:
                f.create_dataset(name, (n, s.K_max), np.float32)
        f.attrs["system"] = _system_json(s)
        for k, v in self.attrs.items():  # (an int beyond 64 bits, e.g. a seed: as text)
            native = isinstance(v, float | str) or (isinstance(v, int) and -2**63 <= v < 2**64)
            f.attrs[k] = v if native else json.dumps(v, default=_plain)

    def write(self, start: int, batch: SceneBatch) -> None:
        """Scenes ``start .. start + len(batch) - 1`` (fields torch tensors or any arrays)."""
        f = self._f
        if f is None:
            raise RuntimeError("SceneFileWriter.write outside its 'with' block")
        if isinstance(start, bool) or not isinstance(start, int | np.integer) or start < 0:
            raise SceneFileError(f"{self.path}: start must be a scene index >= 0, got "
                                 f"{start!r}")
        stop = start + len(batch)
        if stop > self.n:
            raise SceneFileError(f"writing scenes {start}..{stop} past the end ({self.n})")
        if self._covered[start:stop].any():
            again = np.flatnonzero(self._covered[start:stop]) + start
            raise SceneFileError(f"{self.path}: scene(s) {listed_scenes(again)} were written "
                                 "already (each scene is written once)")
        if self.with_truth and not batch.has_truth:
            raise SceneFileError(f"{self.path}: the scenes carry no truth, but the writer "
                                 "stores it (open it with with_truth=False)")
        batch = _as_tensors(batch)
        check_batch(batch, self.system, self.path)
        arrays = batch_to_arrays(batch, self.system.K_max)
        for name, arr in arrays.items():
            if name in f:
                f[name][start:stop] = arr
        self._covered[start:stop] = True

    def __exit__(self, exc_type, exc, tb) -> None:
        f, self._f = self._f, None
        try:
            if f is not None:
                f.close()
        except BaseException as err:  # (a full disk fails at the close's flush)
            with contextlib.suppress(Exception):  # the file's own id, left open by the
                f.id.close()  # failed close: HDF5 flushed it again at exit and crashed
            self.tmp.unlink(missing_ok=True)
            if exc_type is not None:  # the error of the writes is the one to report
                return
            if isinstance(err, RuntimeError):  # (h5py's for a failed flush: an I/O error)
                raise OSError(f"{self.path}: the file could not be completed ({err}); "
                              "nothing was saved") from None
            raise
        if exc_type is not None or not self._covered.all():
            self.tmp.unlink(missing_ok=True)
            if exc_type is None:
                missing = np.flatnonzero(~self._covered)
                raise SceneFileError(f"{self.path}: only {self.n - missing.size} of {self.n} "
                                     f"scenes were written (missing: {listed_scenes(missing)}); "
                                     "nothing was saved")
            return
        commit_temporary(self.tmp, self.path)


def check_batch(batch: SceneBatch, system: SystemConfig, path: Path) -> None:
    """SceneFileError unless the scenes' shapes and source counts fit ``system`` (so that a
    file is never written that its readers refuse)."""
    B, s = len(batch), system
    for name, t, want in (("y", batch.y, (B, s.L, s.M)), ("H", batch.H, (B, s.M, s.N)),
                          ("codes", batch.codes, (B, s.L, s.N))):
        if tuple(t.shape) != want:
            raise SceneFileError(
                f"{path}: the scenes' {name} has shape {tuple(t.shape)}, but the system "
                f"given (L={s.L}, M={s.M}, N={s.N}) needs {want}: pass the system the "
                "scenes were taken with")
    # one value per scene, (B,) as the file stores it: a scalar, (B, 1) or (1, B) (a
    # MATLAB column or row vector) was written to an .npz its readers refuse, or failed
    # in h5py's or NumPy's broadcasting with no name
    # (a K without positions is not written: its shape is no matter)
    for name, t in (("snr_db", batch.snr_db), ("K", batch.K if batch.has_truth else None)):
        if t is not None and tuple(t.shape) != (B,):
            raise SceneFileError(
                f"{path}: the scenes' {name} has shape {tuple(t.shape)}, but {B} scenes need "
                f"one value each, ({B},)" + (
                    f": a row or column vector? {name}.reshape(-1) in NumPy"
                    if sorted(t.shape) == [1, B] else
                    f" (one value for all {B} scenes? np.full({B}, {name}) in NumPy repeats "
                    "it)" if t.numel() == 1 and B != 1 else ""))
    if batch.has_truth:
        got = [tuple(t.shape) for t in (batch.azimuth, batch.elevation, batch.range_m)]
        if len(set(got)) > 1 or len(got[0]) != 2 or got[0][0] != B:
            raise SceneFileError(
                f"{path}: the scenes' azimuth, elevation and range_m must each be [B, K] "
                f"with B = {B} scenes (NaN past each scene's K), got shapes {got}")
    f32 = torch.finfo(torch.float32)
    for name, t in (("y", batch.y), ("H", batch.H)):  # a file holds complex64
        if t.dtype == torch.complex128 and B:
            parts = torch.view_as_real(t.detach()).abs()  # (each part is a float32)
            parts = torch.where(torch.isfinite(parts), parts, 0.0).flatten(1)  # (NaN: not here)
            peak = parts.amax(1).cpu()
            off = (peak > f32.max) | ((peak > 0) & (peak < f32.tiny))
            if bool(off.any()):
                idx = off.nonzero().flatten().numpy()
                raise SceneFileError(
                    f"{path}: {name} of scene(s) {listed_scenes(idx)} lies beyond complex64's "
                    f"range, which scene files store (largest real or imaginary part "
                    f"{float(peak[idx[0]]):.3g}): it would be written as inf, or as 0 and "
                    "subnormal numbers of fewer digits; scale those scenes' y and H first "
                    "(positions and K do not depend on their units; the localizers take them "
                    "as they are)")
    if batch.has_truth and B and int(batch.K.max()) > s.K_max:
        raise SceneFileError(f"{path}: a scene has K={int(batch.K.max())} sources, more "
                             f"than the system's K_max={s.K_max}")
    inf = np.flatnonzero(np.abs(batch.snr_db.detach().cpu().numpy()) > SNR_LIMIT_DB)
    if inf.size:
        raise SceneFileError(f"{path}: snr_db is infinite or beyond +-{SNR_LIMIT_DB:g} dB in "
                             f"scene(s) {listed_scenes(inf)} (noise-free scenes?): a file stores a "
                             "finite SNR, or NaN where it is unknown")
    if batch.has_truth and B:
        bad = truth_problems(*_truth_arrays(batch, s.K_max).values(), k_max=s.K_max)
        if bad:
            raise SceneFileError(f"{path}: the truth of {len(bad)} scene(s) cannot be scored "
                                 f"(scene {bad[0][0]}: {bad[0][1]}): outside the contract, "
                                 "read_scenes and training refuse such a file (localize and "
                                 "evaluate leave those scenes out of their metrics); write "
                                 "such scenes without truth")


def _plain(v: Any) -> Any:
    """JSON for the NumPy values inside an attribute (a dict of np.int64, an array)."""
    if isinstance(v, np.generic | np.ndarray):
        return v.tolist()
    raise TypeError(f"an attribute value of type {type(v).__name__} cannot be stored as JSON")


RESERVED_ATTRS = ("system", *REQUIRED, "snr_db", "K", *TRUTH)


def _check_attrs(attrs: dict[str, Any] | None, path: Path,
                 system: SystemConfig) -> dict[str, Any]:
    """A file's extra attributes: NumPy scalars as Python numbers, names that are not the
    file's own (an .npz stores attributes beside its datasets; 'system' is the system:
    one equal to ``system``, as a read file's ``info.attrs`` holds it, is dropped)."""
    out = {}
    for k, v in (attrs or {}).items():
        if k == "system":
            try:
                same = system_from_json(v) == system
            except ConfigError:
                same = False
            if same:
                continue
            raise SceneFileError(f"{path}: the attribute 'system' is the file's own and "
                                 "describes another system than the one written; leave it "
                                 "out (the system argument is stored)")
        if k in RESERVED_ATTRS:
            raise SceneFileError(f"{path}: the attribute name {k!r} is the file's own "
                                 f"(one of {', '.join(RESERVED_ATTRS)}); choose another")
        out[k] = v.item() if isinstance(v, np.generic) else v
    return out


def batch_to_arrays(batch: SceneBatch, K_max: int) -> dict[str, np.ndarray]:
    """The file datasets of a SceneBatch as NumPy arrays (degrees at the file edge)."""
    out = {
        "y": batch.y.detach().cpu().numpy().astype(np.complex64),
        "H": batch.H.detach().cpu().numpy().astype(np.complex64),
        "codes": batch.codes.detach().cpu().numpy().astype(np.complex64),
        "snr_db": batch.snr_db.detach().cpu().numpy().astype(np.float32),
    }
    if batch.has_truth:
        out.update(_truth_arrays(batch, K_max))
    return out


def _truth_arrays(batch: SceneBatch, K_max: int) -> dict[str, np.ndarray]:
    """The truth datasets of a batch with truth: K, then TRUTH in K_max slots (degrees),
    NaN past each scene's K (the conventions' padding, whatever the batch holds there)."""
    out = {"K": batch.K.cpu().numpy().astype(np.int32)}
    for name, t, deg in (("azimuth_deg", batch.azimuth, True),
                         ("elevation_deg", batch.elevation, True),
                         ("range_m", batch.range_m, False)):
        arr = t.detach().cpu().numpy().astype(np.float64)
        arr = (np.degrees(arr) if deg else arr)[:, :K_max]  # slots past K_max: unused
        pad = np.full((arr.shape[0], K_max), np.nan)
        held = np.arange(arr.shape[1]) < out["K"][:, None]
        pad[:, :arr.shape[1]] = np.where(held, arr, np.nan)
        out[name] = pad.astype(np.float32)
    return out


def _as_tensors(batch: SceneBatch) -> SceneBatch:
    """The batch with every field a torch tensor (NumPy arrays, lists: as they come)."""
    if not isinstance(batch, SceneBatch):
        raise TypeError(f"the scenes must be a SceneBatch (risloc.simulation.SceneBatch(y=, "
                        f"H=, codes=, snr_db=, ...): angles in radians, not the file's "
                        f"degrees), got {type(batch).__name__}")
    return SceneBatch(**{f.name: None if getattr(batch, f.name) is None else
                         as_tensor(f.name, getattr(batch, f.name)) for f in fields(batch)})


def _refuse_folder(path: Path) -> None:
    """SceneFileError where a scene file's target is a folder (the rename would fail only
    after every scene was written)."""
    if path.is_dir():
        raise SceneFileError(f"{path}: a folder is there; name a file in it, e.g. "
                             f"{path / ('scenes' + (path.suffix or '.h5'))}")


def write_scenes(path: str | Path, batch: SceneBatch, system: SystemConfig | dict | str,
                 attrs: dict[str, Any] | None = None) -> Path:
    """Write a whole SceneBatch to .h5 or .npz, atomically (its fields torch tensors or any
    arrays; the system as :func:`risloc.core.checks.as_system` takes it)."""
    path = Path(path)
    system = as_system(system)
    batch = _as_tensors(batch)
    if len(batch) == 0:
        raise SceneFileError(f"{path}: nothing to write (0 scenes)")
    check_batch(batch, system, path)
    _refuse_folder(path)
    if is_npz(path):
        check_room(path, len(batch), system, built=True)  # the disk ("No space left")
        arrays = batch_to_arrays(batch, system.K_max)
        arrays["system"] = np.array(_system_json(system))
        for k, v in _check_attrs(attrs, path, system).items():
            arrays[k] = np.array(v if isinstance(v, str) else json.dumps(v, default=_plain))
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)  # a file object: savez appends .npz to a name (UP.NPZ)
        return path
    with SceneFileWriter(path, len(batch), system, attrs, with_truth=batch.has_truth) as w:
        w.write(0, batch)
    return path


# ----------------------------------------------------------------------------- reading

def _open(path: Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Return (datasets, attrs, handle) for .h5 / .npz; datasets are lazy for HDF5."""
    if not path.exists():
        raise SceneFileError(f"{path}: no such file")
    if path.is_dir():
        raise SceneFileError(f"{path}: a folder, not a scene file (name a .h5 / .npz file in "
                             f"it; risloc localize also takes a pattern such as "
                             f"'{path / '*.h5'}')")
    if path.suffix.lower() in (".pt", ".pth"):  # (torch's files are zip archives too)
        raise SceneFileError(f"{path}: a model or checkpoint file, not a scene file (.h5 / "
                             f".npz); an exported model's system, recipe and validation are in "
                             f"its model card ({path.with_suffix('.json').name} beside it); a "
                             f"training checkpoint has none: risloc export-model writes one")
    if is_npz(path):
        pickled: list[str] = []
        try:
            z = np.load(path, allow_pickle=False)
            data = {}
            for k in z.files:
                try:
                    data[k] = z[k]
                except ValueError:  # an object array: not ours unless a name we read
                    if k in (*REQUIRED, "snr_db", "K", *TRUTH, "system"):
                        pickled.append(k)
        except Exception as err:  # zipfile / ValueError / EOFError on corrupt archives
            with open(path, "rb") as fh:  # (numpy calls any other bytes "pickled data")
                if fh.read(4) != b"PK\x03\x04":
                    raise SceneFileError(f"{path}: not a readable .npz file (no zip archive: "
                                         "text, or another format under an .npz name)") from None
            raise SceneFileError(f"{path}: not a readable .npz file ({err})") from None
        if pickled:
            raise SceneFileError(
                f"{path}: {pickled} stored as pickled Python objects, which are not loaded "
                "(loading a pickle runs code); store arrays as numbers and the system as "
                "its JSON text, np.array(json.dumps(system)) (docs/conventions.md)")
        attrs = {k: (data.pop(k).item().decode("utf-8", "replace") if data[k].dtype.kind == "S"
                     else str(data.pop(k)))  # attributes: 0-d strings (or bytes)
                 for k in list(data) if data[k].dtype.kind in "US" and data[k].ndim == 0}
        return data, attrs, None
    if path.suffix.lower() in (".csv", ".json", ".yaml", ".yml", ".toml", ".txt", ".png"):
        raise SceneFileError(f"{path}: a {path.suffix.lower()[1:]} file, not a scene file (.h5 / "
                             ".npz, docs/conventions.md)")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        with open(path, "rb") as fh:
            if fh.read(10) == b"MATLAB 5.0":  # MATLAB's default format is not HDF5
                raise SceneFileError(
                    f"{path}: a MATLAB v5/v7 .mat file, which is not HDF5: save it with "
                    "save(..., '-v7.3') (HDF5), or write an .npz (docs/conventions.md)"
                    ) from None
        raise SceneFileError(f"{path}: not a readable HDF5 file (truncated or corrupt?): "
                             f"{' '.join(str(err).split())}") from None  # one line
    try:
        return _h5_datasets(path, f), _h5_attrs(f), f
    except BaseException:
        f.close()
        raise


def _h5_attrs(f: h5py.File) -> dict[str, Any]:
    """The file's attributes, bytes as text (a comment in another encoding than UTF-8 reads
    with its odd characters replaced: only ``system`` is ours, and JSON is UTF-8)."""
    return {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
            for k, v in f.attrs.items()}


def _h5_datasets(path: Path, f: h5py.File) -> dict[str, h5py.Dataset]:
    """The contract's datasets of an open file (lazy). Other entries (MATLAB's #refs#, a
    link to raw data left behind) are not opened; SceneFileError naming the entry for one of
    ours that is a group, a broken link, an empty (null) dataspace or compressed with a
    filter this HDF5 library lacks."""
    out, groups = {}, []
    for k in (*REQUIRED, "snr_db", "K", *TRUTH, "system"):  # (a 'system' dataset: refused)
        if f.get(k, getlink=True) is None:
            continue
        try:
            ds = f[k]
        except KeyError:  # a soft or external link to nothing
            raise SceneFileError(f"{path}: {k!r} is a link to something missing (an "
                                 "external file or object not found)") from None
        if not isinstance(ds, h5py.Dataset):
            if k != "system":  # (a group of the user's own metadata is not ours)
                groups.append(k)
            continue
        if ds.shape is None:
            raise SceneFileError(f"{path}: dataset {k!r} is empty (an HDF5 null dataspace): "
                                 "store one entry per scene" + (
                                     "" if k in REQUIRED else ", or leave it out"))
        _check_filters(path, k, ds)
        out[k] = ds
    if groups:
        raise SceneFileError(
            f"{path}: {groups} must be datasets, found HDF5 group(s): store each as one "
            "complex dataset at the file's root (a compound of real and imag fields, as "
            "MATLAB's save -v7.3 writes one; y_re + 1j * y_im in h5py), not its parts in a "
            "group")
    return out


def _check_filters(path: Path, name: str, ds: h5py.Dataset) -> None:
    """SceneFileError naming a dataset compressed with a filter this HDF5 library cannot
    decode (Blosc, Zstd, ...: the plugins of the ``hdf5plugin`` package, used where it is
    installed)."""
    plist = ds.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _, _, name_b = plist.get_filter(i)
        if h5py.h5z.filter_avail(code):
            continue
        try:  # registers its filters with HDF5 on import
            import hdf5plugin  # noqa: F401
        except ImportError:
            pass
        if not h5py.h5z.filter_avail(code):
            label = name_b.decode("utf-8", "replace") if isinstance(name_b, bytes) else name_b
            raise SceneFileError(
                f"{path}: dataset {name!r} is compressed with HDF5 filter {code}"
                f"{f' ({label})' if label else ''}, "
                "which this HDF5 library cannot decode: `pip install hdf5plugin` (read "
                "where it is installed), or store it uncompressed or with gzip")


def _real_imag_pair(dtype: np.dtype) -> bool:
    """A compound of two float fields named real and imag: how MATLAB (v7.3 .mat, h5create)
    stores complex arrays in HDF5."""
    return dtype.names is not None and set(dtype.names) == {"real", "imag"} and all(
        dtype[n].kind == "f" for n in ("real", "imag"))


def _as_complex(a: np.ndarray) -> np.ndarray:
    """``a`` as a complex array (a real/imag compound, :func:`_real_imag_pair`, joined in
    its own precision)."""
    if _real_imag_pair(a.dtype):
        wide = max(a.dtype["real"].itemsize, a.dtype["imag"].itemsize) > 4
        out = np.empty(a.shape, np.complex128 if wide else np.complex64)
        out.real, out.imag = a["real"], a["imag"]
        return out
    return a


# a scene's y or H stored wider than complex64 whose peak |value| lies outside this range
# is scaled by a power of two (exact) before the cast: beyond it complex64 overflows to inf
# or loses digits to zero. The units of y and H do not matter (each is rescaled per scene
# downstream); scenes inside the range are cast as they are, bit for bit.
COMPLEX64_SAFE = (2.0 ** -100, 2.0 ** 100)


def _to_complex64(a: np.ndarray) -> np.ndarray:
    """[S, ...] complex array as complex64, each scene of a wider one scaled by a power of
    two where its values would not survive the cast (:data:`COMPLEX64_SAFE`)."""
    a = _as_complex(a)
    if a.dtype.itemsize <= 8 or a.ndim == 0 or a.size == 0:
        return a
    with np.errstate(invalid="ignore"):
        mag = np.abs(a).reshape(a.shape[0], -1)
        peak = np.where(np.isfinite(mag), mag, 0.0).max(1)
    lo, hi = COMPLEX64_SAFE
    odd = (peak > 0) & ((peak < lo) | (peak > hi))
    if odd.any():
        a = a.copy()
        shift = -np.round(np.log2(peak[odd]))
        with np.errstate(invalid="ignore"):  # (an inf among the values: inf + NaN j)
            a[odd] *= np.exp2(shift).reshape(-1, *([1] * (a.ndim - 1)))
    return a


def _held(data: dict[str, Any], attrs: dict[str, Any], handle: Any) -> str:
    """What a file holds at its root, for a message: its entries' names (an HDF5 group's
    marked as one), the first 20."""
    if handle is None:
        names = sorted({*data, *attrs})
    else:
        names = [f"{k} (a group)" if isinstance(handle.get(k), h5py.Group) else k
                 for k in sorted(handle.keys())]
    lacking = {c.lower(): c for c in REQUIRED if c not in data}  # 'Y' for y: case matters
    names = [f"{k} (did you mean {lacking[k.lower()]}? names are case-sensitive)"
             if k.lower() in lacking and k not in REQUIRED else k for k in names]
    more = f", ... ({len(names) - 20} more)" if len(names) > 20 else ""
    return f"[{', '.join(names[:20])}{more}]" if names else "nothing"


def _check_layout(path: Path, data: dict[str, Any], system: SystemConfig,
                  assumed: bool = False, held: Callable[[], str] | None = None
                  ) -> tuple[int, int, tuple[str, ...]]:
    """Validate names, shapes and dtypes against each other and the system: (S, the truth's
    slots (0: no usable truth), notes on what is not used, :func:`_check_truth`); what
    ``held`` says (:func:`_held`) is named where a required dataset is missing."""
    if "system" in data:
        where = ("a 0-d string array, np.array(json_text)" if is_npz(path) else
                 "the file attribute 'system' (f.attrs['system'] = json_text; in MATLAB "
                 f"{MATLAB_SYSTEM}), not a dataset")
        raise SceneFileError(f"{path}: 'system' must be one JSON string, stored as {where}; "
                             f"got {'an array' if is_npz(path) else 'a dataset'} of shape "
                             f"{tuple(data['system'].shape)}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise SceneFileError(
            f"{path}: missing required dataset(s) {missing}" + (
                f"; it holds {held()}: files hold y, H and codes as complex datasets at "
                "their root, under these names (docs/conventions.md)" if held else ""))
    S = data["y"].shape[0] if data["y"].ndim else 0
    s = system
    dims = {"y": (s.L, s.M), "H": (s.M, s.N), "codes": (s.L, s.N)}  # after the scene axis
    shapes = {name: tuple(data[name].shape) for name in dims}
    last = {got[-1] for got in shapes.values() if len(got) == 3}
    if len(last) == 1 and all(len(got) == 3 and got[:2] == dims[name] and got[1:] != dims[name]
                              for name, got in shapes.items()):  # every one: (.., .., S)
        held = ", ".join(f"{n} {g}" for n, g in shapes.items())
        raise SceneFileError(
            f"{path}: the scene axis comes last ({held}): files hold it first, (S, L, M), "
            "(S, M, N), (S, L, N): np.moveaxis(x, -1, 0) in NumPy, permute(x, [2 3 1]) in "
            "MATLAB (whose arrays HDF5 holds with their axes reversed)")
    for name, tail in dims.items():
        got = shapes[name]
        if len(got) == 3 and got[1:] != tail and got[::-1] == (got[-1], *tail):
            raise SceneFileError(
                f"{path}: dataset {name!r} has shape {got}, its axes reversed: "
                f"{got[::-1]} = (S, {'L' if name != 'H' else 'M'}, "
                f"{'M' if name == 'y' else 'N'}) is expected. MATLAB writes arrays with "
                f"their dimensions in reverse order: permute them before saving, e.g. "
                f"permute({name}, [3 2 1])")
    axes = {"y": "L, M", "H": "M, N", "codes": "L, N"}
    for name, tail in dims.items():
        got, dims_text = shapes[name], ", ".join(map(str, tail))
        if name != "y" and len(shapes["y"]) == 3 and S > 1 and got in (tail, (1, *tail)):
            raise SceneFileError(
                f"{path}: dataset {name!r} has shape {got}: the same {name} for all {S} "
                f"scenes? Files hold one per scene, ({S}, {axes[name]}): repeat it, "
                f"np.broadcast_to({name}.reshape({dims_text}), ({S}, {dims_text})) in NumPy")
        if tail[0] != tail[1] and got == (S, *tail[::-1]) and (
                shapes["y"] == (S, *dims["y"]) if name != "y" else all(  # H, codes: M, L
                    shapes[n][1:] in (dims[n], dims[n][::-1]) for n in ("H", "codes"))):
            raise SceneFileError(
                f"{path}: dataset {name!r} has shape {got}, its last two axes swapped: "
                f"({S}, {axes[name]}) = {(S, *tail)} is expected: np.swapaxes({name}, 1, 2) "
                "in NumPy" + (
                    f"; H and codes both have theirs swapped, so y was likely written the "
                    f"same way: with L = M = {s.M} a swapped y cannot be detected, and would "
                    f"be localized wrongly: swap its axes too"
                    if name != "y" and s.L == s.M and all(
                        shapes[n] == (S, *dims[n][::-1]) for n in ("H", "codes")) else ""))
        if got == tail:
            raise SceneFileError(
                f"{path}: dataset {name!r} has shape {tail}: one scene without its scene "
                f"axis. Files hold S scenes, (S, {axes[name]}): store one scene with a "
                f"leading axis of length 1 ({name}[None] in NumPy; MATLAB's save drops a "
                "trailing axis of length 1: store the scene twice, docs/guide.md, 'From "
                "MATLAB')")
    for name, tail in dims.items():
        shape, got = (S, *tail), tuple(data[name].shape)
        if got == (*shape, 2) and data[name].dtype.kind in "fiu":
            raise SceneFileError(
                f"{path}: dataset {name!r} has shape {got}: real and imaginary parts on a "
                f"last axis of 2? Files hold complex values, {shape}: {name}[..., 0] + 1j * "
                f"{name}[..., 1] in NumPy (complex64)")
        if got != shape:
            raise SceneFileError(
                f"{path}: dataset {name!r} has shape {got}, expected {shape} for S={S} "
                f"scenes and the file's system (L={s.L}, M={s.M}, N={s.N})" + (
                    "; the file has no 'system' attribute, so the default system was "
                    "assumed: store the system's JSON as the attribute 'system' (h5) or a "
                    "0-d string 'system' (npz), docs/conventions.md"
                    if assumed and got[1:] != tail else ""))
        if name == "codes" and data[name].dtype.kind in "fiu":
            continue  # real codes (a 1-bit RIS's +-1) are complex codes with zero phase or pi
        if data[name].dtype.kind != "c" and not _real_imag_pair(data[name].dtype):
            dt = data[name].dtype
            pair = dt.names is not None and len(dt.names) == 2 and all(
                dt[i].kind in "fiu" for i in (0, 1))
            raise SceneFileError(
                f"{path}: dataset {name!r} must be complex, got {dt}" + (
                    f" (a pair of {dt[0]} fields"
                    f"{': integer I/Q samples?' if dt[0].kind in 'iu' else ''}: store them "
                    f"as complex64, {name}[{dt.names[0]!r}] + 1j * {name}[{dt.names[1]!r}] "
                    "in NumPy; float fields named real and imag are read as complex)"
                    if pair else f" (its real part only? store the complex values as "
                    f"complex64, {name}_re + 1j * {name}_im in NumPy)" if dt.kind in "fiu"
                    else " (bits? codes are unit-modulus phases: a 1-bit RIS's are +-1, "
                    "1 - 2 * codes.astype(np.int8) in NumPy)" if name == "codes" and dt.kind == "b"
                    else ""))
    if "snr_db" in data and tuple(data["snr_db"].shape) != (S,):
        got = tuple(data["snr_db"].shape)
        raise SceneFileError(f"{path}: 'snr_db' has shape {got}, expected ({S},)" + (
            f" (one SNR for all {S} scenes? np.full({S}, snr_db) in NumPy repeats it)"
            if int(np.prod(got)) == 1 and S != 1 else _vector_hint("snr_db", got, S)))
    if "snr_db" in data and data["snr_db"].dtype.kind not in "fiu":
        raise SceneFileError(f"{path}: 'snr_db' must be numeric (NaN where unknown), got "
                             f"{data['snr_db'].dtype}")
    if "snr_db" in data and S:
        inf = np.flatnonzero(np.abs(np.asarray(data["snr_db"][:], dtype=np.float64))
                             > SNR_LIMIT_DB)
        if inf.size:
            raise SceneFileError(f"{path}: 'snr_db' is infinite or beyond +-{SNR_LIMIT_DB:g} "
                                 f"dB in {inf.size} scene(s) {listed_scenes(inf)}; write NaN where "
                                 "the SNR is unknown")
    return S, *_check_truth(path, data, S, system)


TRUTH_LISTED = 20  # scenes with unusable truth named by SceneFileInfo (all are counted)


def listed_scenes(idx: np.ndarray, n: int = 10) -> str:
    """Scene indices for a message: the first n, then how many more."""
    head = ", ".join(str(int(i)) for i in idx[:n])
    return f"[{head}{f', ... ({idx.size - n} more)' if idx.size > n else ''}]"


def count_outside(batch: SceneBatch, fov: FieldOfView) -> int:
    """True sources of a file's batch outside the field of view (NaN where a source is:
    outside; a file's float32 degrees on the boundary: inside)."""
    inside = fov.contains(batch.azimuth, batch.elevation, batch.range_m, rtol=1e-6)
    return int((batch.mask & ~inside).sum())


def outside_hint(outside: int, fov: FieldOfView, whose: str = "",
                 who: str = "the localizers search") -> str:
    """A warning where ``outside`` true sources (:func:`count_outside`) lie outside the
    field of view ``fov`` that ``who`` search, else ''; ``whose`` qualifies the sources."""
    if not outside:
        return ""
    return (f"{outside} true source(s){whose} lie outside the field of view {who} "
            f"({fov.describe()}): sources there cannot be found (truth in other units? `risloc "
            "info` counts them; --fov sets the box the classical estimators search)")


RADIANS_SUSPECT = (5, 0.3, math.pi / 2)  # true sources, and the widest |angle| in "degrees"
#   between these two: radians of the default field of view (azimuth +-60 deg = +-1.05 rad)


def widest_true_angle(batch: SceneBatch) -> tuple[int, float]:
    """(true sources, the largest |azimuth| or |elevation| among them in degrees) of a
    file's batch (or of Estimates, their mask and angles alike): every angle of many
    sources within +-pi/2 "degrees", and not all at boresight, reads as radians stored
    where the conventions ask for degrees (:data:`RADIANS_SUSPECT`)."""
    m = batch.mask
    if not bool(m.any()):
        return 0, 0.0
    widest = torch.maximum(batch.azimuth[m].abs(), batch.elevation[m].abs()).max()
    return int(m.sum()), math.degrees(float(widest))


def drawn_widest_deg(attrs: dict[str, Any]) -> float | None:
    """The widest |azimuth| or |elevation| bound [deg] that a file of ``risloc simulate``
    drew its sources in (its ``config`` attribute, and its ``scene_mix`` kinds'), or None
    for a file that records none."""
    try:
        scenes = [json.loads(attrs["config"])["scene"]]
        scenes += json.loads(attrs.get("scene_mix") or "[]")
        return max(abs(float(v)) for sc in scenes for k in ("azimuth_deg", "elevation_deg")
                   if k in sc for v in sc[k])
    except (KeyError, TypeError, ValueError):
        return None


def radians_hint(n_sources: int, widest_deg: float, whose: str = "true",
                 files: str = "scene files", attrs: dict[str, Any] | None = None) -> str:
    """A warning where a file's true angles look like radians (:func:`widest_true_angle`),
    else ''; ``whose`` and ``files`` name other angles (an estimates CSV's). Not where the
    file's ``attrs`` record sources drawn that close to boresight (a simulated narrow field
    of view: :func:`drawn_widest_deg`)."""
    least, low, high = RADIANS_SUSPECT
    drawn = drawn_widest_deg(attrs or {})
    if drawn is not None and drawn <= high:
        return ""
    if n_sources >= least and low <= widest_deg <= high:
        return (f"the {whose} angles of all {n_sources} sources lie within "
                f"+-{widest_deg:.2f} deg: radians stored as degrees? ({files} hold degrees, "
                "docs/conventions.md)")
    return ""


def truth_problems(K: np.ndarray, azimuth_deg: np.ndarray, elevation_deg: np.ndarray,
                   range_m: np.ndarray, k_max: int | None = None,
                   right_angle: float = 90.0) -> list[tuple[int, str]]:
    """(scene, reason) for every scene whose truth cannot be scored: K outside 1..K_max
    (the conventions' range: the system's ``k_max`` and the truth arrays' slots, the
    smaller; a noise-only K = 0 scene included), a non-finite position, a range <= 0 or an
    elevation beyond +-90 deg (not an elevation: a zenith angle, or another convention) in
    one of its first K slots. ``right_angle``: 90 deg in the angles'
    unit (pi / 2 for radians)."""
    S, width = azimuth_deg.shape
    slots = width if k_max is None else min(width, k_max)
    unknown = np.isnan(K) if K.dtype.kind == "f" else np.zeros(K.shape, bool)
    given = K  # (named as stored: a uint64 K above int64's range must not read as negative)
    K = np.where(unknown, 0, np.minimum(K, width + 1)).astype(np.int64)  # a NaN K: unscorable
    real = np.arange(width) < np.clip(K, 0, slots)[:, None]
    finite = np.isfinite(azimuth_deg) & np.isfinite(elevation_deg) & np.isfinite(range_m)
    bad_pos = (real & ~finite).any(1)
    bad_range = (real & finite & ~(np.nan_to_num(range_m, nan=1.0) > 0)).any(1)
    steep = real & finite & (np.abs(np.nan_to_num(elevation_deg)) > right_angle * (1 + 1e-6))
    bad_el = steep.any(1)
    out = []
    for i in np.flatnonzero((K < 1) | (K > slots) | bad_pos | bad_range | bad_el):
        out.append((int(i), "K unknown (NaN)" if unknown[i] else
                    _K_outside(int(given[i]) if np.isfinite(given[i]) else float(given[i]),
                               width, k_max) if not 1 <= K[i] <= slots
                    else f"a non-finite true position among its K = {K[i]} sources"
                    if bad_pos[i] else "a true range <= 0" if bad_range[i]
                    else "a true elevation beyond +-90 deg"))
    return out


def _K_outside(K: int, width: int, k_max: int | None) -> str:
    """The reason of :func:`truth_problems` for a K outside 1..slots: where the truth arrays
    are narrower than K (and K fits the system), that is the cause, not K."""
    slots = width if k_max is None else min(width, k_max)
    narrow = K > width and (k_max is None or K <= k_max)
    return f"K = {K} outside 1..{slots}" + (
        f" (the truth arrays hold only {width} source column(s): store azimuth_deg, "
        f"elevation_deg and range_m with "
        f"{'K_max' if k_max is None else f'K_max = {k_max}'} columns, NaN-padded, or "
        "correct K)" if narrow else "")


def batch_truth_problems(batch: SceneBatch, k_max: int) -> list[tuple[int, str]]:
    """:func:`truth_problems` of a batch with truth (a file read with ``truth="unchecked"``;
    its angles in radians)."""
    return truth_problems(*(t.detach().cpu().numpy() for t in
                            (batch.K, batch.azimuth, batch.elevation, batch.range_m)),
                          k_max=k_max, right_angle=math.pi / 2)


def scorable_mask(batch: SceneBatch, k_max: int) -> torch.Tensor:
    """[B] bool: the scenes of a batch with truth (read with ``truth="unchecked"``) whose
    truth can be scored (:func:`batch_truth_problems` names the others)."""
    keep = torch.ones(len(batch), dtype=torch.bool)
    keep[[i for i, _ in batch_truth_problems(batch, k_max)]] = False
    return keep


def scorable_truth(batch: SceneBatch, k_max: int) -> SceneBatch:
    """The scenes of :func:`scorable_mask`."""
    keep = scorable_mask(batch, k_max)
    return batch if bool(keep.all()) else batch[keep]


def derived_K(azimuth_deg: np.ndarray, elevation_deg: np.ndarray,
              range_m: np.ndarray) -> np.ndarray:
    """The true K [S] of a file whose truth has positions but no ``K``: the slots up to the
    last one holding a number (the positions are NaN-padded, docs/conventions.md), so a NaN
    among them is named by :func:`truth_problems`, not dropped; a scene without any: 0."""
    held = np.isfinite(azimuth_deg) | np.isfinite(elevation_deg) | np.isfinite(range_m)
    width = held.shape[-1]
    if width == 0:
        return np.zeros(held.shape[:-1], np.int64)
    return np.where(held.any(-1), width - np.argmax(held[..., ::-1], -1), 0).astype(np.int64)


def _file_truth(data: dict[str, Any], start: int = 0, stop: int | None = None
                ) -> dict[str, np.ndarray]:
    """The truth datasets of scenes start..stop-1 with K (derived where the file has
    positions only, :func:`derived_K`)."""
    out = {k: np.asarray(data[k][start:stop]) for k in TRUTH}
    out["K"] = np.asarray(data["K"][start:stop]) if "K" in data else derived_K(*out.values())
    return out


def _positions_beyond_K(t: dict[str, np.ndarray]) -> tuple[str, ...]:
    """A note where a file's K leaves out slots that hold a source (a finite position with
    a range > 0; zeros or NaN are padding): those sources are not scored, and estimates of
    them count as false alarms."""
    Kf = np.asarray(t["K"], dtype=np.float64)
    K = np.nan_to_num(Kf, nan=np.inf).clip(max=t["range_m"].shape[-1]).astype(np.int64)
    beyond = np.arange(t["range_m"].shape[-1]) >= K[:, None]  # (a NaN K: truth_problems)
    held = beyond & np.isfinite(t["azimuth_deg"]) & np.isfinite(t["elevation_deg"]) & \
        (np.nan_to_num(t["range_m"], nan=0.0) > 0)
    scenes = np.flatnonzero(held.any(-1) & (K > 0))  # (K = 0: truth that is not scored)
    if not scenes.size:
        return ()
    i = int(scenes[0])
    return (f"K is smaller than the sources stored in {scenes.size} scene(s) "
            f"{listed_scenes(scenes)} (scene {i}: K = {K[i]}, a source in slot "
            f"{int(np.flatnonzero(held[i])[0])}): only the first K are scored, so estimates "
            "of the others count as false alarms; pad unused slots with NaN, or correct K",)


def _check_truth(path: Path, data: dict[str, Any], S: int, system: SystemConfig
                 ) -> tuple[int, tuple[str, ...]]:
    """(the truth arrays' slots, 0 where the file has no usable truth; notes)."""
    positions = [k for k in TRUTH if k in data]
    if not positions:
        note = (f"'K' without true positions ({', '.join(TRUTH)}) is not used: the scenes "
                "are localized, not scored",) if "K" in data else ()
        return 0, note
    if len(positions) != len(TRUTH):
        raise SceneFileError(f"{path}: the true positions must come together ("
                             f"{', '.join(TRUTH)}); found only {positions}")
    if "K" in data:  # else K follows from the NaN padding (derived_K)
        _check_K(path, data["K"], S)
    elif any(data[k].dtype.kind in "iu" for k in TRUTH):
        return 0, ("true positions stored as integers without 'K' are not used: integers "
                   "hold no NaN padding to count the sources by; store K too",)
    slots = data["azimuth_deg"].shape[-1] if data["azimuth_deg"].ndim == 2 else -1
    for name in TRUTH:
        got = tuple(data[name].shape)
        if data[name].ndim != 2 or got != (S, slots):
            raise SceneFileError(
                f"{path}: {name!r} must have shape (S, K_max) with S = {S} scenes (and the "
                f"same K_max in azimuth_deg, elevation_deg and range_m), got {got}" + (
                    " (its axes reversed, as MATLAB writes arrays: permute it before "
                    "saving)" if len(got) == 2 and got[1] == S and got[0] != S else ""))
        if data[name].dtype.kind not in "fiu":
            raise SceneFileError(f"{path}: {name!r} must be numeric, got {data[name].dtype}")
    if slots == 0:
        return 0, ("true positions of width 0 hold no source: the truth is not used",)
    if "K" not in data:
        return slots, ("no 'K': each scene's K is counted by the NaN padding of its true "
                       "positions",)
    return slots, ()


def _vector_hint(name: str, shape: tuple[int, ...], S: int) -> str:
    """A hint where one value per scene is stored as a row or column matrix, (1, S) or
    (S, 1), as MATLAB stores every vector."""
    if S >= 1 and sorted(shape) == [1, S]:  # (one scene: MATLAB's 1 x 1 scalar)
        return (f" (a row or column vector, as MATLAB stores one: store it with one axis, "
                f"{name}.reshape(-1) in NumPy, h5create(file, '/{name}', {S}) in MATLAB)")
    return ""


def _check_K(path: Path, K_data: Any, S: int) -> None:
    if tuple(K_data.shape) != (S,) or K_data.dtype.kind not in "iuf":
        raise SceneFileError(f"{path}: 'K' must be integer (or whole doubles, as MATLAB "
                             f"stores them) of shape ({S},), got {K_data.dtype} "
                             f"{tuple(K_data.shape)}" + _vector_hint("K", K_data.shape, S))
    if K_data.dtype.kind == "f" and S:  # MATLAB stores whole numbers as doubles
        K = np.asarray(K_data[:], dtype=np.float64)
        odd = np.flatnonzero(np.isinf(K) | (np.isfinite(K) & (K != np.round(K))))
        if odd.size:
            raise SceneFileError(f"{path}: 'K' must hold whole numbers (it is "
                                 f"{K_data.dtype}, read as integers; NaN where unknown), got "
                                 f"{K[odd[0]]:g} in scene(s) {listed_scenes(odd)}")


def _refuse_loose_system(path: Path, data: dict[str, Any], attrs: dict[str, Any],
                         handle: Any = None) -> None:
    """SceneFileError where a file without the ``system`` attribute holds the system's
    fields one by one (attributes, an .npz's 0-d arrays or an .h5's 1-element datasets at
    its root, ``f["wavelength"] = 0.1``, named N_H, wavelength, M, ...)
    and one of them is not the default's: they are not read, and the default system assumed
    in their place would localize the scenes of another wavelength or spacing wrongly
    without a word. Fields that all equal the default's are what is assumed: read (a number
    as it reads in single precision too). An attribute is one value (a 1-element array, as
    MATLAB's h5writeatt writes a number, too); one whose value cannot be the field's (a
    text that is not a number for N_H, M, L, ...: the user's own 'M', 'L') is not taken as
    it; a text that begins with a number and a unit is taken as that number ('0.1 m',
    '16 antennas': a review found them skipped, and the default 0.3 m assumed without a
    word), and as another system where it is not that number in the contract's units
    ('0.3 cm', '1/3', '0,3')."""
    loose, texts, unclear, default = {}, {}, set(), SystemConfig()
    for k in SystemConfig.model_fields:
        v = attrs[k] if k in attrs else data.get(k) if is_npz(path) else _h5_value(handle, k)
        if v is None or np.size(v) != 1 or (k not in attrs and is_npz(path)
                                            and np.ndim(v) != 0):
            continue
        v = np.asarray(v).reshape(()).item()
        v = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        if k == "wavefront":
            if isinstance(v, str):
                loose[k] = v.strip()
            continue
        if isinstance(v, bool):
            continue
        try:
            loose[k] = v if isinstance(v, int | float) else float(v)
        except (TypeError, ValueError):
            number = _LEADING_NUMBER.match(v) if isinstance(v, str) else None
            if number is None:  # a text of the user's own, not a number
                continue
            loose[k], texts[k] = float(number.group(1)), v
            rest = v[number.end():].strip()
            # '1/3', '1,5', '0.3 cm': not the number it begins with, in the contract's units
            if (rest[:1] and not (v[number.end()].isspace() or rest[0].isalpha())) or (
                    k in ("wavelength", "spacing") and rest.lower() not in _METRES):
                loose[k] = v
                unclear.add(k)

    def differs(k: str, v: Any) -> bool:
        want = getattr(default, k)
        if isinstance(want, str):
            return v != want
        return not math.isclose(v, want, rel_tol=1e-6)  # (float32 0.3 is the default)

    differ = [k for k, v in loose.items() if k in unclear or differs(k, v)]
    if differ:
        raise SceneFileError(
            f"{path}: the system's fields are stored one by one ({', '.join(loose)}), which "
            f"are not read, and the default system assumed in their place has another "
            f"{', '.join(differ)}: store them as one JSON text named 'system' ("
            + ("system=np.array(json.dumps(...)) in np.savez" if is_npz(path) else
               "f.attrs['system'] = json.dumps(...)")
            + f", here {json.dumps(loose)}"
            + "".join(f"; {k} read from the text {t!r}" + (
                ": the contract's units are metres" if k in ("wavelength", "spacing") else "")
                for k, t in texts.items())
            + "), docs/conventions.md")


# a number at the start of a text ('0.1 m', '16 antennas')
_LEADING_NUMBER = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")
_METRES = ("", "m", "meter", "meters", "metre", "metres")


def _h5_value(handle: Any, name: str) -> Any:
    """The value of a 1-element dataset ``name`` at an open .h5 file's root, else None."""
    if handle is None or not isinstance(handle.get(name, getlink=True), h5py.HardLink):
        return None
    ds = handle.get(name)
    if not isinstance(ds, h5py.Dataset) or ds.shape is None or ds.size != 1:
        return None
    try:
        return ds[()]
    except OSError:  # (a filter this HDF5 lacks: not ours to name)
        return None


CONTRACT_NAMES = (*REQUIRED, "snr_db", "K", *TRUTH)  # the datasets a scene file is read by


def _name_key(name: str) -> str:
    """A name compared to the contract's: lower case, letters and digits only."""
    return "".join(c for c in name.lower() if c.isalnum())


def _unread(path: Path, data: dict[str, Any], attrs: dict[str, Any], handle: Any,
            assumed: bool) -> tuple[tuple[str, str | None], ...]:
    """(name, the contract name it resembles or None) for each dataset (HDF5, at the root)
    or array (NPZ) of a file that is not read: not one of :data:`CONTRACT_NAMES`. A near
    miss is a contract name the file lacks whose name matches but for case and punctuation,
    or closely (difflib). Not listed: groups, links, MATLAB's #refs#, an .npz's 0-d texts
    (its attributes) and, without a 'system', its 0-d system fields and an .h5's 1-element
    ones (checked against the default: :func:`_refuse_loose_system`)."""
    import difflib

    if handle is None:
        try:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
        except Exception:  # (read already: cannot fail here)
            names = list(data)
        names = [k for k in names if k not in attrs and not (
            assumed and k in SystemConfig.model_fields and np.ndim(data.get(k, ())) == 0)]
    else:
        names = [k for k in handle if isinstance(handle.get(k, getlink=True), h5py.HardLink)
                 and isinstance(handle.get(k), h5py.Dataset) and not (
                     assumed and k in SystemConfig.model_fields
                     and _h5_value(handle, k) is not None)]
    lacking = {_name_key(c): c for c in CONTRACT_NAMES if c not in data}
    out = []
    for k in sorted(names):
        if k in CONTRACT_NAMES or k.startswith("#"):
            continue
        key = _name_key(k)
        near = lacking.get(key) or next(
            (lacking[m] for m in difflib.get_close_matches(key, lacking, 1, 0.7)), None)
        out.append((k, near))
    return tuple(out)


_UNITS = {"_deg": "degrees", "_m": "metres", "_db": "dB"}  # the contract names' suffixes


def _unit_unsaid(name: str, near: str) -> str:
    """", in <unit>" where the contract name ``near`` carries a unit that ``name`` does not
    say (an 'azimuth' may hold radians, an 'SNR' a ratio): renamed as it is, it would be
    read in the wrong unit."""
    for suffix, unit in _UNITS.items():
        # (the name's own suffix says the unit only where it is the contract's: a
        # 'range_km' ends in the letter m too)
        if near.endswith(suffix) and _name_key(name) != _name_key(near):
            return f", in {unit}"
    return ""


def _unread_note(unread: tuple[tuple[str, str | None], ...], npz: bool) -> tuple[str, ...]:
    """The note naming a file's entries that are not read (:func:`_unread`)."""
    if not unread:
        return ()
    listed = ", ".join(f"{k!r}" + (f" (did you mean {near}{_unit_unsaid(k, near)}?)"
                                   if near else "") for k, near in unread[:20])
    more = f", ... ({len(unread) - 20} more)" if len(unread) > 20 else ""
    what = "array(s)" if npz else "dataset(s)"
    fix = ("; names are case-sensitive: rename such a one to have it read "
           "(docs/conventions.md)"
           if any(near for _, near in unread) else
           f" (the scene file's are {', '.join(CONTRACT_NAMES)}, docs/conventions.md)")
    return (f"{len(unread)} {what} not read (not names of the scene file's contract): "
            f"{listed}{more}{fix}",)


def inspect_scene_file(path: str | Path) -> SceneFileInfo:
    """Validate a scene file's layout and return what it holds."""
    path = Path(path)
    data, attrs, handle = _open(path)
    try:
        try:
            system = system_from_json(attrs.get("system"))
        except ConfigError as err:
            raise SceneFileError(f"{path}: {err}") from None
        if "system" not in attrs:
            _refuse_loose_system(path, data, attrs, handle)
        S, slots, notes = _check_layout(path, data, system, assumed="system" not in attrs,
                                        held=lambda: _held(data, attrs, handle))
        if "system" not in attrs:  # the scenes fit it, but fitting says nothing of lambda or d
            where = ("a 0-d string array 'system' in the .npz" if handle is None
                     else "the attribute 'system'")
            notes = (*notes, f"no 'system' attribute: the default system was assumed "
                     f"({system.describe()}); if the scenes were taken with another, store "
                     f"its JSON as {where} (docs/conventions.md)")
        unread = _unread(path, data, attrs, handle, assumed="system" not in attrs)
        notes = (*notes, *_unread_note(unread, handle is None))
        problems = []
        if slots > 0 and S:
            t = _file_truth(data)
            problems = truth_problems(t["K"], *(t[k] for k in TRUTH), k_max=system.K_max)
            if "K" not in data:  # the reasons name a K the file does not hold: say whence
                problems = [(i, "no true source (its positions are all NaN: truth "
                             "unknown, not scored)" if t["K"][i] == 0 else
                             f"{why} (K counted by the NaN padding of the positions: pad "
                             "with NaN or store K)") for i, why in problems]
            else:
                notes = (*notes, *_positions_beyond_K(t))
        return SceneFileInfo(path, S, system, slots > 0, "snr_db" in data, slots, attrs,
                             tuple(problems[:TRUTH_LISTED]), len(problems), notes, unread)
    finally:
        if handle is not None:
            handle.close()


def _to_batch(arrays: dict[str, np.ndarray]) -> SceneBatch:
    t = {k: as_tensor(k, _to_complex64(v) if k in REQUIRED else v)  # big-endian files too
         for k, v in arrays.items()}
    cplx = {k: t[k].to(torch.complex64) for k in REQUIRED}
    S = cplx["y"].shape[0]
    snr = t["snr_db"].float() if "snr_db" in t else torch.full((S,), math.nan)
    truth: dict[str, torch.Tensor | None] = dict.fromkeys(
        ("K", "azimuth", "elevation", "range_m"))  # files carry no source powers: None
    if "K" in t:
        K = t["K"].nan_to_num(0).long()  # a NaN K: no source to score (truth_problems)
        slots = torch.arange(t["azimuth_deg"].shape[-1])
        mask = slots < K.unsqueeze(-1)
        nan = torch.tensor(math.nan, dtype=torch.float64)
        # float64 radians so that writing the batch back reproduces the file bit for bit
        truth.update(
            K=K,
            azimuth=torch.where(mask, torch.deg2rad(t["azimuth_deg"].double()), nan),
            elevation=torch.where(mask, torch.deg2rad(t["elevation_deg"].double()), nan),
            range_m=torch.where(mask, t["range_m"].double(), nan))
    return SceneBatch(y=cplx["y"], H=cplx["H"], codes=cplx["codes"], snr_db=snr, **truth)


def check_truth(info: SceneFileInfo) -> None:
    """SceneFileError naming the scenes where a file's truth cannot be scored
    (:func:`truth_problems`); nothing where it can or where there is none."""
    if info.n_truth_problems:
        listed = "; ".join(f"scene {i}: {why}" for i, why in info.truth_problems[:3])
        raise SceneFileError(
            f"{info.path}: the truth of {info.n_truth_problems} scene(s) cannot be scored "
            f"({listed}{'; ...' if info.n_truth_problems > 3 else ''}); `risloc localize` "
            "still localizes the file, `risloc info` lists them")


def _names(info: SceneFileInfo, truth: bool | str) -> tuple[str, ...]:
    """The datasets to read: the truth's only where ``truth`` (then it must be usable,
    unless ``truth`` is "unchecked")."""
    if truth not in (True, False, "unchecked"):
        raise ValueError(f"truth must be True, False or 'unchecked', got {truth!r}")
    if truth is True:
        try:
            check_truth(info)
        except SceneFileError as err:  # the way out, for a file with truth for some scenes
            raise SceneFileError(f"{err} (read_scenes / SceneReader: truth='unchecked' reads "
                                 "such a file as it is, truth=False without its truth)"
                                 ) from None
    return (*REQUIRED, "snr_db") + (("K", *TRUTH) if truth and info.has_truth else ())


class SceneReader:
    """A scene file held open: checked once (:func:`inspect_scene_file`), then read by
    slices. ``truth``: read the truth, which must then be usable in every scene of the
    file (SceneFileError naming the scenes otherwise: :func:`truth_problems`); False reads
    the measurements only; "unchecked" reads the truth as it is (:func:`truth_problems`
    names the scenes it cannot score).

    >>> with SceneReader(path) as r:
    ...     first = r.read(0, 256)
    """

    def __init__(self, path: str | Path, truth: bool | str = True):
        self.path = Path(path)
        self.info = inspect_scene_file(self.path)
        wanted = _names(self.info, truth)
        self._data, _, self._handle = _open(self.path)
        self._names = [k for k in self._data if k in wanted]

    def read(self, start: int = 0, stop: int | None = None) -> SceneBatch:
        """Scenes ``start .. stop-1`` (stop None or past the end: to the end), angles in
        radians; a missing snr_db is NaN (to be estimated downstream)."""
        if self._data is None:
            raise SceneFileError(f"{self.path}: the reader is closed")
        for name, value in (("start", start), ("stop", stop)):
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | np.integer)):
                raise SceneFileError(f"{self.path}: {name} must be a whole number of scenes, "
                                     f"got {value!r}")
        n = self.info.n_scenes
        stop = n if stop is None else min(stop, n)
        if not 0 <= start <= stop:
            raise SceneFileError(f"{self.path}: bad scene range {start}..{stop} of {n}")
        try:
            arrays = {k: np.asarray(self._data[k][start:stop]) for k in self._names
                      if k not in ("K", *TRUTH)}
            if "azimuth_deg" in self._names:
                arrays.update(_file_truth(self._data, start, stop))
        except OSError as err:
            raise SceneFileError(f"{self.path}: read failed at scenes {start}..{stop} "
                                 f"(truncated or corrupt?): {err}") from None
        return _to_batch(arrays)

    def close(self) -> None:
        """Release the file; reading afterwards is an error (for every format alike)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._data = None

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_scenes(path: str | Path, start: int = 0, stop: int | None = None,
                truth: bool | str = True) -> tuple[SceneBatch, SceneFileInfo]:
    """Load scenes ``start .. stop-1`` of a file as a SceneBatch (angles in radians), and
    what the file holds; ``truth`` as :class:`SceneReader`."""
    with SceneReader(path, truth) as reader:
        return reader.read(start, stop), reader.info


def iter_scene_chunks(path: str | Path, start: int = 0, stop: int | None = None,
                      size: int = 256, truth: bool = True):
    """Yield (first scene index, SceneBatch) chunks of scenes start..stop-1, reading each
    chunk from disk as it goes (HDF5: memory flat in the number of scenes; NPZ archives are
    read whole once, so use HDF5 for large files); ``truth`` as :class:`SceneReader`."""
    if not is_whole(size) or size < 1:  # (2.5 was a TypeError from range, True a size of 1)
        raise SceneFileError(f"chunk size must be a whole number of scenes >= 1, got {size!r}")
    with SceneReader(path, truth) as reader:
        stop = reader.info.n_scenes if stop is None else min(stop, reader.info.n_scenes)
        if not 0 <= start <= stop:
            raise SceneFileError(f"{path}: bad scene range {start}..{stop} of "
                                 f"{reader.info.n_scenes}")
        for lo in range(start, stop, size):
            yield lo, reader.read(lo, min(lo + size, stop))
