"""Reliability: malformed input of every kind, kills, and a low-SNR stress run.

    python benchmarks/bench_reliability.py [--cases 400] [--stress 2000]
                                           [--out reports/bench/reliability.json]

(a) ``--cases`` generated cases (seeded): a scene batch with one array of one scene
    scaled, filled or poisoned (NaN, inf, 0, 1e30, 1e-30, 1e-45) or given a wrong dtype or
    shape or another memory layout (Fortran order, big-endian, a negative-stride view), an
    SNR / K / system of a wrong kind, or a scene file with a dataset dropped, transposed,
    made real, made text, truncated or NaN. Each goes through ``Localizer.localize``
    (classical; the learned one shares the input path) or ``risloc localize`` on the file.
    Outcomes: a clean typed error, a per-scene report, a normal result; counted against
    the failures: another exception (a traceback), a silent wrong answer (a scene the
    input checks should have refused but was localized, or a good one refused), an input
    file changed.
(b) Kills: ``risloc simulate`` killed mid-write (SIGKILL), then run again: the target never
    holds a partial file and the next run removes the dead writer's temporary.
(c) ``--stress`` scenes at -10 dB through both localizers: NaN in any reported source.
The property tests in tests/unit/test_properties.py run a CI-sized version of (a).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from risloc.cli.main import app
from risloc.config import ConfigError, SceneConfig, SystemConfig
from risloc.core.checks import InputError, InputTypeError
from risloc.io.atomic import write_text_atomic
from risloc.io.faults import FAULTS, FIELDS, damaged
from risloc.io.scenefile import SceneFileError, batch_to_arrays
from risloc.pipeline import Localizer
from risloc.simulation import simulate_range

CLEAN = (InputError, InputTypeError, SceneFileError, ConfigError)
SYSTEM = SystemConfig()
VALUES = (math.nan, math.inf, 0.0, 1e30, 1e-30, 1e-45, 1e18)


def pick(rng, options):
    """One of ``options`` (any objects: arrays, None, strings)."""
    return options[int(rng.integers(len(options)))]


def expected_bad(arrays: dict) -> set[int]:
    """Scenes the conventions say cannot be localized (docs/conventions.md)."""
    return {b for b in range(arrays["y"].shape[0])
            if not all(np.isfinite(arrays[k][b]).all() for k in ("y", "H", "codes"))
            or not np.any(arrays["y"][b]) or not np.any(arrays["H"][b])
            or np.abs(np.abs(arrays["codes"][b].astype(np.complex128)) - 1).max() > 1e-3}


def array_case(rng, base: dict, loc: Localizer) -> str:
    arrays = {k: v.copy() for k, v in base.items()}
    name = pick(rng, ["y", "H", "codes"])
    kind = pick(rng, ["scale", "fill", "one", "dtype", "shape", "layout", "snr", "K",
                      "system"])
    b = int(rng.integers(0, 3))
    snr, K, system = None, None, None
    with np.errstate(all="ignore"):
        if kind == "scale":
            arrays[name][b] = arrays[name][b] * pick(rng, VALUES)
        elif kind == "fill":
            arrays[name][b] = pick(rng, VALUES)
        elif kind == "one":
            arrays[name][b].flat[int(rng.integers(0, 16))] = pick(rng, VALUES)
        elif kind == "dtype":
            arrays[name] = pick(rng, [arrays[name].real, arrays[name].real.astype(int),
                                       arrays[name].astype(object), None])
        elif kind == "layout":  # as loadmat, a transposing caller or another machine give it
            a = arrays[name]
            arrays[name] = pick(rng, [np.asfortranarray(a), a.astype(a.dtype.newbyteorder(">")),
                                      np.flip(np.flip(a, -1).copy(), -1)])
        elif kind == "shape":
            arrays[name] = pick(rng, [arrays[name][:, :3], arrays[name][0, 0],
                                       arrays[name][None]])
        elif kind == "snr":
            snr = pick(rng, [math.nan, math.inf, "10", [1.0, 2.0], [5.0, math.nan, 20.0]])
        elif kind == "K":
            K = pick(rng, [0, 2.5, 7, [1, 2], "2", -1, 3, np.full(3, 2, np.uint16)])
        else:  # the forms a file stores a system in, and wrong ones
            text = SYSTEM.model_dump_json()
            system = pick(rng, [text, text.encode(), np.array(text), SYSTEM.model_dump(),
                                {**SYSTEM.model_dump(), "wavelength": 299_792_458 / 1e9},
                                {"M": -1}, "{not json", 42, np.zeros(3)])
    try:
        res = loc.localize(arrays["y"], arrays["H"], arrays["codes"], snr_db=snr, K=K,
                           system=system)
    except CLEAN:
        return "clean error"
    except Exception as err:  # noqa: BLE001 - counted, that is the point
        return f"traceback: {type(err).__name__}: {err}"
    bad = {i for i, _ in res.bad}
    if bad != expected_bad(arrays):
        return f"silent wrong: reported {sorted(bad)}, expected {sorted(expected_bad(arrays))}"
    if not (res.estimates.K[list(set(range(3)) - bad)] >= 1).all():
        return "silent wrong: a good scene without sources"
    return "per-scene report" if bad else "result"


def file_case(rng, base: dict, folder: Path) -> str:
    arrays = damaged(base, pick(rng, list(FIELDS)), pick(rng, list(FAULTS)))
    path = folder / f"case{int(rng.integers(1 << 30))}.npz"
    np.savez(path, **arrays)
    before = path.read_bytes()
    res = CliRunner().invoke(app, ["localize", str(path), "--method", "classical", "--out",
                                   str(path.with_suffix(".csv"))])
    if path.read_bytes() != before:
        return "output damaged"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        return f"traceback: {type(res.exception).__name__}: {res.exception}"
    if res.exit_code == 2:
        return "clean error"
    return "per-scene report" if res.exit_code == 1 else "result"


def kills(folder: Path, rounds: int = 3) -> dict:
    target = folder / "big.h5"
    survived = 0
    killed = 0
    for _ in range(rounds):
        # killed while it writes: once the temporary file holds some scenes (a fixed wait
        # let a fast machine finish first, which read as a failed round)
        p = subprocess.Popen([sys.executable, "-m", "risloc", "simulate", "--n", "1000000",
                              "--out", str(target)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None and not any(
                t.stat().st_size > 1_000_000 for t in folder.glob(".big.h5.*")):
            time.sleep(0.1)
        killed += p.poll() is None
        p.send_signal(signal.SIGKILL)
        p.wait()
        partial = not target.exists() and any(folder.glob(".big.h5.*"))
        res = CliRunner().invoke(app, ["simulate", "--n", "64", "--out", str(target)])
        clean = res.exit_code == 0 and not any(folder.glob(".big.h5.*"))
        survived += int(partial and clean)
        target.unlink(missing_ok=True)
    return {"simulate_killed": killed, "left_no_partial_target_and_cleaned": survived}


@torch.no_grad()
def stress(n: int) -> dict:
    if n == 0:
        return {}
    sc = simulate_range(0, n, SYSTEM, SceneConfig(power_spread_db=12.0), seed=9,
                        split="test", snr_db=-10.0)
    out = {}
    for name, loc in (("learned", Localizer.from_checkpoint()),
                      ("classical", Localizer(SYSTEM, "classical"))):
        e = loc.localize(sc.y, sc.H, sc.codes).estimates
        vals = torch.stack([e.azimuth, e.elevation, e.range_m])[:, e.mask]
        out[name] = {"scenes": n, "sources": int(e.mask.sum()),
                     "nan_in_reported_sources": int((~torch.isfinite(vals)).sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--stress", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/reliability.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    sc = simulate_range(0, 3, SYSTEM, SceneConfig(), seed=21, split="test", snr_db=15.0, K=1)
    base = {"y": sc.y.numpy(), "H": sc.H.numpy(), "codes": sc.codes.numpy()}
    file_base = {**batch_to_arrays(sc, SYSTEM.K_max),
                 "system": np.array(SYSTEM.model_dump_json())}
    loc = Localizer(SYSTEM, "classical", workers=1)
    outcomes: dict[str, int] = {}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.cases):
            r = array_case(rng, base, loc) if i % 2 == 0 else file_case(rng, file_base,
                                                                         Path(tmp))
            key = r.split(":")[0]
            outcomes[key] = outcomes.get(key, 0) + 1
            if key in ("traceback", "silent wrong", "output damaged"):
                failures.append(r)
        killed = kills(Path(tmp))
    res = {"cases": args.cases, "outcomes": outcomes, "failures": failures[:20],
           "kills": killed, "stress_-10dB": stress(args.stress)}
    print(json.dumps(res, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
