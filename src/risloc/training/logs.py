"""Training logs: CSV files, per-epoch running statistics, the progress bar."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from risloc.io.atomic import write_text_atomic

log = logging.getLogger(__name__)


class CsvLog:
    """Append rows (dicts) to a CSV file; the header is the keys of the first row (of a
    resumed file, its own header: a key it lacks is not logged, with a warning naming it).

    ``append``: continue an existing file (a resumed run), keeping only its rows for which
    ``keep(row)`` holds (row values are strings): the rows a killed run wrote after its
    last checkpoint are written again when the resumed run redoes that work. Each row is
    synced to disk as it is written, so the checkpoint written after it never covers
    epochs whose rows a power loss took (a resumed run would miss them)."""

    def __init__(self, path: Path, append: bool = False,
                 keep: Callable[[dict[str, str]], bool] | None = None):
        self.path = Path(path)
        self.fields: list[str] | None = None
        self._warned: set[str] = set()  # the columns a resumed file lacks, warned of once
        if append and self.path.exists():
            fields, rows, cut = read_log(self.path)
            self.fields = fields or None
            if self.fields and (cut or keep is not None and not all(keep(r) for r in rows)):
                buf = io.StringIO()
                w = csv.DictWriter(buf, fieldnames=self.fields)
                w.writeheader()
                w.writerows(r for r in rows if keep is None or keep(r))
                write_text_atomic(self.path, buf.getvalue())
            elif self.fields is None:  # no whole header (a kill cut it): start it afresh
                self.path.unlink()
        elif self.path.exists():
            self.path.unlink()

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        elif dropped := [k for k in row if k not in self.fields and k not in self._warned]:
            # a resumed run logging a column the old file lacks: the file keeps its header
            # (class docstring), the column is not logged there; said once, by name
            self._warned.update(dropped)
            log.warning("%s: column(s) %s not logged (the resumed file keeps its header, "
                        "which lacks them)", self.path, ", ".join(dropped))
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
            fh.flush()  # on disk before the checkpoint that follows it (class docstring)
            os.fsync(fh.fileno())


def read_log(path: Path) -> tuple[list[str], list[dict[str, str]], bool]:
    """(columns, rows, cut) of a CSV log: a last row without its line end, which a run
    killed (or a power loss) while writing it leaves, is not a row (cut: True)."""
    with open(path, newline="") as fh:  # (line ends as written)
        text = fh.read()
    cut = bool(text) and not text.endswith("\n")
    if cut:
        text = text[:text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows, cut


@dataclass
class EpochStats:
    """Running means of the loss terms (over all micro-batches of an epoch, not the last
    one; a NaN / inf term is left out of its mean and the non-finite totals are counted),
    gradient norms, non-finite gradient counts and skipped steps."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    norms: list[float] = field(default_factory=list)
    nonfinite: int = 0
    skipped: int = 0
    bad_losses: int = 0  # micro-batches whose total loss was NaN / inf (left out of the means)
    lr: float = math.nan
    beta: float = math.nan

    def add_terms(self, terms: dict[str, float]) -> None:
        self.bad_losses += int(not math.isfinite(terms.get("total", 0.0)))
        for k, v in terms.items():
            if math.isfinite(v):
                self.sums[k] = self.sums.get(k, 0.0) + v
                self.counts[k] = self.counts.get(k, 0) + 1
            else:
                self.sums.setdefault(k, 0.0)
                self.counts.setdefault(k, 0)

    def add_step(self, norm: float, n_bad: int, taken: bool, lr: float, beta: float) -> None:
        self.norms.append(norm)
        self.nonfinite += n_bad
        self.skipped += int(not taken)
        self.lr, self.beta = lr, beta

    def summary(self) -> dict[str, float]:
        out = {f"train_{k}": (self.sums[k] / self.counts[k] if self.counts[k] else math.nan)
               for k in self.sums}
        finite = [n for n in self.norms if math.isfinite(n)]
        out.update(lr=self.lr, beta=self.beta, grad_norm_mean=(sum(finite) / len(finite)
                                                               if finite else math.nan),
                   grad_norm_max=max(finite) if finite else math.nan,
                   nonfinite_grads=self.nonfinite, skipped_steps=self.skipped,
                   nonfinite_losses=self.bad_losses)
        return out


@contextlib.contextmanager
def epoch_progress(enabled: bool, description: str, total: int
                   ) -> Iterator[Callable[[float], None]]:
    """A rich progress bar over the steps of an epoch; yields advance(loss). None where
    stderr is no terminal nor notebook (a log file: the transient bar left an empty line an
    epoch there)."""
    console = Console(stderr=True)
    if not enabled or not (console.is_terminal or console.is_jupyter):
        yield lambda loss: None
        return
    bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                   MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                   transient=True)
    with bar:
        task = bar.add_task(description, total=total, loss="-")  # (none before a step)
        yield lambda loss: bar.update(task, advance=1, loss=f"{loss:.4f}")
