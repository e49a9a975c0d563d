"""Bring your own data: localize measurements you hold as NumPy arrays.

Run it: python docs/examples/bring_your_own_data.py   (the test suite runs it too)

Your arrays follow docs/conventions.md: y [L, M] (or [S, L, M]) received samples, H [M, N]
the base-station <- RIS channel, codes [L, N] the unit-modulus RIS codes, in any units.
Here a file of them is first written with NumPy, as your own recording code would.
"""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from risloc.config import SceneConfig, SystemConfig
from risloc.evaluation import (
    crb,
    crb_for_scenes,
    match_sources,
    paired_bootstrap_se,
    summarize,
    summarize_by_snr,
)
from risloc.pipeline import Localizer

# --- stand-in for your recording: 3 scenes written to an .npz with NumPy -----------------
from risloc.simulation import simulate_range  # only to make the example self-contained

system = SystemConfig()  # 12 x 12 RIS at 1 GHz, M = 16, L = 16 (docs/conventions.md)
sc = simulate_range(0, 3, system, SceneConfig(power_spread_db=12.0), seed=7, split="test",
                    snr_db=15.0)
path = Path(tempfile.mkdtemp()) / "my_measurements.npz"
np.savez(path, y=sc.y.numpy().astype(np.complex128) * 3e-7, H=sc.H.numpy() * 42.0,
         codes=sc.codes.numpy(), system=json.dumps(system.model_dump()))

# --- your code: load arrays, localize, read the results ----------------------------------
data = np.load(path)
their_system = SystemConfig.model_validate(json.loads(str(data["system"])))
loc = Localizer.from_checkpoint()  # the shipped learned model (or a checkpoint path)
result = loc.localize(data["y"], data["H"], data["codes"], system=their_system)  # no SNR
for row in result.records():
    print(f"scene {row['scene']}: azimuth {row['azimuth_deg']:7.2f} deg, elevation "
          f"{row['elevation_deg']:6.2f} deg, range {row['range_m']:5.2f} m")
print("skipped scenes:", result.bad or "none")

one = loc.localize(data["y"][0], data["H"][0], data["codes"][0])  # a single scene
xyz = one.xyz()[0, : int(one.estimates.K[0])]  # Cartesian positions [m], RIS at the origin
print("scene 0 in x, y, z [m]:", np.round(xyz, 2).tolist())

# how well could any unbiased estimator do here? the CRB at the estimated positions
est = one.to_numpy()
k = int(est["K"][0])
bound = crb(data["H"][0], data["codes"][0], est["azimuth_deg"][0, :k],
            est["elevation_deg"][0, :k], est["range_m"][0, :k], their_system, snr_db=15.0)
print("sqrt(CRB) azimuth [deg]:", np.round(bound["azimuth_deg"].numpy()[0], 3).tolist())

# --- scoring your own estimator beside the learned localizer, on the same scenes ----------
# yours: NaN-padded [S, K_max] arrays in degrees / metres, each scene's sources first (a
# stand-in here: the truth plus 0.5 deg / 0.2 m of noise, the last source of scene 0 missed)
rng = np.random.default_rng(0)
mine = {"azimuth_deg": np.rad2deg(sc.azimuth.numpy()), "elevation_deg":
        np.rad2deg(sc.elevation.numpy()), "range_m": sc.range_m.numpy().copy()}
for key, noise in (("azimuth_deg", 0.5), ("elevation_deg", 0.5), ("range_m", 0.2)):
    mine[key] += rng.normal(0.0, noise, mine[key].shape)
    mine[key][0, int(sc.K[0]) - 1] = np.nan
truth = (sc.azimuth, sc.elevation, sc.range_m, sc.K)  # the scenes' truth: radians, metres
ours, theirs = match_sources(result, *truth), match_sources(mine, *truth)  # Hungarian pairs
bound = crb_for_scenes(sc, system)  # sqrt(CRB) of each true source (simulated scenes)
for name, m in (("learned", ours), ("mine", theirs)):
    for snr, s in summarize_by_snr(m, sc.snr_db, bound).items():
        print(f"{name} at {snr:g} dB: K accuracy {s.K_accuracy:.2f}, F1 {s.f1:.2f}, azimuth "
              f"median {s.azimuth_median_deg:.3f} deg ({s.azimuth_median_over_bound:.2f} x "
              f"an efficient estimator's), range RMSE {s.range_rmse_m:.3f} m")
se = paired_bootstrap_se(theirs, ours)  # over the scenes: mine - learned
print(f"F1 difference {summarize(theirs).f1 - summarize(ours).f1:+.2f} "
      f"(standard error {se['f1_diff']:.2f})")

shutil.rmtree(path.parent)  # the stand-in recording's temporary folder
