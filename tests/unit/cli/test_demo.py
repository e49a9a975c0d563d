"""`risloc demo` without options reproduces the README's table: 100 test scenes at each of
-5, 0, 5, 10 and 20 dB, seed 0, its report in reports/demo (docs/guide.md)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

import risloc.cli.demo as demo
from risloc.cli.main import app


def test_the_defaults_are_those_of_the_readme_s_table(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(demo, "sweep_points", lambda settings, cfg: [])
    monkeypatch.setattr(demo, "run_report", lambda points, system, settings, out_dir, plots,
                        *a: seen.append((settings, out_dir, plots, a)))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["demo"])
    assert res.exit_code == 0, res.output
    (settings, out_dir, plots, (what, command)), = seen
    assert (settings.n_per_point, settings.snr_db, settings.seed) == (
        100, (-5.0, 0.0, 5.0, 10.0, 20.0), 0)
    # as users' data come: unequal powers, no SNR given; both localizers when the package
    # ships its model (a second mutation review: these defaults went unchecked)
    assert (settings.power_spread_db, settings.snr_given) == (12.0, False)
    from risloc.pipeline.learned import DEFAULT_MODEL

    assert settings.estimators == (("learned", "classical") if DEFAULT_MODEL.exists() else
                                   ("classical",)) and settings.checkpoint is None
    assert out_dir == Path("reports/demo") and plots is True
    assert what == "default system, simulated test split" and command == "risloc demo"


def test_a_bad_snr_or_an_unwritable_report_is_refused_before_the_sweep(monkeypatch, tmp_path):
    """(a second mutation review: neither refusal was tested)"""
    monkeypatch.setattr(demo, "sweep_points", lambda *a: pytest.fail("swept"))
    res = CliRunner().invoke(app, ["demo", "--snr-db", "0,1e4", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--snr-db must be a finite SNR" in res.output, res.output
    (tmp_path / "afile").write_text("")
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "afile" / "r")])
    assert res.exit_code == 2 and "is a file" in " ".join(res.output.split()), res.output


def test_a_power_spread_beyond_the_scene_config_s_60_db_is_refused(monkeypatch, tmp_path):
    """(as `simulate` refuses it; the sweep's scene took it unvalidated, 1e30 dB failing late)"""
    monkeypatch.setattr(demo, "sweep_points", lambda *a: pytest.fail("swept"))
    res = CliRunner().invoke(app, ["demo", "--power-spread-db", "61",
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--power-spread-db" in res.output, res.output


def test_each_option_reaches_the_sweep_and_its_config(monkeypatch, tmp_path):
    """(a third mutation review: the options past their defaults went unchecked: --n, --seed,
    --power-spread-db, --snr-given and --checkpoint could be dropped on the way unseen)"""
    from risloc.config import RislocConfig

    seen, configs = [], []
    monkeypatch.setattr(demo, "sweep_config", lambda *a: configs.append(a) or RislocConfig())
    monkeypatch.setattr(demo, "sweep_points", lambda settings, cfg: [])
    monkeypatch.setattr(demo, "run_report", lambda points, system, settings, *a:
                        seen.append(settings))
    model = tmp_path / "m.pt"
    res = CliRunner().invoke(app, ["demo", "--n", "7", "--seed", "3", "--snr-db", "1,2",
                                   "--power-spread-db", "4.5", "--snr-given",
                                   "--checkpoint", str(model), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    settings, = seen
    assert (settings.n_per_point, settings.seed, settings.snr_db) == (7, 3, (1.0, 2.0))
    assert (settings.power_spread_db, settings.snr_given) == (4.5, True)
    assert settings.checkpoint == str(model) and type(settings.checkpoint) is str
    assert settings.estimators == ("learned", "classical")
    assert configs == [(None, None, model)]


def test_a_metrics_json_that_cannot_be_written_is_refused_before_the_sweep(monkeypatch,
                                                                           tmp_path):
    monkeypatch.setattr(demo, "sweep_points", lambda *a: pytest.fail("swept"))
    (tmp_path / "r" / "metrics.json").mkdir(parents=True)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "is a folder" in " ".join(res.output.split()), res.output


def test_a_checkpoint_adds_the_learned_model_where_none_is_shipped_and_names_its_system(
        monkeypatch, tmp_path):
    """A build without the shipped model still runs the learned pipeline of --checkpoint,
    and a model trained on another system is reported as "the model's system" (a
    mutation review: neither branch was tested)."""
    import risloc.pipeline.learned as learned
    from risloc.config import RislocConfig

    monkeypatch.setattr(learned, "DEFAULT_MODEL", tmp_path / "missing.pt")
    other = RislocConfig(system=RislocConfig().system.model_copy(update={"M": 8, "K_max": 7}))
    seen = []
    monkeypatch.setattr(demo, "sweep_config", lambda *a: other)
    monkeypatch.setattr(demo, "sweep_points", lambda settings, cfg: [])
    monkeypatch.setattr(demo, "run_report", lambda points, system, settings, out_dir, plots,
                        what, command: seen.append((settings.estimators, system, what)))
    res = CliRunner().invoke(app, ["demo", "--checkpoint", str(tmp_path / "m.pt"),
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert seen == [(("learned", "classical"), other.system,
                     "the model's system, simulated test split")]
