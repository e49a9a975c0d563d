import csv
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from risloc.cli.main import app

runner = CliRunner()


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_evaluate_simulated_sweep(tmp_path):
    out = tmp_path / "rep"
    res = runner.invoke(app, ["evaluate", "--estimators", "music-oracle,music-samp",
                              "--snr-db", "10,20", "--K", "2", "--n", "6", "--known-K",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = _rows(out / "metrics.csv")
    cells = {(r["estimator"], float(r["snr_db"]), r["K"]) for r in rows}
    assert ("music-oracle", 10.0, "all") in cells and ("music-samp", 20.0, "2") in cells
    oracle = [r for r in rows if r["estimator"] == "music-oracle" and r["K"] == "all"]
    for r in oracle:  # the ceiling: exact covariance, known K
        assert float(r["angle_median_deg"]) < 0.02 and float(r["range_median_m"]) < 0.01
        assert float(r["f1"]) == 1.0 and float(r["crb_azimuth_median_deg"]) > 0
    samp = [r for r in rows if r["estimator"] == "music-samp" and r["K"] == "all"]
    for r in samp:  # paired standard errors against the first estimator
        assert r["reference"] == "music-oracle" and float(r["se_f1_diff"]) >= 0
        assert float(r["se_K_accuracy_diff"]) == 0.0  # K given to both: no difference
        # a ratio to the oracle's exact (zero) median errors is undefined
        assert math.isnan(float(r["se_azimuth_median_ratio"]))
    assert all(r["reference"] == "" for r in oracle)
    assert "standard error of the difference to music-oracle" in " ".join(res.output.split())
    assert "medians over each estimator's own paired sources (metrics.csv: n_paired of " \
        "n_true; *_median_ratio_common" in " ".join(res.output.split())  # (a review)
    for name in ("error_vs_snr.png", "k_accuracy_vs_snr.png", "music_spectrum_true.png"):
        assert (out / name).stat().st_size > 10_000
        assert name in " ".join(res.output.split())  # each plot named (a review: "PNG plots")
    assert not (out / "music_spectrum_blend.png").exists()  # no learned estimator ran
    def refuse(constant):  # strict JSON: no NaN / Infinity, which jq or JavaScript refuse
        raise ValueError(constant)
    report = json.loads((out / "metrics.json").read_text(), parse_constant=refuse)
    assert report["meta"]["settings"]["known_K"] is True
    # a simulated sweep's default bound: the deterministic one (its symbols are known; a
    # second mutation review: the stochastic default for files passed here)
    assert report["meta"]["settings"]["crb"] == "deterministic"
    ratio = [r["se_azimuth_median_ratio"] for r in report["rows"]
             if r["estimator"] == "music-samp" and r["K"] == "all"]
    assert ratio and all(v is None for v in ratio)  # NaN in the CSV, null in the JSON
    # the folder reused without plots: none of the earlier run's is left beside the results
    res = runner.invoke(app, ["evaluate", "--estimators", "music-samp", "--snr-db", "20",
                              "--K", "1", "--n", "2", "--no-plots", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert not list(out.glob("*.png"))
    header = next(line for line in res.output.splitlines() if line.startswith("┃ estimator"))
    assert "K" not in [c.strip() for c in header.split("┃")]  # one K swept: no K column
    # several K: each true K's row under the pooled one, in a K column
    res = runner.invoke(app, ["evaluate", "--estimators", "music-samp", "--snr-db", "20",
                              "--K", "1,2", "--n", "2", "--no-plots", "--known-K",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = [line.split("│")[1:4] for line in res.output.splitlines()
             if line.startswith("│ music-samp")]
    assert [[c.strip() for c in row] for row in table] == [
        ["music-samp", "20", "all"], ["music-samp", "20", "1"], ["music-samp", "20", "2"]]


def test_evaluate_file_without_truth_times_only_and_refuses_the_oracle(tmp_path):
    import numpy as np

    f = tmp_path / "s.npz"
    assert runner.invoke(app, ["simulate", "--n", "4", "--out", str(f), "--K", "1",
                               "--split", "test"]).exit_code == 0
    bare = tmp_path / "bare.npz"
    with np.load(f) as z:
        np.savez(bare, **{k: z[k] for k in ("y", "H", "codes", "system")})
    res = runner.invoke(app, ["evaluate", str(bare), "--estimators", "music-samp,music-oracle",
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "music-oracle needs a scene file with the truth" in res.output
    res = runner.invoke(app, ["evaluate", str(bare), "--estimators", "music-samp", "--known-K",
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--known-K needs a scene file with the truth" in res.output
    res = runner.invoke(app, ["evaluate", str(bare), "--estimators", "music-samp",
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    # its row (K "?": no truth) is in the table (a second mutation review: unchecked)
    assert any(line.startswith("│ music-samp") for line in res.output.splitlines())
    assert "PNG plots" not in res.output and not list((tmp_path / "r").glob("*.png"))
    # estimates of its scenes: nothing to score them against, said (a second mutation review)
    (tmp_path / "e.csv").write_text("scene,source,azimuth_deg,elevation_deg,range_m\n"
                                    "0,0,1,1,2\n")
    res = runner.invoke(app, ["evaluate", str(bare), "--estimators", "none", "--estimates",
                              str(tmp_path / "e.csv"), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "carries no true positions to score estimates against" in \
        " ".join(res.output.split()), res.output


def test_evaluate_user_file_with_stochastic_crb(tmp_path):
    f = tmp_path / "s.npz"
    assert runner.invoke(app, ["simulate", "--n", "8", "--out", str(f), "--snr-db", "15",
                               "--K", "1", "--split", "test"]).exit_code == 0
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "music-oracle", "--known-K",
                              "--out", str(tmp_path / "r"), "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "not used for a scene file" not in res.output
    rows = _rows(tmp_path / "r" / "metrics.csv")
    assert rows[0]["snr_db"] == "15.0" and float(rows[0]["crb_range_median_m"]) > 0
    # metrics.json records the bound used and no setting of a simulated sweep
    settings = json.loads((tmp_path / "r" / "metrics.json").read_text())["meta"]["settings"]
    assert settings["crb"] == "stochastic" and settings["known_K"] is True
    assert not {"snr_db", "K", "n_per_point", "power_spread_db"} & set(settings)
    # a file carries no symbols: the deterministic bound is refused, not silently replaced
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "music-oracle", "--crb",
                              "deterministic", "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "--crb deterministic needs the sources' symbols" in res.output
    assert not (tmp_path / "r2").exists()
    # a simulated sweep's options are said to be unused for a file, not silently dropped
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "music-oracle", "--known-K",
                              "--K", "3", "--n", "5", "--power-spread-db", "2", "--no-plots",
                              "--out", str(tmp_path / "r3")])
    text = " ".join(res.output.split())
    assert res.exit_code == 0
    assert ("not used for a scene file (its own system, scenes, SNRs and K), options of a "
            "simulated sweep: --K, --n, --power-spread-db") in text
    # so are --config and --set: a file's system is its own (they were dropped silently, a
    # missing config file or a malformed override included)
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "music-oracle", "--known-K",
                              "--config", str(tmp_path / "missing.yaml"), "--set", "abc",
                              "--no-plots", "--out", str(tmp_path / "r4")])
    assert res.exit_code == 0, res.output
    assert "options of a simulated sweep: --config, --set" in " ".join(
        res.output.split())


@pytest.mark.parametrize("spread", ["61", "1e30", "inf"])
def test_a_power_spread_beyond_the_scene_config_s_60_db_is_refused(tmp_path, spread):
    """The sweep's scene takes --power-spread-db without the config's validation: 61 dB ran,
    1e30 failed later as 'measurements not finite ... a Rician factor near 1e38'."""
    res = runner.invoke(app, ["evaluate", "--estimators", "classical", "--n", "1",
                              "--power-spread-db", spread, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--power-spread-db" in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_a_scene_whose_bound_cannot_be_computed_leaves_the_metrics_without_it(tmp_path):
    # a review: one true source written twice (scene 5) made the FIM singular and aborted
    # the whole run, naming a scene of the bound's chunk instead of the file's
    f = tmp_path / "s.npz"
    assert runner.invoke(app, ["simulate", "--n", "8", "--out", str(f), "--snr-db", "15",
                               "--K", "2", "--split", "test"]).exit_code == 0
    data = dict(np.load(f))
    for key in ("azimuth_deg", "elevation_deg", "range_m"):
        data[key][5, 1] = data[key][5, 0]
    np.savez(f, **data)
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "music-oracle", "--known-K",
                              "--out", str(tmp_path / "r"), "--no-plots"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "no CRB beside the metrics at 15 dB" in text and "singular in scene(s) [5]" in text
    rows = _rows(tmp_path / "r" / "metrics.csv")
    assert rows[0]["n_scenes"] == "8" and float(rows[0]["f1"]) > 0.9
    assert rows[0]["crb_range_median_m"] == ""


def test_truth_in_other_units_is_named_as_localize_names_it(tmp_path, monkeypatch):
    # a review: truth stored in radians, or ranges 30x too far, read as the localizers'
    # failure (F1 0.008) without a word, where `risloc localize` and `info` warn
    f = tmp_path / "s.npz"
    assert runner.invoke(app, ["simulate", "--n", "12", "--out", str(f), "--snr-db", "15",
                               "--K", "2", "--split", "test"]).exit_code == 0
    data = dict(np.load(f))
    radians = {k: np.deg2rad(data[k]) for k in ("azimuth_deg", "elevation_deg")}
    far = {"range_m": data["range_m"] * 30}
    for i, (change, says) in enumerate(((radians, "radians stored as degrees?"),
                                        (far, "lie outside the field of view the estimators "
                                              "search"))):
        np.savez(tmp_path / f"bad{i}.npz", **(data | change))
        res = runner.invoke(app, ["evaluate", str(tmp_path / f"bad{i}.npz"), "--estimators",
                                  "music-oracle", "--known-K", "--out", str(tmp_path / f"r{i}"),
                                  "--no-plots"])
        assert res.exit_code == 0 and says in " ".join(res.output.split()), res.output
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "music-oracle", "--known-K",
                              "--out", str(tmp_path / "ok"), "--no-plots"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "radians stored" not in text and "lie outside" not in text
    # a learned model of a narrower box (its training scenes') searches only there: a file's
    # sources beyond it are named against it, as a sweep's are (a review: only the default
    # box was checked, so a file scored the learned model on sources it cannot find, unsaid)
    import risloc.cli.evaluate as evaluate_cli
    from risloc.config import FieldOfView

    shipped = evaluate_cli.model_system(None)
    monkeypatch.setattr(evaluate_cli, "model_system", lambda checkpoint, with_fov=False: (
        shipped, FieldOfView(range_m=(0.5, 3.0))))
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "learned",
                              "--out", str(tmp_path / "narrow"), "--no-plots"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "lie outside the field of view the learned model (its training scenes') searches " \
        "(azimuth -60..60 deg, elevation -30..30 deg, range 0.5..3 m)" in text, text
    assert "the estimators other than 'learned' search" not in text  # (inside the default)
    # beside it the other estimators search its box too (one box, named once)
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "learned,classical",
                              "--out", str(tmp_path / "both"), "--no-plots"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert text.count("lie outside the field of view the estimators search (azimuth -60..60 "
                      "deg, elevation -30..30 deg, range 0.5..3 m)") == 1, text
    # and a sweep's (a second mutation review: the sweep's learned box went unchecked)
    monkeypatch.setattr(evaluate_cli, "run_report", lambda *a, **k: None)
    res = runner.invoke(app, ["evaluate", "--n", "1", "--out", str(tmp_path / "sweep")])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "beyond the field of view the estimators search (azimuth " \
        "-60..60 deg, elevation -30..30 deg, range 0.5..3 m)" in text, text
    res = runner.invoke(app, ["evaluate", "--n", "1", "--estimators", "learned", "--out",
                              str(tmp_path / "sweep1")])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "beyond the field of view the learned model (its training " \
        "scenes') searches (azimuth -60..60 deg, elevation -30..30 deg, range 0.5..3 m)" \
        in text, text


def _estimates_csv(path, az, el, r, K, skip=()):
    with open(path, "w") as f:
        f.write("scene,source,azimuth_deg,elevation_deg,range_m\n")
        for b in range(len(K)):
            for s in range(int(K[b]) if b not in skip else 0):
                row = (float(v[b, s]) for v in (az, el, r))
                f.write(f"{b},{s}," + ",".join(map(repr, row)) + "\n")


def test_estimates_made_elsewhere_are_scored_beside_the_estimators(tmp_path):
    """--estimates: a user's own method's CSV scored on the file's scenes beside the
    estimators, with the paired standard errors against the first; the truth itself
    written as estimates scores perfectly, one scene left empty costs its sources."""
    f = tmp_path / "s.npz"
    assert runner.invoke(app, ["simulate", "--n", "12", "--out", str(f), "--snr-db", "15",
                               "--K", "2", "--split", "test"]).exit_code == 0
    t = np.load(f)
    truth = (t["azimuth_deg"], t["elevation_deg"], t["range_m"], t["K"])
    _estimates_csv(tmp_path / "exact.csv", *truth)
    _estimates_csv(tmp_path / "gappy.csv", *truth, skip={3})
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "music-oracle", "--known-K",
                              "--estimates", str(tmp_path / "exact.csv"), "--estimates",
                              str(tmp_path / "gappy.csv"), "--out", str(tmp_path / "r"),
                              "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "--known-K / --snr-withheld concern the estimators run here" in " ".join(
        res.output.split())  # (a mutation review: unchecked)
    rows = {r["estimator"]: r for r in _rows(tmp_path / "r" / "metrics.csv") if r["K"] == "all"}
    assert list(rows) == ["music-oracle", "exact", "gappy"]
    exact, gappy = rows["exact"], rows["gappy"]
    assert float(exact["f1"]) == 1.0 and float(exact["K_accuracy"]) == 1.0
    assert float(exact["angle_median_deg"]) < 1e-4 and math.isnan(float(exact["ms_per_scene"]))
    assert float(gappy["K_accuracy"]) == pytest.approx(11 / 12)
    assert int(gappy["n_missed"]) == 2 and exact["reference"] == "music-oracle"
    assert float(gappy["se_K_accuracy_diff"]) > 0
    settings = json.loads((tmp_path / "r" / "metrics.json").read_text())["meta"]["settings"]
    assert [g["name"] for g in settings["given"]] == ["exact", "gappy"]
    # alone (--estimators none), and what cannot be scored is named
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "none", "--estimates",
                              str(tmp_path / "exact.csv"), "--out", str(tmp_path / "r1"),
                              "--no-plots", "--checkpoint", str(tmp_path / "nope.pt")])
    assert "nope.pt is not used" in " ".join(res.output.split())  # no learned estimator
    assert res.exit_code == 0 and [(r["estimator"], r["K"]) for r in _rows(
        tmp_path / "r1" / "metrics.csv")] == [("exact", "all"), ("exact", "2")]
    # file 1's rows kept from localize's CSV of two files (as the refusal of a CSV of
    # several files advises): scored, and said (a review: refused once)
    lines = (tmp_path / "exact.csv").read_text().splitlines()
    (tmp_path / "kept.csv").write_text("\n".join([lines[0] + ",file"] + [
        f"{line},1" for line in lines[1:]]) + "\n")
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "none", "--estimates",
                              str(tmp_path / "kept.csv"), "--out", str(tmp_path / "rk"),
                              "--no-plots"])
    assert res.exit_code == 0 and "rows of file 1 alone of a CSV of several files: scored " \
        "as the estimates of" in " ".join(res.output.split()), res.output
    assert float(_rows(tmp_path / "rk" / "metrics.csv")[0]["f1"]) == 1.0
    # a CSV of part of the file: the scenes without a row are named; --start/--stop score
    # that part alone
    _estimates_csv(tmp_path / "part.csv", *truth, skip=set(range(8)))
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "none", "--estimates",
                              str(tmp_path / "part.csv"), "--out", str(tmp_path / "r3"),
                              "--no-plots"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "8 of the 12 scenes evaluated have true sources but no " \
        "estimate (no row) [0, 1, 2, 3, 4, 5, 6, 7]" in said and "from 1" not in said, said
    # scenes numbered from 1 (sources from 0), the last scene without a row: every scene's
    # rows land on the next scene's truth; scene 0 alone without a row is said as such
    lines = (tmp_path / "exact.csv").read_text().splitlines()
    (tmp_path / "from1.csv").write_text("\n".join([lines[0]] + [
        f"{int(line.split(',')[0]) + 1},{line.split(',', 1)[1]}" for line in lines[1:]
        if not line.startswith("11,")]) + "\n")
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "none", "--estimates",
                              str(tmp_path / "from1.csv"), "--out", str(tmp_path / "r4"),
                              "--no-plots"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "(no row) [0]" in said and "does the CSV number scenes " \
        "from 1 (MATLAB's counting)? They are 0-based, subtract 1" in said, said
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "none", "--estimates",
                              str(tmp_path / "part.csv"), "--out", str(tmp_path / "r3"),
                              "--no-plots", "--start", "8"])
    part = _rows(tmp_path / "r3" / "metrics.csv")[0]
    assert res.exit_code == 0 and "no row" not in res.output
    # the report names the scenes it scored by their index in the file (a mutation review:
    # an off-by-one in either passed)
    assert json.loads((tmp_path / "r3" / "metrics.json").read_text())["meta"]["source"] \
        == f"{f}, scenes 8..11"
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "none", "--estimates",
                              str(tmp_path / "part.csv"), "--out", str(tmp_path / "r3s"),
                              "--no-plots", "--start", "5", "--stop", "10"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "3 of the 5 scenes evaluated have true sources but no " \
        "estimate (no row) [5, 6, 7]" in said, said
    # a scene left out (its measurements all zero), without a row as localize writes it:
    # not named (a review: counted as a scene missing from the CSV)
    dead = tmp_path / "dead.npz"
    np.savez(dead, **{k: (v if k != "y" else np.concatenate([v[:9], 0 * v[9:10], v[10:]]))
                      for k, v in t.items()})
    _estimates_csv(tmp_path / "no9.csv", *truth, skip={9})
    res = runner.invoke(app, ["evaluate", str(dead), "--estimators", "none", "--estimates",
                              str(tmp_path / "no9.csv"), "--out", str(tmp_path / "r5"),
                              "--no-plots"])
    assert res.exit_code == 0 and "no row" not in res.output, res.output
    _estimates_csv(tmp_path / "no3_9.csv", *truth, skip={3, 9})  # the count: 11 evaluated
    res = runner.invoke(app, ["evaluate", str(dead), "--estimators", "none", "--estimates",
                              str(tmp_path / "no3_9.csv"), "--out", str(tmp_path / "r5"),
                              "--no-plots"])
    assert res.exit_code == 0 and "1 of the 11 scenes evaluated have true sources but no " \
        "estimate (no row) [3]" in " ".join(res.output.split()), res.output
    assert (part["n_scenes"], float(part["f1"])) == ("4", 1.0)
    several = tmp_path / "several.csv"  # localize a.h5 b.h5: one CSV, a `file` column
    several.write_text("file,scene,source,azimuth_deg,elevation_deg,range_m\n"
                       "0,0,0,1,1,2\n1,0,0,1,1,2\n")
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "none", "--estimates",
                              str(several), "--out", str(tmp_path / "r4")])
    assert res.exit_code == 2 and "holds the estimates of 2 input files of `risloc localize`" \
        in " ".join(res.output.split()) and "file=" not in res.output
    # a range from scene 0 (--stop alone) is named as a range too (a second mutation review)
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "none", "--estimates",
                              str(tmp_path / "exact.csv"), "--out", str(tmp_path / "r8"),
                              "--no-plots", "--stop", "4"])
    assert res.exit_code == 0 and json.loads((tmp_path / "r8" / "metrics.json").read_text())[
        "meta"]["source"] == f"{f}, scenes 0..3", res.output
    (tmp_path / "classical.csv").write_text((tmp_path / "exact.csv").read_text())
    (tmp_path / "r6").mkdir()
    (tmp_path / "r6" / "exact.csv").write_text((tmp_path / "exact.csv").read_text())
    for args, says in (
            ([str(f), "--estimates", str(tmp_path / "classical.csv"), "--estimators",
              "classical"], "its name 'classical' is taken (by an estimator)"),
            ([str(f), "--estimates", str(tmp_path / "exact.csv"), "--estimates",
              str(tmp_path / "r6" / "exact.csv"), "--estimators", "none"],
             "its name 'exact' is taken (by another --estimates)"),
            ([str(f), "--estimates", str(tmp_path / "nothere.csv")], "no such file"),
            (["--estimates", str(tmp_path / "exact.csv")], "give the scene file"),
            ([str(f), "--start", "13"], "select no scene range of the 12 scenes"),
            ([str(f), "--start", "3", "--stop", "2"], "select no scene range of the 12"),
            ([str(f), "--start", "3", "--stop", "3"], "no scene can be evaluated (none "
                                                      "selected)"),
            (["--start", "1", "--n", "1", "--snr-db", "20", "--estimators", "music-oracle",
              "--no-plots"], "give the scene file"),  # (not a sweep that ignores it)
            (["--stop", "4"], "give the scene file")):
        res = runner.invoke(app, ["evaluate", *args, "--out", str(tmp_path / "r2")])
        assert res.exit_code == 2 and says in " ".join(res.output.split()), res.output
    # estimates written in radians are suspected, as true angles are (a user's review: F1 0
    # and no hint); the exact ones are not
    _estimates_csv(tmp_path / "rad.csv", np.deg2rad(truth[0]), np.deg2rad(truth[1]),
                   *truth[2:])
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "none", "--estimates",
                              str(tmp_path / "rad.csv"), "--estimates",
                              str(tmp_path / "exact.csv"), "--out", str(tmp_path / "r7"),
                              "--no-plots"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "--estimates " in said and "rad.csv: the estimated angles " \
        "of all 24 sources lie within" in said and "radians stored as degrees? (estimates " \
        "CSVs hold degrees" in said and "exact.csv: the estimated" not in said, said
    # truth and estimates both in radians: the truth is suspected, the estimates (holding
    # what the truth does) are not; --snr-withheld alone is said not to concern them (a
    # second mutation review: both unchecked)
    np.savez(tmp_path / "radf.npz", **(dict(t) | {k: np.deg2rad(t[k]) for k in (
        "azimuth_deg", "elevation_deg")}))
    res = runner.invoke(app, ["evaluate", str(tmp_path / "radf.npz"), "--estimators", "none",
                              "--estimates", str(tmp_path / "rad.csv"), "--snr-withheld",
                              "--out", str(tmp_path / "r9"), "--no-plots"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "radians stored as degrees?" in said, said
    assert "rad.csv: the estimated" not in said
    assert "--known-K / --snr-withheld concern the estimators run here" in said
    # an estimates CSV named as the report's table is an input, never replaced (a review:
    # the user's estimates became the metrics table)
    mine = tmp_path / "r6" / "metrics.csv"
    mine.write_text((tmp_path / "exact.csv").read_text())
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "none", "--estimates",
                              str(mine), "--out", str(tmp_path / "r6"), "--no-plots"])
    assert res.exit_code == 2 and "is one of the inputs" in " ".join(res.output.split())
    assert mine.read_text() == (tmp_path / "exact.csv").read_text()


@pytest.mark.parametrize("args,msg", [
    (["--estimators", "magic"], "unknown estimator"),
    (["--snr-db", "a,b"], "comma-separated"),
    (["--crb", "bayes"], "--crb"),
])
def test_evaluate_bad_arguments(tmp_path, args, msg):
    res = runner.invoke(app, ["evaluate", "--n", "2", "--out", str(tmp_path), *args])
    assert res.exit_code == 2 and msg in res.output


def test_a_checkpoint_named_as_the_report_s_table_is_an_input_never_replaced(tmp_path):
    """As a scene file or an estimates CSV, even where it is not used (a mutation review:
    the checkpoint unchecked)."""
    model = tmp_path / "metrics.json"
    model.write_text("a model, say")
    res = runner.invoke(app, ["evaluate", "--estimators", "music-oracle", "--n", "1",
                              "--snr-db", "20", "--no-plots", "--checkpoint", str(model), "--out",
                              str(tmp_path)])
    assert res.exit_code == 2 and "is one of the inputs" in " ".join(res.output.split()), \
        res.output
    assert model.read_text() == "a model, say"
    # with the learned estimator too, whose model is read first (it was refused as no model)
    res = runner.invoke(app, ["evaluate", "--estimators", "learned,classical", "--n", "1",
                              "--no-plots", "--checkpoint", str(model), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "is one of the inputs" in " ".join(res.output.split()), \
        res.output


def test_evaluate_user_file_groups_by_snr_bins_and_keeps_scenes_without_snr(tmp_path):
    import h5py
    import numpy as np

    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "8", "--out", str(f), "--K", "1",
                               "--split", "test"]).exit_code == 0
    with h5py.File(f, "a") as h:  # SNR in two bins, and missing in three scenes
        h["snr_db"][:] = np.array([9.0, 11.0, 10.4, 19.0, 21.0, np.nan, np.nan, np.nan],
                                  dtype=np.float32)
    res = runner.invoke(app, ["evaluate", str(f), "--out", str(tmp_path / "r"),
                              "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "all: the scenes of every SNR group together, without a bound (their SNRs differ)" \
        in " ".join(res.output.split())  # (a review: its "(-)" unexplained)
    # some scenes without an SNR: the bound of each kind named where it applies, in the line
    # and in the title (a mutation review: neither was checked for such a file)
    said = " ".join(res.output.split())
    assert ("the stochastic CRB for equal source powers at each scene's SNR (a file carries "
            "neither symbols nor powers); where a scene has no SNR, at the noise and source "
            "powers its measurements give at the true positions") in said
    assert "SNR given where the file has one" in said and "no SNR in the file" not in said
    assert "CRB at the noise and powers fitted at the truth where a scene has no SNR" in said
    rows = [r for r in _rows(tmp_path / "r" / "metrics.csv") if r["K"] == "all"]
    # the default estimators: the learned localizer first (the reference), the classical one
    assert [r["estimator"] for r in rows][:2] == ["learned", "classical"]
    learned = {r["snr_db"]: int(r["n_scenes"]) for r in rows if r["estimator"] == "learned"}
    assert learned == {"10.1": 3, "20.0": 2, "nan": 3}  # labels: the bins' mean SNRs
    assert "unknown" in res.output
    pooled = [r for r in _rows(tmp_path / "r" / "metrics.csv") if r["K"] == "file"]
    assert [(r["estimator"], int(r["n_scenes"])) for r in pooled] == [("learned", 8),
                                                                      ("classical", 8)]
    assert pooled[1]["reference"] == "learned" and float(pooled[1]["se_f1_diff"]) >= 0
    res = runner.invoke(app, ["evaluate", str(f), "--out", str(tmp_path / "r1"),
                              "--no-plots", "--estimators", "classical", "--snr-bin-db", "1"])
    assert res.exit_code == 0, res.output
    rows = _rows(tmp_path / "r1" / "metrics.csv")
    assert sum(int(r["n_scenes"]) for r in rows if r["K"] == "all") == 8
    assert {r["snr_db"] for r in rows} == {"9.0", "10.4", "11.0", "19.0", "21.0", "nan"}
    # a scene no estimator can localize is left out of every row, and counted; so is a
    # scene whose truth cannot be scored (a noise-only K = 0 capture): the others are scored
    with h5py.File(f, "a") as h:
        h["y"][3] = 0
        h["K"][0] = 0
    res = runner.invoke(app, ["evaluate", str(f), "--out", str(tmp_path / "r2"),
                              "--no-plots", "--estimators", "classical,music-samp"])
    assert res.exit_code == 0, res.output
    rows = _rows(tmp_path / "r2" / "metrics.csv")
    cells = {(r["estimator"], r["snr_db"], r["K"]): r for r in rows}
    for name in ("classical", "music-samp"):
        assert int(cells[name, "20.0", "all"]["n_scenes"]) == 1
        assert int(cells[name, "20.0", "all"]["scenes_left_out"]) == 1
        assert int(cells[name, "10.1", "all"]["n_scenes"]) == 2
        assert int(cells[name, "10.1", "all"]["scenes_left_out"]) == 1
        assert int(cells[name, "nan", "file"]["n_scenes"]) == 6
        assert int(cells[name, "nan", "file"]["scenes_left_out"]) == 2
    assert "2 scene(s) are left out of every estimator's row" in " ".join(res.output.split())
    with h5py.File(f, "a") as h:
        h["K"][0] = 1
    # a whole bin left out is still counted in the note; a file of no usable scene is an
    # error, not an empty report
    with h5py.File(f, "a") as h:
        h["y"][4] = 0  # with scene 3: the 20 dB bin is gone
    res = runner.invoke(app, ["evaluate", str(f), "--out", str(tmp_path / "r3"),
                              "--no-plots", "--estimators", "music-samp"])
    assert res.exit_code == 0, res.output
    assert "2 scene(s) are left out" in " ".join(res.output.split())
    with h5py.File(f, "a") as h:
        h["y"][:] = 0
    res = runner.invoke(app, ["evaluate", str(f), "--out", str(tmp_path / "r4"),
                              "--estimators", "music-samp"])
    assert res.exit_code == 2 and "no scene can be evaluated (all 8 have" in res.output
    import numpy as np

    empty = tmp_path / "empty.npz"
    np.savez(empty, **{k: np.zeros((0, *shape), np.complex64) for k, shape in
                       (("y", (16, 16)), ("H", (16, 144)), ("codes", (16, 144)))})
    res = runner.invoke(app, ["evaluate", str(empty), "--estimators", "music-samp"])
    assert res.exit_code == 2 and "empty.npz: no scene can be evaluated (the file holds " \
        "none)" in " ".join(res.output.split()), res.output
    assert not (tmp_path / "r4" / "metrics.csv").exists()
    # an estimator named twice would count every scene twice in the pooled row
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "music-samp,music-samp"])
    assert res.exit_code == 2 and "music-samp is given twice" in res.output


@pytest.mark.parametrize("args, says", [
    (["demo", "--snr-db", "10,x"], "--snr-db: expected comma-separated finite numbers, got "
                                    "'10,x'"),
    (["demo", "--snr-db", "nan"], "--snr-db: expected comma-separated finite numbers"),
    (["demo", "--snr-db", "0,inf"], "--snr-db: expected comma-separated finite numbers"),
    (["demo", "--snr-db", "0,10,10"], "--snr-db: 10 is given twice"),
    (["evaluate", "--K", "2,2"], "--K: 2 is given twice"),
    (["demo", "--snr-db", ","], "--snr-db: no values given"),
    (["evaluate", "--snr-db", ""], "--snr-db: no values given"),
    (["evaluate", "--K", "1.5"], "--K: expected comma-separated whole numbers"),
    (["evaluate", "--estimators", ","], "--estimators: none given"),
    (["evaluate", "--estimators", "none"], "--estimators none scores the CSVs of --estimates "
                                           "alone: give --estimates"),
    (["evaluate", "--estimators", "classical,none"], "--estimators none scores the CSVs"),
    (["evaluate", "--estimators", "classical,none", "--estimates", "x.csv"],  # (not as an
     "--estimators none scores the CSVs"),  # unknown estimator: a third mutation review)
])
def test_list_options_name_the_option_and_refuse_empty_lists(tmp_path, args, says):
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and says in res.output, res.output
    assert not (tmp_path / "r").exists()  # nothing written for an empty sweep


def test_demo_refuses_an_unwritable_report_folder_before_the_sweep(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    res = runner.invoke(app, ["demo", "--n", "500", "--out", str(tmp_path / "taken")])
    assert res.exit_code == 2 and "taken is a file, not a folder" in res.output
    assert "SNR" not in res.output  # refused before any scene was localized



def test_a_sweep_runs_on_the_model_s_own_system_unless_one_is_named(tmp_path):
    """A review: `evaluate --checkpoint` of a model trained for another system simulated the
    default system and failed mid-sweep; `demo` had no way out at all."""
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.training import Trainer, load_train_config

    cfg = load_train_config(None, ["system.N_H=8", "system.N_V=8", "model.width=16",
                                   "model.dilations=[1]", "model.hidden=16",
                                   f"out_dir={tmp_path}"])
    model = save_checkpoint(tmp_path / "n8.pt", Trainer(cfg).state())
    base = ["--checkpoint", str(model), "--n", "2", "--snr-db", "20", "--no-plots"]
    res = runner.invoke(app, ["evaluate", *base, "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    assert "is not used" not in res.output  # (learned runs it; a mutation review: unchecked)
    assert "simulating the scenes on" in res.output and "RIS 8x8 (N=64)" in res.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["meta"]["system"][
        "N_H"] == 8
    res = runner.invoke(app, ["demo", "--checkpoint", str(model), "--n", "2", "--snr-db", "20",
                              "--out", str(tmp_path / "d")])
    assert res.exit_code == 0 and "the model's system" in res.output, res.output
    # --set system.* changes the model's system (before, the default one's: N_H, M and L
    # were named too): refused up front, the field that differs named
    res = runner.invoke(app, ["evaluate", *base, "--set", "system.N_V=12", "--out",
                              str(tmp_path / "e2")])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "system differs from the model's: N_V 12 (model: 8):" in said
    assert "N_H" not in said and "drop --checkpoint" in said and not (tmp_path / "e2").exists()
    res = runner.invoke(app, ["evaluate", *base, "--set", "system.K_max=2", "--out",
                              str(tmp_path / "e3")])  # a smaller K_max caps K: accepted
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e3" / "metrics.json").read_text())["meta"]["system"][
        "N_H"] == 8


def test_an_snr_beyond_what_float32_noise_can_hold_is_named_by_its_option(tmp_path):
    """--snr-db 400 ended in 'noise_var must be finite and positive', naming neither."""
    for cmd in (["evaluate", "--estimators", "classical"], ["demo"], ["simulate"]):
        res = runner.invoke(app, [*cmd, "--snr-db", "400", "--n", "1", "--out",
                                  str(tmp_path / ("x.h5" if cmd == ["simulate"] else "r"))])
        assert res.exit_code == 2, res.output
        assert "--snr-db must be a finite SNR within +-300 dB (beyond about +-380 dB" in " ".join(
            res.output.split())
    res = runner.invoke(app, ["simulate", "--n", "1", "--out", str(tmp_path / "x.h5"), "--set",
                              "scene.snr_db=[0, 400]"])
    assert res.exit_code == 2 and "snr_db must be a finite SNR within +-300 dB" in " ".join(
        res.output.split())
    assert not list(tmp_path.iterdir())
    # a scene file: --snr-db is not used, so not checked (said to be unused)
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "f.h5"),
                               "--split", "test"]).exit_code == 0
    res = runner.invoke(app, ["evaluate", str(tmp_path / "f.h5"), "--estimators", "classical",
                              "--snr-db", "400", "--no-plots", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0 and "not used for a scene file" in " ".join(res.output.split())


def test_a_sweep_drawn_beyond_the_field_of_view_searched_says_so(tmp_path):
    """A review: --set scene.* drew sources the estimators never search, F1 0, no word."""
    res = runner.invoke(app, ["evaluate", "--set", "scene.range_m=[12, 20]", "--estimators",
                              "music-oracle", "--snr-db", "20", "--K", "1", "--n", "2",
                              "--out", str(tmp_path / "r"), "--no-plots"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "range 12..20 m, beyond the field of view the estimators " \
        "search" in said, said
    res = runner.invoke(app, ["evaluate", "--estimators", "music-oracle", "--snr-db", "20",
                              "--K", "1", "--n", "2", "--out", str(tmp_path / "r2"),
                              "--no-plots"])
    assert res.exit_code == 0 and "beyond the field of view" not in res.output


def test_a_sweep_beyond_a_learned_model_s_own_field_of_view_says_so(capsys):
    """A model trained on a narrower field of view searches only there: scenes drawn beyond
    it (--set scene.*) are named against its box; beyond the default box only the other
    estimators' is named (the learned one searches its own)."""
    from risloc.cli.evaluate import _say_scenes_beyond_the_search
    from risloc.config import FieldOfView

    narrow = FieldOfView(azimuth_deg=(-40.0, 40.0), range_m=(0.3, 3.0))
    _say_scenes_beyond_the_search(FieldOfView(), narrow)
    said = " ".join(capsys.readouterr().err.split())
    assert "beyond the field of view the learned model (its training scenes') searches " \
        "(azimuth -40..40 deg" in said and "other than" not in said, said
    _say_scenes_beyond_the_search(narrow, narrow)
    said = " ".join(capsys.readouterr().err.split())
    assert "the estimators other than 'learned' search (azimuth -60..60" in said, said
    assert "learned model" not in said
    # a learned model searching the default box: one warning, for every estimator; the
    # elevation checked as the others (a second mutation review: both unchecked)
    _say_scenes_beyond_the_search(FieldOfView(elevation_deg=(-50.0, 50.0)), FieldOfView())
    said = " ".join(capsys.readouterr().err.split())
    assert said.count("beyond the field of view the estimators search") == 1, said
    assert "learned" not in said
    # --fov sets the others' box, not the model's: the hint is on theirs alone (a mutation
    # review: either way unchecked)
    _say_scenes_beyond_the_search(FieldOfView(range_m=(0.2, 20.0)), narrow)
    said = capsys.readouterr().err.split("\n")
    assert [("(--fov sets this box)" in line) for line in said if "beyond" in line] == \
        [True, False], said


def test_titles_say_what_ran_and_plots_leave_out_no_scene_silently(tmp_path, monkeypatch):
    """A review: several K gave "8 scenes per SNR" for 16, a fixed K went unsaid, SNR labels
    were cut to 3 digits (10.25 and 10.35 as 10.2 and 10.3), estimates scored as they are
    were titled "K unknown, SNR given", and the plots left the scenes without an SNR out
    without a word (without any SNR: empty axes)."""
    import h5py
    import numpy as np

    from risloc.cli.evaluate import _plot_subtitle, results_table
    from risloc.experiments.harness import ResultRow, SweepSettings

    two_K = _plot_subtitle(SweepSettings(K=(1, 3), n_per_point=8), "simulated", False)
    assert "16 scenes per SNR (8 of each K = 1, 3)" in two_K
    assert "8 scenes per SNR, K = 3," in _plot_subtitle(SweepSettings(K=(3,), n_per_point=8),
                                                       "simulated", False)
    given = _plot_subtitle(SweepSettings(estimators=()), "f.h5", True)
    assert "the estimates given (--estimates), scored as they are" in given
    assert "K unknown" not in given
    rows = [ResultRow("classical", snr, "all", 2, 1.0, {"K_accuracy": 1.0, "f1": 1.0})
            for snr in (10.25, 10.35)]
    table = results_table(rows, "t")
    assert list(table.columns[1].cells) == ["10.25", "10.35"]
    # no scene left out: no note saying "0 scene(s)" are (a mutation review: unchecked)
    assert table.caption is None
    assert "3 scene(s) are left out" in results_table(rows, "t", left=3).caption
    # what the estimators were told, the SNR label of a group without one, and each median
    # beside 0.6745 sqrt(CRB) (a mutation review: each passed)
    assert "K given, SNR withheld" in _plot_subtitle(
        SweepSettings(known_K=True, snr_given=False), "simulated", False)
    assert "K unknown, SNR given" in _plot_subtitle(SweepSettings(), "simulated", False)
    assert ", equal source powers;" in _plot_subtitle(SweepSettings(), "simulated", False)
    assert "source powers spread over 3 dB" in _plot_subtitle(
        SweepSettings(power_spread_db=3.0), "simulated", False)
    bound = ResultRow("classical", math.nan, "all", 2, 1.0,
                      {"azimuth_median_deg": 1.0, "crb_azimuth_median_deg": 2.0})
    table = results_table([bound], "t")
    assert list(table.columns[1].cells) == ["unknown"]
    assert list(table.columns[5].cells) == ["1 (1.35)"]  # 0.6745 x 2
    # each cell from its own column: the paired SE of the difference, the elevation's bound,
    # no time for a true K's row (a mutation review: each of these passed mislabelled)
    m = {"K_accuracy": 0.5, "se_K_accuracy_diff": 0.1, "se_K_accuracy_ratio": 9.0,
         "f1": 0.75, "se_f1_diff": 0.02, "elevation_median_deg": 1.0,
         "crb_azimuth_median_deg": 2.0, "crb_elevation_median_deg": 4.0,
         "reference": "classical"}
    table = results_table([ResultRow("learned", 10.0, K, 2, 5.0, m) for K in ("all", "2")],
                          "t", per_K=True)
    assert [list(table.columns[i].cells) for i in (2, 4, 5, 7, 9)] == [
        ["all", "2"], ["0.5 (±0.1)"] * 2, ["0.75 (±0.02)"] * 2, ["1 (2.7)"] * 2, ["5.0", "-"]]
    # a file without any SNR: the table, no empty plots
    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "4", "--out", str(f), "--K", "1",
                               "--split", "test"]).exit_code == 0
    with h5py.File(f, "a") as h:
        h["snr_db"][:] = np.nan
    res = runner.invoke(app, ["evaluate", str(f), "--out", str(tmp_path / "r"),
                              "--estimators", "classical"])
    assert res.exit_code == 0, res.output
    assert "unknown" in res.output and "PNG plots" not in res.output
    assert not list((tmp_path / "r").glob("*.png"))
    # and says why it drew none (a review: the plots asked for were left out without a word)
    assert "no plots drawn: their x axis is the SNR and no scene evaluated has one" in " ".join(
        res.output.split())
    # nor does its title say the SNR was given (it said "SNR given": there was none)
    title = " ".join(res.output.split())
    assert "no SNR in the file" in title and "SNR given" not in title
    # and its bound is there, at the noise and powers its measurements give at the truth
    # (it was "-": no bound for the files users have most)
    assert "CRB at the noise and powers fitted at the truth" in title
    # and the line naming the bound names that one alone (a review: it began "for equal
    # source powers at each scene's SNR" for a file with none)
    assert "the stochastic CRB of each scene at the noise and source powers" in title
    assert "at each scene's SNR" not in title
    row = _rows(tmp_path / "r" / "metrics.csv")[0]
    assert row["snr_db"] == "nan" and 0 < float(row["crb_azimuth_median_deg"]) < 10
    assert "SNR given where the file has one" in _plot_subtitle(SweepSettings(), "f.h5", True,
                                                                "some")
    # the K-accuracy plot draws no bound: its subtitle names none (a plots review)
    drawn = {}
    monkeypatch.setattr("risloc.experiments.plots.plot_k_accuracy",
                        lambda rows, path, subtitle="": drawn.setdefault("k", subtitle))
    res = runner.invoke(app, ["evaluate", "--n", "2", "--snr-db", "20", "--K", "1",
                              "--estimators", "classical", "--out", str(tmp_path / "k")])
    assert res.exit_code == 0, res.output
    assert drawn["k"].endswith("K unknown, SNR given") and "CRB" not in drawn["k"], drawn
    # a file's scenes without an SNR are named in the plots' subtitles, where they are not
    # drawn (a third mutation review: unchecked)
    monkeypatch.setattr("risloc.experiments.plots.plot_error_vs_snr",
                        lambda rows, path, subtitle="": drawn.setdefault("e", subtitle))
    monkeypatch.setattr("risloc.cli.evaluate._spectrum_example", lambda *a: None)
    with h5py.File(f, "a") as h:
        h["snr_db"][0] = 20.0
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "classical", "--out",
                              str(tmp_path / "some")])
    assert res.exit_code == 0, res.output
    assert drawn["e"].endswith(" (the 3 scenes without an SNR: in the table only)"), drawn


def test_a_model_that_cannot_serve_the_scenes_is_refused_before_any_is_localized(tmp_path):
    """A new user's review: a file (or a --set sweep) of another system, or a --checkpoint
    that is no model, failed only at the learned estimator's first batch, after the bound
    was described and a progress bar drawn."""
    f = tmp_path / "m8.h5"
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(f), "--set",
                               "system.M=8"]).exit_code == 0
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    for args, said in (([str(f)], "the shipped model: the scenes' system differs from the "
                                  "model's: M 8 (model: 16)"),
                       ([str(f), "--checkpoint", str(junk)], "is not a risloc checkpoint"),
                       (["--set", "system.M=8", "--n", "2", "--snr-db", "20"],
                        "the shipped model: the scenes' system differs")):
        res = runner.invoke(app, ["evaluate", *args, "--out", str(tmp_path / "r")])
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and said in text, res.output
        assert "the bound beside" not in text and "learned @" not in text
        assert not (tmp_path / "r").exists()
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "classical", "--no-plots",
                              "--out", str(tmp_path / "c")])  # the others take any system
    assert res.exit_code == 0, res.output


def test_a_left_out_scenes_nan_truth_is_not_named_as_outside_the_field_of_view(tmp_path):
    # an edge-case review: a K one above the sources stored (a NaN where a source should
    # be) leaves its scene out, as `risloc info` and `localize` say; evaluate then warned
    # of "1 true source(s) outside the field of view" (the NaN), where info counted none
    f = tmp_path / "s.npz"
    assert runner.invoke(app, ["simulate", "--n", "4", "--out", str(f), "--snr-db", "15",
                               "--K", "2", "--split", "test"]).exit_code == 0
    data = dict(np.load(f))
    data["K"][1] += 1
    np.savez(tmp_path / "k.npz", **data)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "k.npz"), "--estimators",
                              "music-oracle", "--known-K", "--out", str(tmp_path / "r"),
                              "--no-plots"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "scene 1 left out: truth that cannot be scored (a non-finite true position " \
        "among its K = 3 sources)" in text, text
    assert "lie outside" not in text, text
    assert _rows(tmp_path / "r" / "metrics.csv")[0]["n_scenes"] == "3"
    # estimates in radians are named beside that scene's NaN too (its NaN, taken into the
    # truth's widest angle, hid their hint: F1 0 unsaid; a third mutation review)
    t = np.load(f)
    _estimates_csv(tmp_path / "rad.csv", np.deg2rad(t["azimuth_deg"]),
                   np.deg2rad(t["elevation_deg"]), t["range_m"], t["K"])
    res = runner.invoke(app, ["evaluate", str(tmp_path / "k.npz"), "--estimators", "none",
                              "--estimates", str(tmp_path / "rad.csv"), "--out",
                              str(tmp_path / "re"), "--no-plots"])
    assert res.exit_code == 0 and "rad.csv: the estimated angles" in " ".join(
        res.output.split()), res.output
    # and truth in radians is still named with that scene's NaN beside it (its NaN, taken
    # into the widest true angle, hid the hint)
    data |= {k: np.deg2rad(data[k]) for k in ("azimuth_deg", "elevation_deg")}
    np.savez(tmp_path / "rad.npz", **data)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "rad.npz"), "--estimators",
                              "music-oracle", "--known-K", "--out", str(tmp_path / "r2"),
                              "--no-plots"])
    assert res.exit_code == 0 and "radians stored as degrees?" in " ".join(
        res.output.split()), res.output


def test_a_reader_gone_from_the_pipe_does_not_end_the_run(tmp_path):
    """`risloc evaluate ... 2>&1 | head -1`: the run goes on to write its report, exit code
    0 (rich exited 1 at the first print after head left, before metrics.csv)."""
    import subprocess
    import sys

    out = tmp_path / "r"
    p = subprocess.Popen([sys.executable, "-m", "risloc", "evaluate", "--n", "2", "--snr-db",
                          "10,20", "--estimators", "classical", "--no-plots", "--out",
                          str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    p.stdout.readline()  # the first line, then the reader leaves
    p.stdout.close()
    assert p.wait(timeout=300) == 0
    assert (out / "metrics.csv").exists() and (out / "metrics.json").exists()


def test_fov_option_sets_the_box_the_classical_estimators_search(tmp_path):
    import csv

    f = tmp_path / "near.h5"
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(f), "--snr-db", "20",
                               "--K", "1", "--set", "scene.range_m=[0.15, 0.4]"]).exit_code == 0
    f1 = {}
    for name, fov in (("without", []), ("with", ["--fov", "range_m=0.1,1.0"])):
        res = runner.invoke(app, ["evaluate", str(f), "--estimators", "classical", "--known-K",
                                  "--no-plots", "--out", str(tmp_path / name), *fov])
        assert res.exit_code == 0, res.output
        with open(tmp_path / name / "metrics.csv") as fh:
            f1[name] = next(float(r["f1"]) for r in csv.DictReader(fh) if r["K"] == "all")
        assert ("lie outside the field of view" in res.output) == (not fov), res.output
        assert "not used" not in res.output  # (classical uses --fov; a mutation review)
    assert f1 == {"without": 0.0, "with": 1.0}
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "learned,classical",
                              "--no-plots", "--out", str(tmp_path / "l"), "--fov",
                              "range_m=0.1,1.0"])
    assert res.exit_code == 2 and "trained for" in res.output and \
        "drop 'learned' from --estimators" in res.output, res.output
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "learned", "--no-plots",
                              "--out", str(tmp_path / "l"), "--fov", "range_m=0.1,1.0"])
    # (refused, not first called "not used": the learned model is checked against it)
    assert res.exit_code == 2 and "trained for" in res.output and \
        "not used" not in res.output, res.output
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "classical", "--fov",
                              "elevation=-10,10"])
    assert res.exit_code == 2 and "did you mean elevation_deg" in res.output, res.output


def test_beside_a_learned_model_of_another_box_the_others_search_its_box(tmp_path,
                                                                         monkeypatch):
    """A persona's model trained for sources at 0.15-0.4 m was compared with a classical
    localizer searching the default 0.5-10 m (F1 0.04 against 0.98): without --fov the
    estimators beside 'learned' now search the model's box, and say so; a model of the
    default box leaves them the default one (None)."""
    import torch

    from risloc.cli import evaluate as cli_evaluate
    from risloc.config import FieldOfView
    from risloc.core.params import Estimates
    from risloc.experiments import harness

    near = FieldOfView(range_m=(0.15, 0.4))
    real = cli_evaluate.model_system
    searched = {}

    def recording(name, checkpoint=None, fov=None):
        searched[name] = fov

        def fn(scenes, system, K):
            nan = torch.full((len(scenes.y), 5), float("nan"))
            return Estimates(torch.zeros(len(scenes.y), dtype=torch.int64), nan, nan, nan, nan)
        return fn

    monkeypatch.setattr(harness, "get_estimator", recording)
    args = ["evaluate", "--estimators", "learned,classical", "--n", "1", "--snr-db", "20",
            "--no-plots"]
    for box, want in ((near, near), (FieldOfView(), None)):
        monkeypatch.setattr(cli_evaluate, "model_system", lambda c, with_fov=False, b=box:
                            (real(c), b) if with_fov else real(c))
        searched.clear()
        res = runner.invoke(app, [*args, "--out", str(tmp_path / str(want is None))])
        assert res.exit_code == 0, res.output
        assert searched == {"learned": want, "classical": want}, searched
        said = " ".join(res.output.split())
        assert ("search its model's field of view, azimuth -60..60 deg, elevation -30..30 "
                "deg, range 0.15..0.4 m" in said) == (want is not None), said


def test_the_spectrum_example_is_drawn_in_the_box_searched(tmp_path, monkeypatch):
    """With --fov (or a learned model's own box) the example scene's sources lie in that
    box, MUSIC searches it and the slice spans it (they were the default box's whatever
    was searched)."""
    from risloc.cli.evaluate import _spectrum_example
    from risloc.config import FieldOfView, SystemConfig
    from risloc.experiments.harness import SweepSettings

    box = FieldOfView(azimuth_deg=(0.0, 40.0), elevation_deg=(-10.0, 20.0), range_m=(0.2, 0.6))
    drawn = []
    monkeypatch.setattr("risloc.experiments.plots.plot_spectrum_slice",
                        lambda R, k, system, r0, path, truth, est, title, fov: drawn.append(
                            (r0, truth, est, fov)))
    _spectrum_example(SystemConfig(), SweepSettings(estimators=("classical",), fov=box),
                      tmp_path)
    assert [d[3] for d in drawn] == [box, box]
    r0, truth, est, _ = drawn[0]
    assert 0.2 <= r0 <= 0.6
    assert all(0 <= math.degrees(a) <= 40 for a in truth[0] + est[0])
    assert all(-10 <= math.degrees(e) <= 20 for e in truth[1] + est[1])


def test_the_spectrum_example_is_drawn_in_a_box_too_narrow_for_k_max_sources_apart(
        tmp_path, monkeypatch):
    """--fov of a few degrees (a user's sources in a narrow sector): the example scene's
    K_max positions cannot lie 5 deg apart there; it is still drawn, in the box (the
    evaluation ended in "could not place 5 sources 5.0 deg apart", exit code 2, after all
    its work)."""
    from risloc.cli.evaluate import _spectrum_example
    from risloc.config import FieldOfView, SystemConfig
    from risloc.experiments.harness import SweepSettings

    box = FieldOfView(azimuth_deg=(0.0, 3.0), elevation_deg=(0.0, 3.0))
    drawn = []
    monkeypatch.setattr("risloc.experiments.plots.plot_spectrum_slice",
                        lambda R, k, system, r0, path, truth, est, title, fov: drawn.append(
                            (truth, fov)))
    _spectrum_example(SystemConfig(), SweepSettings(estimators=("classical",), fov=box),
                      tmp_path)
    assert [d[1] for d in drawn] == [box, box]
    assert all(0 <= math.degrees(a) <= 3 for t in drawn[0][0] for a in t)
