"""A study's bookkeeping: its settings and storage URLs, continued and requeued trials, the
trial budget, the reports and the search space's entries (a mutation review of risloc.hpo
and `risloc tune`: each test kills an edit the rest of the suite let through)."""

import importlib.util
from pathlib import Path

import pytest

from risloc.hpo import TuneSettings


def test_settings_refuse_zero_epochs_a_negative_warmup_and_a_grace_within_one_beat():
    with pytest.raises(ValueError, match="n_trials and epochs must be >= 1"):
        TuneSettings(config=None, epochs=0)
    with pytest.raises(ValueError, match="startup_trials and warmup_epochs must be >= 0"):
        TuneSettings(config=None, warmup_epochs=-1)
    # a grace period of one heartbeat fails a live trial whose beat is a moment late
    for hb, grace in ((5, 5), (0, 5)):
        with pytest.raises(ValueError, match="need 0 < heartbeat_s < grace_s"):
            TuneSettings(config=None, heartbeat_s=hb, grace_s=grace)
    TuneSettings(config=None, heartbeat_s=5, grace_s=6)


def test_a_heroku_style_postgres_url_names_a_dialect_sqlalchemy_loads(monkeypatch):
    """postgres:// (Heroku's spelling; SQLAlchemy has no dialect of that name) is taken as
    postgresql://, whichever driver is installed."""
    from sqlalchemy.engine import make_url

    s = TuneSettings(config=None, storage="postgres://u:p@host/db")
    assert make_url(s.storage_url).get_backend_name() == "postgresql"
    assert s.storage_url.endswith("://u:p@host/db")
    if importlib.util.find_spec("psycopg2") or importlib.util.find_spec("psycopg"):
        make_url(s.storage_url).get_dialect()  # (NoSuchModuleError for 'postgres')
    # the driver named is one that imports and has a dialect here, psycopg 3 first (a
    # review: SQLAlchemy 2.0 takes psycopg2 for a bare postgresql://, 2.1 psycopg; 1.4 has
    # no psycopg dialect; a psycopg without libpq fails to import)
    import sqlalchemy.engine.url as sa_url
    from sqlalchemy.exc import NoSuchModuleError

    real_import, real_dialect = importlib.import_module, sa_url.URL.get_dialect

    def drivers(importable, dialects):
        def fake_import(name, *a):
            if name in ("psycopg", "psycopg2"):
                if name not in importable:
                    raise ImportError(f"no {name}")
                return object()
            return real_import(name, *a)

        def fake_dialect(url, *a, **kw):
            if url.drivername.startswith("postgresql+") and \
                    url.drivername.split("+")[1] not in dialects:
                raise NoSuchModuleError(f"Can't load plugin: {url.drivername}")
            return real_dialect(url, *a, **kw)

        monkeypatch.setattr(importlib, "import_module", fake_import)
        monkeypatch.setattr(sa_url.URL, "get_dialect", fake_dialect)
        return s.storage_url

    both = ("psycopg", "psycopg2")
    assert drivers(both, both) == "postgresql+psycopg://u:p@host/db"
    assert drivers(("psycopg2",), both) == "postgresql+psycopg2://u:p@host/db"
    assert drivers(both, ("psycopg2",)) == "postgresql+psycopg2://u:p@host/db"  # (SA 1.4)
    assert drivers((), both) == "postgresql://u:p@host/db"


def _fake_train(monkeypatch, result, objectives=(1.0,), calls=None):
    """risloc.training.train replaced by one that reports ``objectives`` (one an epoch)
    and returns ``result``: a trial's bookkeeping without training."""
    import risloc.training as training

    def train(cfg, resume=False, callback=None, **kw):
        if calls is not None:
            calls.append((cfg.out_dir.name if hasattr(cfg.out_dir, "name")
                          else str(cfg.out_dir).rsplit("/", 1)[-1], resume))
        for epoch, value in enumerate(objectives, 1):
            callback(epoch, {"objective": value})
        return result

    monkeypatch.setattr(training, "train", train)


def _objective_of(tmp_path, **kw):
    from risloc.hpo import load_space
    from risloc.hpo.search import DEFAULT_SPACE, _objective
    from risloc.training import load_train_config

    s = TuneSettings(config="train_tiny", out_dir=str(tmp_path), **kw)
    base = load_train_config("train_tiny")
    return _objective(s, base, load_space(DEFAULT_SPACE, base))


def test_a_trial_records_its_headline_metrics_and_its_best_objective(tmp_path, monkeypatch):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _fake_train(monkeypatch, {"best_objective": 0.25, "best_epoch": 3, "val_K_accuracy": 0.5,
                              "val_angle_median_deg": 1.5})
    study = optuna.create_study()
    study.optimize(_objective_of(tmp_path), n_trials=1)
    t = study.trials[0]
    assert t.value == 0.25
    assert t.user_attrs == {"best_epoch": 3, "val_K_accuracy": 0.5,
                            "val_angle_median_deg": 1.5}
    assert type(t.user_attrs["best_epoch"]) is int  # trials.csv: "3", not "3.0"


def test_a_second_copy_of_a_continuation_whose_first_was_pruned_does_not_train(
        tmp_path, monkeypatch):
    """Two workers queued a copy each of interrupted trial 5's continuation: the first
    copy is pruned (finished), so the second fails as a duplicate instead of training."""
    import optuna

    from risloc.hpo.search import DuplicateContinuation

    class PruneAll(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return True

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    calls = []
    _fake_train(monkeypatch, {"best_objective": 0.5}, calls=calls)
    study = optuna.create_study(pruner=PruneAll())
    for _ in range(3):
        study.enqueue_trial({}, user_attrs={"continues": 5, "run": 5})
    study.optimize(_objective_of(tmp_path), n_trials=3, catch=(DuplicateContinuation,))
    assert [t.state.name for t in study.trials] == ["PRUNED", "FAIL", "FAIL"]
    assert calls == [("trial_0005", False)]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                            "ignore:Heartbeat of storage is supposed to be used")
def test_a_copy_of_a_copy_that_never_ran_continues_the_first_trial_s_run(
        tmp_path, monkeypatch):
    """Optuna's copy of a stale trial whose own first copy died before it started (so
    never recorded the run it continues) resumes the first trial's folder, not the empty
    folder of the dead copy."""
    import optuna

    from risloc.hpo import open_study
    from risloc.hpo.search import _stale_trial_retry

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s = TuneSettings(config="train_tiny", out_dir=str(tmp_path))
    study = open_study(s)
    retry = next(iter(_stale_trial_retry().values()))
    study.ask()  # trial 0: its worker trained an epoch, then died
    (tmp_path / "trial_0000").mkdir()
    (tmp_path / "trial_0000" / "last.pt").write_bytes(b"")
    for number in (0, 1):  # trial 1, its copy, dies before its first step: copied again
        study._storage.set_trial_state_values(study.trials[number]._trial_id,
                                              optuna.trial.TrialState.FAIL)
        retry(study, study.trials[number])
        if number == 0:
            study.ask()
    calls = []
    _fake_train(monkeypatch, {"best_objective": 0.5}, calls=calls)
    study.optimize(_objective_of(tmp_path), n_trials=1)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "COMPLETE"]
    assert calls == [("trial_0000", True)]
    assert study.trials[2].user_attrs["continues"] == 0


def test_a_storage_whose_driver_is_missing_is_named_not_a_traceback(tmp_path):
    from risloc.hpo import open_study

    if importlib.util.find_spec("pg8000") is not None:
        pytest.skip("pg8000 is installed")
    s = TuneSettings(config=None, out_dir=str(tmp_path / "t"),
                     storage="postgresql+pg8000://u:S3cret@host/db")
    with pytest.raises(ValueError, match=r"cannot open the study storage "
                                         r"postgresql\+pg8000://u:\*\*\*@host/db: ") as err:
        open_study(s)
    assert "S3cret" not in str(err.value)


def test_the_cli_fails_a_trial_after_three_silent_heartbeats(tmp_path, monkeypatch):
    """--heartbeat N: a trial silent for 3N seconds is failed and re-queued (its help)."""
    from typer.testing import CliRunner

    import risloc.hpo as hpo
    from risloc.cli.main import app

    seen = []

    def stop(settings, on_start=None):
        seen.append(settings)
        raise KeyboardInterrupt

    monkeypatch.setattr(hpo, "tune", stop)
    res = CliRunner().invoke(app, ["tune", "--config", "train_tiny", "--out",
                                   str(tmp_path / "t"), "--heartbeat", "7", "--trials", "3",
                                   "--epochs", "2", "--seed", "5", "--study-name", "x"])
    assert res.exit_code == 130, res.output
    s = seen[0]
    assert (s.heartbeat_s, s.grace_s) == (7, 21)
    assert (s.n_trials, s.epochs, s.seed, s.study_name) == (3, 2, 5, "x")


def test_an_interrupted_continuation_is_queued_to_train_on_in_the_first_run_s_folder():
    """Trial 0 interrupted; trial 1 continued it in trial_0000 and was interrupted too: its
    own continuation resumes trial_0000 (where the checkpoint is), a baseline stays one."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from risloc.hpo.search import requeue_interrupted

    study = optuna.create_study()
    fail = dict(state=TrialState.FAIL, params={"x": 0.5},
                distributions={"x": optuna.distributions.FloatDistribution(0, 1)})
    study.add_trial(create_trial(**fail, user_attrs={"interrupted": True,
                                                     "interrupted_trial": 0,
                                                     "baseline": True}))
    study.add_trial(create_trial(**fail, user_attrs={
        "interrupted": True, "interrupted_trial": 1, "continues": 0, "run": 0,
        "baseline": True}))
    # Optuna's copy of a stale trial carries its attributes: not itself the interrupted one
    study.add_trial(create_trial(**fail, user_attrs={"interrupted": True,
                                                     "interrupted_trial": 7}))
    assert requeue_interrupted(study) == [1]
    queued = study.trials[3]
    assert queued.state == TrialState.WAITING
    assert queued.system_attrs["fixed_params"] == {"x": 0.5}  # (drawn again as they were)
    assert queued.user_attrs == {"continues": 1, "run": 0, "baseline": True}
    assert requeue_interrupted(study) == []  # queued once


def test_any_table_named_as_optuna_s_marks_another_program_s_database(tmp_path):
    """Not only a 'trials' table: another program's 'studies' (or any Optuna table name)
    without Optuna's version_info is refused, and the database left as it was."""
    import sqlite3

    from risloc.hpo import open_study

    for table in ("studies", "trial_params"):  # (a review: only studies was tried here)
        other = tmp_path / f"{table}.db"
        with sqlite3.connect(other) as con:
            con.execute(f"create table {table}(x int)")
            con.execute("create table users(x int)")
        con.close()
        before = other.read_bytes()
        s = TuneSettings(config=None, out_dir=str(tmp_path / "t"),
                         storage=f"sqlite:///{other}")
        with pytest.raises(ValueError, match=rf"holds tables of another program \({table}, "
                                             r"no Optuna version_info\)"):
            open_study(s)
        assert other.read_bytes() == before


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
@pytest.mark.parametrize("name", ["trials.csv", "best_overrides.yaml"])
def test_a_report_whose_write_fails_leaves_the_previous_one_whole(tmp_path, monkeypatch,
                                                                   name):
    """An I/O error as a report is flushed to disk (a full disk, a lost network share)
    leaves the previous report under its name, whole, and no stray file beside it."""
    import os

    import optuna

    from risloc.hpo import load_space
    from risloc.hpo.search import write_reports
    from risloc.training import load_train_config

    base = load_train_config(None)
    space_file = tmp_path / "space.yaml"
    space_file.write_text("blend.beta: {low: 0.1, high: 0.5}\n")
    space = load_space(space_file, base)
    study = optuna.create_study()
    dist = {"blend.beta": optuna.distributions.FloatDistribution(0.1, 0.5)}
    study.add_trial(optuna.trial.create_trial(value=0.5, params={"blend.beta": 0.2},
                                              distributions=dist))
    out = tmp_path / "out"
    write_reports(study, base, space, out)
    before = (out / name).read_bytes()
    study.add_trial(optuna.trial.create_trial(value=0.1, params={"blend.beta": 0.3},
                                              distributions=dist))
    real = os.fsync

    def fsync(fd):
        if f".{name}." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(28, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        write_reports(study, base, space, out)
    assert (out / name).read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == sorted(
        {"trials.csv", "best_overrides.yaml"})


def test_a_study_refuses_a_training_file_whose_contents_changed(tmp_path):
    """data.train_file as data.val_file: the same bytes under another path are the same
    data; other bytes are another study's."""
    import optuna

    from risloc.hpo import load_space
    from risloc.hpo.search import DEFAULT_SPACE, check_study_recipe
    from risloc.training import load_train_config

    train = tmp_path / "train.h5"
    train.write_bytes(b"scenes A")

    def settings(path):
        return TuneSettings(config="train_tiny", out_dir=str(tmp_path / "study"),
                            overrides=(f"data.train_file={path}",))

    space = load_space(DEFAULT_SPACE, load_train_config("train_tiny"))
    study = optuna.create_study()
    check_study_recipe(study, settings(train), space)
    copy = tmp_path / "elsewhere.h5"
    copy.write_bytes(b"scenes A")
    check_study_recipe(study, settings(copy), space)  # another path, the same scenes: taken
    # a study recorded by an earlier version (the file's path in its recipe, not "given")
    held = study.user_attrs["risloc_trials"]
    old = optuna.create_study()
    old.set_user_attr("risloc_trials", {**held, "recipe": {
        **held["recipe"], "data": {**held["recipe"]["data"], "train_file": str(train)}}})
    check_study_recipe(old, settings(copy), space)
    train.write_bytes(b"scenes B")
    with pytest.raises(ValueError, match=r"another recipe or search space \(the contents of "
                                         r"data.train_file\)"):
        check_study_recipe(study, settings(train), space)


def _space(tmp_path, text, base=None):
    from risloc.hpo import load_space

    p = tmp_path / "space.yaml"
    p.write_text(text)
    return load_space(p, base)


def test_space_entries_refused_beyond_the_suite_s_list(tmp_path):
    from risloc.config import ConfigError

    for text, msg in (("blend.beta: {low: 0.2, high: 0.2}", "finite low < high"),
                      ("", "expected a mapping of recipe fields to ranges"),
                      ("prefetch: {low: 0.5, high: 2, relative: true}",
                       "relative ranges multiply a float field"),
                      ("schedule.weight_schedule: {low: 0.5, high: 2}", "is a section"),
                      # a relative range is checked at the values it gives the recipe
                      ("schedule.swa_frac: {low: 0.5, high: 5.5, relative: true}",
                       r"schedule.swa_frac=1.1\d* makes no valid recipe")):
        with pytest.raises(ConfigError, match=msg):
            _space(tmp_path, text)
    with pytest.raises(ConfigError, match="search space file not found: .*nope.yaml"):
        from risloc.hpo import load_space

        load_space(tmp_path / "nope.yaml")
    # 0.5 .. 4.5 times the recipe's 0.2: every value below 1, a valid recipe
    (swa,) = _space(tmp_path, "schedule.swa_frac: {low: 0.5, high: 4.5, relative: true}")
    assert (swa.low, swa.high, swa.relative) == (0.5, 4.5, True)


def test_a_range_that_starts_or_ends_at_the_recipe_s_value_holds_the_baseline(tmp_path):
    from risloc.training import load_train_config

    base = load_train_config(None)  # blend.beta 0.3, optim.lr 1e-3
    for text in ("blend.beta: {low: 0.3, high: 0.5}\noptim.lr: {low: 1, high: 4, "
                 "relative: true}", "blend.beta: {low: 0.1, high: 0.3}\noptim.lr: "
                 "{low: 0.25, high: 1, relative: true, log: true}"):
        space = _space(tmp_path, text, base)
        assert {d.field: d.base_param(base) for d in space} == {"blend.beta": 0.3,
                                                                 "optim.lr": 1.0}


def test_a_log_range_is_searched_on_a_log_scale(tmp_path):
    import optuna

    from risloc.training import load_train_config

    base = load_train_config(None)
    space = _space(tmp_path, "optim.lr: {low: 0.1, high: 10, log: true, relative: true}\n"
                             "blend.beta: {low: 0.1, high: 0.5}", base)
    study = optuna.create_study()
    study.optimize(lambda t: sum(float(d.suggest(t, base)) for d in space), n_trials=1)
    dists = study.trials[0].distributions
    assert dists["optim.lr"].log is True and dists["blend.beta"].log is False


def test_the_folder_s_own_study_under_a_relative_out_is_found(tmp_path, monkeypatch):
    """--out runs/tune (relative, the default) with no --storage: the folder's own
    study.db, whose folder tune makes (not refused as another SQLite file's missing one)."""
    from risloc.hpo import open_study

    monkeypatch.chdir(tmp_path)
    s = TuneSettings(config=None, out_dir="runs/tune")
    assert s.own_db and s.sqlite_file == tmp_path / "runs" / "tune" / "study.db"
    open_study(s)
    assert (tmp_path / "runs" / "tune" / "study.db").exists()


def test_pruned_trials_count_toward_the_study_s_budget(tmp_path, monkeypatch):
    """--trials counts finished trials, pruned ones too: a diverging (pruned) trial ends a
    study of one, with no completed trial and so no best_overrides.yaml."""
    import risloc.training as training
    from risloc.hpo import tune
    from risloc.training.loop import DivergedError

    calls = []

    def train(cfg, resume=False, callback=None, **kw):
        calls.append(cfg.out_dir)
        if len(calls) == 1:
            raise DivergedError("non-finite gradients")
        return {"best_objective": 0.5}

    monkeypatch.setattr(training, "train", train)
    study = tune(TuneSettings(config="train_tiny", out_dir=str(tmp_path), n_trials=1,
                              epochs=1, warmup_epochs=0))
    assert [t.state.name for t in study.trials] == ["PRUNED"] and len(calls) == 1
    assert not (tmp_path / "best_overrides.yaml").exists()
    assert "PRUNED" in (tmp_path / "trials.csv").read_text()


def test_best_overrides_names_the_lowest_completed_trial_and_where_it_trained(tmp_path):
    """Not the last trial, nor a pruned one (Optuna gives it its last reported value): the
    completed trial of least objective, in the run folder it trained in, beside the
    baseline and the --set values every trial ran with."""
    import optuna
    import yaml
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from risloc.hpo.search import write_reports
    from risloc.training import load_train_config

    base = load_train_config(None)
    space = _space(tmp_path, "optim.lr: {low: 0.5, high: 2, relative: true}", base)
    dist = {"optim.lr": FloatDistribution(0.5, 2)}
    study = optuna.create_study()
    for value, lr, state, attrs in ((0.3, 1.0, TrialState.COMPLETE, {"baseline": True}),
                                    (0.05, 0.5, TrialState.PRUNED, {}),
                                    (0.1, 2.0, TrialState.COMPLETE, {"continues": 0, "run": 0}),
                                    (0.4, 1.5, TrialState.COMPLETE, {})):
        study.add_trial(create_trial(state=state, value=value, params={"optim.lr": lr},
                                     distributions=dist, user_attrs=attrs,
                                     intermediate_values={1: value}))
    write_reports(study, base, space, tmp_path, "train_tiny", {"model.hidden": 24})
    import csv

    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert float(rows[2]["optim.lr (x base)"]) == 2.0  # the multiple, beside the value
    assert float(rows[2]["optim.lr"]) == pytest.approx(2.0 * base.optim.lr)
    best = yaml.safe_load((tmp_path / "best_overrides.yaml").read_text())
    assert best == {"trial": 2, "objective": 0.1, "run": "trial_0000", "baseline_trial": 0,
                    "baseline_objective": 0.3,
                    "overrides": {"model.hidden": 24, "optim.lr": 2.0 * base.optim.lr}}


def test_a_folder_of_another_study_is_refused_before_the_storage_gains_a_study(tmp_path):
    """The same study name in another storage is another study; and a refused study
    leaves no empty study behind in a shared storage."""
    import optuna

    from risloc.hpo import tune
    from risloc.hpo.search import claim_folder

    out = tmp_path / "out"
    claim_folder(TuneSettings(config="train_tiny", out_dir=str(out)))
    other_db = f"sqlite:///{tmp_path / 'shared.db'}"
    with pytest.raises(ValueError, match=r"holds the runs of study 'risloc' \(.*study.db\), "
                                         r"not 'risloc' \(sqlite:///.*shared.db\)"):
        claim_folder(TuneSettings(config="train_tiny", out_dir=str(out), storage=other_db))
    optuna.create_study(study_name="kept", storage=other_db)
    with pytest.raises(ValueError, match="holds the runs of study 'risloc'"):
        tune(TuneSettings(config="train_tiny", out_dir=str(out), storage=other_db,
                          study_name="other"))
    assert optuna.get_all_study_names(other_db) == ["kept"]


def test_a_trial_reports_each_epoch_as_its_step_and_a_non_finite_objective_as_worst(
        tmp_path, monkeypatch):
    """The pruner reads epoch e's objective at step e (--warmup-epochs counts epochs); a
    non-finite one is reported as a value worse than any (so it is not taken as good)."""
    import math

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _fake_train(monkeypatch, {"best_objective": 0.5}, objectives=(0.7, math.nan, 0.5))
    study = optuna.create_study()
    study.optimize(_objective_of(tmp_path), n_trials=1)
    steps = study.trials[0].intermediate_values
    assert sorted(steps) == [1, 2, 3] and (steps[1], steps[3]) == (0.7, 0.5)
    assert steps[2] >= 1e9


def test_neighbouring_base_seeds_draw_no_trial_alike():
    """Seeds 3 and 4 must not draw shifted copies of one sequence (seed 4's trial n the
    draw of seed 3's trial n + 1)."""
    from risloc.hpo.search import trial_seed

    assert len({trial_seed(s, n) for s in range(5) for n in range(200)}) == 1000


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_the_study_s_pruner_waits_for_its_startup_trials_and_warmup_epochs(tmp_path):
    """--startup-trials 1 --warmup-epochs 2: a trial behind the median is pruned from its
    second epoch's report (step 2), not at its first."""
    from risloc.hpo import open_study

    study = open_study(TuneSettings(config=None, out_dir=str(tmp_path), startup_trials=1,
                                    warmup_epochs=2))
    done = study.ask()
    for step in (1, 2, 3):
        done.report(0.1, step)
    study.tell(done, 0.1)
    trial = study.ask()
    trial.report(1.0, 1)
    assert not trial.should_prune()
    trial.report(1.0, 2)
    assert trial.should_prune()


def test_the_study_s_sampler_is_multivariate_tpe_with_the_constant_liar(monkeypatch):
    """Workers share a study: a running trial counts as a bad one (constant liar), so two
    workers do not draw next to each other; fields are drawn jointly (multivariate). (The
    arguments TPESampler is made with, not its private state: another Optuna may rename it.)"""
    import optuna

    from risloc.hpo.search import trial_seeded_sampler

    made = []
    real = optuna.samplers.TPESampler

    def recording(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.samplers, "TPESampler", recording)
    sampler = trial_seeded_sampler(0)
    study = optuna.create_study(sampler=sampler)
    sampler.before_trial(study, study.ask())
    assert made and all(k.get("constant_liar") and k.get("multivariate") and k.get("group")
                        for k in made)


def test_the_best_of_tied_trials_is_the_first_and_the_baseline_the_completed_copy(tmp_path):
    """Tied objectives: the first trial that reached it. An interrupted baseline (failed,
    no value) continued by a copy: the copy is the baseline reported."""
    import optuna
    import yaml
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from risloc.hpo.search import write_reports
    from risloc.training import load_train_config

    base = load_train_config(None)
    space = _space(tmp_path, "blend.beta: {low: 0.1, high: 0.5}", base)
    dist = {"blend.beta": FloatDistribution(0.1, 0.5)}
    study = optuna.create_study()
    for value, beta, state, attrs in (
            (None, 0.3, TrialState.FAIL, {"baseline": True, "interrupted": True,
                                          "interrupted_trial": 0}),
            (0.2, 0.4, TrialState.COMPLETE, {}),
            (0.3, 0.3, TrialState.COMPLETE, {"baseline": True, "continues": 0, "run": 0}),
            (0.2, 0.1, TrialState.COMPLETE, {})):
        study.add_trial(create_trial(state=state, value=value, params={"blend.beta": beta},
                                     distributions=dist, user_attrs=attrs))
    write_reports(study, base, space, tmp_path)
    best = yaml.safe_load((tmp_path / "best_overrides.yaml").read_text())
    assert (best["trial"], best["overrides"]) == (1, {"blend.beta": 0.4})
    assert (best["baseline_trial"], best["baseline_objective"]) == (2, 0.3)


def test_a_pruned_baseline_is_neither_the_best_nor_the_baseline_reported(tmp_path):
    """A pruned trial holds its last reported value (Optuna's): a baseline pruned early, at
    a low value, is no objective of the untuned recipe trained with the study's budget."""
    import optuna
    import yaml
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from risloc.hpo.search import write_reports
    from risloc.training import load_train_config

    base = load_train_config(None)
    space = _space(tmp_path, "blend.beta: {low: 0.1, high: 0.5}", base)
    dist = {"blend.beta": FloatDistribution(0.1, 0.5)}
    study = optuna.create_study()
    study.add_trial(create_trial(state=TrialState.PRUNED, value=0.05, params={"blend.beta": 0.3},
                                 distributions=dist, user_attrs={"baseline": True},
                                 intermediate_values={1: 0.05}))
    study.add_trial(create_trial(value=0.2, params={"blend.beta": 0.4}, distributions=dist))
    assert study.trials[0].value == 0.05
    write_reports(study, base, space, tmp_path)
    best = yaml.safe_load((tmp_path / "best_overrides.yaml").read_text())
    assert best["trial"] == 1 and "baseline_trial" not in best


def test_a_relative_field_s_set_is_the_base_its_best_multiple_applies_to(tmp_path):
    """--set optim.lr=2e-3 with a relative optim.lr: each trial's lr is its multiple of
    2e-3 (the trial's value after the --set), and best_overrides.yaml gives that lr, not the
    --set's."""
    import optuna
    import yaml
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from risloc.hpo.search import _trial_config, write_reports
    from risloc.training import load_train_config

    s = TuneSettings(config=None, out_dir=str(tmp_path), overrides=("optim.lr=2e-3",))
    assert _trial_config(s, ["optim.lr=0.004"], 3).optim.lr == 0.004
    base = load_train_config(None, ["optim.lr=2e-3"])
    space = _space(tmp_path, "optim.lr: {low: 0.5, high: 4, relative: true}", base)
    study = optuna.create_study()
    study.add_trial(create_trial(value=0.1, params={"optim.lr": 2.0},
                                 distributions={"optim.lr": FloatDistribution(0.5, 4)}))
    write_reports(study, base, space, tmp_path, None, s.fixed_overrides())
    best = yaml.safe_load((tmp_path / "best_overrides.yaml").read_text())
    assert best["overrides"] == {"optim.lr": pytest.approx(4e-3)}


def test_a_study_whose_budget_is_spent_queues_no_interrupted_trial_again(tmp_path,
                                                                       monkeypatch, caplog):
    """tune with --trials already reached trains nothing and queues nothing: an
    interrupted trial waits to be queued by a tune that will run it (no WAITING row in
    trials.csv that no worker takes). (--warmup-epochs equal to --epochs is named.)"""
    import logging

    import optuna
    from optuna.trial import TrialState, create_trial

    import risloc.training as training
    from risloc.hpo import open_study, tune

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained"))
    s = TuneSettings(config="train_tiny", out_dir=str(tmp_path), n_trials=1, epochs=1,
                     warmup_epochs=1)
    study = open_study(s)
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={
        "interrupted": True, "interrupted_trial": 0}))
    study.add_trial(create_trial(value=0.5))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with caplog.at_level(logging.WARNING, logger="risloc.hpo.search"):
        assert [t.state.name for t in tune(s).trials] == ["FAIL", "COMPLETE"]
    assert "--warmup-epochs 1 equals --epochs 1: a trial is pruned only after its last " \
           "epoch" in caplog.text


def test_the_first_copy_of_a_continuation_trains_though_a_later_copy_is_running(
        tmp_path, monkeypatch):
    """Two workers take the two queued copies of one continuation at once: the later copy
    stops (DuplicateContinuation), the first trains whatever the later one's state, so the
    interrupted trial is not lost (both stopping would leave it to no one)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from risloc.hpo.search import DuplicateContinuation

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    calls = []
    _fake_train(monkeypatch, {"best_objective": 0.5}, calls=calls)
    study = optuna.create_study()
    attrs = {"continues": 5, "run": 5}
    study.enqueue_trial({}, user_attrs=attrs)
    study.add_trial(create_trial(state=TrialState.RUNNING, user_attrs=attrs))
    study.optimize(_objective_of(tmp_path), n_trials=1, catch=(DuplicateContinuation,))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]
    assert calls == [("trial_0005", False)]


def test_a_new_trial_trains_afresh_over_a_run_left_in_its_folder(tmp_path, monkeypatch):
    """Only a continuation resumes: a new trial whose folder holds a run (a study.db
    deleted to start over, its trial folders kept) trains from its first epoch instead of
    resuming another trial's recipe."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (tmp_path / "trial_0000").mkdir()
    (tmp_path / "trial_0000" / "last.pt").write_bytes(b"an earlier study's run")
    calls = []
    _fake_train(monkeypatch, {"best_objective": 0.5}, calls=calls)
    study = optuna.create_study()
    study.optimize(_objective_of(tmp_path), n_trials=1)
    assert calls == [("trial_0000", False)]


def test_a_choice_given_twice_in_two_spellings_is_refused(tmp_path):
    """64 and 64.0 are one batch size (the recipe reads both as 64): drawn twice as often."""
    from risloc.config import ConfigError

    with pytest.raises(ConfigError, match="a choice is listed twice"):
        _space(tmp_path, "optim.batch_size: {choices: [64, 32, 64.0]}")


def test_a_range_over_a_true_or_false_field_is_refused(tmp_path):
    """A review: model.zoom {low: 0, high: 1} was taken (its ends 0.0 and 1.0 validate as
    booleans), and every trial's drawn fraction then failed its recipe."""
    from risloc.config import ConfigError

    with pytest.raises(ConfigError, match=r"model.zoom is true or false: give it choices"):
        _space(tmp_path, "model.zoom: {low: 0, high: 1}")


def test_a_trial_still_running_when_the_budget_is_spent_is_named(tmp_path, caplog):
    """A review: a rerun within the grace period of a kill finished the budget without
    the killed trial, which stayed RUNNING, and nothing but a row of trials.csv said so."""
    import logging

    from optuna.trial import TrialState, create_trial

    from risloc.hpo import open_study, tune

    s = TuneSettings(config="train_tiny", out_dir=str(tmp_path), n_trials=1, epochs=1)
    study = open_study(s)
    study.add_trial(create_trial(value=0.5))
    study.add_trial(create_trial(state=TrialState.RUNNING))
    with caplog.at_level(logging.INFO, logger="risloc.hpo.search"):
        tune(s)
    assert "trial(s) 1 still RUNNING" in caplog.text and "180 s" in caplog.text


def test_failed_trials_do_not_count_toward_the_study_s_budget(tmp_path, monkeypatch):
    """--trials counts finished (complete or pruned) trials: a failed one leaves its place
    to a trial that trains."""
    from optuna.trial import TrialState, create_trial

    from risloc.hpo import open_study, tune

    calls = []
    _fake_train(monkeypatch, {"best_objective": 0.5}, calls=calls)
    s = TuneSettings(config="train_tiny", out_dir=str(tmp_path), n_trials=1, epochs=1,
                     warmup_epochs=0)
    open_study(s).add_trial(create_trial(state=TrialState.FAIL))
    assert [t.state.name for t in tune(s).trials] == ["FAIL", "COMPLETE"]
    assert calls == [("trial_0001", False)]


def test_a_ctrl_c_marks_the_trial_interrupted_with_its_own_number(tmp_path, monkeypatch):
    """The number tells a trial stopped by Ctrl-C from Optuna's copy of it (which copies
    the attributes): requeue_interrupted queues only the former."""
    import optuna

    import risloc.training as training

    def train(cfg, resume=False, callback=None, **kw):
        raise KeyboardInterrupt

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    monkeypatch.setattr(training, "train", train)
    study = optuna.create_study()
    with pytest.raises(KeyboardInterrupt):
        study.optimize(_objective_of(tmp_path), n_trials=1)
    t = study.trials[0]
    assert t.state.name == "FAIL"
    assert t.user_attrs == {"interrupted": True, "interrupted_trial": 0}


def test_a_continuation_that_cannot_resume_trains_afresh_and_names_its_own_folder(
        tmp_path, monkeypatch):
    """Trial 5's run refuses to resume (its data file copied anew): the continuation trains
    from its first epoch in its own folder, and its run attribute (best_overrides.yaml's
    "run") names that folder, not trial 5's."""
    import optuna

    import risloc.training as training
    from risloc.training.loop import ResumeRefused

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    (tmp_path / "trial_0005").mkdir()
    (tmp_path / "trial_0005" / "last.pt").write_bytes(b"a run")
    calls = []

    def train(cfg, resume=False, callback=None, **kw):
        calls.append((cfg.out_dir.name, resume))
        if resume:
            raise ResumeRefused("the data file changed")
        return {"best_objective": 0.5}

    monkeypatch.setattr(training, "train", train)
    study = optuna.create_study()
    study.enqueue_trial({}, user_attrs={"continues": 5, "run": 5})
    study.optimize(_objective_of(tmp_path), n_trials=1)
    assert calls == [("trial_0005", True), ("trial_0000", False)]
    assert study.trials[0].user_attrs["run"] == 0


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # (ask/tell by hand)
def test_the_study_s_pruner_prunes_nothing_before_its_startup_trials_complete(tmp_path):
    """--startup-trials 2: with one trial completed, a trial far behind it is not pruned
    (a pruner that ignored startup_trials pruned it at its warm-up's end)."""
    from risloc.hpo import open_study

    study = open_study(TuneSettings(config=None, out_dir=str(tmp_path), startup_trials=2,
                                    warmup_epochs=0))
    done = study.ask()
    done.report(0.1, 1)
    study.tell(done, 0.1)
    trial = study.ask()
    trial.report(1.0, 1)
    assert not trial.should_prune()


def test_an_interrupted_tune_reports_the_trials_finished_before_it(tmp_path, monkeypatch):
    """trials.csv and best_overrides.yaml are written when a tune is interrupted, not only
    at its end (a scale-out persona: a SIGTERM left neither, trial 0 complete in the
    study)."""
    import risloc.training as training
    from risloc.hpo import tune

    calls = []

    def train(cfg, resume=False, callback=None, **kw):
        calls.append(cfg.out_dir)
        if len(calls) == 2:
            raise KeyboardInterrupt
        callback(1, {"objective": 0.5})
        return {"best_objective": 0.5}

    monkeypatch.setattr(training, "train", train)
    s = TuneSettings(config="train_tiny", out_dir=str(tmp_path), n_trials=3, epochs=1,
                     warmup_epochs=0)
    with pytest.raises(KeyboardInterrupt):
        tune(s)
    rows = (tmp_path / "trials.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["0", "COMPLETE"], ["1", "FAIL"]], rows
    assert "trial: 0" in (tmp_path / "best_overrides.yaml").read_text()
    # a report that cannot be written is warned of; the interrupt goes on (a diff review)
    import risloc.hpo.search as search

    def refuse(*a, **k):
        raise OSError("disk full")

    calls.clear()
    monkeypatch.setattr(search, "write_reports", refuse)
    with pytest.raises(KeyboardInterrupt):
        tune(TuneSettings(config="train_tiny", out_dir=str(tmp_path / "b"), n_trials=3,
                          epochs=1, warmup_epochs=0))
