"""Damaged scene files, for reliability testing.

The faults a scene file meets in users' hands — a dataset missing, transposed, made real,
made text, truncated or NaN — applied to the arrays of a file (as
:func:`risloc.io.scenefile.batch_to_arrays` makes them) before it is written. The property
tests and ``benchmarks/bench_reliability.py`` inject the same faults through this one
function, so a fault added here is checked by both.
"""

from __future__ import annotations

import numpy as np

FIELDS = ("y", "H", "codes", "snr_db", "K", "azimuth_deg", "system")
FAULTS = ("drop", "transpose", "real", "string", "truncate", "nan")


def damaged(arrays: dict[str, np.ndarray], field: str, fault: str) -> dict[str, np.ndarray]:
    """A copy of ``arrays`` with ``fault`` (one of :data:`FAULTS`) applied to ``field``.

    A fault that does not apply to the dataset (transposing a vector, making a real array
    real, NaN in an integer array) leaves it as it is: the file is then intact.
    """
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
    if field not in arrays:
        raise KeyError(f"no dataset {field!r} to damage (have {', '.join(sorted(arrays))})")
    out = dict(arrays)
    a = out[field]
    if fault == "drop":
        out.pop(field)
    elif fault == "transpose" and a.ndim >= 2:
        out[field] = np.swapaxes(a, -1, -2)
    elif fault == "real" and a.dtype.kind == "c":
        out[field] = a.real
    elif fault == "string":
        out[field] = np.array("{not json") if field == "system" else \
            np.array(["x"] * max(1, a.size))
    elif fault == "truncate" and a.ndim >= 1:
        out[field] = a[:1]
    elif fault == "nan" and a.dtype.kind in "fc":
        out[field] = a * np.nan
    return out
