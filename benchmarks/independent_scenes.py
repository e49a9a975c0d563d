"""Scene files from a second implementation of the contract, written from
docs/conventions.md alone: NumPy and h5py, nothing imported from risloc.

    python benchmarks/independent_scenes.py OUT.h5 [--n 400] [--snrs -5,0,5,10,15,20]
        [--power-spread-db 12] [--kappa 0.5,10] [--seed 1] [--no-snr]

Users bring files that our simulator did not write. This one draws its scenes with its own
random streams and its own reading of each convention (element order, source position,
exact spherical steering, Rician channel with a unit-modulus line-of-sight part and a
b = 3-bit random codebook, CN(0, p_k) symbols independent across snapshots, the realised
SNR per base-station antenna set exactly), so `risloc evaluate` on it measures the
localizers on data from outside our own pipeline (``bench_independent.py``). ``n`` scenes
per SNR, K drawn uniformly in 1..K_max; the truth is stored, NaN-padded; ``--no-snr``
leaves ``snr_db`` out, as most measurement files do.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import h5py
import numpy as np

SYSTEM = {"N_H": 12, "N_V": 12, "wavelength": 0.3, "spacing": 0.15, "M": 16, "L": 16,
          "wavefront": "spherical"}
K_MAX = 5
FOV_DEG = {"azimuth": (-60.0, 60.0), "elevation": (-30.0, 30.0)}
RANGE_M = (0.5, 10.0)
MIN_SEPARATION_DEG = 5.0


def element_positions(sys: dict) -> np.ndarray:
    """[N, 3] RIS element positions: n = v N_H + h, centred, z = 0."""
    h = np.arange(sys["N_H"]) - (sys["N_H"] - 1) / 2
    v = np.arange(sys["N_V"]) - (sys["N_V"] - 1) / 2
    vv, hh = np.meshgrid(v, h, indexing="ij")  # row v, column h: n = v N_H + h
    d = sys["spacing"]
    return np.stack([hh.ravel() * d, vv.ravel() * d, np.zeros(hh.size)], -1)


def directions(az: np.ndarray, el: np.ndarray) -> np.ndarray:
    """Unit vectors (cos el sin az, sin el, cos el cos az): [..., 3]."""
    return np.stack([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], -1)


def steering(az: np.ndarray, el: np.ndarray, r: np.ndarray, sys: dict) -> np.ndarray:
    """Exact spherical steering a_n = exp(-j k0 (|p - e_n| - r)) / sqrt(N): [K, N]."""
    e = element_positions(sys)
    p = r[:, None] * directions(az, el)  # (K, 3)
    dist = np.linalg.norm(p[:, None, :] - e[None], axis=-1)  # (K, N)
    k0 = 2 * np.pi / sys["wavelength"]
    return np.exp(-1j * k0 * (dist - r[:, None])) / np.sqrt(e.shape[0])


def draw_sources(rng: np.random.Generator, K: int) -> tuple[np.ndarray, ...]:
    """K sources uniform in the field of view (range uniform in metres), pairwise at least
    5 deg apart in great-circle angle (rejection, one source at a time)."""
    az, el, r = [], [], []
    while len(az) < K:
        a = np.deg2rad(rng.uniform(*FOV_DEG["azimuth"]))
        e = np.deg2rad(rng.uniform(*FOV_DEG["elevation"]))
        if az:
            cosang = directions(np.array(az), np.array(el)) @ directions(a, e)
            if np.rad2deg(np.arccos(np.clip(cosang, -1, 1))).min() < MIN_SEPARATION_DEG:
                continue
        az.append(a)
        el.append(e)
        r.append(rng.uniform(*RANGE_M))
    return np.array(az), np.array(el), np.array(r)


def channel(rng: np.random.Generator, sys: dict, kappa: tuple[float, float]) -> np.ndarray:
    """Rician H [M, N]: sqrt(k/(k+1)) H_los + sqrt(1/(k+1)) H_nlos, k ~ U(kappa), H_los the
    outer product of the BS half-wavelength ULA response toward psi ~ U(-60, 60) deg and the
    conjugate RIS far-field response toward a BS direction uniform in the field of view
    (unit-modulus entries), H_nlos iid CN(0, 1)."""
    M = sys["M"]
    k = rng.uniform(*kappa)
    psi = np.deg2rad(rng.uniform(-60, 60))
    b = np.exp(1j * np.pi * np.arange(M) * np.sin(psi))
    az_b = np.deg2rad(rng.uniform(*FOV_DEG["azimuth"]))
    el_b = np.deg2rad(rng.uniform(*FOV_DEG["elevation"]))
    e = element_positions(sys)
    u = directions(az_b, el_b)
    a_ff = np.exp(1j * 2 * np.pi / sys["wavelength"] * (e @ u))  # unit modulus
    los = np.outer(b, a_ff.conj())
    nlos = (rng.standard_normal(los.shape) + 1j * rng.standard_normal(los.shape)) / np.sqrt(2)
    return np.sqrt(k / (k + 1)) * los + np.sqrt(1 / (k + 1)) * nlos


def scene(rng: np.random.Generator, sys: dict, snr_db: float, spread_db: float,
          kappa: tuple[float, float]) -> dict:
    """One scene of the contract's measurement model at a realised SNR of exactly snr_db."""
    L, N = sys["L"], sys["N_H"] * sys["N_V"]
    K = int(rng.integers(1, K_MAX + 1))
    az, el, r = draw_sources(rng, K)
    A = steering(az, el, r, sys).T  # (N, K)
    H = channel(rng, sys, kappa)
    codes = np.exp(1j * 2 * np.pi * rng.integers(0, 8, size=(L, N)) / 8)  # 3-bit random
    p = 10 ** (rng.uniform(-spread_db / 2, spread_db / 2, size=K) / 10)
    s = np.sqrt(p / 2) * (rng.standard_normal((L, K)) + 1j * rng.standard_normal((L, K)))
    x = np.einsum("mn,ln,nk,lk->lm", H, codes, A, s)  # H diag(c_l) A s_l, (L, M)
    sigma2 = np.mean(np.abs(x) ** 2) / 10 ** (snr_db / 10)  # (1/(L M)) sum ||x_l||^2 / SNR
    n = np.sqrt(sigma2 / 2) * (rng.standard_normal(x.shape) + 1j * rng.standard_normal(x.shape))
    truth = np.full((3, K_MAX), np.nan)
    truth[:, :K] = np.rad2deg(az), np.rad2deg(el), r
    return {"y": x + n, "H": H, "codes": codes, "K": K, "truth": truth, "snr_db": snr_db}


def write_file(path: Path, n: int, snrs: list[float], spread_db: float,
               kappa: tuple[float, float], seed: int, with_snr: bool = True) -> int:
    """n scenes per SNR to an HDF5 scene file (written to a temporary name, then renamed);
    returns the number of scenes."""
    rng = np.random.default_rng(seed)
    scenes = [scene(rng, SYSTEM, snr, spread_db, kappa) for snr in snrs for _ in range(n)]
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as f:
        for name in ("y", "H", "codes"):
            f[name] = np.stack([s[name] for s in scenes]).astype(np.complex64)
        if with_snr:
            f["snr_db"] = np.array([s["snr_db"] for s in scenes], np.float32)
        f["K"] = np.array([s["K"] for s in scenes], np.int64)
        truth = np.stack([s["truth"] for s in scenes]).astype(np.float32)  # (S, 3, K_max)
        for i, name in enumerate(("azimuth_deg", "elevation_deg", "range_m")):
            f[name] = truth[:, i]
        f.attrs["system"] = json.dumps(SYSTEM)
    os.replace(tmp, path)
    return len(scenes)


def _pair(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    return lo, hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=400, help="scenes per SNR")
    ap.add_argument("--snrs", default="-5,0,5,10,15,20")
    ap.add_argument("--power-spread-db", type=float, default=0.0)
    ap.add_argument("--kappa", type=_pair, default=(0.5, 10.0), help="Rician factor range")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-snr", action="store_true", help="leave snr_db out of the file")
    args = ap.parse_args()
    snrs = [float(v) for v in args.snrs.split(",")]
    count = write_file(args.out, args.n, snrs, args.power_spread_db, args.kappa, args.seed,
                       not args.no_snr)
    print(f"wrote {count} scenes to {args.out}")


if __name__ == "__main__":
    main()
