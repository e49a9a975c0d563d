import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from risloc.cli.main import app
from risloc.pipeline import read_estimates

runner = CliRunner()


def _raise_at_the_second_chunk(monkeypatch, error: BaseException):
    """Localizer.localize raises ``error`` at its second call (a chunk), the real one runs
    otherwise (a fresh count at each call of this); returns the real method."""
    from risloc.pipeline import Localizer

    real, calls = Localizer.localize, []

    def patched(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return real(self, *a, **k)

    monkeypatch.setattr(Localizer, "localize", patched)
    return real


def test_localize_file_writes_csv_and_metrics(tmp_path):
    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "3", "--out", str(f), "--snr-db", "20",
                               "--K", "1", "--split", "test"]).exit_code == 0
    out = tmp_path / "est.csv"
    res = runner.invoke(app, ["localize", str(f), "--out", str(out), "--K", "1"])
    assert res.exit_code == 0, res.output
    assert "metrics against the files' truth" in res.output
    est = read_estimates(out, 3, 5)
    assert est.K.tolist() == [1, 1, 1]
    # --graphs is for CUDA: on the CPU it says so and changes nothing
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "g.csv"), "--K",
                              "1", "--graphs"])
    assert res.exit_code == 0 and "CUDA only: ignored" in res.output, res.output
    assert read_estimates(tmp_path / "g.csv", 3, 5).azimuth.nan_to_num(9).equal(
        est.azimuth.nan_to_num(9))
    assert "outside the field of view" not in res.output
    # truth in other units (ranges in mm): scored, and said to be where no one searches
    import h5py

    with h5py.File(f, "a") as h:
        h["range_m"][:] = h["range_m"][:] * 1000
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "mm.csv"), "--K",
                              "1", "--batch-size", "2"])  # (counted over the chunks)
    assert res.exit_code == 0, res.output
    assert "3 true source(s) of the scored scenes lie outside the field of view" in \
        " ".join(res.output.split())


def test_a_stop_beyond_the_file_s_end_counts_the_scenes_it_has(tmp_path):
    """--stop past a file's last scene localizes up to its end, and the summary counts the
    scenes there are (a mutation review: --stop uncapped said 'estimates of 10 scenes' for a
    file of 4)."""
    f, out = tmp_path / "s.h5", tmp_path / "e.csv"
    assert runner.invoke(app, ["simulate", "--n", "4", "--out", str(f), "--snr-db", "20",
                               "--K", "1", "--split", "test"]).exit_code == 0
    res = runner.invoke(app, ["localize", str(f), "--out", str(out), "--method", "classical",
                              "--K", "1", "--stop", "10"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert f"estimates of 4 scenes in {out}" in text, text
    assert "of 10" not in text and "(metrics over" not in text, text
    assert read_estimates(out, 4, 5).K.tolist() == [1] * 4
    # a --start at or past its end selects nothing, whatever --stop; --K = K_max is allowed
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "n.csv"), "--method",
                              "classical", "--start", "4", "--stop", "10"])
    assert res.exit_code == 2 and "--start 4 / --stop 10 select no scene range of its 4" in \
        " ".join(res.output.split()), res.output
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "k.csv"), "--method",
                              "classical", "--K", "5", "--stop", "1"])
    assert res.exit_code == 0, res.output


def test_localize_bad_inputs(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"junk")
    res = runner.invoke(app, ["localize", str(tmp_path / "junk.h5")])
    assert res.exit_code == 2 and "not a readable HDF5" in res.output
    res = runner.invoke(app, ["localize", str(tmp_path / "junk.h5"), "--method", "x"])
    assert res.exit_code == 2 and "--method" in res.output
    assert not (tmp_path / "estimates.csv").exists()
    res = runner.invoke(app, ["localize", str(tmp_path / "junk.h5"), "--device", "tpu"])
    assert res.exit_code == 2 and "--device must be cpu or cuda, got 'tpu'" in res.output
    import torch

    if not torch.cuda.is_available():  # says why, not 'must be cpu or cuda ... got cuda'
        res = runner.invoke(app, ["localize", str(tmp_path / "junk.h5"), "--device", "cuda"])
        assert res.exit_code == 2 and "sees no CUDA GPU" in " ".join(res.output.split())


def test_localize_never_replaces_its_input_and_skips_bad_scenes(tmp_path):
    import h5py
    import numpy as np

    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "4", "--out", str(f), "--snr-db", "20",
                               "--K", "1", "--split", "test"]).exit_code == 0
    before = f.read_bytes()
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "." / "s.h5"),
                              "--method", "classical"])
    assert res.exit_code == 2 and "one of the inputs" in res.output
    assert f.read_bytes() == before
    # nor any other file that is not an estimates CSV, given as --out by a slip
    other = tmp_path / "other.h5"
    other.write_bytes(before)
    res = runner.invoke(app, ["localize", str(f), "--out", str(other)])
    assert res.exit_code == 2 and "ending in .csv" in res.output
    notes = tmp_path / "notes.csv"
    notes.write_text("date,what\n2026-12-01,measured\n")
    res = runner.invoke(app, ["localize", str(f), "--out", str(notes)])
    assert res.exit_code == 2 and "is not an estimates CSV" in res.output
    assert other.read_bytes() == before and notes.read_text().startswith("date,what")
    # a run stopped after its rename, before removing its progress record: no trace of it
    # stops the next run (it said 'pass --resume', and --resume found no .part)
    (tmp_path / "est.csv.progress.json").write_text('{"settings": {}, "done": {}}')
    with h5py.File(f, "a") as h:  # one empty scene, one scene x 1e-30 (float32 underflow)
        h["y"][2] = np.zeros_like(h["y"][2])
        h["y"][3] = h["y"][3] * 1e-30
    out = tmp_path / "est.csv"
    res = runner.invoke(app, ["localize", str(f), "--out", str(out), "--method", "classical",
                              "--K", "1", "--checkpoint", "nope.pt"])
    assert res.exit_code == 1, res.output  # done, but a scene could not be localized
    assert "nope.pt is not used by --method classical" in " ".join(res.output.split())
    assert "scene 2 not localized: all-zero measurements" in res.output
    assert "skipped" not in res.output  # (named once, by the CLI: not also logged)
    import logging  # (and the localizer's log is as it was after the run)

    assert logging.getLogger("risloc.pipeline.localizer").level == logging.NOTSET
    assert "1 scene not localized is counted: K = 0" in " ".join(res.output.split())
    assert f"estimates of 3 scenes in {out} (1 not localized, above)" in \
        " ".join(res.output.split())  # the CSV holds rows of 3 of the 4 scenes
    est = read_estimates(out, 4, 5)
    assert est.K.tolist() == [1, 1, 0, 1]  # the tiny scene is localized, not lost


def test_several_files_ranges_and_a_resume_after_a_kill(tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys

    for name, seed in (("a.h5", "1"), ("b.h5", "2")):
        assert runner.invoke(app, ["simulate", "--n", "40", "--out", str(tmp_path / name),
                                   "--snr-db", "15", "--split", "test",
                                   "--seed", seed]).exit_code == 0
    import h5py

    with h5py.File(tmp_path / "a.h5", "a") as f:  # scene 3 cannot be localized
        f["y"][3] = 0
    full = tmp_path / "full.csv"
    res = runner.invoke(app, ["localize", str(tmp_path / "*.h5"), "--out", str(full),
                              "--method", "classical", "--batch-size", "8", "--stop", "24"])
    assert res.exit_code == 1, res.output  # done, one scene named
    assert "a.h5:3 not localized: all-zero measurements" in " ".join(res.output.split())
    lines = full.read_text().splitlines()
    assert lines[0] == "scene,source,azimuth_deg,elevation_deg,range_m,score,file"
    scenes = {(int(r.split(",")[6]), int(r.split(",")[0])) for r in lines[1:]}
    assert max(s for _, s in scenes) == 23 and {f for f, _ in scenes} == {0, 1}
    # kill a run after some chunks, then resume: the result equals the uninterrupted one
    part = tmp_path / "res.csv"
    cmd = [sys.executable, "-m", "risloc", "localize", str(tmp_path / "*.h5"), "--out",
           str(part), "--method", "classical", "--batch-size", "8", "--stop", "24"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    record = tmp_path / "res.csv.progress.json"
    _wait_for_a_chunk(p, record)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not part.exists() and (tmp_path / "res.csv.part").exists()
    res = runner.invoke(app, ["localize", str(tmp_path / "*.h5"), "--out", str(part),
                              "--method", "classical", "--batch-size", "8", "--stop", "24"])
    assert res.exit_code == 2 and "--resume" in res.output  # earlier work is not thrown away
    res = runner.invoke(app, ["localize", str(tmp_path / "*.h5"), "--out", str(part),
                              "--method", "classical", "--batch-size", "8", "--stop", "24",
                              "--resume"])
    # the scene that failed before the kill is still named (the progress record keeps it)
    assert res.exit_code == 1, res.output
    assert "a.h5:3 not localized: all-zero measurements" in " ".join(res.output.split())
    assert "no metrics after a resume" in res.output
    assert "risloc evaluate" not in res.output  # (it would score one of the CSV's files)
    assert part.read_text() == full.read_text()
    assert not (tmp_path / "res.csv.part").exists() and not record.exists()
    # a resume into a run whose input was written anew meanwhile is refused
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    _wait_for_a_chunk(p, record)
    p.send_signal(signal.SIGKILL)
    p.wait()
    os.utime(tmp_path / "b.h5")  # rewritten (its modification time moves)
    res = runner.invoke(app, ["localize", str(tmp_path / "*.h5"), "--out", str(part),
                              "--method", "classical", "--batch-size", "8", "--stop", "24",
                              "--resume"])
    assert res.exit_code == 2 and "an input file was written anew since" in \
        " ".join(res.output.split()), res.output
    assert "To start afresh, discarding the earlier run's scenes, pass --restart" in \
        " ".join(res.output.split())  # the way out (a review: files to delete by hand)
    again = ["localize", str(tmp_path / "*.h5"), "--out", str(part), "--method", "classical",
             "--batch-size", "8", "--stop", "24", "--restart"]
    res = runner.invoke(app, [*again, "--resume"])
    assert res.exit_code == 2 and "give one" in res.output
    assert (tmp_path / "res.csv.part").exists()  # (refused before anything was touched)
    res = runner.invoke(app, again)
    assert res.exit_code == 1 and "interrupted run's rows of" in res.output, res.output
    assert part.read_text() == full.read_text() and not record.exists()
    # one file named twice (relative and absolute, by a pattern too) is localized once
    from risloc.cli.localize import expand_inputs

    monkeypatch.chdir(tmp_path)
    assert expand_inputs(["a.h5", str(tmp_path / "a.h5"), "./*.h5"]) == [Path("a.h5"),
                                                                         Path("b.h5")]
    (tmp_path / "a[1].h5").symlink_to(tmp_path / "a.h5")  # a name that is also a pattern:
    (tmp_path / "a1.h5").symlink_to(tmp_path / "b.h5")  # the file of that name (a review)
    assert expand_inputs(["a[1].h5"]) == [Path("a[1].h5")]
    for link in ("a[1].h5", "a1.h5"):
        (tmp_path / link).unlink()
    res = runner.invoke(app, ["localize", str(tmp_path / "none*.h5")])
    assert res.exit_code == 2 and "no scene file matches" in res.output
    res = runner.invoke(app, ["localize", str(tmp_path / "none.h5")])  # a plain path
    assert res.exit_code == 2 and "none.h5: no such file" in res.output


def test_no_bf16_ranks_the_shortlist_in_complex64(tmp_path, monkeypatch):
    import risloc.estimators.mlfit as mlfit

    seen = []
    real = mlfit.search_grid
    monkeypatch.setattr(mlfit, "search_grid",
                        lambda *a, **k: seen.append(a[4]) or real(*a, **k))
    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(f), "--snr-db", "10",
                               "--split", "test"]).exit_code == 0
    for flag, want in (("--no-bf16", False), ("--bf16", True)):
        seen.clear()
        res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / f"{want}.csv"),
                                  flag])
        assert res.exit_code == 0, res.output
        assert seen and set(seen) == {want}


def test_localize_metrics_name_scenes_without_an_snr_unknown(tmp_path):
    import h5py
    import numpy as np

    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "4", "--out", str(f), "--snr-db", "20",
                               "--K", "1", "--split", "test"]).exit_code == 0
    with h5py.File(f, "a") as h:
        h["snr_db"][:2] = np.nan
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "e.csv"),
                              "--method", "classical"])
    assert res.exit_code == 0, res.output
    table = res.output[res.output.index("metrics against"):]
    lines = {line.split()[1]: line.split()[3] for line in table.splitlines()
             if line.startswith("│")}  # SNR label -> scenes
    assert lines == {"20": "2", "unknown": "2", "all": "4"}, table


def test_localize_names_the_way_out_for_a_system_the_model_was_not_trained_for(tmp_path):
    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(f), "--K", "1",
                               "--set", "system.N_H=8", "--split", "test"]).exit_code == 0
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "e.csv")])
    assert res.exit_code == 2, res.output
    msg = " ".join(res.output.split())
    assert "N_H 8 (model: 12)" in msg and "--method classical" in msg
    assert "a model for this one: risloc train --set system.N_H=8)" in msg  # its system's
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "e.csv"),
                              "--method", "classical"])
    assert res.exit_code == 0, res.output


def test_unusable_truth_ranges_and_files_of_other_k_max(tmp_path):
    import h5py
    import numpy as np

    f, g = tmp_path / "f.h5", tmp_path / "g.h5"
    assert runner.invoke(app, ["simulate", "--n", "6", "--out", str(f), "--snr-db", "20",
                               "--K", "2", "--split", "test"]).exit_code == 0
    assert runner.invoke(app, ["simulate", "--n", "4", "--out", str(g), "--snr-db", "20",
                               "--K", "1", "--set", "system.K_max=2", "--split",
                               "test"]).exit_code == 0
    with h5py.File(f, "a") as h:  # NaN where a true source should be: no score, still a file
        az = h["azimuth_deg"][:]
        az[4, 1] = np.nan
        h["azimuth_deg"][:] = az
    out = tmp_path / "e.csv"
    res = runner.invoke(app, ["localize", str(f), "--out", str(out), "--method", "classical"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "the truth of 1 scene(s) cannot be scored (scene 4: a non-finite true position" in text
    assert "they are localized and left out of the metrics" in text
    assert read_estimates(out, 6, 5).K.tolist() == [2] * 6
    # the other five are scored (as `risloc evaluate` does): a row of 5 scenes at 20 dB
    assert "metrics against" in text and "(metrics over the 5 of 6 scenes" in text
    assert re.search(r"20\s*│\s*5\s*│\s*1\.000\s*│\s*1\.000", res.output), res.output
    # only that scene chosen: no metrics (not a table without rows)
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "e4.csv"), "--method",
                              "classical", "--start", "4", "--stop", "5"])
    assert res.exit_code == 0, res.output
    assert "metrics against" not in res.output and "(no metrics: no scene localized has " \
        "truth that can be scored)" in " ".join(res.output.split())
    # refused runs leave no folder behind: a name not ending in .csv, a file not readable
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "n1" / "s" / "e.txt")])
    assert res.exit_code == 2 and ".csv" in res.output
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    res = runner.invoke(app, ["localize", str(tmp_path / "bad.h5"), "--out",
                              str(tmp_path / "n2" / "e.csv")])
    assert res.exit_code == 2 and "not a readable HDF5 file" in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "bad.h5"), "--out",
                              str(tmp_path / "n3" / "report")])
    assert res.exit_code == 2 and "not a readable HDF5 file" in res.output
    assert not any((tmp_path / n).exists() for n in ("n1", "n2", "n3"))
    (tmp_path / "bad.h5").unlink()
    # a range past the file: an error before anything is written (no run to resume)
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "r.csv"),
                              "--start", "9"])
    assert res.exit_code == 2 and "--start 9 selects no scene range of its 6 scenes" in \
        res.output  # (not "--stop None")
    assert list(tmp_path.glob("r.csv*")) == []
    # files of another K_max: each file's scenes capped by its own, metrics over both
    res = runner.invoke(app, ["localize", str(f), str(g), "--out", str(tmp_path / "fg.csv"),
                              "--method", "classical"])
    assert res.exit_code == 0, res.output
    rows = [r.split(",") for r in (tmp_path / "fg.csv").read_text().splitlines()[1:]]
    per_scene = {}
    for r in rows:
        per_scene[(r[6], r[0])] = per_scene.get((r[6], r[0]), 0) + 1
    assert max(n for (file, _), n in per_scene.items() if file == "1") <= 2
    assert "(metrics over the 9 of 10 scenes with truth that can be scored)" in " ".join(
        res.output.split())
    assert f"the `file` column of the estimates: 0 = {f}, 1 = {g}" in " ".join(
        res.output.split())
    # a file of another system: its own run, whatever the method (a user's review: the rule
    # was not said)
    h = tmp_path / "m8.npz"
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(h), "--set",
                               "system.M=8", "--split", "test"]).exit_code == 0
    res = runner.invoke(app, ["localize", str(f), str(h), "--out", str(tmp_path / "fh.csv"),
                              "--method", "classical"])
    assert res.exit_code == 2 and "the files of one run share a system (K_max aside), " \
        "whatever the method" in " ".join(res.output.split()), res.output
    with pytest.raises(ValueError, match="estimates of 2 input files"):
        read_estimates(tmp_path / "fg.csv", 6, 5)  # scenes of both files would mix
    assert read_estimates(tmp_path / "fg.csv", 4, 5, file=1).K.tolist() == [1, 1, 1, 1]
    assert read_estimates(tmp_path / "fg.csv", 6, 5, file=0).K.tolist() == [2] * 6
    with pytest.raises(ValueError, match="scene 4, source 0; expected scenes 0..3 "):
        read_estimates(tmp_path / "fg.csv", 4, 5, file=0)
    # a scene not localized among the scored ones is counted in the metrics (and said so),
    # one whose truth cannot be scored is not
    for path, scene in ((f, 4), (g, 1)):
        with h5py.File(path, "a") as h:
            h["y"][scene] = 0
    res = runner.invoke(app, ["localize", str(f), str(g), "--out", str(tmp_path / "z.csv"),
                              "--method", "classical", "--batch-size", "3"])  # (f's 4: at 3)
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "f.h5:4 not localized" in text and "g.h5:1 not localized" in text
    assert "1 scene not localized is counted: K = 0, its sources missed" in text


def test_an_interrupted_run_says_how_to_go_on_and_a_resume_of_nothing_says_so(tmp_path,
                                                                               monkeypatch):
    from risloc.pipeline import Localizer

    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "24", "--out", str(f)]).exit_code == 0
    out = tmp_path / "e.csv"
    args = ["localize", str(f), "--out", str(out), "--method", "classical", "--batch-size",
            "8", "--stop", "24"]  # (all 24: the range the hint below repeats)
    real = _raise_at_the_second_chunk(monkeypatch, KeyboardInterrupt())
    res = runner.invoke(app, args)
    assert res.exit_code == 130 and "no interrupted run" not in res.output  # (not resumed)
    assert "interrupted: the scenes localized so far are kept" in " ".join(res.output.split())
    # (not also the other commands' 'none is half-written': this one keeps a .part; a
    # mutation review)
    assert "half-written" not in res.output, res.output
    monkeypatch.setattr(Localizer, "localize", real)
    # a resume with another scene range or K is refused: its rows would not continue the
    # run's (a mutation review: either left out of the run's settings passed)
    for other, says in ((["--start", "8"], "another --start"), (["--K", "2"], "another --K")):
        res = runner.invoke(app, [*args, "--resume", *other])
        assert res.exit_code == 2 and says in " ".join(res.output.split()), res.output
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0 and "no interrupted run" not in res.output, res.output
    assert read_estimates(out, 24, 5).K.gt(0).all()
    # the summary counts the CSV's scenes, those of the run it resumed too (16 new here)
    assert "16 scenes in" in res.output and f"estimates of 24 scenes in {out}" in \
        " ".join(res.output.split()), res.output
    # no metrics, but the command that scores the whole CSV (one file with truth; docs)
    assert f"`risloc evaluate {f} --stop 24 --estimators none --estimates {out}` scores them " \
        "all" in \
        " ".join(res.output.split()), res.output
    res = runner.invoke(app, [*args, "--resume"])  # finished: nothing to continue
    assert res.exit_code == 0 and "no interrupted run of" in " ".join(res.output.split())
    # interrupted again over that complete CSV: it is named as the earlier run's
    _raise_at_the_second_chunk(monkeypatch, KeyboardInterrupt())
    res = runner.invoke(app, args)
    assert res.exit_code == 130, res.output
    assert f"({out} there now is an earlier run's, replaced when this one completes)" in \
        " ".join(res.output.split())


def test_the_printed_evaluate_command_copies_into_a_shell_with_awkward_names(tmp_path,
                                                                             monkeypatch):
    """A folder of spaces, a quote and non-ASCII letters, a scene file whose name begins
    with '-': the command printed after a resume, split as a shell splits it, names the
    same files (not 'No such option: -x', not a path cut at its spaces)."""
    import shlex

    from risloc.pipeline import Localizer

    where = tmp_path / "my d'ir é中"
    where.mkdir()
    monkeypatch.chdir(where)
    assert runner.invoke(app, ["simulate", "--n", "16", "--out", "./-x.h5", "--set",
                               "system.M=8", "--set", "system.L=8"]).exit_code == 0
    args = ["localize", "./-x.h5", "--out", "o 'é'.csv", "--method", "classical",
            "--batch-size", "8"]
    real = _raise_at_the_second_chunk(monkeypatch, KeyboardInterrupt())
    assert runner.invoke(app, args).exit_code == 130
    monkeypatch.setattr(Localizer, "localize", real)
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    cmd = re.search(r"`(risloc evaluate [^`]*)`", " ".join(res.output.split()))
    assert cmd, res.output
    words = shlex.split(cmd.group(1))
    assert words == ["risloc", "evaluate", "./-x.h5", "--estimators", "none", "--estimates",
                     "o 'é'.csv"], words
    res = runner.invoke(app, words[1:])  # and it runs: the whole CSV scored
    assert res.exit_code == 0, res.output


def test_truth_without_K_is_scored_and_K_without_positions_is_named(tmp_path):
    """docs/conventions.md lists K and the true positions as separate optional datasets."""
    import h5py

    f = tmp_path / "f.h5"
    assert runner.invoke(app, ["simulate", "--n", "4", "--out", str(f), "--snr-db", "25",
                               "--K", "2", "--split", "test"]).exit_code == 0
    with h5py.File(f, "a") as h:
        del h["K"]  # positions only: K follows from their NaN padding
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "a.csv"),
                              "--method", "classical"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "metrics against" in text and "K is counted by the NaN padding" in text
    with h5py.File(f, "a") as h:
        for name in ("azimuth_deg", "elevation_deg", "range_m"):
            del h[name]
        h["K"] = [2, 2, 2, 2]  # a count without positions: localized, not scored, and said
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "b.csv"),
                              "--method", "classical"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "'K' without true positions (azimuth_deg, elevation_deg, range_m) is not used" in text
    assert "metrics against" not in text and read_estimates(tmp_path / "b.csv", 4, 5).K.tolist() \
        == [2] * 4
    res = runner.invoke(app, ["info", str(f)])
    assert res.exit_code == 0 and "'K' without true positions" in " ".join(res.output.split())
    res = runner.invoke(app, ["evaluate", str(f), "--estimators", "classical", "--known-K",
                              "--out", str(tmp_path / "ev")])
    assert res.exit_code == 2 and "--known-K needs a scene file with the truth: true " \
        "positions" in " ".join(res.output.split())


def test_true_angles_in_radians_are_suspected(tmp_path):
    import h5py
    import numpy as np

    f = tmp_path / "f.h5"
    assert runner.invoke(app, ["simulate", "--n", "12", "--out", str(f), "--snr-db", "25",
                               "--K", "2", "--split", "test"]).exit_code == 0
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "a.csv"),
                              "--method", "classical"])
    assert res.exit_code == 0 and "radians stored as degrees" not in res.output
    with h5py.File(f, "a") as h:  # the truth in radians under the *_deg names
        for name in ("azimuth_deg", "elevation_deg"):
            h[name][:] = np.deg2rad(h[name][:])
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "b.csv"),
                              "--method", "classical"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "true angles of all 24 sources lie within" in text
    assert "radians stored as degrees?" in text
    widest = re.search(r"within \+-(\S+) deg", text).group(1)  # over all the chunks:
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "c.csv"),
                              "--method", "classical", "--batch-size", "11"])
    assert f"all 24 sources lie within +-{widest} deg" in " ".join(res.output.split())
    res = runner.invoke(app, ["info", str(f)])
    assert "radians stored as degrees?" in " ".join(res.output.split())
    first3 = tmp_path / "first3.npz"  # 6 sources are enough (a user's review: 13 said nothing)
    with h5py.File(f) as h:
        np.savez(first3, **{k: h[k][:3] for k in h}, system=np.array(h.attrs["system"]))
    res = runner.invoke(app, ["info", str(first3)])
    assert "true angles of all 6 sources lie within" in " ".join(res.output.split())
    narrow = tmp_path / "narrow.h5"  # simulated that close to boresight: no hint (a review)
    res = runner.invoke(app, ["simulate", "--n", "3", "--out", str(narrow), "--split", "test",
                              "--set", "scene.azimuth_deg=[-1.5, 1.5]", "--set",
                              "scene.elevation_deg=[-1.5, 1.5]", "--set",
                              "scene.min_separation_deg=0.5"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["info", str(narrow)])
    assert res.exit_code == 0 and "radians stored as" not in " ".join(res.output.split())
    res = runner.invoke(app, ["localize", str(narrow), "--out", str(tmp_path / "n.csv"),
                              "--method", "classical"])  # (its attrs read: a mutation review)
    assert res.exit_code == 0 and "metrics against" in res.output, res.output
    assert "radians stored as" not in " ".join(res.output.split())
    with h5py.File(f, "a") as h:  # degrees, every source within 0.2 deg of boresight
        for name in ("azimuth_deg", "elevation_deg"):
            h[name][:] = h[name][:] / 5
    res = runner.invoke(app, ["info", str(f)])
    assert "radians stored as degrees?" not in " ".join(res.output.split())


def test_a_full_disk_part_way_keeps_the_finished_chunks_and_a_resume_continues(tmp_path,
                                                                             monkeypatch):
    """An OSError part-way (a full disk, a file gone): the finished chunks stay, the .part
    file's lock is released, and --resume in the same process continues (a mutation review:
    the lock left held refused it as another run's)."""
    from risloc.pipeline import Localizer

    f, out = tmp_path / "s.h5", tmp_path / "e.csv"
    assert runner.invoke(app, ["simulate", "--n", "8", "--out", str(f), "--K", "1",
                               "--split", "test"]).exit_code == 0
    args = ["localize", str(f), "--out", str(out), "--method", "classical", "--batch-size",
            "4"]
    real = _raise_at_the_second_chunk(monkeypatch, OSError(28, "No space left on device"))
    failed = runner.invoke(app, args)  # (kept: its traceback holds the command's frame)
    text = " ".join(failed.output.split())
    assert failed.exit_code == 2 and "No space left on device (while localizing into" in text
    assert "the same command with --resume continues" in text and not out.exists()
    monkeypatch.setattr(Localizer, "localize", real)
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert read_estimates(out, 8, 5).K.tolist() == [1] * 8


def test_scenes_unreadable_part_way_keep_the_finished_chunks_and_say_how_to_go_on(tmp_path):
    """A damaged compressed chunk in the middle of a file: the error names the scenes, the
    chunks before it stay for --resume, and the message says what --resume can and cannot
    do (a repaired file is another input)."""
    import h5py

    f, out = tmp_path / "s.h5", tmp_path / "e.csv"
    assert runner.invoke(app, ["simulate", "--n", "12", "--out", str(f), "--split",
                               "test"]).exit_code == 0
    with h5py.File(f, "a") as h:
        y = h["y"][:]
        del h["y"]
        h.create_dataset("y", data=y, chunks=(4, *y.shape[1:]), compression="gzip")
    with h5py.File(f, "r") as h:
        at = h["y"].id.get_chunk_info(2).byte_offset  # scenes 8..11
    with open(f, "r+b") as fh:
        fh.seek(at + 10)
        fh.write(b"\0" * 64)
    res = runner.invoke(app, ["localize", str(f), "--out", str(out), "--method", "classical",
                              "--batch-size", "4"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "read failed at scenes 8..12" in text, res.output
    assert "the scenes localized before it are kept" in text and "--resume" in text
    assert not out.exists()
    rows = (tmp_path / "e.csv.part").read_text().splitlines()[1:]
    assert {int(r.split(",")[0]) for r in rows} == set(range(8))
    # the .part file's lock is released (a mutation review: left held, a run in the same
    # process was refused as another run's)
    again = runner.invoke(app, ["localize", str(f), "--out", str(out), "--method", "classical",
                                "--batch-size", "4", "--stop", "8", "--restart"])
    assert again.exit_code == 0 and res.exit_code == 2, again.output


def _wait_for_a_chunk(p, record: Path) -> None:
    """Wait until the run ``p`` has recorded a finished chunk, and check it still runs (a
    poll waiting for one exact count missed it on a busy CI machine, and the signal came
    after the run's end)."""
    import json
    import time

    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not (
            record.exists() and any(json.loads(record.read_text())["done"].values())):
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before the signal was sent"


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_ends_the_command_with_130_and_its_message(tmp_path, signame):
    """A real SIGINT (Ctrl-C) or SIGTERM (kill, a batch system's preemption: before, exit
    143 and not a word) to `python -m risloc localize`: exit code 130, the resume hint, the
    finished chunks kept. The process ends without the interpreter's teardown, where
    torch's thread pools aborted it about 1 time in 6 (exit 134, 'terminate called without
    an active exception'; cli/entry.py)."""
    import signal
    import subprocess
    import sys

    f = tmp_path / "s.h5"
    # 512 scenes in chunks of 8: the signal comes after the first chunk, many chunks before
    # the end (the CI once saw 64 scenes end before a poll of the record caught '"0": 8')
    assert runner.invoke(app, ["simulate", "--n", "512", "--out", str(f), "--snr-db", "20",
                               "--split", "test"]).exit_code == 0
    out = tmp_path / "e.csv"
    # the child as a terminal's: a SIGINT ignored here (a job a script starts with &) would
    # pass to it, where Python then installs no Ctrl-C handler (the test lost
    # a SIGINT once under load: one possible cause, ruled out here)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        p = subprocess.Popen([sys.executable, "-m", "risloc", "localize", str(f), "--out",
                              str(out), "--method", "classical", "--batch-size", "8"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, before)
    record = tmp_path / "e.csv.progress.json"
    _wait_for_a_chunk(p, record)
    p.send_signal(getattr(signal, signame))
    said, _ = p.communicate(timeout=120)
    assert p.returncode == 130, said[-2000:]
    assert "interrupted: the scenes localized so far are kept" in " ".join(said.split())
    assert (tmp_path / "e.csv.part").exists() and not out.exists()


def test_the_entry_point_ends_an_interrupted_command_at_once(monkeypatch, capsys, request):
    import signal

    from risloc.cli import entry, main

    saved = signal.getsignal(signal.SIGTERM)  # entry.main installs its own: put pytest's back
    request.addfinalizer(lambda: signal.signal(signal.SIGTERM, saved))
    ended = []

    class Ended(Exception):
        pass

    def exit_at_once(code):  # (os._exit does not return)
        ended.append(code)
        raise Ended

    monkeypatch.setattr(entry.os, "_exit", exit_at_once)

    def interrupted(**kwargs):
        print("interrupted: kept")
        raise SystemExit(130)

    monkeypatch.setattr(main, "app", interrupted)
    with pytest.raises(Ended):
        entry.main()
    assert ended == [130] and "interrupted: kept" in capsys.readouterr().out

    def failed(**kwargs):
        raise SystemExit(2)

    monkeypatch.setattr(main, "app", failed)
    with pytest.raises(SystemExit) as done:  # any other end: as it was
        entry.main()
    assert done.value.code == 2 and ended == [130]

    # SIGTERM is taken as Ctrl-C while the command's modules import (a second and more; a
    # review: a SIGTERM then ended the command without a word, exit code 143)
    import types

    handler_then = []

    def importing(name):  # `from risloc.cli.main import app` reading the module
        if name != "app" or handler_then:
            raise AttributeError(name)
        handler_then.append(signal.getsignal(signal.SIGTERM))
        raise KeyboardInterrupt  # (what the handler raises)

    still_importing = types.ModuleType("risloc.cli.main")
    still_importing.__getattr__ = importing
    signal.signal(signal.SIGTERM, saved)
    monkeypatch.setitem(__import__("sys").modules, "risloc.cli.main", still_importing)
    with pytest.raises(SystemExit) as done:
        entry.main()
    assert done.value.code == 130 and "interrupted" in capsys.readouterr().err
    assert handler_then == [entry._interrupt]


def test_the_snr_of_a_file_can_be_withheld(tmp_path, monkeypatch):
    """--snr-withheld localizes a file as if it carried no SNR (users' files rarely do); a
    resume with the other choice is refused (a review: localize always passed it)."""
    from risloc.pipeline import Localizer

    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "8", "--out", str(f), "--snr-db", "10",
                               "--split", "test"]).exit_code == 0
    real, told = Localizer.localize, []

    def spy(self, y, H, codes, snr_db=None, *a, **k):
        told.append(snr_db)
        return real(self, y, H, codes, snr_db, *a, **k)

    monkeypatch.setattr(Localizer, "localize", spy)
    base = ["localize", str(f), "--method", "classical", "--batch-size", "4"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "given.csv")])
    assert res.exit_code == 0 and all(float(s.min()) == 10.0 for s in told), res.output
    told.clear()
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "w.csv"), "--snr-withheld"])
    assert res.exit_code == 0 and told == [None, None], res.output
    (tmp_path / "w.csv").unlink()

    def ctrl_c(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Localizer, "localize", ctrl_c)
    assert runner.invoke(app, [*base, "--out", str(tmp_path / "w.csv"),
                               "--snr-withheld"]).exit_code == 130
    monkeypatch.setattr(Localizer, "localize", real)
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "w.csv"), "--resume"])
    assert res.exit_code == 2 and "another --snr-given/--snr-withheld" in res.output
    # another method: named alone, not with the learned method's own settings (a review:
    # "another --bf16/--no-bf16", which the user never changed)
    learned = ["localize", str(f), "--method", "learned", "--batch-size", "4", "--out",
               str(tmp_path / "w.csv"), "--snr-withheld", "--resume"]
    res = runner.invoke(app, learned)
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "other settings: another --method." in text, text


def test_the_default_batch_size_is_256_scenes_on_the_cpu(tmp_path, monkeypatch):
    """Without --batch-size the CPU reads and localizes 256 scenes at a time, as --help says
    (a mutation review: CUDA's 8192 on the CPU went unnoticed)."""
    from risloc.cli import localize

    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(f), "--K", "1",
                               "--split", "test"]).exit_code == 0
    real, sizes = localize.iter_scene_chunks, []

    def spy(path, lo, hi, batch_size, **kw):
        sizes.append(batch_size)
        return real(path, lo, hi, batch_size, **kw)

    monkeypatch.setattr(localize, "iter_scene_chunks", spy)
    res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / "e.csv"),
                              "--method", "classical", "--K", "1"])
    assert res.exit_code == 0 and sizes == [256], (sizes, res.output)


def test_files_of_other_k_max_bound_k_by_the_smallest_and_localize_by_their_own(tmp_path):
    """--K is bounded by the smallest K_max of the files (each file's scenes are capped by
    theirs), and a file of a larger K_max after one of a smaller is localized up to its own
    (a mutation review: neither was tested with the smaller file first)."""
    import h5py

    f, g = tmp_path / "f.h5", tmp_path / "g.h5"
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(f), "--snr-db", "30",
                               "--K", "3", "--split", "test"]).exit_code == 0
    assert runner.invoke(app, ["simulate", "--n", "1", "--out", str(g), "--snr-db", "30",
                               "--K", "1", "--set", "system.K_max=2", "--split",
                               "test"]).exit_code == 0
    res = runner.invoke(app, ["localize", str(f), str(g), "--out", str(tmp_path / "k.csv"),
                              "--method", "classical", "--K", "3"])
    assert res.exit_code == 2 and "--K must lie in 1..K_max=2, got 3" in res.output, res.output
    res = runner.invoke(app, ["localize", str(g), "--out", str(tmp_path / "k.csv"), "--K", "0"])
    assert res.exit_code == 2 and "--K must lie in 1..K_max=2, got 0" in res.output, res.output
    res = runner.invoke(app, ["localize", str(g), "--out", str(tmp_path / "k.csv"), "--start", "2"])
    assert res.exit_code == 2 and "--start 2 selects no scene range of its 1 scenes" in \
        res.output, res.output  # (one past the end: nothing to localize)
    # --start at the file's end, or --stop at --start: no scene either (a mutation review:
    # an empty CSV, '0 scenes' and exit code 0, as if done)
    for span in (["--start", "1"], ["--start", "0", "--stop", "0"]):
        res = runner.invoke(app, ["localize", str(g), "--out", str(tmp_path / "k.csv"), *span])
        assert res.exit_code == 2 and "no scene range of its 1 scenes" in res.output, res.output
    res = runner.invoke(app, ["localize", str(g), "--out", str(tmp_path / "k.csv"), "--start",
                              "1", "--stop", "0"])
    assert res.exit_code == 2 and "--start 1 / --stop 0 select no scene range of its 1 " \
        "scenes" in res.output, res.output
    assert list(tmp_path.glob("k.csv*")) == []
    # g's snr_db over-states its SNR by 30 dB: the classical K runs to the largest it may,
    # which for g's scenes is g's K_max of 2, not the run's 5 (a mutation review: the
    # localizer's system passed for every file's scenes capped them at 5)
    with h5py.File(g, "a") as h:
        h["snr_db"][:] = 60.0
    out = tmp_path / "gf.csv"
    res = runner.invoke(app, ["localize", str(g), str(f), "--out", str(out),
                              "--method", "classical"])
    assert res.exit_code == 0, res.output
    assert read_estimates(out, 2, 5, file=1).K.tolist() == [3, 3], res.output
    assert read_estimates(out, 1, 2, file=0).K.tolist() == [2], res.output


def test_a_resume_with_another_k_is_refused(tmp_path, monkeypatch):
    """--K is one of the settings a resume must keep (a mutation review: dropped from the
    run's record, a resume with another --K mixed estimates of two K)."""
    from risloc.pipeline import Localizer

    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(f), "--K", "1",
                               "--split", "test"]).exit_code == 0

    def ctrl_c(self, *a, **k):
        raise KeyboardInterrupt

    base = ["localize", str(f), "--method", "classical", "--out", str(tmp_path / "e.csv")]
    monkeypatch.setattr(Localizer, "localize", ctrl_c)
    assert runner.invoke(app, [*base, "--K", "1"]).exit_code == 130
    monkeypatch.undo()
    res = runner.invoke(app, [*base, "--K", "2", "--resume"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "other settings: another --K" in text, text
    # and --checkpoint (another model's rows would mix with the shipped one's)
    import shutil

    from risloc.pipeline.learned import DEFAULT_MODEL

    for ext in (".pt", ".json"):
        shutil.copy(DEFAULT_MODEL.with_suffix(ext), (tmp_path / "other").with_suffix(ext))
    learned = ["localize", str(f), "--method", "learned", "--out", str(tmp_path / "l.csv")]
    monkeypatch.setattr(Localizer, "localize", ctrl_c)
    assert runner.invoke(app, learned).exit_code == 130
    monkeypatch.undo()
    res = runner.invoke(app, [*learned, "--checkpoint", str(tmp_path / "other.pt"), "--resume"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "other settings: another --checkpoint" in text, text


def test_a_file_of_no_scenes_is_named_not_localized_as_a_success(tmp_path):
    import h5py

    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(f), "--snr-db", "20",
                               "--set", "system.N_H=4", "--set", "system.N_V=4"]).exit_code == 0
    empty = tmp_path / "empty.h5"
    with h5py.File(f) as src, h5py.File(empty, "w") as dst:
        for name in src:
            dst[name] = src[name][:0]
        dst.attrs["system"] = src.attrs["system"]
    out = tmp_path / "e.csv"
    res = runner.invoke(app, ["localize", str(empty), "--out", str(out), "--method", "classical"])
    assert res.exit_code != 0 and "holds no scenes" in res.output, res.output
    assert not out.exists()
    res = runner.invoke(app, ["localize", str(tmp_path / "*.h5"), "--out", str(out),
                              "--method", "classical", "--K", "1"])
    assert res.exit_code == 0, res.output
    assert "empty.h5: the file holds no scenes" in " ".join(res.output.split()), res.output


def test_small_files_are_localized_together_as_one_file_of_their_scenes(tmp_path,
                                                                           monkeypatch):
    """A many-files review: a Localizer call costs about as much for 2 scenes as for a
    batch, and localize made one per file (200 files of 2 scenes: 15 times as long as one
    file of 400). Consecutive files of one system now go in one call of up to --batch-size
    scenes, with the estimates of one file of their scenes; another system starts a call."""
    import json

    import h5py
    import torch

    from risloc.pipeline import Localizer

    whole = tmp_path / "whole.h5"
    assert runner.invoke(app, ["simulate", "--n", "6", "--out", str(whole), "--snr-db", "15",
                               "--K", "1", "--split", "test"]).exit_code == 0
    with h5py.File(whole) as f:
        data, attrs = {k: f[k][()] for k in f}, dict(f.attrs)
    parts = tmp_path / "parts"
    parts.mkdir()
    for name, lo, hi in (("a", 0, 1), ("b", 1, 3), ("c", 3, 4), ("d", 4, 6)):
        with h5py.File(parts / f"{name}.h5", "w") as f:
            for k, v in data.items():
                if not (name == "b" and k == "snr_db"):  # (a file without an SNR among them)
                    f[k] = v[lo:hi]
            f.attrs.update(attrs)
    real, sizes, given = Localizer.localize, [], []

    def counted(self, y, *a, **k):
        sizes.append(len(y))
        given.append((*a[2:4], k["system"].K_max))  # (the SNRs, K and system)
        return real(self, y, *a, **k)

    monkeypatch.setattr(Localizer, "localize", counted)
    for args in ([str(whole), "--out", str(tmp_path / "whole.csv")],
                 [str(parts / "*.h5"), "--out", str(tmp_path / "parts.csv")]):
        res = runner.invoke(app, ["localize", *args, "--snr-withheld", "--batch-size", "8"])
        assert res.exit_code == 0, res.output
    assert sizes == [6, 6]
    one = read_estimates(tmp_path / "whole.csv", 6, 5)
    for i, (lo, hi) in enumerate(((0, 1), (1, 3), (3, 4), (4, 6))):
        got = read_estimates(tmp_path / "parts.csv", hi - lo, 5, file=i)
        assert got.K.equal(one.K[lo:hi])
        assert got.azimuth.nan_to_num(9).equal(one.azimuth[lo:hi].nan_to_num(9))
    with h5py.File(parts / "d.h5", "a") as f:  # a bad scene in a call's later file: its own
        f["y"][0] = 0                            # index in its file, said once
    sizes.clear()
    given.clear()
    res = runner.invoke(app, ["localize", str(parts / "*.h5"), "--out", str(tmp_path / "z.csv"),
                              "--batch-size", "8", "--K", "1"])
    assert sizes == [6], res.output
    text = " ".join(res.output.split())
    assert "d.h5:0 not localized" in text and text.count("not localized:") == 1, res.output
    assert "6/6" in text  # (the progress bar: each file's scenes once)
    (snr, K, _), = given
    assert K == 1
    want = torch.as_tensor(data["snr_db"], dtype=snr.dtype)  # the files' SNRs in order,
    want[1:3] = float("nan")                                 # b's unknown
    assert snr.nan_to_num(-99).equal(want.nan_to_num(-99))
    assert read_estimates(tmp_path / "z.csv", 2, 5, file=3).K.tolist() == [0, 1]
    with h5py.File(parts / "d.h5", "a") as f:
        f["y"][0] = data["y"][4]
    with h5py.File(parts / "c.h5", "a") as f:  # another system between them: its own call
        f.attrs["system"] = json.dumps({**json.loads(attrs["system"]), "K_max": 3})
    sizes.clear()
    given.clear()
    res = runner.invoke(app, ["localize", str(parts / "*.h5"), "--out", str(tmp_path / "k.csv"),
                              "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert sizes == [3, 1, 2]
    k_max = json.loads(attrs["system"])["K_max"]  # each call told its scenes' system
    assert k_max != 3 and [s for *_, s in given] == [k_max, 3, k_max]
    sizes.clear()  # no call over --batch-size scenes
    res = runner.invoke(app, ["localize", str(parts / "*.h5"), "--out", str(tmp_path / "2.csv"),
                              "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    assert sizes == [1, 2, 1, 2]
    sizes.clear()  # a call of exactly --batch-size scenes: a and b's
    res = runner.invoke(app, ["localize", str(parts / "*.h5"), "--out", str(tmp_path / "3.csv"),
                              "--batch-size", "3"])
    assert res.exit_code == 0, res.output
    assert sizes == [3, 1, 2]


def test_a_cuda_graph_holds_the_scenes_of_small_files_localized_together(tmp_path,
                                                                         monkeypatch):
    """--graphs: the graph's batch was the largest file's range, while small files go in
    one call of up to --batch-size scenes: 48 files of 2 scenes replayed a graph of 2
    scenes 48 times a call (a review of the grouping). It is now as large as a call can be:
    the scenes of all files, at most --batch-size."""
    import typer

    import risloc.cli.localize as cli_localize

    paths = []
    for name in ("a", "b", "c"):
        paths.append(tmp_path / f"{name}.h5")
        assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(paths[-1]),
                                   "--split", "test"]).exit_code == 0
    seen = []

    def stop(method, checkpoint, system, device, bf16=True, graph_batch=None, fov=None):
        seen.append(graph_batch)
        raise typer.Exit(code=3)

    monkeypatch.setattr(cli_localize.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli_localize, "_localizer", stop)
    for batch, want in (("8", 6), ("4", 4)):
        res = runner.invoke(app, ["localize", *map(str, paths), "--out",
                                  str(tmp_path / "e.csv"), "--device", "cuda", "--graphs",
                                  "--method", "learned", "--batch-size", batch])
        assert res.exit_code == 3, res.output
        assert seen.pop() == want


def test_fov_option_sets_the_classical_search_box(tmp_path, monkeypatch):
    """--fov: sources nearer than the default 0.5 m are found with it, missed without; bad
    values are named; the learned model's own box is not replaced; a run interrupted with
    one box resumes with it only (its record keeps it; a record of the default box, none)."""
    f = tmp_path / "near.h5"
    assert runner.invoke(app, ["simulate", "--n", "2", "--out", str(f), "--snr-db", "20",
                               "--K", "1", "--set", "scene.range_m=[0.15, 0.4]"]).exit_code == 0
    for name, fov in (("without.csv", []), ("with.csv", ["--fov", "range_m=0.1,1.0"])):
        res = runner.invoke(app, ["localize", str(f), "--method", "classical", "--K", "1",
                                  "--out", str(tmp_path / name), *fov])
        assert res.exit_code == 0, res.output
        # the sources outside the box searched are counted against that box, not the default
        assert ("lie outside the field of view" in res.output) == (not fov), res.output
    without, found = (read_estimates(tmp_path / n, 2, 5) for n in ("without.csv", "with.csv"))
    assert (without.range_m[:, 0] >= 0.5 - 1e-6).all()  # the default box's nearest range
    assert (found.range_m[:, 0] < 0.45).all(), found.range_m
    for bad, said in ((["rnage_m=0.1,1"], "did you mean range_m"),
                      (["range_m=0,1"], "range_m must satisfy 0 < low < high"),
                      (["azimuth_deg=-95,0"], "azimuth_deg must lie inside (-90, 90)"),
                      (["range_m"], "expected name=low,high")):
        res = runner.invoke(app, ["localize", str(f), "--method", "classical", "--out",
                                  str(tmp_path / "bad.csv"), "--fov", *bad])
        assert res.exit_code == 2 and said in res.output, res.output
    res = runner.invoke(app, ["localize", str(f), "--method", "learned", "--out",
                              str(tmp_path / "l.csv"), "--fov", "range_m=0.1,1.0"])
    assert res.exit_code == 2 and "searches the field of view it was trained for" in \
        res.output and "--method classical" in res.output, res.output
    # the learned model's own box (the shipped one's: the default) is no other box
    res = runner.invoke(app, ["localize", str(f), "--method", "learned", "--stop", "1", "--out",
                              str(tmp_path / "own.csv"), "--fov", "azimuth_deg=-60,60"])
    assert res.exit_code == 0, res.output

    from risloc.pipeline import Localizer

    def ctrl_c(self, *a, **k):
        raise KeyboardInterrupt

    base = ["localize", str(f), "--method", "classical", "--K", "1", "--out",
            str(tmp_path / "part.csv")]
    with monkeypatch.context() as m:
        m.setattr(Localizer, "localize", ctrl_c)
        assert runner.invoke(app, [*base, "--fov", "range_m=0.1,1.0"]).exit_code == 130
    for other in ([], ["--fov", "range_m=0.1,2.0"]):
        res = runner.invoke(app, [*base, "--resume", *other])
        assert res.exit_code == 2 and "another --fov" in res.output, res.output
    res = runner.invoke(app, [*base, "--resume", "--fov", "range_m=0.1,1.0"])
    assert res.exit_code == 0, res.output
    assert read_estimates(tmp_path / "part.csv", 2, 5).range_m.nan_to_num(9).equal(
        found.range_m.nan_to_num(9))
    # a run given the default box, interrupted, resumes without --fov (and the other way)
    for given, then in ((["--fov", "range_m=0.5,10"], []), ([], ["--fov", "azimuth_deg=-60,60"])):
        (tmp_path / "part.csv").unlink()
        with monkeypatch.context() as m:
            m.setattr(Localizer, "localize", ctrl_c)
            assert runner.invoke(app, [*base, *given]).exit_code == 130
        res = runner.invoke(app, [*base, "--resume", *then])
        assert res.exit_code == 0 and "continue" not in res.output, res.output
