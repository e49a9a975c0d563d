"""The orthonormal bases of the OLS statistic and of the shortlist's projection, on the CPU:
``torch.linalg.qr`` (the code before 491f85e) against :func:`risloc.covariance.tools.
orthonormal_basis`, swapped in one process and interleaved (the order alternating by
round), so that nothing but that function differs between the two sides.

    python benchmarks/bench_orthonormal.py [--scenes 256] [--rounds 5] [--method learned]

Prints each side's seconds per call of ``Localizer.localize`` (default workers and passes;
test split, SNR withheld, K unknown) and the median ratio old / new after the first round.
``bench_ab.py`` compares whole revisions in fresh processes, whose learned-side speed
varied by about 10 % between processes of the same code (docs/results.md, "Speed").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_pipeline import test_scenes  # sibling script: python3 benchmarks/...

import risloc.estimators.classical as classical
from risloc.covariance.tools import orthonormal_basis
from risloc.pipeline import Localizer


def qr_basis(A: torch.Tensor) -> torch.Tensor:
    """The code before 491f85e: the QR's Q (its padded columns masked by the callers)."""
    return torch.linalg.qr(A)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--method", choices=("learned", "classical"), default="learned")
    a = ap.parse_args()
    sc = test_scenes(a.scenes)
    loc = Localizer.from_checkpoint()
    if a.method == "classical":
        loc = Localizer(loc.system, method="classical")
    sides = {"old (linalg.qr)": qr_basis, "new (orthonormal_basis)": orthonormal_basis}
    times: dict[str, list[float]] = {k: [] for k in sides}
    try:
        for r in range(a.rounds):
            for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                classical.orthonormal_basis = sides[name]
                t0 = time.perf_counter()
                loc.localize(sc.y, sc.H, sc.codes)
                times[name].append(time.perf_counter() - t0)
    finally:
        classical.orthonormal_basis = orthonormal_basis
    for name, v in times.items():
        print(f"{name:24s} " + " ".join(f"{x:.3f}" for x in v) + " s")
    old, new = (statistics.median(v[1:]) for v in times.values())
    print(f"{a.method}: {a.scenes} scenes, median old / new = {old / new:.3f}")


if __name__ == "__main__":
    main()
