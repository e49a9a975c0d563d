import errno
import json
import math
import os
import stat

import numpy as np
import pytest

from risloc.io.atomic import atomic_path, write_csv_atomic, write_json_atomic, write_text_atomic


def test_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = write_text_atomic(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"


def test_csv_from_sequences_and_dicts(tmp_path):
    a = write_csv_atomic(tmp_path / "a.csv", ["x", "y"], [(1, 2), (3, 4)])
    b = write_csv_atomic(tmp_path / "b.csv", ["x", "y"], [{"x": 1, "y": 2}, {"x": 3, "y": 4}])
    assert a.read_text().splitlines() == b.read_text().splitlines() == ["x,y", "1,2", "3,4"]
    assert write_csv_atomic(tmp_path / "c.csv", ["x"], []).read_text().splitlines() == ["x"]


def test_two_concurrent_writers_never_mix_their_lines(tmp_path):
    """Each writer has its own temporary file: the target is always one writer's whole
    content (the fixed '.partial' name of earlier versions let two writers interleave)."""
    import multiprocessing as mp

    target = tmp_path / "report.txt"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(target, tag)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = target.read_text().splitlines()
    assert len(lines) == 2000 and len(set(lines)) == 1  # one writer's 2000 equal lines
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def _write_many(target, tag: str) -> None:
    for _ in range(30):
        write_text_atomic(target, (tag * 40 + "\n") * 2000)


def test_temporaries_of_a_killed_writer_are_removed_by_the_next(tmp_path):
    from risloc.io.atomic import remove_stale_temporaries

    target = tmp_path / "scenes.h5"
    stale = tmp_path / f".scenes.h5.{2 ** 22 + 12345}-deadbeef.partial.h5"  # no such pid
    stale.write_bytes(b"half")
    mine = tmp_path / f".scenes.h5.{__import__('os').getpid()}-cafe.partial.h5"
    mine.write_bytes(b"in use")
    assert remove_stale_temporaries(target) == [stale]
    assert mine.exists() and not stale.exists()
    # a name with glob characters (a review: "s[0].h5" matched the temporaries of
    # "s0.h5", read a live writer's pid from the wrong place and deleted its file)
    other = tmp_path / f".s0.h5.{__import__('os').getpid()}-cafe.partial.h5"
    other.write_bytes(b"in use")
    own = tmp_path / f".s[0].h5.{2 ** 22 + 12345}-dead.partial.h5"
    own.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path / "s[0].h5") == [own]
    assert other.exists() and not own.exists()


def test_check_writable_refuses_inputs_folders_and_unwritable_places(tmp_path):
    from risloc.io.atomic import check_writable

    inp = tmp_path / "same.h5"
    inp.write_bytes(b"x")
    with pytest.raises(ValueError, match="one of the inputs"):
        check_writable(tmp_path / "." / "same.h5", [inp])
    with pytest.raises(ValueError, match="is a folder"):
        check_writable(tmp_path, [])
    for below in (inp / "out.csv", inp / "sub" / "out.csv"):  # a file where a folder goes
        with pytest.raises(ValueError, match="same.h5(, which)? is a file, not a folder"):
            check_writable(below)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        import os

        if os.geteuid() != 0:  # root writes anywhere
            with pytest.raises(ValueError, match="not writable"):
                check_writable(locked / "out.csv")
            with pytest.raises(ValueError, match="no permission to create folders in"):
                check_writable(locked / "sub" / "out.csv")
    finally:
        locked.chmod(0o700)
    assert check_writable(tmp_path / "out.csv").name == "out.csv"
    assert check_writable(tmp_path / "new" / "sub" / "out.csv").name == "out.csv"
    # the probe leaves nothing, and no folder is made (the writer makes it: a run refused
    # after this check leaves none behind)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked", "same.h5"]


def test_a_read_only_file_system_is_named_not_the_probe(tmp_path, monkeypatch):
    """A review on a read-only mount: the error named the probe's temporary name, raised by
    its removal in a finally (EROFS even for a file that is not there)."""
    import errno
    from pathlib import Path

    from risloc.io.atomic import check_folder_writable, check_writable

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(ValueError) as err:
        check_writable(tmp_path / "e.csv")
    assert str(err.value) == f"the output {tmp_path / 'e.csv'} is not writable: Read-only " \
        "file system"
    # a run's folder (risloc train): named as a folder
    with pytest.raises(ValueError) as err:
        check_folder_writable(tmp_path)
    assert str(err.value) == f"the output folder {tmp_path} is not writable: Read-only " \
        "file system"


def test_try_lock_refuses_a_held_file_and_goes_unlocked_where_the_filesystem_has_none(
        tmp_path, monkeypatch, caplog):
    import errno

    from risloc.io import atomic

    with open(tmp_path / "f", "a") as a, open(tmp_path / "f", "a") as b:
        assert atomic.try_lock(a) and not atomic.try_lock(b)  # held by the first

    def no_locks(fh, op):  # NFS without lockd: every lock fails, none is held
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(atomic.fcntl, "flock", no_locks)
    with open(tmp_path / "g", "a") as c:
        assert atomic.try_lock(c)
    assert "cannot be locked on its filesystem" in caplog.text


def test_json_is_strict_with_non_finite_numbers_as_null(tmp_path):
    path = write_json_atomic(tmp_path / "m.json", {
        "a": math.nan, "b": [1.5, math.inf, (np.float32("nan"), np.float64(-np.inf))],
        "c": {"d": np.float32(0.25), "e": 3, "f": None, "g": True}, "p": tmp_path},
        default=str)

    def refuse(constant):
        raise ValueError(constant)
    got = json.loads(path.read_text(), parse_constant=refuse)
    assert got == {"a": None, "b": [1.5, None, [None, None]],
                   "c": {"d": 0.25, "e": 3, "f": None, "g": True}, "p": str(tmp_path)}
    assert path.read_text().endswith("}\n")


def test_the_data_and_then_the_folder_are_synced_around_the_rename(tmp_path, monkeypatch,
                                                                    sync_events):
    """The data are on disk before the rename and the folder's new entry after it: after a
    power loss the target is the old file or the new one, never an empty one or gone. A
    folder that cannot be synced (Windows, some network filesystems) is no error."""
    from risloc.io import atomic

    events = sync_events
    target = write_text_atomic(tmp_path / "out.txt", "new")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(".partial.txt") and events[2][1] == str(tmp_path)

    def refused(path):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(atomic, "_fsync", lambda p: None if p.is_file() else refused(p))
    write_text_atomic(target, "newer")
    assert target.read_text() == "newer"


def test_a_csv_whose_read_back_fails_is_not_written(tmp_path):
    """write_csv_atomic's ``check`` reads the temporary back before the rename: a failed
    check leaves neither the target nor a temporary (a mutation review: the check never
    called passed the io tests)."""
    def refuse(path):
        assert path.name.endswith(".partial.csv")
        raise ValueError("bad rows")

    with pytest.raises(ValueError, match="bad rows"):
        write_csv_atomic(tmp_path / "out.csv", ["a"], [[1]], check=refuse)
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_of_another_user_s_live_writer_is_kept(tmp_path, monkeypatch):
    """os.kill(pid, 0) on another user's process raises PermissionError: that writer is
    alive, its temporary is kept (a mutation review: taken as dead, it was deleted under
    the writer). A name whose pid part is no number (another tool's file) is left alone."""
    import os

    from risloc.io import atomic

    target = tmp_path / "scenes.h5"
    theirs = tmp_path / ".scenes.h5.4242-beef.partial.h5"
    theirs.write_bytes(b"in use")
    odd = tmp_path / ".scenes.h5.backup-1.partial"
    odd.write_bytes(b"not ours")

    def not_permitted(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", not_permitted)
    assert atomic.remove_stale_temporaries(target) == []
    assert theirs.exists() and odd.exists()


def test_two_writers_in_one_process_get_their_own_temporaries(tmp_path):
    """Threads of one process (one pid) writing one target never share a temporary."""
    from risloc.io.atomic import temporary_name

    target = tmp_path / "out.csv"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b and a.parent == b.parent == tmp_path
        assert a.name.startswith(".out.csv.") and a.name.endswith(".partial.csv")
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # (b committed first, a last)
    assert temporary_name(target) != temporary_name(target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_each_write_removes_the_temporaries_of_killed_writers(tmp_path):
    """The module's promise: the next writer of a target removes what a killed one left."""
    stale = tmp_path / f".out.txt.{2 ** 22 + 12345}-deadbeef.partial.txt"  # no such pid
    stale.write_text("half")
    write_text_atomic(tmp_path / "out.txt", "whole")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_checking_an_existing_output_leaves_it_as_it_was(tmp_path, monkeypatch):
    """check_writable probes beside the output: an existing file (the output a run will
    replace at its end) keeps its bytes; an input named by another spelling of its path
    (relative, through a symbolic link) is still that input."""
    from risloc.io.atomic import check_writable

    out = tmp_path / "out.csv"
    out.write_text("a,b\n1,2\n")
    assert check_writable(out) == out
    assert out.read_text() == "a,b\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="one of the inputs"):
        check_writable(tmp_path / "out.csv", ["out.csv"])
    (tmp_path / "link.csv").symlink_to(out)
    with pytest.raises(ValueError, match="one of the inputs"):
        check_writable("link.csv", [out])


def test_a_file_in_place_of_a_folder_is_named_as_it_stands(tmp_path):
    from risloc.io.atomic import check_output_folder

    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ValueError) as err:
        check_output_folder(f)
    assert str(err.value) == f"the output folder {f} is a file, not a folder"
    with pytest.raises(ValueError) as err:
        check_output_folder(f / "sub", "the run folder")
    assert str(err.value) == f"the run folder lies under {f}, which is a file, not a folder"


def test_a_commit_that_fails_removes_its_temporary(tmp_path):
    """commit_temporary's own callers (the .h5 scene writer) hold no atomic_path: a failed
    rename (a folder in the target's place, here) leaves no temporary behind."""
    from risloc.io.atomic import commit_temporary, temporary_name

    target = tmp_path / "scenes.h5"
    (target / "inside").mkdir(parents=True)
    tmp = temporary_name(target)
    tmp.write_bytes(b"whole")
    with pytest.raises(OSError):
        commit_temporary(tmp, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes.h5"]


def test_a_folder_that_takes_files_but_refuses_their_removal_is_not_writable(tmp_path,
                                                                              monkeypatch):
    """The probe is created and removed: a folder refusing the removal (append-only, a
    sticky folder of another user) is named before the run, not at its end."""
    import errno
    from pathlib import Path

    from risloc.io.atomic import check_folder_writable

    def refused(self, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "unlink", refused)
    with pytest.raises(ValueError, match="is not writable: Operation not permitted"):
        check_folder_writable(tmp_path)


def test_json_whose_default_gives_a_non_finite_number_is_refused(tmp_path):
    """Strict JSON whatever ``default`` returns: never a bare NaN in the file."""
    from decimal import Decimal

    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "m.json", {"x": Decimal("NaN")}, default=float)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_output_folder_under_one_that_cannot_be_entered_is_not_writable(
        tmp_path, monkeypatch):
    """Creating a folder inside another needs both write and search (x) permission on it: a
    folder of mode 0o600 is refused as one of 0o500 is (a mutation review: write permission
    alone passed; os.access simulated, since root may do either)."""
    import os

    import risloc.io.atomic as atomic

    monkeypatch.setattr(atomic.os, "access", lambda p, mode: not mode & os.X_OK)
    with pytest.raises(ValueError, match="no permission to create folders in"):
        atomic.check_writable(tmp_path / "sub" / "out.csv")


def test_syncing_closes_what_it_opens(tmp_path):
    """A mutation review: _fsync leaving its descriptors open (two per write: the data and
    the folder) passed; a long run writing many files would run out of them."""
    import os

    fds = "/proc/self/fd"
    if not os.path.isdir(fds):
        pytest.skip("no /proc/self/fd to count open descriptors")
    write_text_atomic(tmp_path / "warm.txt", "x")
    before = len(os.listdir(fds))
    for i in range(5):
        write_text_atomic(tmp_path / f"out{i}.txt", "x")
    assert len(os.listdir(fds)) == before


def test_a_file_rewritten_keeps_its_permissions(tmp_path):
    """A checkpoint or estimates file the user made private (chmod 600) stays private when
    a run rewrites it (the temporary's default mode replaced it; a review); a new file gets
    the default."""
    import stat

    target = tmp_path / "model.pt"
    write_text_atomic(target, "one")
    target.chmod(0o600)
    write_text_atomic(target, "two")
    assert target.read_text() == "two" and stat.S_IMODE(target.stat().st_mode) == 0o600
    fresh = write_text_atomic(tmp_path / "new.txt", "x")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~_umask()


def test_a_filesystem_refusing_chmod_still_gets_the_file(tmp_path, monkeypatch):
    """Keeping a rewritten file's permissions is a courtesy: where the filesystem refuses
    chmod (EPERM on some network mounts) the write still succeeds (a review: a run failed
    at its second checkpoint)."""
    from risloc.io import atomic

    target = tmp_path / "last.pt"
    write_text_atomic(target, "one")

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "chmod", refuse)
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left


def _umask() -> int:
    import os

    old = os.umask(0)
    os.umask(old)
    return old


def test_a_folder_sync_refused_closes_what_it_opened(tmp_path, monkeypatch):
    """A filesystem refusing fsync of folders (EINVAL: some network mounts) still gets the
    file, and the descriptor opened for the sync is closed all the same (a mutation review:
    _fsync closing only after a successful fsync passed; every write there leaked one)."""
    fds = "/proc/self/fd"
    if not os.path.isdir(fds):
        pytest.skip("no /proc/self/fd to count open descriptors")
    real_fsync = os.fsync

    def no_folder_sync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_folder_sync)
    write_text_atomic(tmp_path / "warm.txt", "x")
    before = len(os.listdir(fds))
    for i in range(5):
        assert write_text_atomic(tmp_path / f"out{i}.txt", "x").read_text() == "x"
    assert len(os.listdir(fds)) == before


def test_a_failed_data_sync_fails_the_write_and_keeps_the_old_file(tmp_path, monkeypatch):
    """fsync of the data failing (EIO: the disk lost them) is an error, not swallowed: the
    old file stays and no temporary is left (a mutation review: a suppressed fsync error
    passed)."""
    import errno
    import os

    target = write_text_atomic(tmp_path / "out.txt", "old")

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(OSError, match="Input/output"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_an_output_folder_that_cannot_be_made_is_a_value_error_naming_it(tmp_path,
                                                                          monkeypatch):
    """mkdir refused (no permission) is a ValueError naming the folder (a mutation review:
    the raw OSError passed)."""
    import errno
    from pathlib import Path

    from risloc.io.atomic import make_output_folder

    def refused(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(ValueError, match="cannot create the output folder .*run"):
        make_output_folder(tmp_path / "run")


def test_the_sha256_covers_files_longer_than_one_read(tmp_path):
    """file_sha256 reads 1 MiB at a time: every block counts (a mutation review: hashing
    only the first block passed)."""
    import hashlib

    from risloc.io.atomic import file_sha256

    data = b"a" * (1 << 20) + b"tail"
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_a_folder_where_none_can_be_made_is_refused_before_the_work(tmp_path, monkeypatch):
    """An output under a folder that is still missing: its nearest existing parent must let
    a folder be made, tried, not only asked of os.access, which says yes to root everywhere
    (a persona's `risloc evaluate --out /sys/ev` ran the whole evaluation, then failed with
    "[Errno 1] Operation not permitted"); the probe leaves nothing."""
    import errno

    import risloc.io.atomic as atomic

    atomic.check_writable(tmp_path / "sub" / "out.csv")
    assert list(tmp_path.iterdir()) == []

    def refused(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "rmdir", refused)  # made, not removable (append-only):
    assert atomic.check_writable(tmp_path / "sub" / "out.csv") == tmp_path / "sub" / "out.csv"
    monkeypatch.undo()
    monkeypatch.setattr(atomic.tempfile, "mkdtemp", refused)
    with pytest.raises(ValueError, match=r"not writable: no folder can be created in .* "
                                         r"\(Operation not permitted\)"):
        atomic.check_writable(tmp_path / "sub" / "out.csv")
