"""End-to-end training: the CLI command, logs and checkpoints, exact resume, overfitting."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from risloc.cli.plot_run import plot_run_command
from risloc.cli.train import train_command
from risloc.config import SceneConfig, SystemConfig
from risloc.inference.checkpoint import load_checkpoint
from risloc.io import write_scenes
from risloc.losses import TERMS
from risloc.simulation import simulate_range
from risloc.training import TrainConfig, load_train_config, train
from risloc.training.logs import CsvLog

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "train_tiny.yaml"


class _Stop(Exception):
    pass



def _weights(path: Path) -> dict[str, torch.Tensor]:
    st = load_checkpoint(path)
    out = {f"model.{k}": v for k, v in st["model"].items()}
    out.update({f"ema.{k}": v for k, v in st["ema"].items()})
    out.update({f"swa.{k}": v for k, v in (st["swa"] or {}).items()})
    return out


def test_cli_run_writes_logs_and_checkpoints(tmp_path):
    app = typer.Typer()
    app.command()(train_command)
    res = CliRunner().invoke(app, ["--config", str(TINY), "--out", str(tmp_path),
                                   "--set", "log_every=1", "--no-progress"])
    assert res.exit_code == 0, res.output
    for name in ("best.pt", "last.pt", "final.pt", "epochs.csv", "steps.csv", "metrics.json",
                 "model.pt", "model.json"):
        assert (tmp_path / name).exists(), name
    for stage in ("model-without-order-head.pt", "model-without-order-head.json"):
        assert not (tmp_path / stage).exists(), stage  # a stage, removed (with its card)
    # the inference model: the best epoch's weights plus an order head fitted on the
    # recipe's 64 scenes, with the report in its card
    from risloc.pipeline.learned import load_learned_pipeline

    assert load_learned_pipeline(tmp_path / "model.pt").order_head is not None
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["order_head"]["training_scenes"] == 64
    assert card["epoch"] == load_checkpoint(tmp_path / "best.pt")["epoch"]
    rows = list(csv.DictReader(open(tmp_path / "epochs.csv")))
    assert len(rows) == 2
    for col in [f"train_{t}" for t in TERMS] + [f"val_loss_{t}" for t in TERMS] + [
            "grad_norm_mean", "grad_norm_max", "nonfinite_grads", "val_angle_median_deg",
            "val_K_accuracy", "val_f1", "val_nmse", "val_overlap", "lr", "beta"]:
        assert col in rows[0], col
        assert math.isfinite(float(rows[-1][col])), col
    steps = list(csv.DictReader(open(tmp_path / "steps.csv")))
    assert len(steps) == 6 and "grad_norm" in steps[0]
    st = load_checkpoint(tmp_path / "last.pt")
    for key in ("model", "ema", "swa", "optimizer", "scheduler", "swa_scheduler", "scaler",
                "epoch", "step", "rng", "config", "history"):
        assert st[key] is not None, key
    assert st["epoch"] == 2 and st["step"] == 6
    # SWA from the second epoch: the cosine schedule stopped after the first's 3 steps and
    # SWALR set the rate since (a mutation review: the schedule stepping on passed)
    assert st["scheduler"]["last_epoch"] == 3
    assert st["swa_scheduler"] is not None and st["swa"]["n_averaged"] == 1
    assert load_train_config(TINY, [f"out_dir={tmp_path}", "log_every=1",
                                    "progress=false"]).to_json() == st["config"]
    # the finished run resumed again: its inference model is current, kept (a review: the
    # order head was fitted anew on every --resume); other order settings fit it anew
    model = (tmp_path / "model.pt").read_bytes()
    again = ["--config", str(TINY), "--out", str(tmp_path), "--set", "log_every=1",
             "--no-progress", "--resume"]
    res = CliRunner().invoke(app, again)
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "is already the inference model of" in said, said
    assert (tmp_path / "model.pt").read_bytes() == model
    res = CliRunner().invoke(app, [*again, "--set", "order.scenes=80"])
    assert res.exit_code == 0 and "fitting the order head" in " ".join(res.output.split())
    assert json.loads((tmp_path / "model.json").read_text())["order_head"][
        "training_scenes"] == 80
    res = CliRunner().invoke(app, [*again, "--set", "order.scenes=80", "--set",
                                   "order.report_scenes=3"])  # the report's size counts too
    assert res.exit_code == 0 and "fitting the order head" in " ".join(res.output.split())
    bad = CliRunner().invoke(app, ["--config", str(TINY), "--set", "optim.lr=-1"])
    assert bad.exit_code == 2 and "lr" in bad.output
    bad = CliRunner().invoke(app, ["--config", str(TINY), "--set", "optim.lr=.inf"])
    assert bad.exit_code == 2 and "optim.lr: Input should be a finite number" in bad.output
    # `risloc plot-run` draws the run's curves; a folder without epochs.csv is refused
    plot = typer.Typer()
    plot.command()(plot_run_command)
    res = CliRunner().invoke(plot, [str(tmp_path)])
    assert res.exit_code == 0, res.output
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    res = CliRunner().invoke(plot, [str(tmp_path / "ckpt")])
    assert res.exit_code != 0 and "no such folder" in res.output
    log = (tmp_path / "epochs.csv").read_bytes()
    for bad in ("epochs.csv", "curves.pdf"):  # the run's own log is never drawn over
        res = CliRunner().invoke(plot, [str(tmp_path), "--out", str(tmp_path / bad)])
        assert res.exit_code == 2 and "ending in .png" in res.output, res.output
    assert (tmp_path / "epochs.csv").read_bytes() == log


def test_plot_run_names_what_is_wrong_with_a_run_folder(tmp_path):
    plot = typer.Typer()
    plot.command()(plot_run_command)
    (tmp_path / "epochs.csv").write_text("epoch,val_objective\n0,1.5\n")
    res = CliRunner().invoke(plot, [str(tmp_path)])
    assert res.exit_code == 2 and "lacks the column(s) train_total" in res.output
    (tmp_path / "epochs.csv").write_text(
        "epoch,train_total,val_objective,val_angle_median_deg,lr,beta\n")
    res = CliRunner().invoke(plot, [str(tmp_path)])
    assert res.exit_code == 2 and "epochs.csv has no rows yet" in res.output
    assert not (tmp_path / "curves.png").exists()
    res = CliRunner().invoke(plot, [str(tmp_path / "no_run")])
    assert res.exit_code == 2 and "no_run: no such folder" in " ".join(res.output.split())
    assert not (tmp_path / "no_run").exists()  # (a folder was made for its curves.png)
    first = tmp_path / "first"  # stopped in its first epoch: its steps only (a review:
    first.mkdir()               # "not a risloc run folder?")
    (first / "steps.csv").write_text("step,epoch,total\n1,0,2.0\n")
    res = CliRunner().invoke(plot, [str(first)])
    assert res.exit_code == 2 and "no epoch of this run has finished yet" in " ".join(
        res.output.split())
    (tmp_path / "other").mkdir()
    res = CliRunner().invoke(plot, [str(tmp_path / "other")])
    assert res.exit_code == 2 and "not a risloc run folder?" in res.output


def test_the_metrics_are_the_best_epoch_s(tmp_path):
    """The headline metrics (metrics.json, the summary table, a tune trial's attributes)
    describe best.pt, the epoch model.pt is made of, not the last one (a review: the last
    epoch's angle beside the best epoch's number)."""
    cfg = load_train_config(TINY, [f"out_dir={tmp_path}", "schedule.steps_per_epoch=1",
                                   "schedule.epochs=3", "schedule.min_improvement=1e9"])
    metrics = train(cfg)  # only the first epoch counts as an improvement: best epoch 1
    rows = list(csv.DictReader(open(tmp_path / "epochs.csv")))
    assert metrics["best_epoch"] == 1 and len(rows) == 3
    for key in ("val_objective", "val_angle_median_deg", "val_K_accuracy", "val_f1"):
        assert metrics[key] == pytest.approx(float(rows[0][key])), key
    assert metrics["val_objective"] == pytest.approx(metrics["best_objective"])
    assert metrics["last_val_objective"] == pytest.approx(float(rows[2]["val_objective"]))
    assert metrics["last_val_objective"] != pytest.approx(metrics["val_objective"])


@pytest.mark.parametrize("ahead", ["prefetch=true", "prefetch=process",
                                   "prefetch=true simulate_on=device"])
def test_resume_continues_exactly(tmp_path, ahead):
    """... and the run with the next batch simulated ahead (prefetch: in a thread, in a
    worker process; or only its draws made ahead, simulate_on=device, the physics on the
    training device: the CPU here) follows the same trajectory bit for bit."""
    base = [f"out_dir={tmp_path / 'a'}", "schedule.steps_per_epoch=2", "prefetch=false"]
    full = train(load_train_config(TINY, base))
    cfg_b = load_train_config(TINY, [f"out_dir={tmp_path / 'b'}", "schedule.steps_per_epoch=2",
                                     "log_every=1", *ahead.split()])

    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg_b, callback=stop_after_first)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    for name, row in (("steps.csv", {"step": 3, "epoch": 1}), ("epochs.csv", {"epoch": 2})):
        log = CsvLog(tmp_path / "b" / name, append=True)  # what a run killed in epoch 2 left
        log.write(row)
    resumed = train(cfg_b, resume=True)
    wa, wb = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed["val_objective"] == pytest.approx(full["val_objective"])
    rows = list(csv.DictReader(open(tmp_path / "b" / "epochs.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert math.isfinite(float(rows[1]["val_f1"]))  # the resumed run's row, not the stale one
    steps = list(csv.DictReader(open(tmp_path / "b" / "steps.csv")))
    assert [r["step"] for r in steps] == ["1", "2", "3", "4"]
    assert steps[2]["lr"] != ""
    with pytest.raises(ValueError, match=r"differs from this one in schedule\.steps_per_epoch"
                       r": 2 -> 3"):
        train(load_train_config(TINY, [f"out_dir={tmp_path / 'b'}"]), resume=True)
    # stopping rules may change on resume (they do not alter the trajectory so far), the
    # output folder may be spelled differently; the order stage after training may change
    again = train(load_train_config(TINY, [f"out_dir={tmp_path / 'x' / '..' / 'b'}",
                                           "schedule.steps_per_epoch=2", "order.scenes=0",
                                           "schedule.patience=9"]), resume=True)
    assert again["epochs_run"] == 2


def test_resume_continues_a_copied_or_touched_training_file_and_refuses_new_bytes(tmp_path):
    import os

    system = SystemConfig()
    path = tmp_path / "scenes.h5"
    write_scenes(path, simulate_range(0, 16, system, SceneConfig(), seed=0, split="train"),
                 system)
    cfg = load_train_config(TINY, [f"data.train_file={path}", f"out_dir={tmp_path / 'run'}",
                                   "schedule.epochs=1", "schedule.steps_per_epoch=1"])
    train(cfg)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched a second later:
    assert train(cfg, resume=True)["epochs_run"] == 1  # its bytes are the run's (a review)
    copy = tmp_path / "copy.h5"  # and so are a copy's (rsync without -t, another disk)
    copy.write_bytes(path.read_bytes())
    assert train(cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"train_file": str(copy)})}), resume=True)["epochs_run"] == 1
    # a recipe without the file: its path is named, not the "given" it compares as
    with pytest.raises(ValueError, match=r"data\.train_file: '.*scenes\.h5' -> None"):
        train(load_train_config(TINY, [f"out_dir={tmp_path / 'run'}", "schedule.epochs=1",
                                       "schedule.steps_per_epoch=1"]), resume=True)
    # other scenes of the same size, written a second later: another run
    write_scenes(path, simulate_range(16, 32, system, SceneConfig(), seed=0, split="train"),
                 system)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert os.stat(path).st_size == st.st_size
    with pytest.raises(ValueError, match=r"data\.train_file .*scenes\.h5 \(its bytes\) "
                                         r"changed since the checkpoint"):
        train(cfg, resume=True)
    # a checkpoint from before the digest: compared by size and time, and it says so (a
    # review: "its bytes" for a file only touched)
    from risloc.inference.checkpoint import load_checkpoint, save_checkpoint

    last = tmp_path / "run" / "last.pt"
    state = load_checkpoint(last)
    state["data_files"] = {"train_file": [st.st_size, st.st_mtime_ns]}
    save_checkpoint(last, state)
    with pytest.raises(ValueError, match=r"scenes\.h5 \(its size or modification time; a "
                                         r"checkpoint from before files were compared by "
                                         r"their bytes\) changed"):
        train(cfg, resume=True)
    now = os.stat(path)  # ... and one whose size and time still hold continues
    state["data_files"] = {"train_file": [now.st_size, now.st_mtime_ns]}
    save_checkpoint(last, state)
    assert train(cfg, resume=True)["epochs_run"] == 1
    # the digest is the file's as the run read it, at its start (a review: taken at the
    # first checkpoint, a file rewritten during epoch 1 was recorded as the run's)
    from risloc.io.atomic import file_sha256

    read = file_sha256(path)

    def rewrite():
        write_scenes(path, simulate_range(32, 48, system, SceneConfig(), seed=0,
                                          split="train"), system)

    fresh = cfg.model_copy(update={"out_dir": str(tmp_path / "run2")})
    train(fresh, on_start=rewrite)
    assert file_sha256(path) != read
    assert load_checkpoint(tmp_path / "run2" / "last.pt")["data_files"]["train_file"][2] == read


def test_a_run_on_a_relative_scene_file_resumes_from_any_folder(tmp_path, monkeypatch):
    """A review: `train --set data.train_file=tr.h5` resumed from another folder looked for
    tr.h5 there, and naming the file by its full path was refused as another recipe."""
    system = SystemConfig()
    (tmp_path / "sub").mkdir()
    write_scenes(tmp_path / "tr.h5",
                 simulate_range(0, 16, system, SceneConfig(), seed=0, split="train"), system)
    monkeypatch.chdir(tmp_path)
    app = typer.Typer()
    app.command()(train_command)
    args = ["--config", str(TINY), "--set", "data.train_file=tr.h5", "--set",
            "schedule.epochs=2", "--set", "schedule.steps_per_epoch=1", "--set",
            "order.scenes=0", "--out", str(tmp_path / "run")]
    assert CliRunner().invoke(app, args).exit_code == 0
    stored = TrainConfig.from_json(load_checkpoint(tmp_path / "run" / "last.pt")["config"])
    assert stored.data.train_file == tmp_path / "tr.h5"  # kept absolute
    monkeypatch.chdir(tmp_path / "sub")
    res = CliRunner().invoke(app, ["--resume", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    # the same file by another path is the same run (compared by size and time)
    cfg = load_train_config(TINY, ["data.train_file=../sub/../tr.h5", f"out_dir={tmp_path}/run",
                                   "schedule.epochs=2", "schedule.steps_per_epoch=1",
                                   "order.scenes=0"])
    assert cfg.data.train_file != stored.data.train_file
    assert train(cfg, resume=True)["epochs_run"] == 2
    with pytest.raises(ValueError, match=r"training file .*gone\.h5 not found \(the recipe's "
                                         r"data\.train_file"):
        train(load_train_config(TINY, ["data.train_file=gone.h5", f"out_dir={tmp_path}/new"]))


@pytest.mark.slow
def test_overfits_a_small_fixed_set(tmp_path):
    """CI-sized overfit (the full-size check is benchmarks/overfit.py): 32 scenes at 15-20 dB,
    validated on the same set. Real learning: the validation loss at least halves and MUSIC
    on R_blend reaches a median angle error below 2 deg, at least halving too."""
    system = SystemConfig()
    path = tmp_path / "scenes.npz"
    write_scenes(path, simulate_range(0, 32, system, SceneConfig(snr_db=(15.0, 20.0)), seed=0,
                                      split="train"), system)
    cfg = load_train_config(None, [
        f"data.train_file={path}", f"data.val_file={path}", "data.val_batch_size=32",
        "optim.batch_size=16", "optim.lr=3e-3", "optim.warmup_steps=5",
        "schedule.epochs=10", "schedule.steps_per_epoch=4", "schedule.swa_frac=0",
        "schedule.ema_decay=0.9", "schedule.weight_warmup_epochs=1",
        "evaluation.n_azimuth=41", "evaluation.n_elevation=21", "evaluation.n_range=8",
        f"out_dir={tmp_path / 'run'}", "threads=1", "progress=false"])
    history = []
    train(cfg, callback=lambda epoch, m: history.append(m))
    first, last = history[0], history[-1]
    assert last["loss_total"] < 0.5 * first["loss_total"], (first, last)
    assert last["angle_median_deg"] < min(2.0, 0.5 * first["angle_median_deg"]), (first, last)


def test_accumulation_and_early_stopping(tmp_path):
    from risloc.config import ConfigError

    # the Python API's misuse (a review): a recipe's name, a dict with a bad field
    with pytest.raises(TypeError, match="got str .*load_train_config"):
        train(str(TINY))
    bad = load_train_config(TINY, [f"out_dir={tmp_path / 'never'}"]).model_dump()
    bad["schedule"]["patience"] = -1
    with pytest.raises(ConfigError, match="schedule.patience"):
        train(bad)
    assert not (tmp_path / "never").exists()
    cfg = load_train_config(TINY, [f"out_dir={tmp_path}", "optim.accumulation=2",
                                   "schedule.steps_per_epoch=1", "schedule.epochs=4",
                                   "schedule.patience=2", "schedule.min_improvement=1e3",
                                   "schedule.swa_frac=0"])
    metrics = train(cfg.model_dump())  # a dict of the fields, as a TrainConfig
    assert metrics["stopped_early"] == 1.0 and metrics["epochs_run"] == 3
    assert metrics["best_epoch"] == 1
    st = load_checkpoint(tmp_path / "last.pt")
    assert st["step"] == 3 and st["micro"] == 6 and st["swa"] is None
    # the rate schedule advances once per optimizer step, not per micro-batch (a mutation
    # review: per micro-batch passed)
    assert st["scheduler"]["last_epoch"] == st["step"]


def test_train_without_an_order_head_prints_an_export_command_a_shell_can_copy(tmp_path):
    """A run folder of spaces, a quote and non-ASCII letters: the printed `risloc
    export-model` names its best.pt as one shell word."""
    import re
    import shlex

    app = typer.Typer()
    app.command()(train_command)
    out = tmp_path / "my run 'é' 中"
    res = CliRunner().invoke(app, ["--config", str(TINY), "--out", str(out), "--set",
                                   "schedule.epochs=1", "--set", "schedule.steps_per_epoch=1",
                                   "--set", "order.scenes=0", "--no-progress"])
    assert res.exit_code == 0, res.output
    cmd = re.search(r"\(risloc export-model (.*?), then risloc fit-order",
                    " ".join(res.output.split()))
    assert cmd, res.output
    assert shlex.split(cmd.group(1)) == [str(out / "best.pt")]


def test_train_refuses_a_run_folder_unless_resumed_or_overwritten(tmp_path):
    app = typer.Typer()
    app.command()(train_command)
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["--config", str(TINY), "--out", str(out), "--set", "schedule.epochs=1",
            "--set", "schedule.steps_per_epoch=1", "--set", "order.scenes=0", "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0
    # a run without an order head says why it wrote no model.pt (a review: silently)
    assert "order.scenes = 0: no order head fitted, so no" in " ".join(res.output.split())
    log_before = (out / "epochs.csv").read_text()
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "already holds a run" in res.output
    assert (out / "epochs.csv").read_text() == log_before  # nothing was touched
    (out / "model.pt").write_bytes(b"an earlier run's model")
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert not (out / "model.pt").exists()  # this run fits no order head: no stale model
    assert (out / "epochs.csv").exists()
    res = runner.invoke(app, [*args, "--overwrite", "--resume"])
    assert res.exit_code == 2 and "exclude each other" in res.output
    # a review: an inference model copied over last.pt gave KeyError 'model' and a traceback
    from risloc.inference.checkpoint import export_model

    last = (out / "last.pt").read_bytes()
    export_model(out / "best.pt", tmp_path / "inference.pt")
    (out / "last.pt").write_bytes((tmp_path / "inference.pt").read_bytes())
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 2 and "it is an inference model" in " ".join(res.output.split())
    (out / "last.pt").write_bytes(last)
    # a new run that cannot start (its data file is missing) leaves the old one whole
    held = {p.name: p.read_bytes() for p in out.iterdir()}
    res = runner.invoke(app, [*args, "--overwrite", "--set",
                              f"data.val_file={tmp_path / 'missing.h5'}"])
    assert res.exit_code == 2 and "missing.h5" in res.output, res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == held
    # and into a new folder it leaves no empty folder behind (a review found one with .lock)
    res = runner.invoke(app, [*args[:2], "--out", str(tmp_path / "new" / "run"), *args[4:],
                              "--set", f"data.val_file={tmp_path / 'missing.h5'}"])
    assert res.exit_code == 2 and not (tmp_path / "new" / "run").exists(), res.output
    # killed after its first epoch's log row and before its checkpoint: only --overwrite
    early = tmp_path / "early"
    early.mkdir()
    (early / "epochs.csv").write_text("epoch\n1\n")
    res = runner.invoke(app, [*args[:2], "--out", str(early), *args[4:]])
    assert res.exit_code == 2 and "stopped before its first checkpoint, so there is nothing " \
        "to resume: --overwrite starts afresh" in " ".join(res.output.split())
    for how in ([*args[:2], *args[4:]], []):  # without --config too (a review: another text)
        res = runner.invoke(app, [*how, "--out", str(early), "--resume"])
        assert res.exit_code == 2 and "--overwrite, not --resume, starts it afresh" in \
            " ".join(res.output.split())
    # ... unless a run is still writing it (in its first epoch): that run is named (a review:
    # "stopped before its first checkpoint", whose --overwrite was then refused as in use)
    from risloc.training.loop import run_folder_lock

    with run_folder_lock(early):
        res = runner.invoke(app, [*args[:2], "--out", str(early), *args[4:], "--resume"])
        said = " ".join(res.output.split())
        assert res.exit_code != 0 and "in use by another training run" in said, said
        assert "stopped before" not in said
        # without --config too, where the recipe is read from last.pt (a new user's review:
        # "no checkpoint")
        res = runner.invoke(app, ["--out", str(early), "--resume"])
        said = " ".join(res.output.split())
        assert res.exit_code != 0 and "in use by another training run" in said, said
    (tmp_path / "afile").write_text("notes")
    res = runner.invoke(app, [*args[:2], "--out", str(tmp_path / "afile"), *args[4:]])
    assert res.exit_code == 2 and "the output folder" in res.output and "is a file" in res.output
    # malformed overrides YAML: named, not a traceback
    bad = tmp_path / "best_overrides.yaml"
    bad.write_text("overrides: {optim.lr: [1e-3\n")
    res = runner.invoke(app, [*args, "--overwrite", "--overrides", str(bad)])
    assert res.exit_code == 2 and "is not valid YAML" in res.output, res.output


def test_train_without_a_recipe_uses_the_shipped_one_or_on_resume_the_runs_own(
        tmp_path, monkeypatch):
    app = typer.Typer()
    app.command()(train_command)
    runner = CliRunner()
    out = tmp_path / "run"
    fast = ["--set", "schedule.steps_per_epoch=1", "--set", "order.scenes=0", "--no-progress"]

    def stop(epoch, metrics):
        raise _Stop

    with pytest.raises(_Stop):  # killed after its first epoch of two
        train(load_train_config(TINY, [f"out_dir={out}", "schedule.steps_per_epoch=1",
                                       "schedule.epochs=2", "progress=false"]), callback=stop)
    # no --config on --resume: the recipe stored in last.pt (the default one differs)
    res = runner.invoke(app, ["--resume", "--out", str(out), *fast])
    assert res.exit_code == 0, res.output
    assert f"recipe: the one stored in {out / 'last.pt'}" in " ".join(res.output.split())
    assert len(list(csv.DictReader(open(out / "epochs.csv")))) == 2
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    res = runner.invoke(app, ["--resume", "--out", str(tmp_path / "none"), *fast])
    assert res.exit_code == 2 and "--resume: no checkpoint" in res.output
    (tmp_path / "empty").mkdir()  # a folder of the user's, with a recipe: the way out said
    res = runner.invoke(app, ["--config", str(TINY), "--resume", "--out",
                              str(tmp_path / "empty"), *fast])
    assert res.exit_code == 2 and "no run here to continue: without --resume a new run " \
        "starts" in " ".join(res.output.split()), res.output
    # the folder named by --set out_dir (or --overrides) is the one resumed, not the
    # default recipe's; --overwrite with --resume is named before any folder is read
    res = runner.invoke(app, ["--resume", "--set", f"out_dir={out}", *fast])
    assert res.exit_code == 0 and f"stored in {out / 'last.pt'}" in " ".join(res.output.split())
    res = runner.invoke(app, ["--resume", "--overwrite", *fast])
    assert res.exit_code == 2 and "--resume and --overwrite exclude each other" in res.output
    # no --config, no --resume: the shipped train_default (said), not the built-in defaults
    import risloc.cli.train as cli_train

    seen = []
    monkeypatch.setattr(cli_train, "train", lambda cfg, **kw: seen.append(cfg) or {})
    res = runner.invoke(app, ["--out", str(tmp_path / "new"), "--set", "order.scenes=0",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "recipe: train_default (shipped" in res.output
    assert seen == [load_train_config("train_default", [
        "order.scenes=0", f"out_dir={tmp_path / 'new'}", "progress=false"])]


def test_a_folder_that_refuses_writes_is_named_before_any_setup(tmp_path, monkeypatch):
    """A review: --overwrite into an immutable folder (chattr +i, which refuses even root)
    built the model and the validation set, then failed with a bare "[Errno 1] Operation
    not permitted: 'run/best.pt'"."""
    import shutil
    import subprocess

    import risloc.cli.train as cli_train

    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"an earlier run's")
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    monkeypatch.setattr(cli_train, "train", lambda *a, **k: pytest.fail("setup began"))
    app = typer.Typer()
    app.command()(train_command)
    try:
        res = CliRunner().invoke(app, ["-c", str(TINY), "--out", str(out), "--epochs", "1",
                                       "--overwrite", "--no-progress"])
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    assert res.exit_code == 2
    assert f"the output folder {out} is not writable: Operation not permitted" in \
        " ".join(res.output.split())
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]


def test_the_run_holds_its_folder_until_its_model_is_written(tmp_path, monkeypatch):
    """The order head is fitted after training, from best.pt: a second run's --overwrite
    in that window deleted the files it was reading."""
    import risloc.cli.train as cli_train
    from risloc.training.loop import RunFolderInUse, run_folder_lock

    seen = []

    def fit_while_holding(cfg, progress_bar):
        with pytest.raises(RunFolderInUse), run_folder_lock(Path(cfg.out_dir)):
            pass
        seen.append(Path(cfg.out_dir))

    monkeypatch.setattr(cli_train, "_inference_model", fit_while_holding)
    app = typer.Typer()
    app.command()(train_command)
    res = CliRunner().invoke(app, ["-c", str(TINY), "--out", str(tmp_path / "r"), "--epochs",
                                   "1", "--set", "schedule.steps_per_epoch=1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert seen == [tmp_path / "r"]
    with run_folder_lock(tmp_path / "r"):  # and lets it go when done
        pass


def test_the_epochs_option_sets_the_runs_epochs_over_set(tmp_path):
    """--epochs is the run's schedule.epochs, over a --set of it (a mutation review: the
    option dropped passed every test)."""
    app = typer.Typer()
    app.command()(train_command)
    res = CliRunner().invoke(app, ["-c", str(TINY), "--out", str(tmp_path), "--epochs", "2",
                                   "--set", "schedule.epochs=1", "--set",
                                   "schedule.steps_per_epoch=1", "--set", "data.n_val=8",
                                   "--set", "order.scenes=0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "(2 epochs x 1 steps" in " ".join(res.output.split())
    assert len(list(csv.DictReader(open(tmp_path / "epochs.csv")))) == 2
    st = load_checkpoint(tmp_path / "last.pt")
    assert st["epoch"] == 2 and TrainConfig.from_json(st["config"]).schedule.epochs == 2


def test_a_resumed_run_that_stopped_early_stays_stopped(tmp_path):
    over = [f"out_dir={tmp_path}", "schedule.steps_per_epoch=1", "schedule.epochs=6",
            "schedule.patience=2", "schedule.min_improvement=1e3", "schedule.swa_frac=0",
            "progress=false"]
    assert train(load_train_config(TINY, over))["epochs_run"] == 3
    metrics = train(load_train_config(TINY, over), resume=True)
    assert metrics["stopped_early"] == 1.0 and metrics["epochs_run"] == 3
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3  # no step more
    # raising the patience lets it go on
    metrics = train(load_train_config(TINY, [*over, "schedule.patience=3"]), resume=True)
    assert metrics["epochs_run"] == 4


@pytest.mark.parametrize("terms", ["all", "the zoom's off"])
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, terms):
    """torchrun, 2 CPU processes (gloo), data.shards 2, the spectral terms on 4 of the 8
    scenes of the global batch (2 per shard): the ranks end with identical
    weights, and those match one process training on the same shards to float32 reduction
    order: within 1e-5 absolute after 3 steps (measured 2e-6; one step moves a weight by up
    to the learning rate, 2e-3 here), since the gradient all-reduce sums in another order.
    Also with the only terms that reach the zoom refiner's parameters weighted 0 (before,
    DistributedDataParallel stopped both ranks: "Expected to have finished reduction")."""
    import subprocess
    import sys

    off = ["loss.lam_aux=0", "loss.lam_peak=0", "loss.lam_align=0"] if terms != "all" else []
    args = ["train", "--config", str(TINY), "--no-progress", "--set", "data.shards=2",
            "--set", "schedule.epochs=1", "--set", "schedule.steps_per_epoch=3",
            "--set", "order.scenes=0", "--set", "loss.spectral_scenes=4",
            "--set", "threads=1", *(a for o in off for a in ("--set", o))]
    # (torchrun's log folders go to the test's temporary folder, not /tmp)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    one = subprocess.run([sys.executable, "-m", "risloc", *args, "--out",
                          str(tmp_path / "one")], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "risloc", *args, "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, env=env)
    # (a rank aborted, SIGABRT, in about 1 of 30 runs until train() freed the DDP wrapper,
    # which held gloo's process group into the interpreter's finalisation)
    assert two.returncode == 0, two.stderr[-2000:]
    # rank 0 reports; rank 1's lines (its "training ->", its log's SWA line) are left out
    assert one.stderr.count("training -> ") == 1
    assert two.stderr.count("training -> ") == 1, two.stderr[-2000:]
    assert two.stdout.count("training finished") == 1, two.stdout[-2000:]  # rank 0's table
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["ranks_identical"] == 1.0
    a, b = (_weights(tmp_path / "one" / "last.pt"),
            _weights(tmp_path / "two" / "last.pt"))
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    # every rank validates on all the scenes, its spectral terms on the recipe's 4 of them
    # as one process does (they took rank 0's training share, 2: val_loss_gap differed)
    last = [list(csv.DictReader(open(tmp_path / run / "epochs.csv")))[-1]
            for run in ("one", "two")]
    val = [{k: float(v) for k, v in row.items() if k.startswith("val_loss_")} for row in last]
    assert val[0].keys() == val[1].keys() and "val_loss_gap" in val[0]
    for k in val[0]:
        assert val[1][k] == pytest.approx(val[0][k], rel=1e-3, abs=1e-5, nan_ok=True), k
    with pytest.raises(ValueError, match="data.shards = 2"):
        import os

        from risloc.training.loop import Trainer

        os.environ.update(WORLD_SIZE="2")
        try:
            Trainer(load_train_config(TINY, [f"out_dir={tmp_path / 'x'}"]))
        finally:
            del os.environ["WORLD_SIZE"]


@pytest.mark.parametrize("refusal", ["locked", "not writable"])
def test_a_refusal_of_rank_0_alone_ends_every_rank_at_once(tmp_path, refusal):
    """torchrun, 2 CPU processes: rank 0 alone takes the folder's lock and probes that it is
    writable, and refuses before joining the process group. Rank 1 waited there, deaf to
    torchrun's SIGTERM, until its SIGKILL 30 s later (36.9 s in all, measured); now it
    ends with the SIGTERM (under 11 s in all; the timeout, 31 s, is below any old run: 30 s
    after rank 0 refuses), the refusal said once, by rank 0."""
    import contextlib
    import os
    import shutil
    import subprocess
    import sys

    from risloc.training.loop import run_folder_lock

    out = tmp_path / "run"
    out.mkdir()
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node=2", "-m", "risloc", "train", "--config", str(TINY),
            "--no-progress", "--set", "data.shards=2", "--epochs", "1", "--set",
            "schedule.steps_per_epoch=1", "--set", "order.scenes=0", "--set", "threads=1",
            "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    if refusal == "not writable":  # (root ignores permissions; chattr +i refuses it too)
        if shutil.which("chattr") is None or subprocess.run(
                ["chattr", "+i", str(out)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        held = contextlib.nullcontext()
        said = f"the output folder {out} is not writable"
    else:
        held = run_folder_lock(out)  # (this process: another run's)
        said = "is in use by another training run"
    try:
        with held:  # well below the 30 s of torchrun's SIGKILL
            res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=31)
    finally:
        if refusal == "not writable":
            subprocess.run(["chattr", "-i", str(out)], check=True)
    assert res.returncode != 0
    assert " ".join(res.stderr.split()).count(said) == 1, res.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_device_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    from risloc.cli.main import app

    res = CliRunner().invoke(app, ["train", "--config", str(TINY), "--out", str(tmp_path),
                                   "--device", "cuda", "--no-progress"])
    assert res.exit_code == 2 and "sees no CUDA GPU" in res.output
    res = CliRunner().invoke(app, ["train", "--config", str(TINY), "--device", "tpu"])
    assert res.exit_code == 2 and "device" in res.output


def test_a_diverging_run_stops_with_a_message_and_a_diverging_trial_is_pruned(tmp_path):
    """lr = 1e3: every step's gradients are NaN from the second on. Zeroing them and
    stepping on trained a garbage model that ended 'as shipped' with exit code 0; now ten
    such steps in a row stop the run (one line, exit code 2). lr = 1e5: the loss's eigh
    fails on the diverged weights (a LinAlgError traceback before). A tune trial that
    diverges is pruned, and the worker goes on."""
    from risloc.cli.main import app

    fast = ["--set", "schedule.steps_per_epoch=12", "--set", "data.n_val=16", "--set",
            "order.scenes=0", "--no-progress"]
    for lr, says in (("1e3", r"10 optimizer steps in a row had non-finite gradients"),
                     ("1e5", r"the loss's eigendecomposition failed")):
        res = CliRunner().invoke(app, ["train", "-c", str(TINY), "--epochs", "2", *fast,
                                       "--set", f"optim.lr={lr}", "--out",
                                       str(tmp_path / lr)])
        assert res.exit_code == 2, res.output
        text = " ".join(res.output.split())
        assert re.search(says, text) and "lower optim.lr" in text, text
        assert not (tmp_path / lr / "model.pt").exists()
    from risloc.hpo import TuneSettings, tune

    space = tmp_path / "space.yaml"
    space.write_text("blend.beta: {low: 0.1, high: 0.5}\n")
    study = tune(TuneSettings(config=str(TINY), out_dir=str(tmp_path / "tune"), n_trials=1,
                              epochs=2, space=str(space), warmup_epochs=0,
                              overrides=("optim.lr=1e3", "schedule.steps_per_epoch=12",
                                         "data.n_val=16")))
    assert [t.state.name for t in study.trials] == ["PRUNED"]


def test_an_interrupted_training_says_how_to_continue(tmp_path, monkeypatch):
    import risloc.cli.train as cli_train
    from risloc.cli.main import app

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    def says(*extra):
        res = CliRunner().invoke(app, ["train", "-c", str(TINY), "--out", str(run),
                                       "--no-progress", *extra])
        assert res.exit_code == 130
        return " ".join(res.output.split())

    run = tmp_path / "r"
    monkeypatch.setattr(cli_train, "train", ctrl_c)
    # before the first epoch: no checkpoint, so --resume would be refused; it says so
    assert "interrupted before this run's first epoch finished: nothing of it to resume; " \
           "the same command starts afresh" in says()

    epochs = []

    def ctrl_c_after_an_epoch(cfg, **kwargs):
        run.mkdir(exist_ok=True)
        epochs.append(1)  # (each run's checkpoint another file, as torch.save's are)
        (run / "last.pt").write_bytes(b"this run's checkpoint" * len(epochs))
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "train", ctrl_c_after_an_epoch)
    assert "interrupted: the same command with --resume continues from " \
           f"{run / 'last.pt'} (the last finished epoch)" in says()
    # after an epoch of an --overwrite run: the same command with --resume in its place
    # (a new user's review: the hint's command was refused, the two exclude each other)
    assert "interrupted: the same command with --resume in place of --overwrite continues" \
        in says("--overwrite")

    def ctrl_c_in_a_resumed_epoch(cfg, **kwargs):
        (run / "steps.csv").write_text("step\n1\n")
        raise KeyboardInterrupt

    # --resume stopped before its next checkpoint: the run's last.pt still continues it, and
    # its logs stay (a mutation review: "nothing of it to resume", the logs deleted, passed)
    monkeypatch.setattr(cli_train, "train", ctrl_c_in_a_resumed_epoch)
    assert "interrupted: the same command with --resume continues" in says("--resume")
    assert (run / "steps.csv").exists()
    (run / "steps.csv").unlink()
    monkeypatch.setattr(cli_train, "train", ctrl_c)  # --overwrite: the last.pt is the old run's
    assert "nothing of it to resume; the same command with --overwrite starts afresh" \
        in says("--overwrite")

    def ctrl_c_in_the_first_epoch(cfg, **kwargs):
        (run / "steps.csv").write_text("step\n1\n")
        raise KeyboardInterrupt

    # what a run wrote before its first checkpoint goes (a new user's review: the same
    # command was then refused, "already holds a run (steps.csv)"); an older run's stays
    (run / "last.pt").unlink()
    (run / "epochs.csv").write_text("an older run's log")
    monkeypatch.setattr(cli_train, "train", ctrl_c_in_the_first_epoch)
    assert "the same command with --overwrite starts afresh" in says("--overwrite")
    assert sorted(p.name for p in run.iterdir()) == [".lock", "epochs.csv"]
    (run / "epochs.csv").unlink()
    assert "nothing of it to resume; the same command starts afresh" in says()
    assert [p.name for p in run.iterdir()] == [".lock"]
    # during the order head's fit, after the training: --resume fits it
    monkeypatch.setattr(cli_train, "train", lambda cfg, **kw: {})
    monkeypatch.setattr(cli_train, "_inference_model", ctrl_c)
    said = says("--overwrite")
    assert "interrupted while fitting the order head: the training is complete, model.pt is " \
           "not written; the same command with --resume in place of --overwrite fits it" in said
    # the other way out fits the inference model train exports (a review: best.pt made a
    # training checkpoint named model.pt, without its card)
    assert f"fit-order{run / 'model-without-order-head.pt'}--out{run / 'model.pt'}" in \
        said.replace(" ", "")
    # other commands: one line, exit code 130, no traceback
    import risloc.cli.simulate as cli_simulate

    monkeypatch.setattr(cli_simulate, "simulate_range", ctrl_c)
    res = CliRunner().invoke(app, ["simulate", "--n", "4", "--out", str(tmp_path / "s.h5")])
    assert res.exit_code == 130 and "interrupted: every output is written whole or not at " \
        "all" in " ".join(res.output.split()) and not (tmp_path / "s.h5").exists()


def test_a_rank_other_than_0_prints_its_warnings_and_errors_only(monkeypatch, capsys):
    """Under torchrun rank 0 reports; the others' console lines and info logs are left out,
    their warnings and errors are not (a non-finite loss on one rank only)."""
    import logging

    from risloc.cli.common import console, setup_logging
    from risloc.cli.train import _rank_zero_reports

    setup_logging(False)
    log = logging.getLogger("risloc.training.loop")
    for rank, shown in (("1", ("warned", "failed")), ("0", ("said", "info", "warned", "failed"))):
        monkeypatch.setenv("RANK", rank)
        with _rank_zero_reports():
            console.print("said")
            log.info("info")
            log.warning("warned")
            log.error("failed")
        text = capsys.readouterr().err
        for word in ("said", "info", "warned", "failed"):
            assert (word in text) == (word in shown), (rank, word, text)
    console.print("after")  # the console is itself again
    assert "after" in capsys.readouterr().err


def test_log_records_to_a_file_or_pipe_are_one_line_each(capsys):
    """A review: rich's log handler laid records out in 80 columns wherever stderr went, so
    a training log redirected to a file broke every long line in two."""
    import logging

    from risloc.cli.common import setup_logging

    setup_logging(False)  # (stderr is captured here: not a terminal)
    words = " ".join(f"word{i}" for i in range(40))  # ~280 characters
    logging.getLogger("risloc.training.loop").info("model: %s", words)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"INFO    model: {words}"), lines
    logging.getLogger("risloc.training.loop").debug("not at INFO")
    assert capsys.readouterr().err == ""


def test_a_run_begun_without_amp_resumes_where_amp_is_on(tmp_path, monkeypatch):
    """A run begun on the CPU (AMP off: its GradScaler's state is empty) resumed on a GPU
    (device is free to change; AMP on there) starts the scaler afresh. Before, GradScaler's
    load_state_dict raised "The source state dict is empty" (a traceback). The GPU's enabled
    scaler is emulated here: one constructed enabled on a machine without CUDA disables
    itself."""
    import risloc.training.loop as loop

    cfg = load_train_config(TINY, [f"out_dir={tmp_path}", "schedule.steps_per_epoch=1",
                                   "optim.amp=true"])

    def stop_after_first(epoch, metrics):
        raise _Stop

    with pytest.raises(_Stop):
        train(cfg, callback=stop_after_first)
    assert load_checkpoint(tmp_path / "last.pt")["scaler"] == {}  # AMP off on the CPU
    loaded = []

    class EnabledScaler(torch.amp.GradScaler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._enabled = True  # as on a GPU with optim.amp
            self._scale = self._growth_tracker = None  # (made at the first scaling)

        def load_state_dict(self, state):
            loaded.append(state)
            super().load_state_dict(state)

    monkeypatch.setattr(loop.torch.amp, "GradScaler", EnabledScaler)
    tr = loop.Trainer(cfg)
    tr.restore(tmp_path / "last.pt")
    assert tr.epoch == 1 and tr.scaler.is_enabled() and loaded == []
    # a run begun with AMP resumes its scaler: the scale it had reached is restored (a
    # mutation review: a scaler never restored passed, every CPU run's being empty)
    st = load_checkpoint(tmp_path / "last.pt")
    st["scaler"] = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                    "growth_interval": 2000, "_growth_tracker": 0}  # (a GradScaler's keys)
    loop.save_checkpoint(tmp_path / "last.pt", st)
    again = loop.Trainer(cfg)
    torch.manual_seed(12345)  # the global generator elsewhere: the checkpoint's comes back
    again.restore(tmp_path / "last.pt")
    assert len(loaded) == 1 and again.scaler.get_scale() == 1024.0
    assert torch.equal(torch.get_rng_state(), st["rng"])


def test_a_signal_to_the_whole_job_ends_training_with_its_message(tmp_path):
    """A batch system's preemption signals the whole process group. Before, SIGTERM reached
    the DataLoader workers of prefetch=process too, killed them, and their deaths raised
    'DataLoader worker ... is killed by signal' in the parent: a traceback, exit 1 (a
    review). Now the workers are in a group of their own: the interrupted run's message,
    exit 130, last.pt kept, no worker left behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "-m", "risloc", "train", "--config", str(TINY), "--out", str(out),
         "--epochs", "50", "--no-progress", "--set", "prefetch=process", "--set",
         "data.n_val=8", "--set", "order.scenes=0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    def workers() -> list[int]:  # the parent's children: its DataLoader workers
        listed = subprocess.run(["ps", "-o", "pid=", "--ppid", str(p.pid)],
                                capture_output=True, text=True).stdout
        return [int(x) for x in listed.split()]

    deadline = time.time() + 150
    while (not (out / "last.pt").exists() or len(workers()) < 2) and p.poll() is None \
            and time.time() < deadline:
        time.sleep(0.1)
    running = workers()
    assert len(running) == 2, running  # (the signal must find them at work)
    os.killpg(p.pid, signal.SIGTERM)
    try:
        said, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, said[-2000:]
    assert "interrupted: the same command with --resume continues" in " ".join(said.split())
    assert "Traceback" not in said and (out / "last.pt").exists()
    time.sleep(1)
    assert not [w for w in running if os.path.exists(f"/proc/{w}")
                and "Z" not in open(f"/proc/{w}/stat").read().split()[2]]


def test_the_fit_order_hint_fits_the_head_as_the_recipe_does():
    """A review: the fit-order command train prints (Ctrl-C in the order stage, or
    order.scenes = 0) left out the recipe's order settings, so it fitted another head than
    the recipe's (the shipped recipe's powers spread over 0-25 dB)."""
    import shlex

    from risloc.cli.fit_order import scene_fields
    from risloc.cli.train import _fit_order_options

    cfg = load_train_config("train_default", ["order.scene_mix=false"])
    words = shlex.split(_fit_order_options(cfg))
    assert words[:4] == ["--scenes", str(cfg.order.scenes), "--report-scenes",
                         str(cfg.order.report_scenes)]
    scenes = [words[i + 1] for i, w in enumerate(words) if w == "--scene"]
    assert scene_fields(scenes) == cfg.order.scene == {"power_spread_db": [0, 25]}
    assert words[-1] == "--no-mix"
    assert "--no-mix" not in _fit_order_options(load_train_config("train_default", []))


def test_an_epoch_is_validated_on_its_ema_weights(tmp_path):
    """The epoch's validation objective is the EMA weights' (as stored in last.pt) on the
    validation set with the recipe's beta, recomputed here (mutation reviews: validating
    the live weights, or at the step's jittered beta, passed)."""
    from risloc.training.data import validation_set
    from risloc.training.evaluate import evaluate
    from risloc.training.loop import Trainer

    cfg = load_train_config(TINY, [f"out_dir={tmp_path}", "schedule.epochs=1",
                                   "schedule.swa_frac=0", "order.scenes=0",
                                   "progress=false"])
    train(cfg)
    tr = Trainer(cfg)
    tr.restore(tmp_path / "last.pt")
    st = load_checkpoint(tmp_path / "last.pt")
    val = evaluate(tr.ema.module, validation_set(cfg), cfg.system, cfg.blend.beta, cfg.blend,
                   tr.loss_config(), cfg.music_config(), cfg.data.val_batch_size,
                   cfg.evaluation.f1_weight_deg)  # the recipe's beta, not the step's
    assert tr.beta() != cfg.blend.beta  # (the step's beta is jittered: the test can tell)
    assert val.objective == pytest.approx(st["history"][-1]["val_objective"], rel=1e-6)
    live = tr.validate(tr.model, validation_set(cfg))
    assert live.objective != pytest.approx(val.objective, rel=1e-6)  # (the test can tell)


def test_the_swa_weights_are_the_mean_of_the_epochs_it_averaged(tmp_path):
    """SWA over the last 0.75 of 4 epochs averages the weights at the end of epochs 2, 3
    and 4 equally (a mutation review: with one averaged epoch, a wrong running mean passed)."""
    snaps = []

    def keep(epoch, metrics):  # last.pt holds the epoch's weights when this runs
        snaps.append(load_checkpoint(tmp_path / "last.pt")["model"])

    cfg = load_train_config(TINY, [f"out_dir={tmp_path}", "schedule.epochs=4",
                                   "schedule.swa_frac=0.75", "order.scenes=0",
                                   "progress=false"])
    train(cfg, callback=keep)
    last = load_checkpoint(tmp_path / "last.pt")
    swa = last["swa"]
    assert len(snaps) == 4 and int(swa["n_averaged"]) == 3
    # SWALR, stepped once per SWA epoch, has annealed to swa_lr_ratio x lr (a mutation
    # review: SWALR never stepped passed)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        cfg.schedule.swa_lr_ratio * cfg.optim.lr)
    for name, value in snaps[-1].items():
        if value.is_floating_point():
            mean = sum(s[name].double() for s in snaps[1:]) / 3
            torch.testing.assert_close(swa[f"module.{name}"].double(), mean, rtol=1e-5,
                                       atol=1e-6)


def test_step_rows_hold_the_rate_and_beta_the_step_used_every_log_every_steps(tmp_path,
                                                                             monkeypatch):
    """steps.csv has a row after every log_every-th optimizer step (2, 4), holding the rate
    and beta that step trained with (not the next one's) and its non-finite count; the
    epoch row sums the counts (a mutation review: the next step's rate, rows one step
    early, one beta per epoch, the epoch's number plus one, a zero count all passed)."""
    import risloc.training.loop as loop
    from risloc.training import schedules

    clip = loop.clip_gradients
    monkeypatch.setattr(loop, "clip_gradients", lambda m, c: (clip(m, c)[0], 2))
    cfg = load_train_config(TINY, [f"out_dir={tmp_path}", "schedule.epochs=1",
                                   "schedule.steps_per_epoch=4", "log_every=2",
                                   "schedule.swa_frac=0", "order.scenes=0"])
    train(cfg)
    rows = list(csv.DictReader(open(tmp_path / "steps.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4] and {r["epoch"] for r in rows} == {"0"}
    o, s = cfg.optim, cfg.schedule
    for r in rows:
        k = int(r["step"]) - 1  # the step's index
        lr = o.lr * schedules.get_lr(k, 4, o.warmup_steps, 1.0, o.min_lr_ratio)
        beta = schedules.jittered_beta(schedules.beta_at(k / 4, cfg.blend.beta,
                                                         s.beta_warmup_frac),
                                       s.beta_jitter, cfg.seed, k)
        assert float(r["lr"]) == pytest.approx(lr, rel=1e-9)
        assert float(r["beta"]) == pytest.approx(beta, rel=1e-9)
        assert int(r["nonfinite"]) == 2
    assert float(rows[0]["beta"]) != pytest.approx(float(rows[1]["beta"]))
    epoch = list(csv.DictReader(open(tmp_path / "epochs.csv")))[0]
    assert int(epoch["nonfinite_grads"]) == 8 and int(epoch["skipped_steps"]) == 0
    assert epoch["swa"] == "0" and float(epoch["lr"]) == pytest.approx(float(rows[1]["lr"]))


def test_early_stopping_resets_on_improvement_and_a_tie_is_no_improvement(tmp_path,
                                                                         monkeypatch):
    """Scripted validation objectives (inf, 4, 5, 2, 2, 6), patience 2: epoch 1 is the best
    so far though nothing was paired (inf), 2 improves, 3 does not, 4 improves (the count
    starts anew), 5 ties (no improvement), 6 is the second epoch without one: the run stops
    after 6 of 8 epochs, best epoch 4, best.pt holds epoch 4; the objective uses the
    recipe's f1_weight_deg; seconds_per_epoch is the mean (a mutation review: a count never
    reset, a tie counted as improvement, best.pt written every epoch, the default F1 weight
    all passed; a run whose every objective was inf wrote no best.pt, and `risloc train`
    ended in 'checkpoint not found: best.pt')."""
    import sys

    ev = sys.modules["risloc.training.evaluate"]
    script, weights = [math.inf, 4.0, 5.0, 2.0, 2.0, 6.0, 1.0, 1.0], []

    def scripted(summary, f1_weight_deg):
        weights.append(f1_weight_deg)
        return script.pop(0)

    monkeypatch.setattr(ev, "objective_of", scripted)
    cfg = load_train_config(TINY, [f"out_dir={tmp_path / 'a'}", "schedule.epochs=8",
                                   "schedule.steps_per_epoch=1", "schedule.patience=2",
                                   "schedule.swa_frac=0", "data.n_val=4",
                                   "evaluation.f1_weight_deg=7", "order.scenes=0"])
    metrics = train(cfg)
    assert metrics["epochs_run"] == 6 and metrics["stopped_early"] == 1.0
    assert metrics["best_epoch"] == 4 and metrics["best_objective"] == 2.0
    assert load_checkpoint(tmp_path / "a" / "best.pt")["epoch"] == 4
    assert set(weights) == {7.0}
    rows = list(csv.DictReader(open(tmp_path / "a" / "epochs.csv")))
    assert metrics["seconds_per_epoch"] == pytest.approx(
        sum(float(r["seconds"]) for r in rows) / len(rows))
    script[:] = [math.inf, math.inf]  # nothing paired in any epoch: best.pt is the first's
    metrics = train(cfg.model_copy(update={"out_dir": str(tmp_path / "b"), "schedule":
                                           cfg.schedule.model_copy(update={"epochs": 2})}))
    assert metrics["best_epoch"] == 1 and metrics["best_objective"] == math.inf
    assert load_checkpoint(tmp_path / "b" / "best.pt")["epoch"] == 1
