"""The estimates file (docs/conventions.md): CSV `scene,source,azimuth_deg,elevation_deg,range_m`
(+ `score`), one row per estimated source; written atomically."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from risloc.core.params import Estimates
from risloc.io.atomic import write_csv_atomic

COLUMNS = ("scene", "source", "azimuth_deg", "elevation_deg", "range_m", "score")


def estimate_rows(est: Estimates, offset: int = 0) -> list[tuple]:
    """Rows of the estimates CSV for a batch whose first scene has index ``offset``."""
    rows = []
    az, el = torch.rad2deg(est.azimuth.double()), torch.rad2deg(est.elevation.double())
    for b, k in enumerate(est.K.tolist()):
        for s in range(k):
            rows.append((offset + b, s, f"{float(az[b, s]):.6f}", f"{float(el[b, s]):.6f}",
                         f"{float(est.range_m[b, s]):.6f}", f"{float(est.score[b, s]):.6g}"))
    return rows


def write_estimates(path: str | Path, rows: list[tuple]) -> Path:
    """Write the CSV atomically (temporary name, then rename)."""
    return write_csv_atomic(path, COLUMNS, rows)


def read_estimates(path: str | Path, n_scenes: int, slots: int) -> Estimates:
    """Read an estimates CSV back into Estimates with ``slots`` NaN-padded slots."""
    K = torch.zeros(n_scenes, dtype=torch.int64)
    vals = {n: torch.full((n_scenes, slots), math.nan) for n in
            ("azimuth", "elevation", "range_m", "score")}
    with Path(path).open() as f:
        for row in csv.DictReader(f):
            b, s = int(row["scene"]), int(row["source"])
            K[b] = max(int(K[b]), s + 1)
            vals["azimuth"][b, s] = math.radians(float(row["azimuth_deg"]))
            vals["elevation"][b, s] = math.radians(float(row["elevation_deg"]))
            vals["range_m"][b, s] = float(row["range_m"])
            vals["score"][b, s] = float(row.get("score") or "nan")
    return Estimates(K=K, **vals)
