"""A change of one function on the CPU path, old against new, in one process: the old
implementation is swapped in and out of the module that calls it, interleaved (the order
alternating by round), so that nothing else differs between the two sides.

    python benchmarks/bench_swap.py --change orthonormal|lm-sync|lm-route [--scenes 256]
                                    [--rounds 5] [--method learned|classical]

Changes (this session's, on the H200's account; their outputs are bit-identical on the
CPU, ``bench_equivalence.py``):

* ``orthonormal``: ``torch.linalg.qr`` (before 491f85e) against
  :func:`risloc.covariance.tools.orthonormal_basis` in the OLS statistic and the shortlist.
* ``lm-sync``: the LM acceptance by boolean-mask indexing and ``torch.linalg.solve``
  (before 1f7abae) against selections and ``solve_ex`` (:mod:`risloc.estimators.nfmle`).
* ``lm-route``: not a change of the CPU path but its alternative: the LM loop's masked route
  (``NFMLEConfig.masked``, a GPU's default) as "old" against the CPU's route as "new".

Prints each side's seconds per call of ``Localizer.localize`` (default workers and passes;
test split, SNR withheld, K unknown) and the median ratio old / new after the first round.
``bench_ab.py`` compares whole revisions in fresh processes, whose learned-side speed
varied by about 10 % between processes of the same code (docs/results.md, "Speed").
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from bench_pipeline import test_scenes  # sibling script: python3 benchmarks/...

import risloc.estimators.classical as classical
import risloc.estimators.nfmle as nfmle
from risloc.pipeline import Localizer


def qr_basis(A: torch.Tensor) -> torch.Tensor:
    """Before 491f85e: the QR's Q (its padded columns masked by the callers)."""
    return torch.linalg.qr(A)[0]


def solve_checked(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Before 1f7abae: linalg.solve with its singularity check."""
    return torch.linalg.solve(A, B)


def try_masked(idx, cand, state, y, H, codes, mask, system, cfg, B_):
    """Before 1f7abae: ``nfmle._try`` accepting by boolean-mask indexing."""
    theta, fit = state
    sub = functools.partial(nfmle._rows, idx=None if idx.numel() == B_ else idx)
    cfit = nfmle.amplitude_fit(sub(y), sub(H), sub(codes),
                               nfmle.steering_at(cand, system, y.dtype), sub(mask),
                               cfg.tikhonov)
    ok = cfit.cost < fit.cost[idx]
    acc = idx[ok]
    theta[acc] = cand[ok]
    for old, new in zip(fit, cfit, strict=True):
        old[acc] = new[ok]
    return ok


CHANGES = {  # name: (module, {attribute: old implementation})
    "orthonormal": (classical, {"orthonormal_basis": qr_basis}),
    "lm-sync": (nfmle, {"solve_loaded": solve_checked, "_try": try_masked}),
    "lm-route": (nfmle, {"masked_route": lambda cfg, device: True}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--change", choices=sorted(CHANGES), required=True)
    ap.add_argument("--scenes", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5,
                    help="timed rounds per side (>= 2: the first is a warm-up, left out)")
    ap.add_argument("--method", choices=("learned", "classical"), default="learned")
    a = ap.parse_args()
    if a.rounds < 2:
        ap.error("--rounds must be >= 2 (the first round is a warm-up, left out)")
    module, old = CHANGES[a.change]
    sides = {"old": old, "new": {k: getattr(module, k) for k in old}}
    sc = test_scenes(a.scenes)
    loc = Localizer.from_checkpoint()
    if a.method == "classical":
        loc = Localizer(loc.system, method="classical")
    times: dict[str, list[float]] = {k: [] for k in sides}
    try:
        for r in range(a.rounds):
            for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                for attr, fn in sides[name].items():
                    setattr(module, attr, fn)
                t0 = time.perf_counter()
                loc.localize(sc.y, sc.H, sc.codes)
                times[name].append(time.perf_counter() - t0)
    finally:
        for attr, fn in sides["new"].items():
            setattr(module, attr, fn)
    for name, v in times.items():
        print(f"{name:4s} " + " ".join(f"{x:.3f}" for x in v) + " s")
    o, n = (statistics.median(v[1:]) for v in times.values())
    print(f"{a.change}, {a.method}: {a.scenes} scenes, median old / new = {o / n:.3f}")


if __name__ == "__main__":
    main()
