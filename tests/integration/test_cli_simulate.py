import json
import shlex
from pathlib import Path

import h5py
import numpy as np
import torch
from typer.testing import CliRunner

from risloc.cli.main import app
from risloc.io import read_scenes

runner = CliRunner()


def test_simulate_writes_file_with_config(tmp_path):
    out = tmp_path / "d" / "t.h5"
    res = runner.invoke(app, ["simulate", "--n", "300", "--split", "test", "--out", str(out),
                              "--set", "scene.K=2", "--seed", "4"])
    assert res.exit_code == 0, res.output
    batch, info = read_scenes(out)
    assert info.n_scenes == 300 and bool((batch.K == 2).all())
    with h5py.File(out) as f:
        assert '"K":2' in f.attrs["config"] and f.attrs["split"] == "test"
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "300" in res.output


def test_info_checks_every_scene_and_counts_truth_outside_the_field_of_view(tmp_path):
    out = tmp_path / "t.h5"
    assert runner.invoke(app, ["simulate", "--n", "6", "--out", str(out), "--K", "2",
                               "--split", "test"]).exit_code == 0
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.replace("│", " ").split())
    assert "every scene can be localized" in text and "0 of 12 sources" in text
    # every scene scored: no "(the n scenes whose truth can be scored)" (a mutation review)
    assert "K histogram 1:0 2:6 3:0 4:0 5:0 range (m)" in text
    assert "simulated with SNR uniform in [-5.0, 20.0] dB, K = 2, source powers spread " \
        "over 0.0 dB, Rician factor in [0.5, 10.0], random codes of 3-bit phases, azimuth " \
        "[-60.0, 60.0] deg, elevation [-30.0, 30.0] deg, range [0.5, 10.0] m, sources >= " \
        "5.0 deg apart" in text  # (reviews: what it was drawn with went unsaid)
    fixed = tmp_path / "k3.h5"  # K fixed by the scene config, not --K (a review: 'uniform')
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(fixed), "--set",
                               "scene.K=3"]).exit_code == 0
    res = runner.invoke(app, ["info", str(fixed)])
    assert ", K = 3," in " ".join(res.output.replace("│", " ").split()), res.output
    assert res.exit_code == 0
    with h5py.File(fixed, "a") as f:  # truth that cannot be scored is a defect on its own
        az = f["azimuth_deg"][:]  # (a mutation review: only checked beside a bad scene)
        az[0, 1] = np.nan
        f["azimuth_deg"][:] = az
    assert runner.invoke(app, ["info", str(fixed)]).exit_code == 1
    drawn = tmp_path / "d.h5"  # a spread drawn per scene; another codebook
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(drawn), "--set",
                               "scene.power_spread_db=[0, 25]", "--set",
                               "scene.codebook=hadamard"]).exit_code == 0
    text = " ".join(runner.invoke(app, ["info", str(drawn)]).output.replace("│", " ").split())
    assert "source powers spread over s dB, s uniform per scene in [0.0, 25.0]" in text
    assert ", hadamard codes, " in text
    with h5py.File(out, "a") as f:  # scene 4: codes off the unit circle; a source at 75 deg
        f["codes"][4] = 2 * f["codes"][4]
        az = f["azimuth_deg"][:]
        az[1, 1] = 75.0
        f["azimuth_deg"][:] = az
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 1, res.output  # a check, usable in scripts
    text = " ".join(res.output.replace("│", " ").split())
    assert "1 of 6 scenes cannot be localized: scene 4: codes are not unit modulus" in text
    assert "; both leave out the scenes that cannot be localized" in text  # (what next)
    assert "1 of 12 sources" in text and "unknown (NaN)" not in text
    assert "--fov azimuth_deg=-60,80` localizes" in text  # (degrees, 5 beyond: a mutation review)
    with h5py.File(out, "a") as f:  # the SNR unknown in two scenes: counted
        f["snr_db"][[0, 2]] = float("nan")
    res = runner.invoke(app, ["info", str(out)])
    assert "unknown (NaN) in 2 scene(s)" in " ".join(res.output.replace("│", " ").split())
    with h5py.File(out, "a") as f:  # truth that cannot be scored: named, exit code 1
        az = f["azimuth_deg"][:]
        az[0, 0] = float("nan")
        az[2, 0] = az[2, 0] % 360 + 360  # an azimuth in 360..720: the same direction, inside
        f["azimuth_deg"][:] = az
        del f.attrs["system"]
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.replace("│", " ").split())
    assert "the truth of 1 scene(s) cannot be scored: scene 0: a non-finite true position" in text
    # ... and the others' summary is kept (a review: one bad scene dropped all of it)
    assert "K histogram 1:0 2:5 3:0 4:0 5:0 (the 5 scenes whose truth can be scored)" in text
    assert "1 of 10 sources" in text
    assert "--fov azimuth_deg=-60,80` localizes" in text  # (not widened by the 360..720 one)
    assert "(assumed: see the note)" in text and "no 'system' attribute: the default system " \
        "was assumed" in text


def test_info_summarises_every_scene_says_whether_truth_is_given_and_what_to_run_next(tmp_path):
    """A first-look review of `risloc info`: its SNR and K histogram covered the first 4096
    scenes only though it reads every scene; a file without truth did not say so; what to
    run next went unsaid; a '[red]' in the file's name was read as markup in the title."""
    out = tmp_path / "a[red]b.h5"
    assert runner.invoke(app, ["simulate", "--n", "4100", "--out", str(out), "--K", "1",
                               "--set", "system.N_H=2", "--set", "system.N_V=2", "--set",
                               "system.M=4", "--set", "system.L=4", "--set",
                               "system.K_max=2"]).exit_code == 0
    with h5py.File(out, "a") as f:  # the last scene's SNR: beyond the first 4096
        f["snr_db"][4099] = 40.0
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out) + "┏" in "".join(res.output.split())  # (the title, above the table)
    text = " ".join(res.output.replace("│", " ").split())
    assert "truth K and true positions" in text
    assert "SNR (dB) -5.0 .. 40.0" in text and "K histogram 1:4100 2:0 range" in text
    assert "(statistics)" not in text
    assert "risloc localize" in text and "--out estimates.csv --method classical` localizes " \
        "the scenes; `risloc evaluate" in text  # (a 2x2 RIS: not the shipped model's system)
    with h5py.File(out, "a") as f:  # beyond the first chunk of 1024 (a mutation review)
        f["codes"][1500] = 2 * f["codes"][1500]
        f["azimuth_deg"][3000, 0] = 75.0
    text = " ".join(runner.invoke(app, ["info", str(out)]).output.replace("│", " ").split())
    assert "1 of 4100 scenes cannot be localized: scene 1500: codes are not unit" in text
    assert "1 of 4100 sources" in text
    with h5py.File(out, "a") as f:
        for name in ("K", "azimuth_deg", "elevation_deg", "range_m"):
            del f[name]
    text = " ".join(runner.invoke(app, ["info", str(out)]).output.replace("│", " ").split())
    assert "truth none (no azimuth_deg, elevation_deg, range_m): the scenes can be " \
        "localized, not scored" in text
    assert "localizes the scenes" in text and "risloc evaluate" not in text


def test_info_hints_commands_that_run_on_a_system_the_shipped_model_does_not_serve(
        tmp_path, monkeypatch):
    """A persona review (8x8 RIS, M = 8, L = 32, 28 GHz): `risloc info` printed `risloc
    localize F --out estimates.csv` and `risloc evaluate F` as what to run next, and both,
    run as printed, failed with exit code 2 (the shipped model refuses the system)."""
    own = ["--set", "system.N_H=8", "--set", "system.N_V=8", "--set", "system.M=8", "--set",
           "system.L=32", "--set", "system.wavelength=0.0107", "--set", "system.K_max=3"]
    monkeypatch.chdir(tmp_path)  # (short names: a long path might wrap inside a word)
    for name, system in (("own.h5", own), ("default.h5", [])):
        out = Path(name)
        assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(out), "--snr-db", "20",
                                   "--split", "test", *system]).exit_code == 0
        res = runner.invoke(app, ["info", str(out)])
        assert res.exit_code == 0, res.output
        text = " ".join(res.output.replace("│", " ").split())
        hint = text[text.index(" next ") + 6:]
        localize = hint[hint.index("`risloc localize") + 1:]
        localize = localize[:localize.index("`")].replace(str(out), "").split()
        evaluate = hint[hint.index("`risloc evaluate") + 1:]
        evaluate = evaluate[:evaluate.index("`")].replace(str(out), "").split()
        assert ("--method classical" in hint) == (name == "own.h5"), hint
        assert ("--estimators classical" in hint) == (name == "own.h5"), hint
        if name == "own.h5":  # the model's training command names the file's fields (it
            # printed `risloc train --set system.*=...`, a placeholder that fails as written)
            train = hint[hint.index("`risloc train") + 1:]
            train = train[:train.index("`")].split()
            assert train[:2] == ["risloc", "train"] and train[2::2] == ["--set"] * 6, train
            assert sorted(train[3::2]) == sorted(s for s in own if s != "--set"), train
        if name == "own.h5":  # run as printed (the default system's: the learned one, slower)
            for cmd in (localize, evaluate):
                args = [*cmd[1:2], str(out), *cmd[2:]]
                args += ["--out", "rep", "--no-plots"] if "evaluate" in cmd else []
                res = runner.invoke(app, args)
                assert res.exit_code == 0, (args, res.output)


def test_info_names_a_dataset_it_does_not_read_and_the_contract_name_it_resembles(tmp_path):
    """A new user's review: an SNR stored as 'SNR_dB' was silently ignored and `risloc info`
    said "unknown (none given)"; it now says which datasets it does not read and what they
    resemble, the file still read (exit code 0)."""
    out = tmp_path / "u.h5"
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(out)]).exit_code == 0
    with h5py.File(out, "a") as f:
        f.move("snr_db", "SNR_dB")
        f["extra"] = np.zeros(2)
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.replace("│", " ").split())
    assert "SNR (dB) unknown (none given; 'SNR_dB' is not read: did you mean snr_db? see " \
        "the note)" in text
    assert "note 2 dataset(s) not read (not names of the scene file's contract): 'SNR_dB' " \
        "(did you mean snr_db?), 'extra'; names are case-sensitive" in text
    # a near miss of another name is not offered as the SNR (a mutation review)
    with h5py.File(out, "a") as f:
        del f["SNR_dB"]
        f.move("K", "k")
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.replace("│", " ").split())
    assert "SNR (dB) unknown (none given)" in text and "'k' (did you mean K?)" in text


def test_simulate_npz_and_errors(tmp_path):
    out = tmp_path / "t.npz"
    assert runner.invoke(app, ["simulate", "--n", "20", "--out", str(out)]).exit_code == 0
    assert read_scenes(out)[1].n_scenes == 20
    bad = runner.invoke(app, ["simulate", "--n", "5", "--out", str(tmp_path / "x.h5"),
                              "--set", "system.M=4"])
    assert bad.exit_code == 2 and "K_max=5 must be smaller than M=4" in bad.output
    assert not (tmp_path / "x.h5").exists()
    bad = runner.invoke(app, ["simulate", "--n", "5", "--split", "dev"])
    assert bad.exit_code == 2 and "--split" in bad.output
    (tmp_path / "junk.h5").write_bytes(b"junk")
    bad = runner.invoke(app, ["info", str(tmp_path / "junk.h5")])
    assert bad.exit_code == 2 and "not a readable HDF5" in bad.output
    # a seed beyond 64 bits: the same scenes in either format (a review: HDF5 refused to
    # store the attribute, "Object dtype dtype('O') has no native HDF5 equivalent")
    big = str(2**64)
    for name in ("big.h5", "big.npz"):
        res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / name),
                                  "--seed", big])
        assert res.exit_code == 0, res.output
    (h5, h5_info), (npz, npz_info) = (read_scenes(tmp_path / n) for n in ("big.h5", "big.npz"))
    assert torch.equal(h5.y, npz.y)
    assert str(h5_info.attrs["seed"]) == str(npz_info.attrs["seed"]) == big


def test_simulate_refuses_a_nan_snr_and_odd_suffixes(tmp_path):
    res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "s.h5"),
                              "--snr-db", "nan"])
    assert res.exit_code == 2 and "finite" in res.output
    res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "s.txt")])
    assert res.exit_code == 2 and ".h5 or .npz" in res.output
    # values beyond float32's reach: no file of NaN scenes written with exit 0 (a review)
    for bad in ("scene.rician_kappa=[1e39, 1e39]", "system.wavelength=1e-40"):
        for name in ("s.h5", "s.npz"):
            res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / name),
                                      "--set", bad])
            assert res.exit_code == 2 and "the simulated measurements are not finite in 2 " \
                "of 2 scenes" in " ".join(res.output.split()), (bad, res.output)
    # a count beyond any disk: named as such (a review: numpy's ArrayMemoryError traceback)
    for name in ("s.h5", "s.npz"):  # (a mutation review: the .npz's check untested)
        res = runner.invoke(app, ["simulate", "--n", str(10**11), "--out",
                                  str(tmp_path / name)])
        assert res.exit_code == 2 and f"{10**11} scenes need about" in res.output, res.output
    assert list(tmp_path.iterdir()) == []
    # an output under a file: named before any scene is simulated (a mutation review)
    (tmp_path / "afile").write_text("")
    res = runner.invoke(app, ["simulate", "--n", "2000", "--out",
                              str(tmp_path / "afile" / "s.npz")])
    assert res.exit_code == 2 and "afile is a file, not a folder" in " ".join(
        res.output.split()) and "scenes/s" not in res.output, res.output
    (tmp_path / "afile").unlink()
    # the suffix's case does not matter: DATA.NPZ is a NumPy archive, DATA.H5 HDF5
    for name in ("UP.NPZ", "UP.H5"):
        res = runner.invoke(app, ["simulate", "--n", "3", "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        assert read_scenes(tmp_path / name)[1].n_scenes == 3
    assert (tmp_path / "UP.NPZ").read_bytes()[:2] == b"PK"  # a zip archive, not HDF5


def test_simulate_keeps_an_existing_file_and_names_a_bad_K(tmp_path):
    out = tmp_path / "s.npz"
    assert runner.invoke(app, ["simulate", "--n", "3", "--out", str(out), "--K", "2"]
                         ).exit_code == 0
    batch, info = read_scenes(out)
    assert batch.K.tolist() == [2, 2, 2]
    assert json.loads(info.attrs["config"])["scene"]["K"] == 2  # the config records --K
    before = out.read_bytes()
    res = runner.invoke(app, ["simulate", "--n", "5", "--out", str(out)])
    assert res.exit_code == 2 and "exists: pass --overwrite" in res.output
    assert out.read_bytes() == before
    res = runner.invoke(app, ["simulate", "--n", "5", "--out", str(out), "--overwrite"])
    assert res.exit_code == 0 and read_scenes(out)[1].n_scenes == 5
    res = runner.invoke(app, ["simulate", "--n", "5", "--out", str(tmp_path / "k.h5"),
                              "--K", "9"])
    assert res.exit_code == 2 and "--K 9: the number of sources must be 1..5" in res.output
    assert not (tmp_path / "k.h5").exists()


def test_shards_are_disjoint_reproducible_slices_of_the_unsharded_file(tmp_path):
    """--shard i/n: three shards of 2500 scenes (slices not aligned to the 1024-scene seed
    blocks, one .npz) hold, in order, exactly the scenes of the unsharded file."""
    import torch

    common = ["simulate", "--n", "2500", "--split", "validation", "--seed", "5"]
    assert runner.invoke(app, [*common, "--out", str(tmp_path / "all.h5")]).exit_code == 0
    parts = []
    for i, suffix in ((0, "h5"), (1, "npz"), (2, "h5")):
        out = tmp_path / f"s{i}.{suffix}"
        res = runner.invoke(app, [*common, "--shard", f"{i}/3", "--out", str(out)])
        assert res.exit_code == 0, res.output
        parts.append(read_scenes(out)[0])
    whole = read_scenes(tmp_path / "all.h5")[0]
    assert [len(p) for p in parts] == [833, 833, 834]
    for name in ("y", "H", "codes", "K", "snr_db"):
        assert torch.equal(torch.cat([getattr(p, name) for p in parts]), getattr(whole, name))
    with h5py.File(tmp_path / "s2.h5") as f:
        assert f.attrs["shard"] == "2/3" and f.attrs["first_scene"] == 1666
    again = tmp_path / "again.h5"
    assert runner.invoke(app, [*common, "--shard", "2/3", "--out", str(again)]).exit_code == 0
    assert torch.equal(read_scenes(again)[0].y, parts[2].y)
    for bad, why in (("3/3", "0 <= i < n"), ("a/b", "integers"), ("0/0", "n >= 1")):
        res = runner.invoke(app, [*common, "--shard", bad, "--out", str(tmp_path / "b.h5")])
        assert res.exit_code == 2 and why in res.output, res.output
    res = runner.invoke(app, ["simulate", "--n", "2", "--shard", "0/3",
                              "--out", str(tmp_path / "b.h5")])
    assert res.exit_code == 2 and "more shards" in res.output


def test_simulate_draws_a_recipes_scene_mixture(tmp_path):
    """--recipe: the scenes of a training recipe's distribution, its data.scene_mix kinds in
    their shares (here half the scenes with one source in 0.6-0.8 m, the base scene's three
    sources anywhere in 0.5-10 m); the file records the kinds and `info` shows them."""
    import json

    recipe = tmp_path / "r.yaml"
    recipe.write_text("scene: {K: 3}\n"
                      "data:\n  scene_mix:\n"
                      "    - {name: near, share: 0.5, scene: {K: 1, range_m: [0.6, 0.8]}}\n")
    out = tmp_path / "mix.h5"
    res = runner.invoke(app, ["simulate", "--n", "400", "--split", "test", "--recipe",
                              str(recipe), "--set", "scene.snr_db=[10, 10]", "--out", str(out)])
    assert res.exit_code == 0, res.output
    batch, _ = read_scenes(out)
    near = batch.K == 1
    assert bool(((batch.K == 3) | near).all()) and 0.4 < float(near.double().mean()) < 0.6
    assert float(batch.range_m[near, 0].max()) <= 0.8 < float(batch.range_m[~near, :3].max())
    assert bool((batch.snr_db - 10).abs().max() < 1e-3)  # --set reached the recipe
    with h5py.File(out) as f:
        assert json.loads(f.attrs["scene_mix"])[0]["name"] == "near"
        assert json.loads(f.attrs["config"])["scene"]["K"] == 3
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "near 50%" in res.output
    assert "simulated with the base scene: SNR" in " ".join(res.output.replace("│", " ").split())
    # the recipe as --config: its system and scene alone, and said so (a review: silently)
    res = runner.invoke(app, ["simulate", "--n", "2", "--config", str(recipe), "--out",
                              str(tmp_path / "base.h5")])
    assert res.exit_code == 0 and "its data.scene_mix kinds are not drawn; --recipe" in \
        " ".join(res.output.split()), res.output
    assert bool((read_scenes(tmp_path / "base.h5")[0].K == 3).all())
    with h5py.File(out, "a") as f:  # a kind without a name (a mutation review)
        f.attrs["scene_mix"] = '[{"name": null, "share": 0.25}]'
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "unnamed 25% (the base scene the rest)" in " ".join(
        res.output.replace("│", " ").split()), res.output
    for odd in ('[{"x": 1}]', '{"a": 1}', '[{"name": null, "share": "x"}]', "not json"):
        with h5py.File(out, "a") as f:  # an attribute written by another tool
            f.attrs["scene_mix"] = odd
        res = runner.invoke(app, ["info", str(out)])
        assert res.exit_code == 0 and "not a list of kinds" in res.output, (odd, res.output)
    res = runner.invoke(app, ["simulate", "--n", "4", "--recipe", str(recipe), "--config",
                              str(recipe), "--out", str(tmp_path / "x.h5")])
    assert res.exit_code == 2 and "exclude each other" in res.output


def test_config_may_be_a_recipe_but_a_misspelt_section_is_named(tmp_path):
    recipe = Path(__file__).resolve().parents[2] / "configs" / "train_tiny.yaml"
    res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "a.npz"),
                              "--config", str(recipe)])
    assert res.exit_code == 0, res.output
    (tmp_path / "typo.yaml").write_text("system:\n  L: 8\nscenes:\n  K: 2\n")
    res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "b.npz"),
                              "--config", str(tmp_path / "typo.yaml")])
    assert res.exit_code == 2 and "unknown top-level key(s) 'scenes'" in res.output
    res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "b.npz"),
                              "--set", "scene.snr_db=[0, 10"])
    assert res.exit_code == 2 and "not valid YAML" in res.output


def test_every_command_s_help_is_whole_paragraphs():
    """A review: the docstrings' source line breaks, kept by rich's help, broke sentences
    mid-line in `risloc --help`."""
    for cmd in app.registered_commands:
        paragraphs = cmd.help.split("\n\n")
        assert all(p and "\n" not in p for p in paragraphs), cmd.name
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "localize it with the learned pipeline" in res.output  # (was: "learned" \n "pipeline")


def test_the_options_that_fix_a_scene_field_reach_the_scenes_and_the_file(tmp_path):
    """A mutation review: --power-spread-db (with --config or --recipe), --snr-db's own
    check, --K's bounds and the K_fixed / snr_db_fixed / n_total attributes went untested."""
    out = tmp_path / "p.npz"
    res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(out),
                              "--power-spread-db", "10", "--snr-db", "7", "--K", "2"])
    assert res.exit_code == 0, res.output
    _, info = read_scenes(out)
    assert json.loads(info.attrs["config"])["scene"]["power_spread_db"] == 10.0
    assert int(info.attrs["K_fixed"]) == 2 and float(info.attrs["snr_db_fixed"]) == 7.0
    text = " ".join(runner.invoke(app, ["info", str(out)]).output.replace("│", " ").split())
    assert "simulated with SNR 7.0 dB, K = 2, source powers spread over 10.0 dB" in text, text
    recipe = tmp_path / "r.yaml"
    recipe.write_text("scene: {K: 3}\n")
    res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "r.npz"),
                              "--recipe", str(recipe), "--power-spread-db", "6"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(read_scenes(tmp_path / "r.npz")[1].attrs["config"])
    assert cfg["scene"]["power_spread_db"] == 6.0
    res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "s.npz"),
                              "--power-spread-db", "-1"])
    assert res.exit_code == 2 and "power_spread_db must lie in [0, 60] dB" in res.output
    res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "s.npz"),
                              "--snr-db", "nan"])
    assert res.exit_code == 2 and "--snr-db must be a finite SNR" in res.output, res.output
    for K in ("0", "6"):  # just outside 1..K_max
        res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "s.npz"),
                                  "--K", K])
        assert res.exit_code == 2 and f"--K {K}: the number of sources must be 1..5" in \
            res.output, res.output
    assert not (tmp_path / "s.npz").exists()
    # as many shards as scenes: one scene each; a negative shard index is refused
    res = runner.invoke(app, ["simulate", "--n", "2", "--shard", "1/2", "--out",
                              str(tmp_path / "one.npz")])
    assert res.exit_code == 0, res.output
    _, info = read_scenes(tmp_path / "one.npz")
    assert info.n_scenes == 1 and int(info.attrs["first_scene"]) == 1
    assert int(info.attrs["n_total"]) == 2
    res = runner.invoke(app, ["simulate", "--n", "4", "--shard", "-1/2", "--out",
                              str(tmp_path / "neg.npz")])
    assert res.exit_code == 2 and "0 <= i < n" in res.output, res.output


def test_info_says_true_angles_stored_in_radians_look_like_radians(tmp_path):
    """A mutation review: the 'truth units' row of `risloc info` was never checked."""
    out = tmp_path / "r.h5"
    assert runner.invoke(app, ["simulate", "--n", "3", "--out", str(out), "--K", "2"]
                         ).exit_code == 0
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "radians stored" not in res.output
    with h5py.File(out, "a") as f:
        for name in ("azimuth_deg", "elevation_deg"):
            f[name][:] = np.radians(f[name][:])
    text = " ".join(runner.invoke(app, ["info", str(out)]).output.replace("│", " ").split())
    assert "truth units the true angles of all 6 sources lie within" in text
    assert "radians stored as degrees? (scene files hold degrees" in text


def test_an_explicit_power_spread_a_top_K_a_huge_sharded_n_and_many_h5_chunks(
        tmp_path, monkeypatch):
    """A second mutation review: --power-spread-db 0 (falsy) must still replace the
    config's or recipe's spread and is applied after --set; --K K_max is accepted; a shard
    of a huge --n is sized (disk check, n_total) by its own slice; an .h5 written in
    several chunks holds the same scenes as the .npz written in one."""
    import risloc.cli.simulate as simulate

    recipe = tmp_path / "r.yaml"
    recipe.write_text("scene: {power_spread_db: 12}\n")
    for how in (["--config", str(recipe)], ["--recipe", str(recipe)],
                ["--set", "scene.power_spread_db=3"],
                ["--recipe", str(recipe), "--set", "scene.power_spread_db=3"]):
        out = tmp_path / "p.npz"
        res = runner.invoke(app, ["simulate", "--n", "1", "--out", str(out), "--overwrite",
                                  *how, "--power-spread-db", "0"])
        assert res.exit_code == 0, (how, res.output)
        cfg = json.loads(read_scenes(out)[1].attrs["config"])
        assert cfg["scene"]["power_spread_db"] == 0.0, how
    res = runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "k.npz"),
                              "--K", "5"])  # K_max itself
    assert res.exit_code == 0, res.output
    assert read_scenes(tmp_path / "k.npz")[0].K.tolist() == [5, 5]
    big = 10**11  # more scenes than any disk holds, but this shard is 10 of them
    res = runner.invoke(app, ["simulate", "--n", str(big), "--shard", f"3/{big // 10}",
                              "--out", str(tmp_path / "big.npz")])
    assert res.exit_code == 0, res.output
    _, info = read_scenes(tmp_path / "big.npz")
    assert info.n_scenes == 10 and int(info.attrs["first_scene"]) == 30
    assert int(info.attrs["n_total"]) == big
    monkeypatch.setattr(simulate, "BLOCK", 1)  # .h5 chunks of 4 scenes: 3 of them for 10
    for name in ("c.h5", "c.npz"):
        res = runner.invoke(app, ["simulate", "--n", "10", "--shard", "1/2", "--seed", "3",
                                  "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    h5, npz = (read_scenes(tmp_path / n)[0] for n in ("c.h5", "c.npz"))
    assert len(h5) == 5 and torch.equal(h5.y, npz.y) and torch.equal(h5.K, npz.K)


def test_info_says_how_far_the_near_field_reaches(tmp_path, monkeypatch):
    """A persona with an 8 x 8 RIS at 28 GHz searched 0.5-10 m for sources, beyond the
    0.52 m where its range can be told, and nothing said so: `risloc info` gives the
    Fraunhofer distance of the file's system (the default's: 36.3 m)."""
    monkeypatch.chdir(tmp_path)
    own = ["--set", "system.N_H=8", "--set", "system.N_V=8", "--set", "system.M=8",
           "--set", "system.wavelength=0.0107", "--set", "system.K_max=3"]
    for name, system, far in (("own.h5", own, "0.524 m"), ("default.h5", [], "36.3 m")):
        assert runner.invoke(app, ["simulate", "--n", "1", "--out", name, "--snr-db", "20",
                                   *system]).exit_code == 0
        res = runner.invoke(app, ["info", name])
        text = " ".join(res.output.replace("│", " ").split())
        assert f"near field out to 2 D^2 / lambda = {far}" in text, text


def test_info_gives_a_box_holding_true_sources_the_default_one_leaves_out(tmp_path,
                                                                          monkeypatch):
    """Sources at 0.15-0.4 m, nearer than the default box: `risloc info` counted them
    outside and still printed the plain localize command, which missed all of them (a
    review); it prints the classical localizer with a --fov holding them, which finds them,
    and leaves the fields the truth stays inside alone."""
    from risloc.pipeline import read_estimates

    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", "near.h5", "--snr-db", "20",
                               "--K", "1", "--set", "scene.range_m=[0.15, 0.4]"]).exit_code == 0
    res = runner.invoke(app, ["info", "near.h5"])
    text = " ".join(res.output.replace("│", " ").split())
    localize = text[text.index("`risloc localize") + 1:]
    localize = localize[:localize.index("`")].split()
    assert localize[-4:-1] == ["--method", "classical", "--fov"], localize
    assert localize[-1].startswith("range_m=") and localize[-1].endswith(",10"), localize
    evaluate = text[text.index("`risloc evaluate") + 1:]  # (a mutation review: unchecked)
    assert evaluate[:evaluate.index("`")].split()[-4:] == ["--estimators", "classical",
                                                          "--fov", localize[-1]], evaluate
    assert "the learned localizer searches its model's box" in text
    res = runner.invoke(app, [*localize[1:], "--K", "1"])
    assert res.exit_code == 0, res.output
    est = read_estimates(tmp_path / "estimates.csv", 2, 5)
    assert (est.range_m[:, 0] < 0.45).all(), est.range_m
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", "far.h5", "--snr-db", "20",
                               "--K", "1"]).exit_code == 0
    res = runner.invoke(app, ["info", "far.h5"])
    assert "--fov" not in res.output  # (every source inside the default box)


def test_info_names_the_training_box_of_the_fields_it_widens(tmp_path, monkeypatch):
    """The hint for the learned localizer printed `risloc train --set scene.range_m=[...]`
    whatever field left the default box (a persona's file of sources at azimuth 62-75 deg
    was told to change the range) and a placeholder that fails as written; it gives the
    --fov's own box, quoted for a shell, of the fields the --fov widens."""
    import shlex

    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", "side.h5", "--snr-db", "20",
                               "--K", "1", "--set", "scene.azimuth_deg=[62, 75]"]
                         ).exit_code == 0
    text = " ".join(runner.invoke(app, ["info", "side.h5"]).output.replace("│", " ").split())
    fov = text[text.index("--fov azimuth_deg=") + 18:]
    lo, hi = fov[:fov.index("`")].split(",")
    assert float(lo) == -60 and float(hi) > 75, fov
    train = text[text.index("`risloc train --set") + 1:]
    train = shlex.split(train[:train.index("`")])
    assert train == ["risloc", "train", "--set", f"scene.azimuth_deg=[{lo}, {hi}]"], train
    assert "scene.range_m" not in text, text


def test_info_trains_one_model_for_the_files_system_and_the_box_of_its_truth(tmp_path,
                                                                              monkeypatch):
    """A review: for a system the shipped model does not serve, with truth beyond the default
    box, `risloc info` gave two training commands, the box's without the system's fields (a
    model of the default system, which cannot run on the file); one command holds both."""
    monkeypatch.chdir(tmp_path)
    own = ["--set", "system.N_H=8", "--set", "system.N_V=8", "--set", "system.M=8"]
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", "own.h5", "--split", "test",
                               *own]).exit_code == 0
    with h5py.File("own.h5", "a") as f:
        f["azimuth_deg"][0, 0] = 75.0
    res = runner.invoke(app, ["info", "own.h5"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.replace("│", " ").split())
    hint = text[text.index(" next ") + 6:]
    assert hint.count("`risloc train") == 1, hint
    train = hint[hint.index("`risloc train") + 1:]
    train = shlex.split(train[:train.index("`")])
    assert train[3::2] == ["system.N_H=8", "system.N_V=8", "system.M=8",
                           "scene.azimuth_deg=[-60, 80]"], train


def test_snr_db_and_a_recipes_kinds_reach_the_scenes_of_either_format(tmp_path):
    """A third mutation review: --snr-db was checked only in the file's attributes, not in
    its scenes, and --recipe's scene_mix only in an .h5."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("scene: {K: 3}\n"
                      "data:\n  scene_mix:\n    - {name: one, share: 0.5, scene: {K: 1}}\n")
    for name in ("s.h5", "s.npz"):
        res = runner.invoke(app, ["simulate", "--n", "40", "--out", str(tmp_path / name),
                                  "--snr-db", "7", "--recipe", str(recipe)])
        assert res.exit_code == 0, res.output
        batch = read_scenes(tmp_path / name)[0]
        assert bool(((batch.snr_db - 7).abs() < 1e-3).all()), name
        assert 1 in batch.K.tolist() and 3 in batch.K.tolist(), name
