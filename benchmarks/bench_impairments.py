"""Sensitivity of both localizers to hardware impairments the conventions leave out.

    python benchmarks/bench_impairments.py [--n 64] [--snrs 10 20] [--out PATH.json]

The conventions' model (docs/conventions.md) assumes white noise of equal power on every
antenna, exact RIS phases and an exact H. Test scenes of the default system are re-made
from their own sources, symbols and noise level with one impairment in the *true*
operator or noise, while the localizers get the nominal H and codes (SNR withheld, K
unknown): noise power spread uniformly over 0-6 dB across antennas (same mean power),
RIS phase errors N(0, 5 / 10 deg) per element and snapshot, 1-bit codes with 5 % of the
elements stuck (a fixed +-1 in every snapshot), H known with 1 / 5 % relative error
(complex Gaussian, RMS relative to H's), and a common carrier-frequency offset (a phase
ramp of 0.05 cycles per snapshot). Prints F1 / K accuracy / median azimuth error and dK,
the estimated minus the true number of sources over all scenes (< 0: sources missed).
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from risloc.config import RislocConfig
from risloc.evaluation import match_sources, summarize
from risloc.io.atomic import write_text_atomic
from risloc.physics.steering import steering
from risloc.pipeline import Localizer
from risloc.simulation.streams import simulate_range


def _signal(sc, system, H, codes):
    az = torch.nan_to_num(sc.azimuth)
    el = torch.nan_to_num(sc.elevation)
    r = torch.nan_to_num(sc.range_m, nan=1.0)
    A = steering(az, el, r, system, torch.complex64)  # (B, K_max, N); padded s are 0
    return (codes * (sc.symbols @ A)) @ H.transpose(-1, -2)  # (B, L, M)


def impaired(sc, system, name, gen):
    """(y, H given, codes given) for impairment ``name``; truth stays sc's."""
    B, L, M = sc.y.shape
    N = sc.H.shape[-1]
    cn = lambda *s: torch.complex(torch.randn(*s, generator=gen),  # noqa: E731
                                  torch.randn(*s, generator=gen)) / math.sqrt(2)
    sig = sc.noise_var.sqrt().view(-1, 1, 1)
    if name in ("clean", "1-bit"):
        return sc.y, sc.H, sc.codes
    if name == "noise spread 0-6 dB":
        g = 10 ** (torch.rand(B, 1, M, generator=gen) * 0.6)
        g = g / g.mean(-1, keepdim=True)  # same mean noise power, unequal per antenna
        y = _signal(sc, system, sc.H, sc.codes) + sig * g.sqrt() * cn(B, L, M)
        return y, sc.H, sc.codes
    if name.startswith("phase"):
        sd = math.radians(float(name.split()[2]))
        err = sd * torch.randn(B, L, N, generator=gen)
        true_codes = sc.codes * torch.polar(torch.ones(B, L, N), err)
        y = _signal(sc, system, sc.H, true_codes) + sig * cn(B, L, M)
        return y, sc.H, sc.codes
    if name == "1-bit, 5% stuck":
        stuck = torch.rand(B, 1, N, generator=gen) < 0.05
        level = torch.where(torch.rand(B, 1, N, generator=gen) < 0.5, -1.0, 1.0).to(sc.codes.dtype)
        true_codes = torch.where(stuck, level, sc.codes)
        y = _signal(sc, system, sc.H, true_codes) + sig * cn(B, L, M)
        return y, sc.H, sc.codes
    if name.startswith("H error"):
        eps = float(name.split()[2].rstrip("%")) / 100
        rms = sc.H.abs().square().mean(dim=(-1, -2), keepdim=True).sqrt()
        return sc.y, sc.H + eps * rms * cn(B, M, N), sc.codes
    if name == "CFO":
        ramp = torch.polar(torch.ones(L), 2 * math.pi * 0.05 * torch.arange(L, dtype=torch.float32))
        return sc.y * ramp.view(1, L, 1), sc.H, sc.codes
    raise ValueError(name)


NAMES = ["clean", "noise spread 0-6 dB", "phase err 5", "phase err 10", "1-bit",
         "1-bit, 5% stuck", "H error 1%", "H error 5%", "CFO"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="test scenes per SNR and impairment")
    ap.add_argument("--snrs", type=float, nargs="+", default=[10.0, 20.0], help="SNRs in dB")
    ap.add_argument("--impairments", nargs="+", default=NAMES, choices=NAMES, metavar="NAME",
                    help="of: " + "; ".join(NAMES).replace("%", "%%"))
    ap.add_argument("--out", default=None, help="the rows as JSON")
    a = ap.parse_args()
    system = RislocConfig().system
    learned = Localizer.from_checkpoint()
    classical = Localizer(system, "classical")
    rows = []
    print(f"{'impairment':22s} {'SNR':>4s} | {'learned F1  Kacc  az med  dK':>28s} | "
          f"{'classical F1  Kacc  az med  dK':>30s}")
    for snr in a.snrs:
        for name in a.impairments:
            one_bit = RislocConfig().scene.model_copy(update={"code_bits": 1})
            scene = one_bit if "1-bit" in name else None
            sc = simulate_range(0, a.n, system, scene=scene, split="test", stream=950,
                                snr_db=snr)
            gen = torch.Generator().manual_seed(1234)
            y, H, codes = impaired(sc, system, name, gen)
            truth = (sc.azimuth, sc.elevation, sc.range_m, sc.K)
            row = {"impairment": name, "snr_db": snr}
            for tag, loc in (("learned", learned), ("classical", classical)):
                s = summarize(match_sources(loc.localize(y, H, codes), *truth))
                row[tag] = {"f1": s.f1, "K_accuracy": s.K_accuracy,
                            "azimuth_median_deg": s.azimuth_median_deg,
                            "extra_sources": s.n_estimated - s.n_true}
            rows.append(row)
            L_, C_ = row["learned"], row["classical"]
            print(f"{name:22s} {snr:4.0f} | {L_['f1']:.3f} {L_['K_accuracy']:.3f} "
                  f"{L_['azimuth_median_deg']:7.3f} {L_['extra_sources']:+4d} | {C_['f1']:.3f} "
                  f"{C_['K_accuracy']:.3f} {C_['azimuth_median_deg']:7.3f} "
                  f"{C_['extra_sources']:+4d}", flush=True)
    if a.out:
        write_text_atomic(a.out, json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
