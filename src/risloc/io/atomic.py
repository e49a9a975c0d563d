"""Atomic file output: write under a temporary name beside the target, rename when done.

An interrupted or failed write never leaves a truncated file under the real name (the
temporary one is removed on error). Scene files and checkpoints have their own writers
(chunked HDF5, fsync'd torch.save) that follow the same rule.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield ``<path>.partial`` to write to; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv_atomic(path: str | Path, header: Sequence[str], rows: Iterable) -> Path:
    """CSV with a header; rows are sequences (in header order) or dicts keyed by it."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        rows = list(rows)
        if rows and isinstance(rows[0], dict):
            w = csv.DictWriter(f, fieldnames=list(header))
            w.writeheader()
        else:
            w = csv.writer(f)
            w.writerow(header)
        w.writerows(rows)
    return Path(path)
