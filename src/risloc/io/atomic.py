"""Atomic file output: the one helper every writer uses (scene files, checkpoints, reports,
estimates, plots).

Data go to a temporary file beside the target, named uniquely per writer
(``.<name>.<pid>-<random>.partial``), are flushed to disk (fsync) and renamed over the
target in one step. An interrupted or failed write never leaves a truncated file under the
real name (the folder is synced after the rename, so a power loss does not undo it
either), two processes writing the same target never write into one temporary file, and
temporaries left by a killed writer are removed by the next writer of that target.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import logging
import math
import os
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

SUFFIX = ".partial"
log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (try_lock always succeeds)
    fcntl = None


def try_lock(fh) -> bool:
    """Take an exclusive advisory lock on the open file ``fh`` without waiting: False when
    another process (or another open file of this one) holds it. The operating system
    releases it when the file is closed or the process ends, however it ends. Where fcntl
    is missing (Windows) or the filesystem has no locks it succeeds (with a warning in the
    latter case): files go unlocked."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held
        return False
    except OSError as err:  # a filesystem without locks (NFS without lockd, Lustre, ...)
        log.warning("%s cannot be locked on its filesystem (%s): it goes unlocked, so two "
                    "runs into it at once would not be refused", fh.name, err)
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete temporaries of ``path`` left by writers that are no longer running."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*{SUFFIX}*"):
        pid = tmp.name[len(path.name) + 2:].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def temporary_name(path: str | Path) -> Path:
    """A fresh temporary path beside ``path`` (same folder, so the rename is atomic); the
    target's suffix is kept last, for writers that pick a format by it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
                          f"{path.suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(path: Path) -> None:
    """Sync the folder ``path``'s entries (a rename into it), so that after a power loss or
    an operating system crash the new name is there, not only its data; where a folder
    cannot be opened or synced (Windows, some network filesystems) nothing happens."""
    try:
        _fsync(path)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on success it is synced and
    replaces ``path``; on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        commit_temporary(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def commit_temporary(tmp: Path, path: Path) -> None:
    """Make the complete temporary ``tmp`` the file ``path``: its data synced, renamed onto
    ``path``, the folder's entries synced (after a power loss the new name is there, not
    an empty file); a file rewritten keeps its permissions (a checkpoint made private with
    chmod stays so). On error ``tmp`` is removed."""
    try:
        _fsync(tmp)
        # (a new file: nothing to keep; a filesystem refusing chmod, e.g. some network
        # mounts: the data still written, in the default mode)
        with contextlib.suppress(OSError):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
        fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)  # (nothing there after the rename)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _finite_or_none(obj):
    """``obj`` with every non-finite float (NaN, +-inf; NumPy's too) as None, recursively
    through dicts, lists and tuples."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):  # (np.float64 is a float)
        return None
    if hasattr(obj, "dtype") and getattr(obj, "ndim", None) == 0:  # NumPy / torch scalars
        return _finite_or_none(obj.item())
    return obj


def write_json_atomic(path: str | Path, obj, default=None) -> Path:
    """``obj`` as strict JSON (indented, a final newline): NaN and infinities, which
    Python's json writes as the non-standard ``NaN`` / ``Infinity`` that jq, JavaScript and
    other strict readers refuse, are written as ``null``."""
    text = json.dumps(_finite_or_none(obj), indent=2, default=default, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def write_csv_atomic(path: str | Path, header: Sequence[str], rows: Iterable,
                     check: Callable[[Path], None] | None = None) -> Path:
    """CSV with a header; rows are sequences (in header order) or dicts keyed by it.
    ``check(written)``, where given, reads the written file before it takes its name: an
    error there leaves nothing (and an earlier file of the name as it was)."""
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="") as f:
            rows = list(rows)
            if rows and isinstance(rows[0], dict):
                w = csv.DictWriter(f, fieldnames=list(header))
                w.writeheader()
            else:
                w = csv.writer(f)
                w.writerow(header)
            w.writerows(rows)
        if check is not None:
            check(tmp)
    return Path(path)


def check_output_folder(folder: str | Path, what: str | None = None) -> None:
    """ValueError when ``folder``, or the nearest of its parents that exists, is a file
    (mkdir would say "[Errno 17] File exists" or "Not a directory")."""
    folder = Path(folder).absolute()
    above = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if above is not None and not above.is_dir():
        where = "is" if above == folder else f"lies under {above}, which is"
        raise ValueError(f"{what or f'the output folder {folder}'} {where} a file, not a "
                         "folder")


def make_output_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents); ValueError naming it where it cannot be: a file
    in its place (:func:`check_output_folder`), no permission, ..."""
    folder = Path(folder)
    check_output_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the output folder {folder}: {err}") from None
    return folder


def check_writable(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """ValueError unless ``path`` can be written and is none of ``inputs`` (checked before
    any work, so a long run never ends in a failed or destructive write). A folder still
    missing is made by the writer, so a run refused later leaves none behind (whether one
    can be made is tried with a probe folder, removed at once)."""
    path = Path(path)
    target = path.resolve()
    for inp in inputs:
        if Path(inp).resolve() == target:
            raise ValueError(f"the output {path} is one of the inputs: it would be replaced")
    if target.is_dir():
        raise ValueError(f"the output {path} is a folder")
    check_output_folder(target.parent)
    if not target.parent.exists():  # the writer creates it under the nearest that exists
        above = next(p for p in target.parent.parents if p.exists())
        if not os.access(above, os.W_OK | os.X_OK):
            raise ValueError(f"the output {path} is not writable: no permission to create "
                             f"folders in {above}")
        try:  # (root passes os.access where no folder can be made: /sys, /proc, ...)
            probe = tempfile.mkdtemp(prefix=".risloc-probe-", dir=above)
        except OSError as err:
            raise ValueError(f"the output {path} is not writable: no folder can be created "
                             f"in {above} ({err.strerror})") from None
        with contextlib.suppress(OSError):  # (an append-only folder: made, not removed;
            os.rmdir(probe)  # the writer's folder can be made there all the same)
        return path
    _probe_write(target, f"the output {path}")
    return path


def check_folder_writable(folder: str | Path, what: str | None = None) -> None:
    """ValueError unless files can be created and removed in the existing ``folder`` (a
    read-only or immutable folder, no permission), before a long run starts there."""
    folder = Path(folder)
    _probe_write(folder / ".probe", what or f"the output folder {folder}")


def _probe_write(target: Path, what: str) -> None:
    """Create and remove a temporary file beside ``target``; ValueError naming ``what``
    where the folder refuses either."""
    probe = temporary_name(target)
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:  # (its strerror: the message without the probe's own name)
        raise ValueError(f"{what} is not writable: {err.strerror or err}") from None
    finally:
        with contextlib.suppress(OSError):  # a read-only file system refuses this too
            probe.unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read 1 MiB at a time: whether two copies, or a file
    before and after a touch, hold the same data."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
