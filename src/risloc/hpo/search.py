"""Optuna search over the training recipe: ``tune(settings) -> study``.

Each trial is one call of :func:`risloc.training.train` on the base recipe plus the
trial's values, in HPO mode (smaller beta jitter). The objective is the recipe's
end-to-end validation objective (median angle error + a weighted F1 miss, MUSIC on
R_blend, on the fixed validation set): the number that selects best.pt. After every epoch
the trial reports it, and a median pruner stops trials that fall behind (the training
loop's callback raises ``optuna.TrialPruned``). A trial's SWA epochs and final loss-weight
phase are fractions of its epochs, behind warm-ups of whole epochs and steps, so a short
trial may run neither (warned of: ``--epochs`` should leave each phase an epoch).

Scale-out: the study lives in any SQLAlchemy database (``--storage``; default an SQLite
file in the output folder). Any number of workers on any machines run the same command
against one storage and study name; each trial is drawn with a seed made of the base
seed and its trial number (:func:`trial_seed`: workers draw different trials, a study run
again by one worker draws the same), the study stops at ``n_trials`` finished trials in total, and a
worker that dies mid-trial stops sending heartbeats: after ``grace_s`` its trial is marked
failed and queued again for another worker, which resumes its run from its last finished
epoch. The test split is never touched.

The search space is a YAML file (:mod:`risloc.hpo.space`; the default ships as
``risloc/hpo/search_space.yaml``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from risloc.config import ConfigError, parse_overrides
from risloc.hpo.space import SET_BY_TUNE, Dimension, load_space, override
from risloc.io.atomic import (
    check_folder_writable,
    check_output_folder,
    file_sha256,
    make_output_folder,
    write_csv_atomic,
    write_text_atomic,
)
from risloc.training.config import (
    RUN_FREE,
    TrainConfig,
    differences,
    listed,
    load_train_config,
    trajectory,
)

log = logging.getLogger(__name__)

DEFAULT_SPACE = Path(__file__).resolve().parent / "search_space.yaml"


def _postgres_driver() -> str:
    """'+psycopg' or '+psycopg2', the first PostgreSQL driver that imports and that this
    SQLAlchemy has a dialect for (psycopg 3's needs SQLAlchemy 2), or '' (SQLAlchemy's
    default then, and its error where it has none)."""
    import importlib

    from sqlalchemy.engine import URL
    from sqlalchemy.exc import NoSuchModuleError

    for driver in ("psycopg", "psycopg2"):
        try:
            importlib.import_module(driver)
            URL.create(f"postgresql+{driver}").get_dialect()
        except (ImportError, NoSuchModuleError):
            continue
        return f"+{driver}"
    return ""


@dataclass(frozen=True)
class TuneSettings:
    """What ``risloc tune`` runs.

    config : base recipe, a file or a shipped recipe's name (None = the built-in defaults)
    overrides : extra ``section.field=value`` overrides applied to every trial
    out_dir : per-trial run folders, trials.csv, best_overrides.yaml (and the default
        SQLite study)
    storage : SQLAlchemy URL of the study (None: sqlite in out_dir)
    space : search-space YAML file (None: the package's risloc/hpo/search_space.yaml)
    n_trials : finished (complete or pruned) trials wanted in the study, over all workers
    epochs : training epochs per trial
    seed : base seed of the TPE sampler (each trial adds its number: :func:`trial_seed`)
    startup_trials / warmup_epochs : MedianPruner(n_startup_trials, n_warmup_steps)
    baseline : queue the base recipe itself as a trial (once per study), so the study's
        best is read against the untuned recipe trained with the same budget
    heartbeat_s / grace_s : a running trial beats every heartbeat_s; one silent for
        grace_s is failed and re-queued (RDB storages)
    """

    config: str | None
    overrides: tuple[str, ...] = ()
    out_dir: str = "runs/tune"
    storage: str | None = None
    space: str | None = None
    n_trials: int = 20
    epochs: int = 10
    seed: int = 0
    study_name: str = "risloc"
    startup_trials: int = 6
    warmup_epochs: int = 8
    heartbeat_s: int = 60
    grace_s: int = 180
    baseline: bool = False

    def __post_init__(self) -> None:
        if self.n_trials < 1 or self.epochs < 1:
            raise ValueError(f"n_trials and epochs must be >= 1, got {self.n_trials}, "
                             f"{self.epochs}")
        if self.startup_trials < 0 or self.warmup_epochs < 0:
            raise ValueError(f"startup_trials and warmup_epochs must be >= 0, got "
                             f"{self.startup_trials}, {self.warmup_epochs}")
        if not 0 < self.heartbeat_s < self.grace_s:
            raise ValueError(f"need 0 < heartbeat_s < grace_s, got {self.heartbeat_s}, "
                             f"{self.grace_s}")
        if self.storage is not None:  # named before anything prints or opens the storage
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                make_url(self.storage_url)
            except ArgumentError:
                raise ValueError(f"--storage {self.storage!r} is not an SQLAlchemy URL (e.g. "
                                 "sqlite:///runs/tune/study.db or "
                                 "postgresql://user:pass@host/db)") from None
        if isinstance(self.overrides, str):  # (iterated, read character by character)
            raise TypeError(f"overrides must be a tuple of section.field=value strings, got "
                            f"the string {self.overrides!r} (write ({self.overrides!r},))")
        for item in self.overrides:  # (tune's own values would silently win)
            for key in set_fields(item):
                if key in SET_BY_TUNE and not _progress_off(item):
                    how = {"schedule.epochs": ": use --epochs", "out_dir": ": use --out",
                           "progress": ": trials never show progress bars"}
                    raise ValueError(f"--set {item}: risloc tune sets {key} itself"
                                     f"{how.get(key, '')}")

    @property
    def storage_url(self) -> str:
        """The study's SQLAlchemy URL: a bare postgresql:// (or Heroku's postgres://, a
        dialect SQLAlchemy lacks) names a driver that works here (:func:`_postgres_driver`):
        SQLAlchemy's default driver differs between its versions."""
        if self.storage is None:  # (quoted: a folder named "a%20b" or "q?x" is that folder)
            from sqlalchemy.engine import URL

            return URL.create("sqlite", database=str(Path(self.out_dir) / "study.db")
                              ).render_as_string(hide_password=False)
        url = self.storage
        scheme, sep, rest = url.partition("://")
        if sep and scheme in ("postgresql", "postgres"):
            url = f"postgresql{_postgres_driver()}://{rest}"
        return url

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite file of the study, resolved (the folder's own study.db without
        --storage); None for another database."""
        if self.storage is None:
            return (Path(self.out_dir) / "study.db").resolve()
        return _sqlite_path(self.storage_url)

    @property
    def own_db(self) -> bool:
        """Whether the study is the output folder's own study.db (by default, or named)."""
        return self.sqlite_file == (Path(self.out_dir) / "study.db").resolve()

    @property
    def storage_shown(self) -> str:
        """:attr:`storage_url` as it may be printed: its password hidden."""
        from sqlalchemy.engine import make_url

        return make_url(self.storage_url).render_as_string(hide_password=True)

    def fixed_overrides(self) -> dict[str, Any]:
        """The ``--set`` values every trial ran with, as recipe overrides read from the
        recipe they made (a relative scene file's path absolute), the fields that only say
        how and where a run goes left out: the best trial's recipe needs them."""
        recipe = load_train_config(self.config, list(self.overrides)).model_dump(mode="json")
        fixed = {}
        for item in self.overrides:
            key = item.partition("=")[0].strip()
            if key.split(".")[0] not in RUN_FREE:
                fixed[key] = functools.reduce(lambda d, part: d[part], key.split("."), recipe)
        return fixed


def _progress_off(item: str) -> bool:
    """Whether an override is progress=false (in any spelling YAML reads as false): what
    every trial runs with, so harmless."""
    try:
        return parse_overrides([item]) == {"progress": False}
    except ConfigError:
        return False


def set_fields(item: str) -> list[str]:
    """The dotted recipe fields an override sets: ``optim.lr=1e-3`` sets optim.lr, and
    ``optim={lr: 1e-3, batch_size: 32}`` (a section's mapping) each field it holds."""
    def leaves(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict) and node:
            return [f for k, v in node.items() for f in leaves(v, f"{prefix}.{k}")]
        return [prefix]

    if "=" not in item:  # (named by the recipe's own reading)
        return [item.strip()]
    parsed = parse_overrides([item])
    return [f for k, v in parsed.items() for f in leaves(v, k)]


def _trial_config(settings: TuneSettings, values: list[str], number: int) -> TrainConfig:
    run_dir = Path(settings.out_dir) / f"trial_{number:04d}"
    return load_train_config(settings.config, [
        *settings.overrides, *values, f"schedule.epochs={settings.epochs}",
        "schedule.hpo_mode=true", f"out_dir={run_dir}", "progress=false"])


def _objective(settings: TuneSettings, base: TrainConfig, space: tuple[Dimension, ...]):
    import optuna

    from risloc.training import train
    from risloc.training.loop import DivergedError, ResumeRefused, RunFolderInUse

    def objective(trial: optuna.Trial) -> float:
        values = [override(d.field, d.suggest(trial, base)) for d in space]
        # a trial that continues an interrupted one, or Optuna's copy of one whose worker
        # died, trains on in that one's run folder
        run = _continued_run(trial)
        if run != trial.number:
            _check_single_continuation(trial)
        cfg = _trial_config(settings, values, run)
        resume = run != trial.number and (Path(cfg.out_dir) / "last.pt").exists()

        def report(epoch: int, metrics: dict[str, float]) -> None:
            value = metrics["objective"]
            trial.report(value if math.isfinite(value) else 1e9, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: objective {value:.3f}")

        try:
            try:
                result = train(cfg, resume=resume, callback=report)
            except (ResumeRefused, RunFolderInUse) as err:
                # its data file copied anew; or the worker of a trial failed as stale is
                # alive (late heartbeats) and trains there still: start afresh
                if run == trial.number:  # (its own folder: nothing to start afresh from)
                    raise
                log.warning("trial %d cannot continue trial %d's run (%s): it trains from its "
                            "first epoch in trial_%04d", trial.number,
                            trial.user_attrs.get(CONTINUES, run), err, trial.number)
                trial.set_user_attr(CONTINUES_RUN, trial.number)
                result = train(_trial_config(settings, values, trial.number), callback=report)
        except DivergedError as err:  # a searched learning rate too high: that trial only
            log.warning("trial %d pruned: %s", trial.number, err)
            raise optuna.TrialPruned(f"diverged: {err}") from None
        except KeyboardInterrupt as err:  # Ctrl-C: the next tune queues it again
            trial.set_user_attr(INTERRUPTED_TRIAL, trial.number)  # (requeue_interrupted)
            trial.set_user_attr(INTERRUPTED, True)
            err.interrupted_trial = trial.number  # (the CLI says a trial was interrupted)
            raise
        for key in ("best_epoch", "val_K_accuracy", "val_angle_median_deg"):
            if key in result:  # (an epoch is a whole number: "3" in trials.csv, not "3.0")
                trial.set_user_attr(key, (int if key == "best_epoch" else float)(result[key]))
        return float(result["best_objective"])

    return objective


# a trial's user attributes: INTERRUPTED (True) and INTERRUPTED_TRIAL (its own number) where
# Ctrl-C (or SIGTERM, in the CLI) stopped it (the number tells it from Optuna's retry of a
# stale trial, which copies the attributes); CONTINUES, the interrupted trial it continues,
# in the run folder of trial CONTINUES_RUN
INTERRUPTED = "interrupted"
INTERRUPTED_TRIAL = "interrupted_trial"
CONTINUES = "continues"
CONTINUES_RUN = "run"


def _continued_run(trial) -> int:
    """The trial whose run folder ``trial`` trains in: its own; an interrupted trial's
    (CONTINUES_RUN, set by :func:`requeue_interrupted`); or, for Optuna's copy of a trial
    failed as stale (its worker killed outright: SIGKILL, the out-of-memory killer, a lost
    machine), the folder that trial trained in, so the copy resumes from its last finished
    epoch instead of its first. The first copy's CONTINUES and CONTINUES_RUN are set here,
    for trials.csv and best_overrides.yaml; a copy of a copy inherits them (Optuna copies
    the user attributes), so it names the first trial it continues."""
    run = trial.user_attrs.get(CONTINUES_RUN)
    if run is not None:
        return run
    frozen = next(t for t in trial.study.get_trials(deepcopy=False)
                  if t.number == trial.number)
    failed = frozen.system_attrs.get("retry_history")  # Optuna's retries: oldest first
    if failed:
        run = failed[0]  # (the first: each copy since trained in its folder)
        trial.set_user_attr(CONTINUES, run)
        trial.set_user_attr(CONTINUES_RUN, run)
    return trial.number if run is None else run


class DuplicateContinuation(RuntimeError):
    """A second copy of one interrupted trial's continuation (two workers queued one each):
    it fails, the first goes on."""


def _check_single_continuation(trial) -> None:
    """DuplicateContinuation where a trial queued before this one continues the same
    interrupted trial and is running or has finished (a failed one, e.g. its worker dead,
    leaves the work to this one)."""
    from optuna.trial import TrialState

    mine = trial.user_attrs.get(CONTINUES)
    for t in trial.study.get_trials(deepcopy=False):
        if (t.number < trial.number and t.user_attrs.get(CONTINUES) == mine
                and t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)):
            log.info("trial %d: trial %d continues trial %d already (two workers queued it); "
                     "this copy stops", trial.number, t.number, mine)
            raise DuplicateContinuation(f"trial {t.number} continues trial {mine} already")


def requeue_interrupted(study) -> list[int]:
    """Queue again, with the same parameters, every trial stopped by Ctrl-C (or SIGTERM: the
    CLI takes it as Ctrl-C) that no trial continues yet; the copy resumes the interrupted
    run from its last finished epoch (in its folder), so an interrupted study loses at most
    one epoch. Returns their numbers.
    (Two workers that start at the same moment may both queue one: the second copy to start
    fails, :class:`DuplicateContinuation`; the study goes on.)"""
    from optuna.trial import TrialState

    continued = {t.user_attrs.get(CONTINUES) for t in study.trials}
    queued = []
    for t in study.trials:
        if (t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED_TRIAL) == t.number
                and t.number not in continued):
            attrs = {CONTINUES: t.number, CONTINUES_RUN: t.user_attrs.get(CONTINUES_RUN,
                                                                          t.number)}
            if t.user_attrs.get("baseline"):
                attrs["baseline"] = True
            study.enqueue_trial(t.params, user_attrs=attrs)
            queued.append(t.number)
    return queued


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number``: a study's trials are numbered by its storage,
    once each, so workers sharing it draw different trials, and one worker that runs a
    study again with the same seed draws the same ones."""
    return (seed * 1_000_003 + number) % (2**31 - 1)


def _tpe(seed: int):
    """The study's sampler: multivariate TPE with the constant liar (workers' running
    trials count as bad ones), seeded."""
    import optuna

    with warnings.catch_warnings():  # multivariate/group/liar: "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=True)


def trial_seeded_sampler(seed: int):
    """A sampler that draws each trial as a TPE sampler seeded by :func:`trial_seed` (TPE
    keeps no state between trials but its random generator; a generator seeded per process
    made no study reproducible)."""
    from optuna.samplers import BaseSampler

    class TrialSeeded(BaseSampler):
        def __init__(self) -> None:
            self._tpe = _tpe(seed)

        def before_trial(self, study, trial) -> None:  # (first of a trial's calls)
            self._tpe = _tpe(trial_seed(seed, trial.number))
            self._tpe.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._tpe.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._tpe.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._tpe.sample_independent(study, trial, param_name,
                                                param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self._tpe.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self._tpe.reseed_rng()

    return TrialSeeded()


def _stale_trial_retry() -> dict:
    """RDBStorage's argument that fails a trial whose worker stopped beating and queues it
    again (Optuna >= 4.9 names it heartbeat_stale_trial_callback)."""
    from optuna import storages

    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):
        return {"heartbeat_stale_trial_callback":
                storages.RetryHeartbeatStaleTrialCallback(max_retry=2)}
    return {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=2)}


SQLITE_ENGINE = {"connect_args": {"timeout": 120.0, "isolation_level": None}}


def serialize_sqlite(engine) -> None:
    """Make every transaction on an SQLite study take the write lock when it begins (BEGIN
    IMMEDIATE; engine made with :data:`SQLITE_ENGINE`: the driver's own deferred BEGIN off,
    a busy worker waits up to 2 minutes). SQLite has no SELECT ... FOR UPDATE, and Python's
    driver begins a transaction only at its first write, so two workers that read a trial's
    state at once both updated it: both failed a dead worker's trial and each queued a copy
    (the same trial ran twice), or both took the same queued trial (the SQLAlchemy recipe
    for SQLite transactions, "Serializable isolation / Savepoints / Transactional DDL")."""
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def open_study(settings: TuneSettings):
    """Create or load the study (any SQLAlchemy URL), with heartbeats, multivariate TPE and
    the median pruner."""
    import optuna
    import sqlalchemy.exc
    from optuna.storages import RDBStorage
    from sqlalchemy.engine import make_url

    if settings.own_db:  # the folder's own study.db (another storage: the folder comes with
        make_output_folder(settings.out_dir)  # the claim)
        check_folder_writable(settings.out_dir, f"the study folder {settings.out_dir}")
    elif settings.sqlite_file is not None and not settings.sqlite_file.parent.is_dir():
        raise ValueError(f"cannot open the study storage {settings.storage_shown}: the folder "
                         f"{settings.sqlite_file.parent} does not exist")
    url = settings.storage_url
    parsed = make_url(url)  # (a malformed URL: named by TuneSettings)
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError(f"--storage {shown}: an in-memory SQLite study ends with this "
                         "process and no other worker sees it; give a file, e.g. "
                         "sqlite:///runs/tune/study.db")
    try:
        _check_foreign_tables(url, shown)
        with warnings.catch_warnings():  # "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sqlite = parsed.get_backend_name() == "sqlite"
            storage = RDBStorage(url, heartbeat_interval=settings.heartbeat_s,
                                 grace_period=settings.grace_s, **_stale_trial_retry(),
                                 engine_kwargs=SQLITE_ENGINE if sqlite else None)
            if sqlite:
                serialize_sqlite(storage.engine)
        # (its info lines, "A new study created in RDB ...", in its own format: not ours)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=settings.study_name, storage=storage, load_if_exists=True,
            direction="minimize", sampler=trial_seeded_sampler(settings.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials,
                                               n_warmup_steps=settings.warmup_epochs))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:
        first = " ".join(str(err).split())[:300]
        raise ValueError(f"cannot open the study storage {shown}: {first}") from None
    # (create_study loads a study of that name as it is, whatever its direction)
    if study.directions != [optuna.study.StudyDirection.MINIMIZE]:
        held = (f"has {len(study.directions)} objectives" if len(study.directions) > 1
                else "maximizes its objective")
        raise ValueError(f"study {settings.study_name!r} ({shown}) {held}; risloc tune "
                         "minimizes its one validation objective: give this search another "
                         "--study-name")
    return study


# the tables of an Optuna storage that another program's database may also name
_OPTUNA_TABLES = {"studies", "study_directions", "study_user_attributes",
                  "study_system_attributes", "trials", "trial_params", "trial_values",
                  "trial_user_attributes", "trial_system_attributes",
                  "trial_intermediate_values", "trial_heartbeats", "version_info"}


def _check_foreign_tables(url: str, shown: str) -> None:
    """ValueError where the database holds tables named as Optuna's but no Optuna storage
    (another program's database): Optuna would add its own tables beside them and fail on
    theirs."""
    import sqlalchemy

    sqlite = sqlalchemy.engine.make_url(url).get_backend_name() == "sqlite"
    engine = sqlalchemy.create_engine(url, **(SQLITE_ENGINE if sqlite else {}))
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
    finally:
        engine.dispose()
    if tables & _OPTUNA_TABLES and "version_info" not in tables:
        raise ValueError(f"the study storage {shown} holds tables of another program "
                         f"({', '.join(sorted(tables & _OPTUNA_TABLES))}, no Optuna "
                         "version_info): give Optuna a database of its own")


STUDY_MARK = "study.json"  # the study an output folder's trial runs and reports belong to


OWN_DB = "sqlite:///<out_dir>/study.db"  # a folder's mark of its own study.db


def _storage_mark(storage: str, out: Path) -> str:
    """A study's storage as a folder's mark records it: the folder's own study.db as
    :data:`OWN_DB` and another SQLite file by its resolved path, however either is spelled;
    another database's URL as shown (its password hidden)."""
    db = None if storage == OWN_DB else _sqlite_path(storage)
    if db is None:
        return storage
    return OWN_DB if db == (out / "study.db").resolve() else f"sqlite:///{db}"


def _sqlite_path(url: str) -> Path | None:
    """The resolved file of an SQLite URL; None for another database (or no URL)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


def claim_folder(settings: TuneSettings, write: bool = True) -> None:
    """Mark ``out_dir`` as the folder of this study, or refuse one that belongs to another:
    studies number their trials from 0, so two studies in one folder would overwrite each
    other's trial runs (trial_0000, ...) and reports. ``write=False`` only checks (before
    the storage is opened: a storage that cannot be opened claims no folder)."""
    out = Path(settings.out_dir)
    mark = {"study_name": settings.study_name,
            "storage": OWN_DB if settings.own_db else _storage_mark(settings.storage_shown, out)}
    if write:  # (a check makes no folder: a study that cannot open leaves none behind)
        out.mkdir(parents=True, exist_ok=True)
    path = out / STUDY_MARK
    if path.exists():
        held = json.loads(path.read_text())
        if isinstance(held.get("storage"), str):  # (a mark of an earlier version: as typed)
            held = {**held, "storage": _storage_mark(held["storage"], out)}
        if held != mark:
            own = f"{out / 'study.db'}"  # the mark's placeholder, as the user sees the folder

            def shown(storage: str) -> str:
                return storage.replace(OWN_DB, own)

            raise ValueError(f"{out} holds the runs of study {held['study_name']!r} "
                             f"({shown(held['storage'])}), not {mark['study_name']!r} "
                             f"({shown(mark['storage'])}): give this study its own --out")
        return
    if write:
        write_text_atomic(path, json.dumps(mark, indent=2) + "\n")


STUDY_RECIPE = "risloc_trials"  # the study's user attribute: what every trial of it trains


def _data_digests(cfg: TrainConfig) -> dict[str, str]:
    """SHA-256 of the recipe's scene files (data.train_file, data.val_file): the workers of
    a study may read their own copies, on other machines, but every copy must hold the
    same scenes."""
    out = {}
    for name in ("train_file", "val_file"):
        path = getattr(cfg.data, name)
        if path is not None:
            out[name] = file_sha256(path)
    return out


def check_study_recipe(study, settings: TuneSettings, space: tuple[Dimension, ...]) -> None:
    """Record in the study what its trials train (the base recipe with its epochs, and the
    search space), or refuse to add trials of another: a relative dimension's parameter is
    a multiple of the base recipe's value, so trials of two recipes in one study mix up
    their results and best_overrides.yaml would apply a multiplier to the wrong base."""
    cfg = _trial_config(settings, [], 0)
    mine = {"recipe": trajectory(cfg), "space": [dataclasses.asdict(d) for d in space],
            "data": _data_digests(cfg)}
    mine = json.loads(json.dumps(mine))  # tuples as lists, as the storage returns them
    held = study.user_attrs.get(STUDY_RECIPE)
    if held is None:
        study.set_user_attr(STUDY_RECIPE, mine)
        return
    recipe = held["recipe"]  # a study from before the files read "given": their paths
    if held.get("data"):     # (its contents are compared by the digests below)
        recipe = {**recipe, "data": {**recipe["data"], **{
            k: "given" for k in held["data"] if recipe["data"].get(k) is not None}}}
    diff = differences(recipe, mine["recipe"])
    spaces = [{d["field"]: d for d in space} for space in (held["space"], mine["space"])]
    if spaces[0] != spaces[1]:  # (entries in another order: the same space)
        fields = sorted(f for f in spaces[0].keys() | spaces[1].keys()
                        if spaces[0].get(f) != spaces[1].get(f))
        diff.append(f"the search space's {', '.join(fields)}")
    for name, digest in (held.get("data") or {}).items():  # (older studies: no digests)
        if mine["data"].get(name) not in (None, digest):
            diff.append(f"the contents of data.{name}")
    if diff:
        raise ValueError(f"study {settings.study_name!r} ({settings.storage_shown}) holds trials "
                         f"of another recipe or search space ({listed(diff)}): run it "
                         "with the recipe, --epochs and --space it began with, or start a "
                         "new study in another --out (and, in a shared --storage, under "
                         "another --study-name)")


def relative_fields(settings: TuneSettings) -> set[str]:
    """The searched fields whose parameter is a multiple of the base recipe's value."""
    base = load_train_config(settings.config, list(settings.overrides))
    return {d.field for d in load_space(settings.space or DEFAULT_SPACE, base) if d.relative}


def tune(settings: TuneSettings, on_start: Callable[[], None] | None = None):
    """Work on the study until it holds ``n_trials`` finished trials (all workers counted);
    write trials.csv and, once a trial has completed, best_overrides.yaml. Returns it.
    ``on_start``: called once the settings are checked and the study opened (the CLI's
    banner: printed only where no argument error follows it)."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from risloc.training.loop import RunFolderInUse

    check_output_folder(settings.out_dir, what=f"the study folder {settings.out_dir}")
    base = load_train_config(settings.config, list(settings.overrides))
    space = load_space(settings.space or DEFAULT_SPACE, base)
    # (a relative field's --set is its base value, which the trials multiply)
    searched = {d.field for d in space if not d.relative}
    for item in settings.overrides:  # (the trials' values come after --set, and win)
        for key in set(set_fields(item)) & searched:
            where = settings.space or "the default search space"
            raise ValueError(f"--set {item}: {key} is searched ({where}), so each trial's "
                             "value would replace yours; to fix it, give --space a space "
                             "without it")
    # the base recipe inside the space (--baseline), checked before any study is touched
    baseline = {d.field: d.base_param(base) for d in space} if settings.baseline else None
    if settings.warmup_epochs >= settings.epochs:  # (epochs report as steps 1..epochs)
        log.warning("--warmup-epochs %d %s --epochs %d: %s", settings.warmup_epochs,
                    "equals" if settings.warmup_epochs == settings.epochs else "exceeds",
                    settings.epochs, "a trial is pruned only after its last epoch"
                    if settings.warmup_epochs == settings.epochs else "no trial is pruned")
    _warn_short_schedule(base, settings.epochs)
    claim_folder(settings, write=False)
    study = open_study(settings)
    check_study_recipe(study, settings, space)
    claim_folder(settings)
    if on_start is not None:
        on_start()
    if baseline is not None and not any(t.user_attrs.get("baseline") for t in study.trials):
        study.enqueue_trial(baseline,
                            user_attrs={"baseline": True}, skip_if_exists=True)
    # trials of a killed worker whose heartbeats stopped are failed here too, not only when
    # a next trial starts: a study whose budget is spent starts none
    _fail_stale_trials(study)
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    budget = MaxTrialsCallback(settings.n_trials, states=done)
    finished = sum(t.state in done for t in study.trials)
    if finished < settings.n_trials:
        log.info("study %s: %d finished trials of %d", settings.study_name, finished,
                 settings.n_trials)
        for number in requeue_interrupted(study):
            log.info("trial %d was interrupted: queued again, to continue its run", number)
        # (Optuna's records come from child loggers: a filter acts on the handlers)
        handlers, quiet = logging.getLogger("optuna").handlers, _InterruptReports()
        for h in handlers:
            h.addFilter(quiet)
        objective = _objective(settings, base, space)
        try:
            while sum(t.state in done for t in study.trials) < settings.n_trials:
                try:
                    study.optimize(objective, callbacks=[budget], gc_after_trial=True,
                                   catch=(FloatingPointError, RunFolderInUse,
                                          DuplicateContinuation))
                except ValueError as err:
                    # another worker failed this worker's running trial as stale (its
                    # heartbeats came later than grace_s, e.g. on a loaded machine) and
                    # queued it again; Optuna then refuses to record it here: go on
                    if not str(err).startswith("Cannot tell a FAIL trial"):
                        raise
                    log.warning("a trial of this worker was failed as stale by another "
                                "worker (late heartbeats) and queued again; going on")
        except KeyboardInterrupt:  # the trials finished so far, reported before it goes on
            _reports_on_interrupt(study, base, space, settings)
            raise
        finally:
            for h in handlers:
                h.removeFilter(quiet)
    try:  # (Ctrl-C after the last trial, before its reports: reported all the same)
        _fail_stale_trials(study)
        running = [t.number for t in study.trials if t.state == TrialState.RUNNING]
        if running:  # (a review: a rerun soon after a kill finished without it, and said nothing)
            log.info("trial(s) %s still RUNNING: another worker's, or one of a worker killed "
                     "less than %d s ago; once silent that long it is failed and queued again "
                     "by the next `risloc tune` of the study, which continues it",
                     ", ".join(map(str, running)), settings.grace_s)
        write_reports(study, base, space, Path(settings.out_dir), settings.config,
                      settings.fixed_overrides(), settings.epochs)
    except KeyboardInterrupt:
        _reports_on_interrupt(study, base, space, settings)
        raise
    return study


def _reports_on_interrupt(study, base: TrainConfig, space: tuple[Dimension, ...],
                          settings: TuneSettings) -> None:
    """The reports of the trials finished so far, written as a Ctrl-C ends ``tune`` (a
    report that cannot be written is logged: it does not replace the interrupt)."""
    try:
        write_reports(study, base, space, Path(settings.out_dir), settings.config,
                      settings.fixed_overrides(), settings.epochs)
    except Exception as err:
        log.warning("the study's reports were not written: %s", err)


def _warn_short_schedule(base: TrainConfig, epochs: int) -> None:
    """Warn where the trials' ``epochs`` leave out a phase of the recipe's schedule: the SWA
    epochs and the final loss-weight phase are fractions of the epochs, rounded up to whole
    epochs from the end, behind a warm-up of whole epochs (a review: 3 epochs, the study
    behind train_tuned, ran neither)."""
    from risloc.training.schedules import final_start, phase_of

    s = base.schedule
    missing = [what for what, absent in (
        ("an SWA epoch", s.swa_frac > 0 and final_start(s.swa_frac, epochs) >= epochs),
        ("the final loss-weight phase", s.weight_final_frac > 0 and all(
            phase_of(e, epochs, s.weight_warmup_epochs, s.weight_final_frac) != 2
            for e in range(epochs)))) if absent]
    if missing:
        log.warning("--epochs %d leaves each trial without %s of the recipe's schedule: the "
                    "trials are judged on another schedule than a run of more epochs",
                    epochs, " and ".join(missing))


def _fail_stale_trials(study) -> None:
    """Optuna's ``fail_stale_trials`` (heartbeats older than the grace period), without its
    "experimental" warning (stable since Optuna 2.9). Logs each trial it fails, as an
    interrupted trial's requeue is logged (a rerun after a SIGKILL continued the dead
    trial and said nothing of it)."""
    import optuna
    from optuna.trial import TrialState

    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if running:
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.number in running:
                log.info("trial %d sent no heartbeat within the grace period (its worker "
                         "killed or lost): failed, and queued again to continue its run",
                         t.number)


class _InterruptReports(logging.Filter):
    """Optuna reports a trial ended by Ctrl-C, or a duplicate continuation's, with its whole
    traceback and then "Trial N failed with value None."; the CLI and the log say it in one
    line. Drops both records (a filter of every Optuna handler: one instance for them all,
    which remembers the trials whose report it dropped)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        trial = re.match(r"Trial (\d+) failed", text)
        if "KeyboardInterrupt" in text or "DuplicateContinuation" in text:
            if trial:
                self.dropped.add(trial[1])
            return False
        return not (trial and trial[1] in self.dropped and "failed with value" in text)


def write_reports(study, base: TrainConfig, space: tuple[Dimension, ...], out: Path,
                  recipe: str | None = None, fixed: dict[str, Any] | None = None,
                  epochs: int | None = None) -> None:
    """trials.csv (every trial, with the recipe value of each searched field, and for a
    relative field its multiple of the base value as '<field> (x base)') and
    best_overrides.yaml (the best completed trial as recipe overrides, for ``risloc train
    --overrides``: the ``fixed`` values every trial ran with, then the searched ones; its
    header says how to train the trial itself again, with the study's ``epochs``), each
    written atomically."""
    def searched(params: dict) -> dict:
        row = {}
        for d in space:
            if d.field in params:
                row[d.field] = d.value(params, base)
                if d.relative:
                    row[f"{d.field} (x base)"] = params[d.field]
        return row

    rows = [{"number": t.number, "state": t.state.name, "value": t.value,
             **searched(t.params), **t.user_attrs} for t in study.trials]
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("number", "state",
                                                                           "value"), k))
    write_csv_atomic(out / "trials.csv", cols, rows)
    completed = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    if not completed:
        return
    best = min(completed, key=lambda t: t.value)
    params = {d.field: d.value(best.params, base) for d in space if d.field in best.params}
    params = {k: (float(v) if isinstance(v, float) else v) for k, v in params.items()}
    # (its run folder: a trial that continued an interrupted one trained in that one's)
    report = {"trial": best.number, "objective": float(best.value),
              "run": f"trial_{best.user_attrs.get(CONTINUES_RUN, best.number):04d}"}
    baseline = [t for t in completed if t.user_attrs.get("baseline")]
    if baseline:  # the untuned recipe with the same budget, for comparison
        report["baseline_trial"] = baseline[0].number
        report["baseline_objective"] = float(baseline[0].value)
    text = yaml.safe_dump({**report, "overrides": {**(fixed or {}), **params}},
                          sort_keys=False)
    # trials train with the HPO beta jitter (schedule.hpo_mode), a final run without it
    again = f"--epochs {epochs} " if epochs is not None else "--epochs <the study's> "
    write_text_atomic(out / "best_overrides.yaml",
                      "# Best trial of the study: risloc train --config "
                      f"{recipe or '<recipe>'} --overrides this file\n# (the trial itself "
                      f"again, with the study's run settings: add {again}--set "
                      "schedule.hpo_mode=true,\n# the trials' smaller beta jitter)\n" + text)
