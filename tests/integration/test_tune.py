"""`risloc tune` on the tiny recipe: trials train, the study resumes, pruning stops a
trial's training, workers share one study (SQLite here; PostgreSQL when CI provides a
server through RISLOC_TEST_POSTGRES), a killed worker's trial is failed and re-run, and
the best trial closes the loop through `risloc train --overrides`."""

import csv
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from risloc.cli.main import app
from risloc.hpo import TuneSettings, open_study, tune
from risloc.hpo.search import _objective
from risloc.training import load_train_config

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "train_tiny.yaml")
runner = CliRunner()
FAST = ("--set", "schedule.steps_per_epoch=1", "--set", "data.n_val=8")


def test_study_runs_resumes_and_reports(tmp_path):
    s = TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=2, epochs=1, seed=3,
                     warmup_epochs=0)
    study = tune(s)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert (tmp_path / "study.db").exists()
    assert (tmp_path / "trial_0000" / "best.pt").exists()
    # resume: the same command with a larger target runs only the missing trial
    study = tune(TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=3, epochs=1,
                              seed=3))
    assert len(study.trials) == 3
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    # the folder's own study.db named by --storage is the same study (a review: refused as
    # another storage), however it is spelled
    for url in (f"sqlite:///{tmp_path / 'study.db'}", f"sqlite:///{tmp_path}/./study.db"):
        assert len(tune(TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=3, epochs=1,
                                     seed=3, storage=url)).trials) == 3
    # a folder marked by an earlier version (the URL as typed) is still this study's
    mark = tmp_path / "study.json"
    mark.write_text(json.dumps({"study_name": "risloc",
                                "storage": f"sqlite:///{tmp_path}/./study.db"}))
    assert len(tune(TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=3, epochs=1,
                                 seed=3)).trials) == 3
    best = yaml.safe_load((tmp_path / "best_overrides.yaml").read_text())
    assert best["objective"] == min(t.value for t in study.trials)
    cfg = load_train_config(TINY, [f"{k}={v}" for k, v in best["overrides"].items()])
    assert cfg.blend.beta == best["overrides"]["blend.beta"]
    # another study would number its trials from 0 too: its runs need their own folder
    with pytest.raises(ValueError, match=r"holds the runs of study 'risloc'.*not 'other'") \
            as err:
        tune(TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=1, epochs=1,
                          study_name="other"))
    assert f"({tmp_path / 'study.db'})" in str(err.value) and "<out_dir>" not in str(err.value)
    assert len(list(tmp_path.glob("trial_*"))) == 3


def test_baseline_trial_is_the_base_recipe_and_is_reported(tmp_path):
    space = tmp_path / "space.yaml"  # the default space has no batch 8, the tiny recipe's
    space.write_text("optim.lr: {low: 0.5, high: 2.0, log: true, relative: true}\n"
                     "blend.beta: {low: 0.1, high: 0.5}\n")
    s = TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=2, epochs=1, seed=3,
                     warmup_epochs=0, baseline=True, space=str(space))
    study = tune(s)
    first = study.trials[0]
    assert first.user_attrs.get("baseline") is True
    assert not any(t.user_attrs.get("baseline") for t in study.trials[1:])
    base = load_train_config(TINY)
    assert first.params["optim.lr"] == 1.0 and first.params["blend.beta"] == base.blend.beta
    report = yaml.safe_load((tmp_path / "best_overrides.yaml").read_text())
    assert report["baseline_trial"] == 0 and report["baseline_objective"] == first.value
    # resuming does not queue the baseline again
    study = tune(TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=3, epochs=1,
                              seed=3, baseline=True, space=str(space)))
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1
    # trials.csv: the recipe's lr of each trial, and its multiple of the base lr
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    for row, t in zip(rows, study.trials, strict=True):
        assert float(row["optim.lr (x base)"]) == t.params["optim.lr"]
        assert float(row["optim.lr"]) == pytest.approx(t.params["optim.lr"] * base.optim.lr)
    # the study's trials are of this recipe, epochs and space: another is refused (its
    # multiples of another base lr would mix in, and best_overrides.yaml be wrong)
    for change, named in ((dict(overrides=("optim.lr=0.5",)), r"optim.lr: [\d.e-]+ -> 0.5"),
                          (dict(epochs=2), "schedule.epochs: 1 -> 2"),
                          (dict(space=None), r"\(the search space's evaluation\.n_range, "
                                             r".*optim\.lr, optim\.weight_decay\)")):
        kw = dict(config=TINY, out_dir=str(tmp_path), n_trials=4, epochs=1, seed=3,
                  space=str(space)) | change
        with pytest.raises(ValueError, match="holds trials of another recipe or search space"
                           ) as err:
            tune(TuneSettings(**kw))
        assert re.search(named, str(err.value)), str(err.value)
    assert len(open_study(TuneSettings(config=TINY, out_dir=str(tmp_path))).trials) == 3
    # the same space with its entries in another order is that space (a review: refused)
    space.write_text("\n".join(reversed(space.read_text().strip().splitlines())) + "\n")
    tune(TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=3, epochs=1, seed=3,
                      space=str(space)))
    # a --set of a searched field would be replaced by each trial's value: refused (a
    # review: silently ignored); a relative field's --set is the base it multiplies
    with pytest.raises(ValueError, match=r"--set blend.beta=0.9: blend.beta is searched \(.*"
                                         r"space.yaml\), so each trial's value would replace"):
        tune(TuneSettings(config=TINY, out_dir=str(tmp_path / "b"), n_trials=1, epochs=1,
                          space=str(space), overrides=("blend.beta=0.9",)))
    assert not (tmp_path / "b").exists()


def test_a_study_refuses_a_scene_file_whose_contents_changed(tmp_path):
    """Workers may read their own copies of a scene file (mtimes differ between machines);
    a copy holding other scenes would mix trials of two data sets into one study."""
    from risloc.config import SceneConfig, SystemConfig
    from risloc.io import write_scenes
    from risloc.simulation import simulate_range

    val = tmp_path / "val.h5"
    write_scenes(val, simulate_range(0, 8, SystemConfig(), SceneConfig(), split="validation"),
                 SystemConfig())
    kw = dict(config=TINY, out_dir=str(tmp_path / "study"), epochs=1, seed=3,
              overrides=("schedule.steps_per_epoch=1", f"data.val_file={val}"))
    assert len(tune(TuneSettings(n_trials=1, **kw)).trials) == 1
    val.write_bytes(val.read_bytes())  # a copy with the same scenes: taken
    assert len(tune(TuneSettings(n_trials=2, **kw)).trials) == 2
    # ... also where the worker names it by another path (another folder or machine)
    (tmp_path / "elsewhere").mkdir()
    copy = tmp_path / "elsewhere" / "v.h5"
    copy.write_bytes(val.read_bytes())
    other = {**kw, "overrides": ("schedule.steps_per_epoch=1", f"data.val_file={copy}")}
    assert len(tune(TuneSettings(n_trials=3, **other)).trials) == 3
    write_scenes(val, simulate_range(8, 16, SystemConfig(), SceneConfig(), split="validation"),
                 SystemConfig())
    with pytest.raises(ValueError, match=r"another recipe or search space \(the contents "
                                         r"of data.val_file\)"):
        tune(TuneSettings(n_trials=4, **kw))


class _PruneAll(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_pruned_trial_stops_training_after_the_reporting_epoch(tmp_path):
    from risloc.hpo import load_space
    from risloc.hpo.search import DEFAULT_SPACE

    s = TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=1, epochs=2)
    base = load_train_config(TINY)
    study = optuna.create_study(pruner=_PruneAll())
    study.optimize(_objective(s, base, load_space(DEFAULT_SPACE, base)), n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    epochs = list(csv.DictReader((tmp_path / "trial_0000" / "epochs.csv").open()))
    assert len(epochs) == 1  # the second epoch never ran


def test_tune_cli_and_train_overrides_close_the_loop(tmp_path):
    # (3 steps: after one the two jitters gave the same objective)
    steps = ("--set", "schedule.steps_per_epoch=3", "--set", "data.n_val=8")
    res = runner.invoke(app, ["tune", "--config", TINY, "--trials", "1", "--epochs", "1",
                              "--out", str(tmp_path / "t 'é'"), *steps, "--set",
                              "model.hidden=24"])
    assert res.exit_code == 0, res.output
    best = tmp_path / "t 'é'" / "best_overrides.yaml"
    # the printed command copies into a shell: the folder of a space and a quote one word
    import re
    import shlex

    cmd = re.search(r"\(risloc train (.*)\)", " ".join(res.output.split()))
    assert cmd and shlex.split(cmd.group(1)) == ["--config", TINY, "--overrides", str(best)]
    # the --set values every trial ran with come with it (a review: they were left out, so
    # `train --overrides` trained another model than the one tuned)
    assert yaml.safe_load(best.read_text())["overrides"]["model.hidden"] == 24
    assert "best trial" in res.output and best.exists()
    assert "(x" in res.output and "base)" in res.output  # optim.lr: a multiple, not the rate
    assert f"# Best trial of the study: risloc train --config {TINY} " in best.read_text()
    # the header's way to train the trial itself again (a new user's review: the trials'
    # schedule.hpo_mode was not said, so the retrain's objective was 14 % worse)
    assert "add --epochs 1 --set schedule.hpo_mode=true" in " ".join(
        best.read_text().replace("#", " ").split())
    res = runner.invoke(app, ["train", "--config", TINY, "--overrides", str(best), "--out",
                              str(tmp_path / "r"), "--epochs", "1", "--set",
                              "schedule.hpo_mode=true", "--set", "order.scenes=0",
                              "--no-progress", *steps])
    assert res.exit_code == 0, res.output
    from risloc.inference.checkpoint import load_checkpoint
    from risloc.training.config import TrainConfig

    cfg = TrainConfig.from_json(load_checkpoint(tmp_path / "r" / "last.pt")["config"])
    report = yaml.safe_load(best.read_text())
    assert cfg.blend.beta == pytest.approx(report["overrides"]["blend.beta"])
    assert cfg.model.hidden == 24
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["best_objective"] == pytest.approx(report["objective"], rel=1e-6)
    res = runner.invoke(app, ["tune", "--config", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2


def test_a_worker_whose_trial_was_failed_as_stale_goes_on(tmp_path, monkeypatch):
    """Another worker fails a running trial whose heartbeats come late (a loaded machine)
    and queues it again; Optuna then refuses to record it in the worker that ran it
    (ValueError "Cannot tell a FAIL trial"). That worker goes on with the next trials
    instead of exiting; any other ValueError still ends it."""
    real = optuna.Study.optimize
    calls = []

    def optimize(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("Cannot tell a FAIL trial.")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "optimize", optimize)
    s = TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=1, epochs=1,
                     warmup_epochs=0)
    study = tune(s)
    assert len(calls) == 2 and [t.state.name for t in study.trials] == ["COMPLETE"]
    monkeypatch.setattr(optuna.Study, "optimize",
                        lambda self, *a, **k: (_ for _ in ()).throw(ValueError("other")))
    with pytest.raises(ValueError, match="other"):
        tune(TuneSettings(config=TINY, out_dir=str(tmp_path / "b"), n_trials=1, epochs=1))


def _ctrl_c_after_the_first_epoch(tmp_path, monkeypatch, n_trials: int, calls=None):
    """tune (2 epochs a trial) stopped by Ctrl-C once trial 0's first epoch is reported;
    (its settings, the real risloc.training.train), ``calls`` given the (run folder,
    resume) of each train."""
    import risloc.training as training

    real = training.train

    def interrupted(cfg, resume=False, callback=None, **kw):
        def stop(epoch, metrics):
            callback(epoch, metrics)
            raise KeyboardInterrupt

        if calls is not None:
            calls.append((Path(cfg.out_dir).name, resume))
        return real(cfg, resume=resume, callback=stop, **kw)

    s = TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=n_trials, epochs=2, seed=3,
                     warmup_epochs=0, overrides=("schedule.steps_per_epoch=1", "data.n_val=8"))
    monkeypatch.setattr(training, "train", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        tune(s)
    assert caught.value.interrupted_trial == 0  # (the CLI names the interrupted trial)
    return s, real


def test_a_trial_stopped_by_ctrl_c_is_continued_from_its_last_epoch(tmp_path, monkeypatch):
    """Ctrl-C during trial 0's second epoch: the trial is recorded as failed and marked
    interrupted; the next tune queues its parameters again and the copy resumes trial 0's
    run from the checkpoint of its first epoch, in trial 0's folder (one epoch redone, not
    two), once."""
    import risloc.training as training

    calls = []
    s, real = _ctrl_c_after_the_first_epoch(tmp_path, monkeypatch, 1, calls)
    first = open_study(s).trials[0]
    assert first.state.name == "FAIL" and first.user_attrs["interrupted"] is True
    assert first.user_attrs["interrupted_trial"] == 0  # its number (a stale retry copies it)
    epochs = tmp_path / "trial_0000" / "epochs.csv"
    assert len(list(csv.DictReader(epochs.open()))) == 1

    def spy(cfg, resume=False, **kw):
        calls.append((Path(cfg.out_dir).name, resume))
        return real(cfg, resume=resume, **kw)

    monkeypatch.setattr(training, "train", spy)
    study = tune(s)
    assert calls == [("trial_0000", False), ("trial_0000", True)]
    again = study.trials[1]
    assert again.state.name == "COMPLETE" and again.params == first.params
    assert again.user_attrs["continues"] == 0 and again.user_attrs["run"] == 0
    assert [r["epoch"] for r in csv.DictReader(epochs.open())] == ["1", "2"]
    assert not (tmp_path / "trial_0001").exists()
    best = yaml.safe_load((tmp_path / "best_overrides.yaml").read_text())
    assert (best["trial"], best["run"]) == (1, "trial_0000")  # where its best.pt is
    tune(TuneSettings(**{**s.__dict__, "n_trials": 2}))  # continued once, not again
    assert [t.user_attrs.get("continues") for t in open_study(s).trials] == [None, 0, None]


def test_ctrl_c_after_the_last_trial_still_writes_the_reports(tmp_path, monkeypatch):
    """Ctrl-C once the study's last trial has finished but before its reports are written
    (here: as tune looks for stale trials afterwards): trials.csv and best_overrides.yaml
    are written all the same, as for a Ctrl-C during a trial."""
    import risloc.hpo.search as search

    real, seen = search._fail_stale_trials, []

    def ctrl_c_after_the_trials(study):
        seen.append(len(study.trials))
        real(study)
        if len(seen) == 2:  # the call after the trials (the first: before them)
            raise KeyboardInterrupt

    monkeypatch.setattr(search, "_fail_stale_trials", ctrl_c_after_the_trials)
    s = TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=1, epochs=1, seed=3,
                     warmup_epochs=0, overrides=("schedule.steps_per_epoch=1", "data.n_val=8"))
    with pytest.raises(KeyboardInterrupt) as caught:
        tune(s)
    assert seen == [0, 1]
    assert not hasattr(caught.value, "interrupted_trial")  # (no trial was: the CLI says so)
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE")]
    assert yaml.safe_load((tmp_path / "best_overrides.yaml").read_text())["trial"] == 0


def test_a_continuation_that_cannot_resume_starts_afresh_and_runs_once(tmp_path, monkeypatch):
    """A review: a continued trial whose checkpoint refused the resume (here a damaged
    last.pt; a data file copied anew does the same) ended the worker with a traceback and
    lost the interrupted trial; and two copies queued by two workers both ran."""
    import risloc.training as training

    s, real = _ctrl_c_after_the_first_epoch(tmp_path, monkeypatch, 2)
    monkeypatch.setattr(training, "train", real)
    (tmp_path / "trial_0000" / "last.pt").write_bytes(b"damaged")
    study = open_study(s)  # two workers starting at once: two copies of the continuation
    for _ in range(2):
        study.enqueue_trial(study.trials[0].params, user_attrs={"continues": 0, "run": 0})
    states = [(t.state.name, t.user_attrs.get("run")) for t in tune(s).trials]
    # the first copy trains afresh in its own folder; the second fails as a duplicate
    assert states[:3] == [("FAIL", None), ("COMPLETE", 1), ("FAIL", 0)], states
    assert (tmp_path / "trial_0001" / "best.pt").exists()


def test_optuna_s_copy_of_a_killed_worker_s_trial_resumes_its_run(tmp_path, monkeypatch):
    """A review: the copy Optuna queues of a trial whose worker died (SIGKILL, the
    out-of-memory killer: its heartbeats stopped) trained from its first epoch in a new
    folder, the dead trial's epochs thrown away. It now resumes that trial's run from its
    last finished epoch; where the dead trial's worker is in fact alive and holds the
    folder (late heartbeats), the copy trains afresh in its own."""
    import warnings

    import risloc.training as training
    from risloc.training.loop import run_folder_lock

    real = training.train

    def killed(cfg, resume=False, callback=None, **kw):  # the worker dies after epoch 1
        def stop(epoch, metrics):
            callback(epoch, metrics)
            raise RuntimeError("worker killed")

        return real(cfg, resume=resume, callback=stop, **kw)

    s = TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=1, epochs=2, seed=3,
                     warmup_epochs=0, overrides=("schedule.steps_per_epoch=1", "data.n_val=8"))
    monkeypatch.setattr(training, "train", killed)
    with pytest.raises(RuntimeError, match="worker killed"):
        tune(s)
    calls = []

    def spy(cfg, resume=False, **kw):
        calls.append((Path(cfg.out_dir).name, resume))
        return real(cfg, resume=resume, **kw)

    monkeypatch.setattr(training, "train", spy)

    def retry_stale(study):  # what the storage does with a trial whose heartbeats stopped
        from risloc.hpo.search import _stale_trial_retry

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            retry = next(iter(_stale_trial_retry().values()))  # (its name by Optuna version)
            retry(study, study.trials[-1])

    retry_stale(open_study(s))
    study = tune(s)
    assert calls == [("trial_0000", True)]
    dead, copy = study.trials
    assert dead.state.name == "FAIL" and copy.state.name == "COMPLETE"
    assert copy.params == dead.params
    assert copy.user_attrs["continues"] == 0 and copy.user_attrs["run"] == 0
    epochs = tmp_path / "trial_0000" / "epochs.csv"
    assert [r["epoch"] for r in csv.DictReader(epochs.open())] == ["1", "2"]
    assert not (tmp_path / "trial_0001").exists()
    best = yaml.safe_load((tmp_path / "best_overrides.yaml").read_text())
    assert (best["trial"], best["run"]) == (1, "trial_0000")

    # the dead trial's worker alive after all, training in its folder: the copy starts afresh
    monkeypatch.setattr(training, "train", killed)
    with pytest.raises(RuntimeError, match="worker killed"):
        tune(TuneSettings(**{**s.__dict__, "n_trials": 2}))
    retry_stale(open_study(s))
    calls.clear()
    monkeypatch.setattr(training, "train", spy)
    with run_folder_lock(tmp_path / "trial_0002"):
        study = tune(TuneSettings(**{**s.__dict__, "n_trials": 2}))
    assert calls == [("trial_0002", True), ("trial_0003", False)]
    assert study.trials[3].state.name == "COMPLETE" and study.trials[3].user_attrs["run"] == 3


def test_a_worker_stopped_by_sigterm_leaves_its_trial_to_be_continued(tmp_path):
    """kill / a batch system's preemption (SIGTERM) ends a trial as Ctrl-C does: marked
    interrupted, exit code 130, and the next tune continues it from its last epoch (a
    review: it stayed RUNNING until its heartbeats went stale, then ran again from
    scratch)."""
    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "risloc", "tune", "--config", TINY, "--trials", "1",
           "--epochs", "30", "--out", str(out), "--warmup-epochs", "0", *FAST]
    worker = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = out / "trial_0000" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and worker.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    worker.send_signal(signal.SIGTERM)
    said = " ".join(worker.communicate(timeout=60)[0].split())
    assert worker.returncode == 130 and "interrupted: the study keeps its finished" in said, said
    s = TuneSettings(config=TINY, out_dir=str(out), n_trials=1, epochs=30)
    first = open_study(s).trials[0]
    assert first.state.name == "FAIL" and first.user_attrs["interrupted_trial"] == 0


def _storages(tmp_path):
    urls = [f"sqlite:///{tmp_path / 'shared.db'}"]
    if os.environ.get("RISLOC_TEST_POSTGRES"):
        urls.append(os.environ["RISLOC_TEST_POSTGRES"])
    return urls


def _worker(url: str, name: str, out: Path, trials: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "risloc", "tune", "--config", TINY, "--trials", str(trials),
           "--epochs", "2", "--out", str(out), "--storage", url, "--study-name", name,
           "--heartbeat", "1", "--warmup-epochs", "0", *FAST]
    out.parent.mkdir(parents=True, exist_ok=True)  # its output, shown if it fails
    with open(out.parent / f"{out.name}.log", "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def _tail(runs: Path, name: str) -> str:
    return (runs / f"{name}.log").read_text()[-3000:]


def test_two_workers_share_a_study_and_a_killed_workers_trial_is_rerun(tmp_path):
    for i, url in enumerate(_storages(tmp_path)):
        name = f"shared-{os.getpid()}-{time.time_ns()}"
        runs = tmp_path / f"storage{i}"  # a folder per study (study.json)
        a = _worker(url, name, runs / "a", 4)
        s = TuneSettings(config=TINY, out_dir=str(tmp_path), storage=url, study_name=name,
                         heartbeat_s=1, grace_s=3)
        deadline = time.time() + 120
        # kill worker a in the middle of a trial that has sent a heartbeat: Optuna never
        # fails a RUNNING trial without one (a worker killed between creating a trial and
        # its first beat, a few milliseconds, leaves it RUNNING), so the kill waits until
        # the trial has run for a second (the heartbeat thread starts with the trial)
        while time.time() < deadline:
            time.sleep(0.2)
            try:
                study = open_study(s)
            except Exception:  # the study is not created yet
                continue
            now = datetime.datetime.now()
            if any(t.state.name == "RUNNING" and t.datetime_start is not None
                   and (now - t.datetime_start).total_seconds() >= 1.0 for t in study.trials):
                break
        a.send_signal(signal.SIGKILL)
        a.wait()
        time.sleep(s.grace_s)  # a's trial is stale by the time the others look
        b = _worker(url, name, runs / "b", 4)
        c = _worker(url, name, runs / "c", 4)
        assert b.wait(300) == 0, _tail(runs, "b")
        assert c.wait(300) == 0, _tail(runs, "c")
        trials = open_study(s).trials
        states = [t.state.name for t in trials]
        finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(finished) >= 4, states  # the budget is the study's, over all workers
        assert len(finished) <= 5, states  # at most one more (two workers finishing at once)
        assert "RUNNING" not in states and "FAIL" in states, states  # a's trial: failed
        retried = [t for t in trials if "failed_trial" in t.system_attrs]
        assert retried, "the killed worker's trial was queued again"
        params = [tuple(sorted(t.params.items())) for t in finished]
        assert len(set(params)) == len(params)  # no trial ran twice


def test_a_storage_that_cannot_be_opened_is_named_and_claims_no_folder(tmp_path):
    out = tmp_path / "t"
    for url, says in (("notaurl", "is not an SQLAlchemy URL"),
                      ("sqlite:///", "in-memory SQLite study"),
                      (f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}",
                       f"cannot open the study storage sqlite:///{tmp_path / 'missing'}/dir/"
                       f"x.db: the folder {tmp_path / 'missing' / 'dir'} does not exist")):
        res = runner.invoke(app, ["tune", "--config", TINY, "--trials", "1", "--epochs", "1",
                                  "--out", str(out), "--storage", url, *FAST])
        assert res.exit_code == 2 and says in " ".join(res.output.split()), (url, res.output)
        assert "<the --storage URL>" not in res.output  # (a banner before the error said so)
        assert not (out / "study.json").exists()  # the folder is free for a right --storage
        assert not out.exists(), url  # nor any folder made for a storage that cannot open
    # another program's SQLite database (a review: a traceback after claiming the folder,
    # Optuna's tables added to it); a study of that name that maximizes
    import sqlite3

    import optuna

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("create table trials(x int)")
    con.close()
    before = other.read_bytes()
    optuna.create_study(study_name="m", storage=f"sqlite:///{tmp_path / 'max.db'}",
                        direction="maximize")
    for url, name, says in (
            (f"sqlite:///{other}", "risloc", f"the study storage sqlite:///{other} holds tables "
             "of another program (trials, no Optuna version_info)"),
            (f"sqlite:///{tmp_path / 'max.db'}", "m", "study 'm' (sqlite:///"
             f"{tmp_path / 'max.db'}) maximizes its objective; risloc tune minimizes")):
        res = runner.invoke(app, ["tune", "--config", TINY, "--trials", "1", "--epochs", "1",
                                  "--out", str(out), "--storage", url, "--study-name", name,
                                  *FAST])
        assert res.exit_code == 2 and says in " ".join(res.output.split()), res.output
        assert not out.exists()
    assert other.read_bytes() == before
    # --baseline with a recipe outside the space: refused before a study records it
    res = runner.invoke(app, ["tune", "--config", TINY, "--trials", "1", "--epochs", "1",
                              "--out", str(out), "--baseline", *FAST])
    assert res.exit_code == 2 and "lies outside the search space" in res.output
    assert not (out / "study.json").exists() and not (out / "study.db").exists()
    # the guide's bare postgresql:// takes the installed driver of the `postgres` extra
    import importlib.util

    url = TuneSettings(config=None, storage="postgresql://u:p@host/db").storage_url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        assert url == "postgresql+psycopg2://u:p@host/db"
    else:
        assert url.endswith("://u:p@host/db")


def test_without_optuna_the_hint_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    res = runner.invoke(app, ["tune", "--config", TINY])
    assert res.exit_code == 2 and "pip install 'risloc[hpo]'" in res.output, res.output
    assert "from a clone of the repository: pip install -e '.[hpo]'" in res.output


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_killed_worker_s_trial_is_failed_when_the_budget_is_already_spent(tmp_path):
    """A review: a worker killed mid-trial and started again within the grace period
    finished the budget, and its dead trial stayed RUNNING forever (Optuna fails stale
    trials only when a next trial starts)."""
    s = TuneSettings(config=TINY, out_dir=str(tmp_path), n_trials=1, epochs=1,
                     overrides=("schedule.steps_per_epoch=1", "data.n_val=8"),
                     heartbeat_s=1, grace_s=2)
    tune(s)
    study = open_study(s)
    dead = study.ask()  # a trial whose worker died: heartbeats that stop
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(3)
    states = {t.number: t.state.name for t in tune(s).trials}
    assert states[0] == "COMPLETE" and states[dead.number] == "FAIL", states
    rows = {r["number"]: r["state"] for r in csv.DictReader((tmp_path / "trials.csv").open())}
    assert rows[str(dead.number)] == "FAIL"


def test_ctrl_c_says_that_the_same_command_continues_the_study(tmp_path, monkeypatch):
    # a review: an interrupted tune said only that outputs are whole, not how to go on
    import risloc.hpo as hpo

    def ctrl_c(settings, on_start=None):
        on_start()  # (the study opened)
        raise KeyboardInterrupt

    monkeypatch.setattr(hpo, "tune", ctrl_c)
    res = runner.invoke(app, ["tune", "--config", TINY, "--out", str(tmp_path / "t"),
                              "--trials", "2", "--epochs", "1"])
    text = " ".join(res.output.split())
    assert res.exit_code == 130 and "the same command continues it" in text, res.output


def test_the_cli_passes_every_option_to_the_study_and_prints_its_trials(tmp_path,
                                                                       monkeypatch):
    """Each option of `risloc tune` reaches its setting (a mutation review: seed, study
    name, storage, space, baseline, the pruner's two counts could be dropped or swapped
    unnoticed), and the table shows each trial's objective and a relative field's column as
    a multiple."""
    import risloc.hpo as hpo

    seen = []
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(
        value=0.123456, params={"optim.lr": 1.5},
        distributions={"optim.lr": optuna.distributions.FloatDistribution(0.25, 4.0)}))

    def fake_tune(settings, on_start=None):
        seen.append(settings)
        return study

    monkeypatch.setattr(hpo, "tune", fake_tune)
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {low: 0.25, high: 4.0, log: true, relative: true}\n")
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    res = runner.invoke(app, ["tune", "--config", TINY, "--trials", "3", "--epochs", "2",
                              "--out", str(tmp_path / "o"), "--storage", db, "--study-name",
                              "s1", "--space", str(space), "--seed", "5", "--startup-trials",
                              "2", "--warmup-epochs", "1", "--heartbeat", "7", "--baseline",
                              "--set", "model.hidden=24"])
    assert res.exit_code == 0, res.output
    (s,) = seen
    assert (s.config, s.out_dir, s.storage, s.study_name, s.space) == (
        TINY, str(tmp_path / "o"), db, "s1", str(space))
    assert (s.n_trials, s.epochs, s.seed, s.startup_trials, s.warmup_epochs) == (3, 2, 5, 2, 1)
    assert (s.heartbeat_s, s.grace_s, s.baseline, s.overrides) == (7, 21, True,
                                                                   ("model.hidden=24",))
    out = " ".join(res.output.split())
    assert "0.1235" in out and "1.5" in out and "(x" in out and "base)" in out
    # the multiple is said of the relative field's column, not of the others
    heads = [[c.strip() for c in line.split("┃")[1:-1]] for line in res.output.splitlines()
             if "trial" in line and "state" in line]
    assert heads == [["trial", "state", "objective", "lr (x base)"]], res.output


def test_the_defaults_are_the_documented_ones_and_counts_below_1_are_refused(tmp_path,
                                                                              monkeypatch):
    """docs/guide.md: --trials 20, --heartbeat 60 (a trial silent for 3x that is failed),
    the study in runs/tune; --trials 0 or --heartbeat 0 (every trial failed as stale at
    once) are refused before any study. The printed retrain command quotes a recipe path
    with a space (a mutation review: each could change unnoticed)."""
    import shlex
    import shutil
    from types import SimpleNamespace

    import risloc.hpo as hpo

    seen = []
    monkeypatch.setattr(hpo, "tune", lambda settings, on_start=None: seen.append(settings) or
                        SimpleNamespace(trials=[]))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my recipes").mkdir()
    cfg = tmp_path / "my recipes" / "tiny.yaml"
    shutil.copy(TINY, cfg)
    (tmp_path / "runs" / "tune").mkdir(parents=True)
    (tmp_path / "runs" / "tune" / "best_overrides.yaml").write_text("overrides: {}\n")
    res = runner.invoke(app, ["tune", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    (s,) = seen
    assert (s.n_trials, s.epochs, s.heartbeat_s, s.grace_s) == (20, 10, 60, 180)
    assert (s.out_dir, s.storage, s.study_name, s.space, s.baseline) == (
        str(Path("runs/tune")), None, "risloc", None, False)
    assert (s.seed, s.startup_trials, s.warmup_epochs, s.overrides) == (0, 6, 8, ())
    cmd = re.search(r"\(risloc train (.*)\)", " ".join(res.output.split()))
    assert cmd and shlex.split(cmd.group(1)) == [
        "--config", str(cfg), "--overrides", str(Path("runs/tune/best_overrides.yaml"))]
    for opt in ("--trials", "--heartbeat"):
        res = runner.invoke(app, ["tune", "--config", str(cfg), opt, "0"])
        assert res.exit_code == 2 and opt in res.output, res.output
    assert len(seen) == 1


def test_the_study_table_rounds_floats_and_leaves_a_missing_parameter_blank(tmp_path,
                                                                             monkeypatch):
    """(no training: the study tune returns is replaced)"""
    from types import SimpleNamespace

    import risloc.hpo

    def trial(n, value, params):
        return SimpleNamespace(number=n, state=SimpleNamespace(name="COMPLETE"), value=value,
                               params=params)

    study = SimpleNamespace(trials=[trial(0, 1.234567, {"model.width": 24,
                                                        "optim.weight_decay": 0.000123456}),
                                    trial(1, None, {"model.width": 16})])
    study.trials[1].state.name = "PRUNED"  # each trial's own state
    monkeypatch.setattr(risloc.hpo, "tune", lambda settings, on_start=None: study)
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["tune", "--config", TINY, "--out",
                                                         str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = [r.split("│") for r in res.output.splitlines() if r.count("│") >= 5]
    cells = [[c.strip() for c in r[1:-1]] for r in rows]
    assert ["0", "COMPLETE", "1.235", "24", "0.000123"] in cells, res.output
    assert ["1", "PRUNED", "", "16", ""] in cells, res.output
