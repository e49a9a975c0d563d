"""The estimates file (docs/conventions.md): CSV `scene,source,azimuth_deg,elevation_deg,range_m`
(+ `score`), one row per estimated source; written atomically."""

from __future__ import annotations

import codecs
import csv
import json
import logging
import math
import os
import re
from pathlib import Path

import torch

from risloc.core.checks import is_whole
from risloc.core.params import Estimates
from risloc.io.atomic import fsync_folder, try_lock, write_csv_atomic, write_text_atomic

log = logging.getLogger(__name__)

COLUMNS = ("scene", "source", "azimuth_deg", "elevation_deg", "range_m", "score")


def estimate_rows(est: Estimates, offset: int = 0) -> list[tuple]:
    """Rows of the estimates CSV for a batch whose first scene has index ``offset``."""
    rows = []
    az, el = torch.rad2deg(est.azimuth.double()), torch.rad2deg(est.elevation.double())
    el = el.clamp(-90.0, 90.0)  # (float32's pi / 2 is 90.0000025 deg: read back, beyond 90)
    for b, k in enumerate(est.K.tolist()):
        for s in range(k):
            rows.append((offset + b, s, f"{float(az[b, s]):.6f}", f"{float(el[b, s]):.6f}",
                         f"{float(est.range_m[b, s]):.6f}", f"{float(est.score[b, s]):.6g}"))
    return rows


def write_estimates(path: str | Path, rows: list[tuple] | Estimates) -> Path:
    """Write the CSV atomically (temporary name, then rename): rows of
    :func:`estimate_rows`, or Estimates (a Localizer's result too) whose first scene is
    scene 0. ValueError, before anything is written, for a name not ending in .csv or a
    file there that is not an estimates CSV (:func:`check_estimates_target`); TypeError
    for rows that are not sequences of the columns; ValueError, nothing written, for
    Estimates or rows that :func:`read_estimates` would not read back (rows are read back
    from the written file before it takes its name)."""
    est = getattr(rows, "estimates", rows)  # a LocalizationResult: its estimates
    checked = isinstance(est, Estimates)
    if checked:
        _check_writable_estimates(est)
        rows = estimate_rows(est)
    rows = list(rows)
    bad = next((r for r in rows if not isinstance(r, tuple | list) or
                not len(COLUMNS) - 1 <= len(r) <= len(COLUMNS)), None)
    if bad is not None:
        raise TypeError(f"write_estimates takes Estimates or rows of ({', '.join(COLUMNS)}) "
                        f"(estimate_rows makes them), got a row {bad!r:.80}")
    check_estimates_target(path, what="the estimates file")

    def reads_back(written: Path) -> None:  # as read_estimates reads it, no memory taken
        try:
            lines = list(enumerate(_csv_rows(written)[1], start=2))
            _check_numbering(written, _parse_rows(written, lines), None, None)
        except ValueError as err:  # named by the target, not the temporary
            raise ValueError(f"write_estimates: {err}".replace(str(written), str(path))
                             ) from None

    return write_csv_atomic(path, COLUMNS, rows, check=None if checked else reads_back)


def _check_writable_estimates(est: Estimates) -> None:
    """ValueError naming the first scene whose estimates the CSV could not hold so that
    :func:`read_estimates` reads them back: K beyond its slots, a position of a reported
    source that is not finite, a range that rounds to 0 at the CSV's 6 decimals, an
    elevation beyond +-90 deg by more than float32's rounding of pi / 2 (that much is written
    as +-90)."""
    slots = est.azimuth.shape[-1]
    over = (est.K > slots).nonzero().flatten()
    if over.numel():
        b = int(over[0])
        raise ValueError(f"scene {b}: K = {int(est.K[b])} sources but {slots} slots of "
                         "positions")
    valid = est.mask
    bad = valid & ~(torch.isfinite(est.azimuth) & torch.isfinite(est.elevation)
                    & torch.isfinite(est.range_m) & (est.range_m >= 1e-6)
                    & (torch.rad2deg(est.elevation.double()).abs() <= 90.0 + 1e-5))
    if bool(bad.any()):
        b, s = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"scene {b}, source {s}: its position must be finite numbers, its "
                         "elevation within +-pi / 2 and its range at least 1e-6 m (the CSV's "
                         "6 decimals), got azimuth "
                         f"{float(est.azimuth[b, s]):g} rad, elevation "
                         f"{float(est.elevation[b, s]):g} rad, range "
                         f"{float(est.range_m[b, s]):g} m (a scene with no source: K = 0)")


class SeveralFilesError(ValueError):
    """An estimates CSV of several input files read without choosing one (``file``)."""

    def __init__(self, path: Path, n_files: int):
        self.n_files = n_files
        super().__init__(f"{path} holds the estimates of {n_files} input files (its `file` "
                         "column): pass file= the index of one")


class OneFileOfSeveralError(ValueError):
    """An estimates CSV with a ``file`` column whose rows are all of one file other than
    0, read without choosing one: that file's rows kept, or file 0 without any row?"""

    def __init__(self, path: Path, index: int):
        self.index = index
        super().__init__(f"{path} has a `file` column (a CSV of several input files) and "
                         f"rows of file {index} alone: pass file={index} to read them (or "
                         "file=0 for the first file, none of whose scenes then has a row)")


def _shortened(text: str, width: int = 120) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _header(path: Path, fieldnames: list[str] | None) -> list[str]:
    """The CSV's column names, a spreadsheet's stray spaces and capitals forgiven; a
    ValueError naming what is missing (and a ';'-separated file as such)."""
    if not fieldnames:
        raise ValueError(f"{path} is empty: an estimates CSV starts with its header "
                         f"{','.join(COLUMNS)}")
    known = (*COLUMNS, "file")
    fieldnames = [fieldnames[0].removeprefix("#"), *fieldnames[1:]]  # np.savetxt's '# '
    names = [n.strip().lower() if n.strip().lower() in known else n for n in fieldnames]
    missing = [c for c in COLUMNS[:5] if c not in names]
    if missing:
        header = _shortened(",".join(fieldnames))
        sep = next((c for c in (";", "\t") if len(names) == 1 and c in names[0]), None)
        hint = f" (its header is separated by {sep!r}: an estimates CSV is comma-separated)" \
            if sep else f"; its header: {header}"
        unsaid = [f"{n} as {c}" for c in missing for n in names if c.startswith(f"{n}_")]
        if unsaid:  # 'azimuth' for azimuth_deg: renamed only where it holds the unit named
            hint += f" (rename {', '.join(unsaid)}: angles in degrees, range in metres)"
        raise ValueError(f"{path}: no column {missing} (an estimates CSV has "
                         f"{', '.join(COLUMNS)}){hint}")
    return names


def read_estimates(path: str | Path, n_scenes: int, slots: int | None = None,
                   file: int | None = None) -> Estimates:
    """Read an estimates CSV back into Estimates with ``slots`` NaN-padded slots (None: as
    many as the scene with the most sources, at least 1): angles in radians (the CSV's
    degrees converted), ranges in metres.

    n_scenes : the number of scenes of the scene file the estimates are of (required: a
    scene without a row has K = 0 and NaN slots; a row of scene >= n_scenes is a
    ValueError naming its line).

    A CSV of several input files (`risloc localize a.h5 b.h5`: a ``file`` column, the
    index in its argument list) holds several scenes of each index: ``file`` picks one
    (needed where it holds more than one)."""
    if not (is_whole(n_scenes) and n_scenes >= 0):
        raise ValueError(f"n_scenes must be the number of scenes of the scene file (a whole "
                         f"number >= 0), got {n_scenes!r}")
    n_scenes = int(n_scenes)
    if slots is not None and not (is_whole(slots) and slots >= 1):
        raise ValueError(f"slots must be a whole number >= 1 or None, got {slots!r}")
    if file is not None and not (is_whole(file) and file >= 0):
        raise ValueError(f"file must be the index (0, 1, ...) of an input file, got {file!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an estimates CSV")
    fieldnames, rows = _csv_rows(path)
    several = "file" in fieldnames  # a CSV of several input files
    of_file = [_file_index(path, line, r) for line, r in enumerate(rows, start=2)] \
        if several else [0] * len(rows)
    files = sorted(set(of_file))
    if file is None and len(files) > 1:
        raise SeveralFilesError(path, len(files))
    if file is None and files and files != [0]:
        # one file's rows kept from a CSV of several, or every scene of file 0 without a
        # row: which is meant is the caller's to say (evaluate --estimates reads the rows)
        raise OneFileOfSeveralError(path, files[0])
    if file is not None:
        if not several and file != 0:
            raise ValueError(f"{path} holds the estimates of one input file (no `file` "
                             f"column), not of file {file}")
        if several and file not in files:  # (a file with no estimate at all: no rows)
            log.warning("%s has no row of file %d (its files with rows: %s): none of its "
                        "scenes has an estimate", path, file,
                        ", ".join(map(str, files)) or "none")
    file = 0 if file is None else file
    lines = [(line, r) for line, r, f in zip(range(2, len(rows) + 2), rows, of_file,
                                             strict=True) if f == file]  # line 1: the header
    parsed = _parse_rows(path, lines)
    sources = _check_numbering(path, parsed, n_scenes, slots)
    slots = max([1, *(len(n) for n in sources.values())]) if slots is None else slots
    K = torch.zeros(n_scenes, dtype=torch.int64)
    vals = {n: torch.full((n_scenes, slots), math.nan) for n in
            ("azimuth", "elevation", "range_m", "score")}
    for _, b, s, values, score in parsed:
        K[b] = max(int(K[b]), s + 1)
        vals["azimuth"][b, s] = math.radians(values[0])
        vals["elevation"][b, s] = math.radians(values[1])
        vals["range_m"][b, s] = values[2]
        vals["score"][b, s] = score
    return Estimates(K=K, **vals)


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header (its names made the contract's, :func:`_header`) and rows of an estimates
    CSV."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # a spreadsheet's BOM too
            reader = csv.DictReader(f)
            reader.fieldnames = _header(path, reader.fieldnames)
            rows = list(reader)
            while rows and not any(c.strip() for v in rows[-1].values() if v is not None
                                   for c in ([v] if isinstance(v, str) else v)):
                rows.pop()  # a spreadsheet's rows of empty cells (',,,,') after the last
                # (a cell beyond the header's, a list under the key None, counts)
            return list(reader.fieldnames), rows
    except csv.Error as err:  # (a line of 128 KB: a one-line JSON file given by a slip)
        raise ValueError(f"{path}, line {reader.line_num + 1}: not a CSV line ({err}): an "
                         "estimates CSV has short lines of numbers") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a text CSV in UTF-8 (byte {err.start}: {err.reason}): "
                         "an estimates CSV, not a scene file or a spreadsheet's own format"
                         ) from None


def _parse_rows(path: Path, lines: list[tuple[int, dict]]) -> list[tuple]:
    """(line, scene, source, [az, el, range], score) of each (line, row) of the CSV;
    ValueError naming the line of a cell that is not a number or a position out of bounds."""
    parsed = []
    for line, row in lines:
        try:
            b, s = _whole(row["scene"]), _whole(row["source"])
            values = [float(row[c]) for c in COLUMNS[2:5]]
            score = float(row.get("score") or "nan")
        except (TypeError, ValueError):
            comma = any(isinstance(v, str) and re.fullmatch(r"\s*-?\d+,\d+\s*", v)
                        for v in row.values())
            raise ValueError(f"{path}, line {line}: scene and source must be whole numbers "
                             f"and the position numbers, got {dict(row)}" + (
                                 " (decimal commas: write numbers with a decimal point)"
                                 if comma else "")) from None
        if not all(map(math.isfinite, values)) or values[2] <= 0:
            raise ValueError(f"{path}, line {line}: positions must be finite numbers and the "
                             f"range > 0, got {dict(row)} (a scene with no source has no row)")
        if abs(values[1]) > 90:  # (a zenith angle, or radians the other way round)
            raise ValueError(f"{path}, line {line}: elevation_deg {values[1]:.10g} lies beyond "
                             "+-90 deg (an elevation, docs/conventions.md: not a zenith "
                             "angle)")
        parsed.append((line, b, s, values, score))
    return parsed


def _whole(cell: str) -> int:
    """A scene or source cell as a whole number: 3, or 3.0 / 3.000000e+00 as np.savetxt and
    a pandas float column write it; ValueError for 3.5 or text."""
    try:
        return int(cell)
    except ValueError:
        value = float(cell)
        if not value.is_integer():
            raise
        return int(value)


def _check_numbering(path: Path, parsed: list[tuple], n_scenes: int | None,
                     slots: int | None) -> dict[int, list[int]]:
    """Each scene's source numbers (scene -> sorted numbers) of parsed rows, checked
    before any memory is taken for them: scenes within n_scenes (None: any >= 0), sources
    within slots (None: any), no source twice, none missing below the largest."""
    seen: dict[tuple[int, int], int] = {}  # (scene, source) -> its row's line
    sources: dict[int, list[int]] = {}  # scene -> its source numbers
    within = math.inf if n_scenes is None else n_scenes
    # every scene's and source's number from 1: MATLAB's counting, named where it fails
    # (and none beyond the file once 1 is subtracted: a scene past it is no such CSV)
    one_based = ("; the CSV numbers scenes and sources from 1 (MATLAB's counting?): they "
                 "are 0-based, subtract 1 from both" if parsed and min(r[1] for r in parsed)
                 >= 1 and min(r[2] for r in parsed) >= 1
                 and max(r[1] for r in parsed) <= within else "")
    for line, b, s, _, _ in parsed:
        if slots is not None and 0 <= b < within and s >= slots:
            raise ValueError(f"{path}, line {line}: scene {b} has a source {s}, beyond the "
                             f"{slots} slot(s) asked for (slots=): give slots >= {s + 1}, or "
                             "None for as many as the widest scene" + one_based)
        if not (0 <= b < within and 0 <= s):
            raise ValueError(f"{path}, line {line}: scene {b}, source {s}; expected " + (
                "scenes and sources numbered 0, 1, ..." if n_scenes is None else
                f"scenes 0..{n_scenes - 1} (the {n_scenes} scenes of the scene file) and "
                "sources 0, 1, ...") + one_based)
        if (b, s) in seen:
            raise ValueError(f"{path}, line {line}: scene {b}, source {s} again (first on "
                             f"line {seen[b, s]})")
        seen[b, s] = line
        sources.setdefault(b, []).append(s)
    for b, given in sources.items():  # (in the rows' count, not the largest number's)
        given.sort()
        gap = next((i for i, s in enumerate(given) if s != i), None)
        if gap is not None:
            raise ValueError(f"{path}: scene {b} has source {given[-1]} but no source "
                             f"{gap} (a scene's sources are numbered 0, 1, ... without a "
                             "gap: renumber them where rows were dropped, e.g. by score)"
                             + one_based)
    return sources


def _file_index(path: Path, line: int, row: dict) -> int:
    """A row's ``file`` cell as a whole number (spaces forgiven)."""
    try:
        value = float((row.get("file") or "").strip())  # (a spreadsheet's 1.0 too)
        index = int(value) if value.is_integer() else -1
    except (ValueError, OverflowError):
        index = -1
    if index < 0:
        raise ValueError(f"{path}, line {line}: file must be the index (0, 1, ...) of an "
                         f"input file, got {row.get('file')!r}")
    return index


def check_estimates_target(path: str | Path, what: str = "--out") -> None:
    """Refuse an estimates destination (``what`` names it in the message) that is not a
    .csv name, or that holds a file other than an estimates CSV (a scene file given as
    --out by a slip would be lost); an earlier estimates CSV may be replaced."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{what} {path}: the estimates are a CSV file; give a name ending "
                         "in .csv")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give the estimates file's name")
    if path.exists():
        with path.open("rb") as f:
            head = f.readline(200).removeprefix(codecs.BOM_UTF8)
        if not head.startswith(",".join(COLUMNS[:5]).encode()):
            raise ValueError(f"{what} {path} exists and is not an estimates CSV (it does not "
                             f"begin with the header {','.join(COLUMNS[:5])}): it is left "
                             f"as it is; give another name, or delete it first")


SETTING_NAMES = {  # the settings of a run, as a refused resume names them
    "inputs": "other input files",
    "input_versions": "an input file was written anew since (its size or modification "
                      "time differs)",
    "method": "another --method", "checkpoint": "another --checkpoint", "K": "another --K",
    "start": "another --start", "stop": "another --stop", "bf16": "another --bf16/--no-bf16",
    "snr_given": "another --snr-given/--snr-withheld", "fov": "another --fov",
}


class EstimatesStream:
    """The estimates CSV written as scenes are localized, resumable after a kill.

    Rows go to ``<out>.part`` (appended, fsync'd chunk by chunk); after each chunk a progress
    record ``<out>.progress.json`` (written atomically) holds the settings, how many
    scenes of each input are done and the size of the .part file at that point. On
    completion the .part file is renamed to ``out``: the final name only ever holds a
    complete file. ``resume=True`` continues from the record (the .part file is cut back
    to the last finished chunk); a record of other settings is an error naming them.
    ``restart=True`` discards an interrupted run's record and rows and starts afresh;
    without either, an interrupted run's files are an error that names both ways.
    The .part file is locked while a stream writes it (:func:`try_lock`): a second run
    into the same ``out`` (a --resume beside a running one would duplicate its rows) is
    refused. ``finish`` or ``close`` releases it (and the end of the process, however it
    ends).
    """

    def __init__(self, out: str | Path, settings: dict, columns: tuple[str, ...],
                 resume: bool = False, restart: bool = False):
        if resume and restart:
            raise ValueError("resume (continue an interrupted run) and restart (discard it) "
                             "exclude each other")
        self.out = Path(out)
        self.part = self.out.with_name(self.out.name + ".part")
        self.record = self.out.with_name(self.out.name + ".progress.json")
        self.settings, self.columns = settings, columns
        self.done: dict[str, int] = {}
        self.bad: list[tuple] = []  # (where, scene, reason) of scenes not localized
        self.resumed = False  # whether an interrupted run is continued
        self.discarded = False  # whether an interrupted run's rows were dropped (restart)
        self.part.parent.mkdir(parents=True, exist_ok=True)
        self._lock_part()
        try:
            if self.record.exists() and self.part.stat().st_size == 0:
                # the record of a run that finished (its .part renamed to out) before its
                # record was removed, or as this run started: nothing is left to resume
                # (an interrupted run's .part holds at least the header its record counts)
                self.record.unlink(missing_ok=True)
            self._open(resume, restart)
        except BaseException:
            self.close()
            raise

    def _lock_part(self) -> None:
        """Open the .part file (created where no run left one) and lock it; a run finishing
        in between renames the file opened to out, so its successor at .part is locked."""
        for _ in range(3):
            try:
                self._held = self.part.open("ab")
            except PermissionError as err:  # (a read-only .part: once a raw errno)
                if not self.part.exists():  # (none to hold: the folder refuses a new file)
                    raise ValueError(f"{self.out}: cannot create {self.part.name} in "
                                     f"{self.part.parent} ({err.strerror}): give an --out "
                                     "in a writable folder") from None
                raise ValueError(f"{self.out}: {self.part} is not writable ({err.strerror}): "
                                 "make it writable (chmod u+w) to continue or discard the "
                                 "interrupted run it holds, or give another --out") from None
            if not try_lock(self._held):
                self.close()
                raise ValueError(f"{self.out} is being written by another run "
                                 f"({self.part.name} is locked): wait for it to finish, or "
                                 "give another --out")
            try:
                if os.fstat(self._held.fileno()).st_ino == self.part.stat().st_ino:
                    return
            except FileNotFoundError:
                pass
            self.close()
        raise ValueError(f"{self.out}: {self.part.name} kept being renamed while this run "
                         "opened it: is another run writing the same --out? Try again")

    def _open(self, resume: bool, restart: bool) -> None:
        """Continue the interrupted run (resume) or start the .part file afresh."""
        self.discarded = restart and self.record.exists()
        if self.discarded:  # the record first: killed before the .part file is cut, a
            self.record.unlink()  # --resume then finds nothing to resume, not old counts
            fsync_folder(self.record.parent)
        if resume and self.record.exists():
            try:
                rec = json.loads(self.record.read_text())
                before, size = dict(rec["settings"]), int(rec["bytes"])
                done = {k: int(v) for k, v in dict(rec["done"]).items()}
                bad = [tuple(b) for b in rec.get("bad", [])]
                if size < 0:
                    raise ValueError(f"bytes {size} < 0")
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise ValueError(f"cannot resume {self.out}: its progress record "
                                 f"({self.record.name}) is unreadable ({err!s:.80}; edited by "
                                 "hand?). To start afresh, discarding the earlier run's "
                                 "scenes, pass --restart") from None
            settings = self.settings
            diff = [k for k in set(before) | set(settings) if before.get(k) != settings.get(k)]
            if "method" in diff:  # (the learned method's own settings follow from it)
                diff = [k for k in diff if k not in ("bf16", "checkpoint")]
            if diff:
                raise ValueError(f"cannot resume {self.out}: its run had other settings: "
                                 + "; ".join(SETTING_NAMES.get(k, k) for k in sorted(diff))
                                 + ". To start afresh, discarding the earlier run's "
                                 "scenes, pass --restart")
            self.done, self.resumed, self.bad = done, True, bad
            if self.part.stat().st_size < size:
                raise ValueError(f"cannot resume {self.out}: {self.part.name} is shorter "
                                 f"than its progress record ({self.record.name}) says (was "
                                 "it cut or replaced?). To start afresh, discarding the "
                                 "earlier run's scenes, pass --restart")
            with self.part.open("r+b") as f:  # drop rows of a chunk cut off by the kill
                f.truncate(size)
        elif self.record.exists() and not restart:
            raise ValueError(f"{self.out}: an interrupted run left {self.part.name}; pass "
                             "--resume to continue it, or --restart to discard it and start "
                             "afresh")
        else:
            with self.part.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
            self._commit()

    def _commit(self) -> None:
        write_text_atomic(self.record, json.dumps({
            "settings": self.settings, "done": self.done, "bad": self.bad,
            "bytes": self.part.stat().st_size}) + "\n")

    def append(self, key: str, next_scene: int, rows: list[tuple],
               bad: list[tuple] = ()) -> None:
        """Rows of a finished chunk of input ``key``, whose scenes before ``next_scene``
        are now all done; ``bad``: its scenes not localized ((where, scene, reason); kept
        in the progress record, so a resumed run still names them)."""
        with self.part.open("a", newline="") as f:
            csv.writer(f).writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        self.done[key] = next_scene
        self.bad.extend(tuple(b) for b in bad)
        self._commit()

    def finish(self) -> Path:
        """The complete .part file renamed onto the output (its rows were synced as they
        were appended), the folder synced, then the progress record removed: a crash
        between leaves the output complete (the next run removes the record)."""
        os.replace(self.part, self.out)
        fsync_folder(self.out.parent)
        self.record.unlink(missing_ok=True)
        self.close()
        return self.out

    def close(self) -> None:
        """Release the .part file's lock (an interrupted stream: --resume continues it)."""
        self._held.close()

    def __enter__(self) -> EstimatesStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
