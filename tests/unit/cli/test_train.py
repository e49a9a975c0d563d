"""Parts of `risloc train` a mutation review found untested: the overrides file, the
recipe of a resumed run, the leftovers of a run that failed to start."""

import pytest
import typer

from risloc.cli.main import app
from risloc.cli.train import _recipe, _remove_if_unused, read_overrides
from risloc.training.config import load_train_config
from risloc.training.loop import LOCK_FILE


def test_an_overrides_file_of_risloc_tune_or_a_plain_mapping(tmp_path):
    """best_overrides.yaml of risloc tune (under 'overrides') and a plain mapping give the
    same overrides, values as YAML/JSON (lists, booleans and null intact)."""
    tuned = tmp_path / "best_overrides.yaml"
    tuned.write_text("overrides:\n  optim.lr: 0.002\n  scene.snr_db: [0, 10]\n"
                     "  schedule.snr_curriculum: true\n  scene.K: null\n")
    plain = tmp_path / "plain.yaml"
    plain.write_text("optim.lr: 0.002\nscene.snr_db: [0, 10]\nschedule.snr_curriculum: true\n"
                     "scene.K: null\n")
    got = read_overrides(tuned)
    assert got == read_overrides(plain)
    cfg = load_train_config(None, got)
    assert cfg.optim.lr == 0.002 and cfg.scene.snr_db == (0, 10)
    assert cfg.schedule.snr_curriculum is True and cfg.scene.K is None
    assert read_overrides(None) == []
    with pytest.raises(FileNotFoundError, match="overrides file not found"):
        read_overrides(tmp_path / "missing.yaml")
    listed = tmp_path / "listed.yaml"  # (a review: the mapping check untested)
    listed.write_text("overrides:\n  - optim.lr=0.002\n")
    with pytest.raises(ValueError, match="listed.yaml: expected a mapping of recipe fields"):
        read_overrides(listed)


def test_set_overrides_the_overrides_file_and_the_options_override_both(
        tmp_path, monkeypatch):
    """--overrides is applied before --set, and --out, --epochs, --device, --threads and
    --progress over both (a mutation review: the order, and each option dropped, passed)."""
    import risloc.cli.train as cli_train

    seen = []
    monkeypatch.setattr(cli_train, "train", lambda cfg, **kw: seen.append(cfg) or {})
    file = tmp_path / "best_overrides.yaml"
    file.write_text(f"overrides:\n  optim.lr: 0.002\n  optim.batch_size: 4\n"
                    f"  order.scenes: 0\n  out_dir: {tmp_path / 'elsewhere'}\n")
    given = ["optim.lr=0.003", "schedule.epochs=9", "threads=2", "device=cuda",
             "progress=true", f"out_dir={tmp_path / 'other'}"]
    run = tmp_path / "run"
    cli_train._train(None, given, run, 4, "cpu", 1, False, False, file, False)
    cfg = seen[0]
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.order.scenes) == (0.003, 4, 0)
    assert (cfg.schedule.epochs, cfg.threads, cfg.device, cfg.progress) == (4, 1, "cpu", False)
    assert str(cfg.out_dir) == str(run) and (run / "metrics.json").exists()


def test_a_resumed_run_takes_its_stored_recipe_with_the_commands_overrides(tmp_path):
    """--resume without --config: the recipe stored in <out>/last.pt, the command's
    overrides applied on top and out_dir the folder resumed (wherever it was written)."""
    from risloc.inference.checkpoint import save_checkpoint

    stored = load_train_config(None, ["optim.lr=0.003", "out_dir=/elsewhere/run"])
    run = tmp_path / "moved"
    run.mkdir()
    save_checkpoint(run / "last.pt", {"config": stored.to_json()})
    cfg = _recipe(None, [f"out_dir={run}", "schedule.epochs=7"], resume=True)
    assert cfg.optim.lr == 0.003 and cfg.schedule.epochs == 7
    assert str(cfg.out_dir) == str(run)


def test_a_run_copied_into_the_default_folder_resumes_there(tmp_path, monkeypatch):
    """Without --out, --resume continues the default recipe's folder: its checkpoints are
    written there, not to the out_dir stored in a last.pt copied in from elsewhere."""
    from pathlib import Path

    from risloc.inference.checkpoint import save_checkpoint

    monkeypatch.chdir(tmp_path)
    folder = Path(load_train_config("train_default").out_dir)
    folder.mkdir(parents=True)
    stored = load_train_config(None, [f"out_dir={tmp_path / 'elsewhere'}"])
    save_checkpoint(folder / "last.pt", {"config": stored.to_json()})
    assert Path(_recipe(None, [], resume=True).out_dir) == folder


def test_a_folder_left_by_a_run_that_failed_to_start_goes_only_if_unused(tmp_path):
    """The folder a failed run created goes when it holds nothing but the lock (or is
    empty); a file of anyone else keeps it."""
    for held in ([], [LOCK_FILE]):
        run = tmp_path / f"run{len(held)}"
        run.mkdir()
        for name in held:
            (run / name).write_text("")
        _remove_if_unused(run)
        assert not run.exists()
    run = tmp_path / "kept"
    run.mkdir()
    (run / LOCK_FILE).write_text("")
    (run / "notes.txt").write_text("mine")
    _remove_if_unused(run)
    assert (run / "notes.txt").exists()


def test_a_run_that_loses_its_new_folder_to_another_leaves_it_to_that_run(
        tmp_path, monkeypatch):
    """Two runs starting at once into a new folder: the one refused (in use) leaves the
    folder and its lock file to the other (a mutation review: removing them passed)."""
    import contextlib

    import risloc.cli.train as cli_train
    from risloc.io.atomic import make_output_folder
    from risloc.training.loop import RunFolderInUse, run_folder_lock

    run = tmp_path / "run"
    with contextlib.ExitStack() as other:
        def made_and_taken(folder):  # the other run takes the folder just made
            make_output_folder(folder)
            other.enter_context(run_folder_lock(folder))

        monkeypatch.setattr(cli_train, "make_output_folder", made_and_taken)
        monkeypatch.setattr(cli_train, "train", lambda *a, **k: pytest.fail("trained"))
        with pytest.raises(RunFolderInUse):
            cli_train._train(None, ["order.scenes=0"], run, None, None, None, False, False,
                             None, False)
        assert [p.name for p in run.iterdir()] == [LOCK_FILE]
        assert "pid" in (run / LOCK_FILE).read_text()  # the other run's, intact


def _finished_run(tmp_path, model_config=None, head=None, **report):
    """A run folder whose best.pt and model.pt hold epoch 2 (the model's head, with a source
    ranker unless ``head`` says otherwise, fitted with the recipe's order settings unless
    ``report`` says otherwise)."""
    from risloc.inference.checkpoint import save_checkpoint

    cfg = load_train_config(None, [f"out_dir={tmp_path}"])
    o = cfg.order
    base = {"epoch": 2, "step": 6, "config": cfg.to_json()}
    save_checkpoint(tmp_path / "best.pt", base)
    rep = {"training_scenes": o.scenes, "scene": dict(o.scene), "scene_mix": o.scene_mix,
           "per_snr": [{"scenes": o.report_scenes}], **report}
    save_checkpoint(tmp_path / "model.pt", {
        **base, "config": model_config or base["config"],
        "order_head": head or {"w": [1.0], "ranker": {"w": [1.0]}}, "order_report": rep})
    return cfg


def test_a_resumed_finished_run_keeps_its_model_only_if_it_is_current(tmp_path):
    """--resume of a finished run keeps model.pt only where it holds best.pt's epoch, of
    the same recipe, with a head fitted as the recipe's order section says."""
    from risloc.cli.train import _model_is_current

    assert _model_is_current(_finished_run(tmp_path / "same"))
    other = load_train_config(None, ["optim.lr=0.01"]).to_json()
    assert not _model_is_current(_finished_run(tmp_path / "recipe", model_config=other))
    assert not _model_is_current(_finished_run(tmp_path / "mix", scene_mix="other"))
    assert not _model_is_current(_finished_run(tmp_path / "scene", scene={"K": 1}))
    assert not _model_is_current(_finished_run(tmp_path / "n", training_scenes=-1))
    assert not _model_is_current(_finished_run(tmp_path / "rep", per_snr=[{"scenes": -1}]))
    assert not _model_is_current(_finished_run(tmp_path / "empty", per_snr=[]))
    # a head stored before the source ranker existed: both fitted anew
    assert not _model_is_current(_finished_run(tmp_path / "old", head={"w": [1.0]}))
    assert not _model_is_current(_finished_run(tmp_path / "one", per_snr=[  # (every SNR's)
        {"scenes": load_train_config(None, []).order.report_scenes}, {"scenes": -1}]))
    _finished_run(tmp_path / "junk")
    (tmp_path / "junk" / "model.pt").write_bytes(b"a model.pt cut short")  # fitted anew
    assert not _model_is_current(load_train_config(None, [f"out_dir={tmp_path / 'junk'}"]))


def test_a_run_without_an_order_stage_says_whether_the_model_there_is_best_pts(
        tmp_path, monkeypatch, capsys):
    """order.scenes = 0 where model.pt is left from an earlier fit: the message says it is
    kept, and whether it still holds best.pt's epoch (a mutation review: untested)."""
    import risloc.cli.train as cli_train
    from risloc.inference.checkpoint import load_checkpoint, save_checkpoint

    monkeypatch.setattr(cli_train, "train", lambda cfg, **kw: {})
    _finished_run(tmp_path)
    cfg = load_train_config(None, [f"out_dir={tmp_path}", "order.scenes=0"])
    cli_train._train_in_folder(cfg, tmp_path, True, False, True)
    said = " ".join(capsys.readouterr().err.split())
    assert "fitted earlier, is left as it was (risloc export-model" in said, said
    save_checkpoint(tmp_path / "best.pt", {**load_checkpoint(tmp_path / "best.pt"), "epoch": 3})
    cli_train._train_in_folder(cfg, tmp_path, True, False, True)
    said = " ".join(capsys.readouterr().err.split())
    assert "left as it was (of another epoch than best.pt's now)" in said, said


def test_resume_without_out_and_no_run_in_the_default_folder_says_out_names_it(
        tmp_path, monkeypatch):
    """--resume with neither --config nor --out, the default folder holding no run: the
    error says that --out names the run folder (a mutation review: this text untested)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint .*last\.pt \(--out names the "
                       r"run folder\)"):
        _recipe(None, [], resume=True)
    with pytest.raises(FileNotFoundError, match="no run here to continue"):
        _recipe(None, [f"out_dir={tmp_path / 'elsewhere'}"], resume=True)


def test_the_order_head_is_fitted_with_the_recipes_order_settings(tmp_path, monkeypatch):
    """The order stage fits the head on order.scenes scenes of order.scene, order.scene_mix,
    with or without a progress bar, and leaves no headless stage file (a second mutation
    review: the bar's branch, never run by the tests, could drop a setting)."""
    import risloc.cli.fit_order as cli_fit_order
    import risloc.cli.train as cli_train
    import risloc.inference.checkpoint as checkpoint
    import risloc.pipeline.calibrate as calibrate

    def export(src, dst):
        for p in (dst, checkpoint.model_card_path(dst)):
            p.write_text("headless")
        return dst

    seen = []

    def fit(headless, model, n, n_report, on_batch=None, scene=None, mix=True):
        seen.append((headless.name, model.name, n, n_report, scene, mix))
        return {}

    monkeypatch.setattr(checkpoint, "export_model", export)
    monkeypatch.setattr(calibrate, "fit_order", fit)
    monkeypatch.setattr(cli_fit_order, "report_table", lambda report: "")
    cfg = load_train_config(None, [f"out_dir={tmp_path}", "order.scenes=80",
                                   "order.report_scenes=3", "order.scene_mix=false",
                                   'order.scene={"K": 2}'])
    for bar in (True, False):
        assert cli_train._inference_model(cfg, progress_bar=bar) == tmp_path / "model.pt"
    assert seen == 2 * [(cli_train.HEADLESS, "model.pt", 80, 3, {"K": 2}, False)]
    assert list(tmp_path.iterdir()) == []


def test_the_summary_table_shows_the_headline_metrics_rounded(tmp_path):
    """The table printed after training: the headline metrics present, floats to 4
    significant digits (a second mutation review: the format untested)."""
    from rich.console import Console

    from risloc.cli.train import _summary_table

    con = Console(record=True, width=200)
    con.print(_summary_table({"best_objective": 0.123456789, "best_epoch": 3,
                              "not_headline": 7.0}, tmp_path))
    text = con.export_text()
    assert "0.1235" in text and "0.123456" not in text and "best_epoch" in text
    assert "not_headline" not in text


def test_a_run_without_an_order_stage_hints_at_the_default_head(tmp_path, monkeypatch, capsys):
    """order.scenes = 0: the fit-order hint fits the default count of scenes, not the 0 of
    the recipe that skipped the stage (a second mutation review: '--scenes 0' passed)."""
    import risloc.cli.train as cli_train
    from risloc.training.config import OrderStageConfig

    monkeypatch.setattr(cli_train, "train", lambda cfg, **kw: {})
    cfg = load_train_config(None, [f"out_dir={tmp_path}", "order.scenes=0"])
    cli_train._train_in_folder(cfg, tmp_path, False, False, True)
    said = " ".join(capsys.readouterr().err.split())
    assert f"make one: --scenes {OrderStageConfig().scenes} --report-scenes" in said, said


def test_a_rank_other_than_0_names_an_output_folder_that_is_a_file(tmp_path, monkeypatch):
    """Data-parallel: only rank 0 makes the folder, yet every rank refuses an --out that is
    a file before any setup (a second mutation review: rank 1 trained on, untested)."""
    import risloc.cli.train as cli_train

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(cli_train, "train", lambda *a, **k: pytest.fail("trained"))
    (tmp_path / "afile").write_text("notes")
    with pytest.raises(ValueError, match="afile is a file, not a folder"):
        cli_train._train(None, ["order.scenes=0"], tmp_path / "afile", None, None, None,
                         False, False, None, False)


def test_every_rank_refuses_a_folder_holding_a_run_before_joining_the_group(tmp_path,
                                                                            monkeypatch):
    """Under torchrun rank 0 alone refused a folder holding a run; rank 1 went on into the
    process group and hung there, deaf to torchrun's SIGTERM, until SIGKILLed 30 s later
    (35 s for the 2-process refusal, 5 s for the other refusals)."""
    import risloc.cli.train as cli_train

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(cli_train, "train", lambda *a, **k: pytest.fail("joined the group"))
    cfg = load_train_config(None, [f"out_dir={tmp_path}", "order.scenes=0"])
    (tmp_path / "last.pt").write_text("")
    with pytest.raises(ValueError, match=r"already holds a run \(last.pt\): pass --resume"):
        cli_train._train_in_folder(cfg, tmp_path, False, False, False)


def test_a_run_killed_between_its_first_best_and_last_checkpoint_is_not_resumable(tmp_path):
    """best.pt is written before last.pt: a run killed in between holds best.pt alone, and
    --resume (which needs last.pt) is not offered (a second mutation review: untested)."""
    from risloc.cli.train import _train_in_folder

    cfg = load_train_config(None, [f"out_dir={tmp_path}", "order.scenes=0"])
    for name in ("best.pt", "epochs.csv"):
        (tmp_path / name).write_text("")
    with pytest.raises(ValueError, match=r"\(best.pt, epochs.csv\): it stopped before its "
                       "first checkpoint, so there is nothing to resume"):
        _train_in_folder(cfg, tmp_path, False, False, True)


def test_the_order_stage_shows_a_progress_bar_as_the_recipe_says(tmp_path, monkeypatch):
    """--no-progress (progress=false) holds for the order head's fit too (a second mutation
    review: a bar there regardless passed)."""
    import risloc.cli.train as cli_train

    seen = []
    monkeypatch.setattr(cli_train, "train", lambda cfg, **kw: {})
    monkeypatch.setattr(cli_train, "_inference_model",
                        lambda cfg, progress_bar: seen.append(progress_bar))
    for shown in (False, True):
        run = tmp_path / str(shown)
        run.mkdir()
        cfg = load_train_config(None, [f"out_dir={run}", f"progress={str(shown).lower()}"])
        cli_train._train_in_folder(cfg, run, False, False, True)
    assert seen == [False, True]


def test_train_gets_the_resume_flag_the_held_lock_and_on_overwrite_the_old_runs_clearing(
        tmp_path, monkeypatch):
    """What the training loop is given: --resume as is, lock=False (the command holds it),
    and on --overwrite, on rank 0 alone, an on_start that deletes the old run's files and
    nothing else (a third mutation review: each of these changed passed)."""
    import risloc.cli.train as cli_train

    seen = []

    def train(cfg, **kw):
        seen.append(kw)
        if kw["on_start"] is not None:
            kw["on_start"]()
        return {}

    monkeypatch.setattr(cli_train, "train", train)
    cfg = load_train_config(None, [f"out_dir={tmp_path}", "order.scenes=0"])
    for name in ("last.pt", "epochs.csv", "notes.txt"):
        (tmp_path / name).write_text("old")
    cli_train._train_in_folder(cfg, tmp_path, True, False, True)
    assert (seen[-1]["resume"], seen[-1]["lock"], seen[-1]["on_start"]) == (True, False, None)
    assert (tmp_path / "last.pt").exists()
    (tmp_path / "metrics.json").unlink()
    cli_train._train_in_folder(cfg, tmp_path, False, True, False)  # rank 1: rank 0 clears
    assert seen[-1]["on_start"] is None and (tmp_path / "last.pt").exists()
    assert not (tmp_path / "metrics.json").exists()  # rank 1 writes nothing
    cli_train._train_in_folder(cfg, tmp_path, False, True, True)
    assert (seen[-1]["resume"], seen[-1]["lock"]) == (False, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "notes.txt"]


def test_a_current_model_is_kept_on_resume_only(tmp_path, monkeypatch):
    """A finished run's current model.pt is kept by --resume, fitted anew by --overwrite
    (a third mutation review: keeping it on --overwrite, or never, passed)."""
    import risloc.cli.train as cli_train

    fitted = []
    monkeypatch.setattr(cli_train, "train", lambda cfg, **kw: {})
    monkeypatch.setattr(cli_train, "_inference_model",
                        lambda cfg, progress_bar: fitted.append(cfg.out_dir))
    cfg = _finished_run(tmp_path)
    cli_train._train_in_folder(cfg, tmp_path, True, False, True)
    assert fitted == []
    cli_train._train_in_folder(cfg, tmp_path, False, True, True)
    assert len(fitted) == 1


def test_resume_with_a_config_names_a_folder_without_a_checkpoint(tmp_path, monkeypatch):
    """--resume --config into a folder without last.pt is refused before training, and the
    message tells a run stopped before its first checkpoint (any run file there) from no run
    at all (a third mutation review: the check under the lock, and the run files, untested)."""
    import risloc.cli.train as cli_train

    monkeypatch.setattr(cli_train, "train", lambda *a, **k: pytest.fail("trained"))
    run = tmp_path / "run"
    run.mkdir()
    args = (["order.scenes=0"], run, None, None, None, True, False, None, False)
    with pytest.raises(FileNotFoundError, match="no run here to continue"):
        cli_train._train("train_default", *args)
    (run / "steps.csv").write_text("step\n1\n")
    with pytest.raises(FileNotFoundError, match="the run stopped before its first checkpoint"):
        cli_train._train("train_default", *args)


def test_resume_into_a_folder_in_use_before_its_first_checkpoint_names_the_run(tmp_path):
    """--resume without --config, the folder's run still in its first epoch (locked, no
    last.pt yet): the error names the run in use, not a missing checkpoint."""
    from risloc.training.loop import RunFolderInUse, run_folder_lock

    with run_folder_lock(tmp_path), pytest.raises(RunFolderInUse, match="in use"):
        _recipe(None, [f"out_dir={tmp_path}"], resume=True)


def test_epochs_and_threads_out_of_range_are_refused_by_the_options(tmp_path):
    """--epochs 0 and --threads -1 stop at the options (exit 2), before any recipe is read."""
    from typer.testing import CliRunner

    from risloc.cli.main import app

    for opt in (["--epochs", "0"], ["--threads", "-1"]):
        res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), *opt])
        assert res.exit_code == 2 and "Invalid value" in res.output, res.output
        assert not (tmp_path / "r").exists()


def test_resume_and_overwrite_together_are_refused_before_the_recipe_is_read(tmp_path,
                                                                              monkeypatch):
    """--resume --overwrite is refused (a fourth mutation review: dropping the check passed)."""
    import risloc.cli.train as cli_train

    monkeypatch.setattr(cli_train, "_recipe", lambda *a: pytest.fail("read the recipe"))
    with pytest.raises(ValueError, match="--resume and --overwrite exclude each other"):
        cli_train._train(None, None, tmp_path, None, None, None, True, None, None, True)


def _interrupted(tmp_path, monkeypatch, capsys, resume, write_last):
    """_train_in_folder with a train that writes epochs.csv (and last.pt) then is stopped."""
    import typer

    import risloc.cli.train as cli_train

    def train(cfg, **kw):
        (tmp_path / "epochs.csv").write_text("new rows")
        if write_last:
            (tmp_path / "last.pt").write_text("new epoch")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "train", train)
    cfg = load_train_config(None, [f"out_dir={tmp_path}", "order.scenes=0"])
    with pytest.raises(typer.Exit) as err:
        cli_train._train_in_folder(cfg, tmp_path, resume, not resume, True)
    assert err.value.exit_code == 130
    return " ".join(capsys.readouterr().err.split())


def test_an_interrupt_before_the_first_epoch_deletes_only_this_runs_files(tmp_path,
                                                                          monkeypatch, capsys):
    """--overwrite stopped before its first epoch: an older run's last.pt is not offered for
    --resume, and the log rows this run wrote go (a fourth mutation review: offering
    --resume there, or keeping the rows, passed)."""
    (tmp_path / "last.pt").write_text("older run")
    said = _interrupted(tmp_path, monkeypatch, capsys, resume=False, write_last=False)
    assert "interrupted before this run's first epoch finished" in said, said
    assert "the same command with --overwrite starts afresh" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert (tmp_path / "last.pt").read_text() == "older run"


def test_an_interrupt_after_an_epoch_names_resume_and_keeps_the_files(tmp_path, monkeypatch,
                                                                      capsys):
    """--overwrite stopped after this run's first epoch: --resume is offered in place of
    --overwrite and its files are kept."""
    said = _interrupted(tmp_path, monkeypatch, capsys, resume=False, write_last=True)
    assert "interrupted: the same command with --resume in place of --overwrite continues " \
           "from" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epochs.csv", "last.pt"]


def test_the_fit_order_hint_carries_no_mix_as_the_recipe_says():
    """The fit-order options name --no-mix when the recipe's order.scene_mix is false (a
    fourth mutation review: dropping it passed)."""
    from risloc.cli.train import _fit_order_options

    mixed = load_train_config(None, ["order.scenes=64", "order.scene_mix=true"])
    single = load_train_config(None, ["order.scenes=64", "order.scene_mix=false"])
    assert not _fit_order_options(mixed).endswith("--no-mix")
    assert _fit_order_options(single).endswith(" --no-mix")


def test_a_rank_other_than_0_prints_no_console_lines(monkeypatch, capsys):
    """Data-parallel: under RANK=1 the console is quiet while the command runs and restored
    after (a fourth mutation review: every rank printing passed)."""
    from risloc.cli.common import console
    from risloc.cli.train import _rank_zero_reports

    monkeypatch.setenv("RANK", "1")
    before = console.quiet
    with _rank_zero_reports():
        console.print("rank 1 line")
    assert console.quiet == before
    assert "rank 1 line" not in capsys.readouterr().err


def test_threads_help_says_that_without_it_the_recipe_s_threads_apply():
    """--threads left out is not "leave as is": the recipe's `threads` applies (1 in
    train_default), as the help of --device and --epochs says of theirs."""
    train = typer.main.get_command(app).commands["train"]
    (threads,) = [p for p in train.params if "--threads" in p.opts]
    assert "recipe's" in threads.help
    assert _recipe(None, [], resume=False).threads == 1
