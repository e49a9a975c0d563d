from pathlib import Path

import optuna
import pytest

from risloc.config import ConfigError
from risloc.hpo import TuneSettings, load_space
from risloc.hpo.search import DEFAULT_SPACE, trial_seed, trial_seeded_sampler
from risloc.hpo.space import override
from risloc.training import load_train_config


def test_default_space_suggests_valid_recipes_with_a_relative_lr():
    base = load_train_config(None, ["optim.lr=2e-3"])
    space = load_space(DEFAULT_SPACE, base)
    fields = {d.field for d in space}
    assert {"optim.lr", "optim.batch_size", "model.refine_iterations"} <= fields
    params = {d.field: (d.choices[-1] if d.choices else d.low) for d in space}
    values = [override(d.field, d.suggest(optuna.trial.FixedTrial(params), base))
              for d in space]
    cfg = load_train_config(None, values)
    lr = next(d for d in space if d.field == "optim.lr")
    assert cfg.optim.lr == pytest.approx(2e-3 * lr.low)
    assert (lr.low, lr.high, lr.log, lr.relative) == (0.25, 4.0, True, True)  # 1/4x..4x
    assert cfg.optim.batch_size == params["optim.batch_size"]


def test_base_params_reproduce_the_base_recipe_or_name_the_field_outside(tmp_path):
    base = load_train_config(None, ["optim.lr=2e-3", "optim.batch_size=64"])
    space = load_space(DEFAULT_SPACE, base)
    params = {d.field: d.base_param(base) for d in space}
    assert params["optim.lr"] == 1.0  # relative to the recipe's
    assert params["optim.batch_size"] == 64
    values = [override(d.field, d.suggest(optuna.trial.FixedTrial(params), base))
              for d in space]
    assert load_train_config(None, ["optim.lr=2e-3", "optim.batch_size=64", *values]) == base
    outside = load_train_config(None, ["optim.batch_size=48"])
    with pytest.raises(ConfigError, match="optim.batch_size=48 lies outside"):
        [d.base_param(outside) for d in load_space(DEFAULT_SPACE, outside)]


def test_space_files_are_checked_entry_by_entry(tmp_path):
    for text, msg in (("optim.nope: {low: 1, high: 2}", "not a recipe field"),
                      ("optim.lr: {low: 2, high: 1}", "low < high"),
                      ("optim.lr: {low: 0, high: 1, log: true}", "low > 0"),
                      ("optim.lr: {choices: []}", "non-empty"),
                      ("optim.lr: {low: 1, high: 2, step: 3}", "unknown keys"),
                      ("- a list", "mapping"),
                      ("optim.lr: {low: 0.5, high: [2", "is not valid YAML"),
                      ("optim.lr: {low: 0.5, high: .inf, log: true}", "finite low < high"),
                      ("schedule.epochs: {choices: [3, 4]}", "set by risloc tune itself"),
                      ("optim: {low: 0.5, high: 2}", "is a section"),
                      ("optim.batch_size: {low: 0.5, high: 2, relative: true}",
                       "whole number: give it choices"),
                      ("optim.lr: {low: -1, high: 1}", r"optim.lr=-1.0 makes no valid recipe"),
                      ("blend.beta: {choices: [0.2, 7]}", "blend.beta=7 makes no valid"),
                      # a quoted "no" was read as true (a review found it)
                      ('optim.lr: {low: 0.5, high: 2, log: "no"}',
                       "log must be true or false, got 'no'"),
                      # a review: these were taken, silently read otherwise
                      ("optim.lr: {choices: [0.5, 2], relative: true}",  # lr = 2, absolute
                       "choices are the values themselves; relative belong to a range"),
                      ("optim.batch_size: {choices: [16, 16, 32]}", "a choice is listed twice"),
                      ("blend.beta: {low: 0.1, high: 0.3}\nblend.beta: {low: 0.2, high: 0.4}",
                       "the key 'blend.beta' is given twice"),
                      ("loss.lam_peak_contrast: {low: 0.05, high: 0.2}",  # failed its trial
                       "loss.lam_peak_contrast: schedule.weight_schedule sets it every epoch "
                       r"\(.*\), so it cannot be searched")):
        p = tmp_path / "s.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            load_space(p)
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        load_space(tmp_path)


def test_a_null_choice_reaches_the_recipe_as_none(tmp_path):
    """A review: values went to the recipe as their repr, read back as YAML: None became
    the string 'None' (a trial then looked for the validation file ./None)."""
    p = tmp_path / "s.yaml"
    p.write_text("scene.K: {choices: [null, 2]}\nprefetch: {choices: [thread, process]}\n")
    space = load_space(p)
    for K in (None, 2):
        params = {"scene.K": K, "prefetch": "process"}
        cfg = load_train_config(None, [override(d.field, d.suggest(
            optuna.trial.FixedTrial(params), load_train_config(None))) for d in space])
        assert cfg.scene.K == K and cfg.prefetch == "process"


def test_settings_and_trial_seeds():
    with pytest.raises(ValueError, match="n_trials"):
        TuneSettings(config=None, n_trials=0)
    with pytest.raises(ValueError, match="heartbeat"):
        TuneSettings(config=None, heartbeat_s=10, grace_s=5)
    with pytest.raises(ValueError, match="startup_trials and warmup_epochs must be >= 0"):
        TuneSettings(config=None, startup_trials=-1)  # (a review: after study.db was made)
    s = TuneSettings(config=None, out_dir="runs/x")
    assert s.storage_url.startswith("sqlite:///") and s.storage_url.endswith("study.db")
    assert TuneSettings(config=None, storage="mysql://u@h/db").storage_url == "mysql://u@h/db"
    assert trial_seed(0, 3) == trial_seed(0, 3) != trial_seed(0, 4)
    assert 0 <= trial_seed(7, 10**12) < 2**31
    with pytest.raises(TypeError, match=r"the string 'optim.lr=1e-3' \(write \("):
        TuneSettings(config=None, overrides="optim.lr=1e-3")
    # a section's mapping sets its fields: tune's own are refused in that form too (a review)
    with pytest.raises(ValueError, match="sets schedule.epochs itself: use --epochs"):
        TuneSettings(config=None, overrides=('schedule={"epochs": 3}',))
    with pytest.raises(ValueError, match="trials never show progress bars"):
        TuneSettings(config=None, overrides=("progress=true",))


def test_one_worker_with_one_seed_draws_the_same_trials_and_workers_different_ones():
    """A review: the sampler was seeded with the base seed plus the process id, so no study
    could be drawn again; now each trial's draw is seeded by its number."""
    def draws(seed: int, n: int = 12) -> list[tuple[float, int]]:
        study = optuna.create_study(sampler=trial_seeded_sampler(seed))
        study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("n", 0, 9) / 10,
                       n_trials=n)
        return [(t.params["x"], t.params["n"]) for t in study.trials]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = draws(3)
    assert draws(3) == first  # beyond TPE's 10 startup trials too
    assert draws(4) != first
    assert len(set(first)) == len(first)
    # two workers of one study (one process here, as two machines' workers with one pid)
    storage = optuna.storages.InMemoryStorage()
    workers = [optuna.create_study(storage=storage, study_name="s", load_if_exists=True,
                                   sampler=trial_seeded_sampler(3)) for _ in range(2)]
    asked = [w.ask() for w in workers]
    assert asked[0].suggest_float("x", 0, 1) != asked[1].suggest_float("x", 0, 1)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used",
                            "ignore::optuna.exceptions.ExperimentalWarning")
def test_two_workers_failing_a_dead_workers_trial_queue_it_once(tmp_path):
    """SQLite has no SELECT ... FOR UPDATE: two workers that read a dead worker's trial at
    once both failed it and each queued a copy, so the same trial ran twice (seen in the
    multi-worker test of `risloc tune`). Here the two workers' reads are forced to overlap:
    each waits after reading the trial until the other has read it too, or 2 s."""
    import threading
    import time

    from sqlalchemy import event

    from risloc.hpo import open_study

    s = TuneSettings(config=None, out_dir=str(tmp_path), heartbeat_s=1, grace_s=2)
    dead = open_study(s)
    trial = dead.ask()
    dead._storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)  # the trial's worker is silent past the grace period: it is stale
    barrier = threading.Barrier(2, timeout=2)
    workers = [open_study(s) for _ in range(2)]  # each with its own engine
    for w in workers:
        @event.listens_for(w._storage._backend.engine, "after_cursor_execute")
        def _overlap(conn, cursor, statement, *args):
            if statement.lstrip().startswith("SELECT") and "trials.trial_id = " in statement \
                    and "trial_heartbeats" not in statement:
                try:
                    barrier.wait()
                except threading.BrokenBarrierError:  # the other worker waits for the lock
                    pass
    threads = [threading.Thread(target=optuna.storages.fail_stale_trials, args=(w,))
               for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    states = [t.state.name for t in dead.get_trials()]
    assert states == ["FAIL", "WAITING"], states  # queued again once


def test_what_tune_prints_hides_the_password_and_a_ctrl_c_traceback():
    import logging

    from risloc.hpo.search import _InterruptReports

    s = TuneSettings(config="train_tiny", storage="postgresql+psycopg2://u:S3cret@db/risloc",
                     overrides=("model.hidden=24", "threads=1", "optim.lr=0.001"))
    assert "S3cret" not in s.storage_shown and "u:***@db/risloc" in s.storage_shown
    assert s.fixed_overrides() == {"model.hidden": 24, "optim.lr": 1e-3}  # not how it runs
    rel = TuneSettings(config="train_tiny", overrides=("data.val_file=v.h5",
                                                       "scene.snr_db=[0, 10]"))
    assert rel.fixed_overrides() == {"data.val_file": str(Path("v.h5").absolute()),
                                     "scene.snr_db": [0.0, 10.0]}  # (YAML-ready values)

    def record(msg):
        return logging.LogRecord("optuna", logging.WARNING, "", 0, msg, None, None)

    quiet = _InterruptReports()  # Optuna's two records of each failed trial
    assert not quiet.filter(record("Trial 0 failed with parameters: {} because of the "
                                   "following error: KeyboardInterrupt()."))
    assert not quiet.filter(record("Trial 0 failed with value None."))
    assert quiet.filter(record("Trial 1 failed with parameters: {} because of the following "
                               "error: FloatingPointError()."))
    assert quiet.filter(record("Trial 1 failed with value None."))
    assert not quiet.filter(record("Trial 2 failed ... DuplicateContinuation(...)"))
    assert not quiet.filter(record("Trial 2 failed with value None."))
    assert quiet.filter(record("Trial 10 failed with value None."))  # (not trial 0's)

    with pytest.raises(ValueError, match=r"--set schedule.epochs=7: risloc tune sets "
                                         r"schedule.epochs itself: use --epochs"):
        TuneSettings(config="train_tiny", overrides=("schedule.epochs=7",))
    TuneSettings(config="train_tiny", overrides=("progress=false",))  # harmless: taken


def test_the_folder_s_own_study_is_found_whatever_its_name_holds(tmp_path):
    """A review: the default URL was an f-string, so a folder named "a%20b" put the study in
    "a b" and one named "q?x" in the file "q"."""
    from sqlalchemy.engine import make_url

    for name in ("a%20b", "q?x", "plain"):
        s = TuneSettings(config="train_tiny", out_dir=str(tmp_path / name))
        assert make_url(s.storage_url).database == str(tmp_path / name / "study.db")
        assert s.own_db


def test_the_baseline_of_a_tuple_field_is_found_among_its_listed_choices(tmp_path):
    """A review: model.dilations (a tuple in the recipe, a list in the space's YAML) was
    said to lie outside a space listing it: --baseline refused such a space."""
    p = tmp_path / "s.yaml"
    p.write_text("model.dilations: {choices: [[1, 2, 1], [1, 2, 4, 2, 1, 1]]}\n"
                 "scene.snr_db: {choices: [[0, 20], [-5, 20]]}\n")
    base = load_train_config(None)
    space = load_space(p, base)
    params = {d.field: d.base_param(base) for d in space}
    assert params == {"model.dilations": [1, 2, 4, 2, 1, 1], "scene.snr_db": [-5, 20]}
    values = [override(d.field, d.value(params, base)) for d in space]
    assert load_train_config(None, values) == base
    with pytest.raises(ConfigError, match=r"model.dilations=\(1, 2, 4\) lies outside"):
        [d.base_param(load_train_config(None, ["model.dilations=[1, 2, 4]"])) for d in space]


def test_a_range_over_a_field_the_recipe_leaves_none_is_refused(tmp_path):
    """A review: scene.K (None in the recipe) took {low: 1, high: 3}; its ends validate,
    every trial's 1.37 failed its recipe, and --baseline crashed comparing 1.0 <= None."""
    p = tmp_path / "s.yaml"
    p.write_text("scene.K: {low: 1, high: 3}\n")
    with pytest.raises(ConfigError, match=r"scene.K: a range draws fractions, but the "
                                          r"recipe's scene.K is None: give it choices"):
        load_space(p)
    p.write_text("scene.K: {choices: [null, 2]}\n")  # (choices: taken, baseline found)
    base = load_train_config(None)
    assert [d.base_param(base) for d in load_space(p, base)] == [None]
    # a range over a field holding a pair (a mix of spreads) draws one spread per trial,
    # which the field takes: accepted
    p.write_text("scene.power_spread_db: {low: 0.0, high: 12.0}\n")
    mix = load_train_config(None, ["scene.power_spread_db=[0, 25]"])
    assert load_space(p, mix)[0].high == 12.0


def test_an_in_memory_sqlite_study_is_refused_however_it_is_spelled(tmp_path):
    from risloc.hpo import open_study

    for url in ("sqlite://", "sqlite:///:memory:"):
        s = TuneSettings(config=None, out_dir=str(tmp_path / "t"), storage=url)
        with pytest.raises(ValueError, match="an in-memory SQLite study ends with this"):
            open_study(s)


def test_a_folder_mark_of_an_earlier_version_names_its_storage_as_typed(tmp_path):
    """study.json of an earlier version held --storage as typed: the folder's own study.db
    spelled out is that folder's study, another file still another study's."""
    import json

    from risloc.hpo.search import claim_folder

    out = tmp_path / "t"
    out.mkdir()
    for typed, ok in ((f"sqlite:///{out}/./study.db", True),
                      (f"sqlite:///{tmp_path}/other.db", False)):
        (out / "study.json").write_text(json.dumps({"study_name": "risloc", "storage": typed}))
        s = TuneSettings(config=None, out_dir=str(out))
        if ok:
            claim_folder(s)
        else:
            with pytest.raises(ValueError, match=rf"holds the runs of study 'risloc' "
                                                 rf"\(sqlite:///{tmp_path}/other.db\)"):
                claim_folder(s)


def test_a_set_of_a_relative_field_is_taken_and_of_an_absolute_one_refused(tmp_path):
    """--set optim.lr is the base a relative optim.lr multiplies (taken); --set of an
    absolute searched field would lose to every trial's value (refused). Both are decided
    before any study opens: here the baseline check (batch 32 outside [64]) stops tune."""
    from risloc.hpo import tune

    p = tmp_path / "s.yaml"
    p.write_text("optim.lr: {low: 0.5, high: 2, log: true, relative: true}\n"
                 "optim.batch_size: {choices: [64]}\n")
    out = tmp_path / "t"
    for item, error, says in (("optim.lr=2e-3", ConfigError, "optim.batch_size=32 lies outside"),
                              ("optim.batch_size=64", ValueError, "optim.batch_size is searched")):
        s = TuneSettings(config=None, overrides=(item,), out_dir=str(out), space=str(p),
                         baseline=True)
        with pytest.raises(error, match=says):
            tune(s)
    assert not (out / "study.db").exists()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_stale_trial_failed_on_opening_is_logged(tmp_path, caplog):
    """A rerun after a worker's SIGKILL failed its silent trial and continued it, logging
    nothing of it (an interrupted trial's requeue is logged): the failed trial is named."""
    import logging
    import time

    from risloc.hpo import open_study
    from risloc.hpo.search import _fail_stale_trials

    s = TuneSettings(config=None, out_dir=str(tmp_path), heartbeat_s=1, grace_s=2)
    dead = open_study(s)
    trial = dead.ask()
    dead._storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)  # silent past the grace period: stale
    with caplog.at_level(logging.INFO, logger="risloc"):
        _fail_stale_trials(open_study(s))
    assert [t.state.name for t in dead.get_trials()] == ["FAIL", "WAITING"]
    assert "trial 0 sent no heartbeat" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="risloc"):
        _fail_stale_trials(open_study(s))  # nothing running: nothing said
    assert "heartbeat" not in caplog.text


@pytest.mark.parametrize("epochs, missing", [
    (3, "an SWA epoch and the final loss-weight phase"),  # train_tuned's study
    (4, "an SWA epoch and the final loss-weight phase"), (5, None), (10, None)])
def test_trials_too_short_for_the_recipe_s_swa_and_final_phase_are_warned_of(epochs, missing,
                                                                             caplog):
    """(a docs check: the guide said every phase runs in a trial of any length; with the
    default recipe, 2 warm-up epochs and a final fifth rounded up, fewer than 5 run neither)"""
    import logging

    from risloc.hpo.search import _warn_short_schedule

    with caplog.at_level(logging.WARNING, logger="risloc.hpo.search"):
        _warn_short_schedule(load_train_config(None), epochs)
    said = caplog.text
    assert (f"--epochs {epochs} leaves each trial without {missing} of the recipe's schedule"
            in said) if missing else said == ""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="risloc.hpo.search"):
        _warn_short_schedule(load_train_config(None, ["schedule.swa_frac=0",
                                                      "schedule.weight_final_frac=0"]), 3)
    assert caplog.text == ""  # the recipe has neither phase: nothing is left out


def test_a_study_folder_that_cannot_be_written_is_refused_before_the_study_opens(
        tmp_path, monkeypatch):
    """A study folder that cannot be written is named as such before the study opens (a
    read-only folder, tried with root's override capabilities dropped: SQLAlchemy's
    "unable to open database file" came out). CI runs as root, which writes anywhere: the
    writability probe's file write (Path.write_bytes) is made to fail instead."""
    from risloc.hpo import open_study

    def refuse(self, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", refuse)
    s = TuneSettings(config=None, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"the study folder .* is not writable: Permission "
                                         "denied"):
        open_study(s)
    assert not (tmp_path / "study.db").exists()


def test_on_start_is_called_once_after_the_checks_before_the_first_trial(tmp_path,
                                                                       monkeypatch):
    """The CLI's banner: after the argument checks (none for an argument refused), before
    the first trial trains."""
    import risloc.training as training
    from risloc.hpo import tune

    events = []
    monkeypatch.setattr(training, "train", lambda cfg, **kw: (
        events.append("train"), {"best_objective": 0.5})[1])
    tune(TuneSettings(config="train_tiny", out_dir=str(tmp_path / "a"), n_trials=1,
                      epochs=1), on_start=lambda: events.append("start"))
    assert events == ["start", "train"]
    with pytest.raises(ValueError, match="in-memory SQLite"):
        tune(TuneSettings(config="train_tiny", out_dir=str(tmp_path / "b"), n_trials=1,
                          epochs=1, storage="sqlite://"), on_start=lambda: events.append("x"))
    assert events == ["start", "train"]
