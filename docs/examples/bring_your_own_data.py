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
from risloc.evaluation import crb
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

shutil.rmtree(path.parent)  # the stand-in recording's temporary folder
