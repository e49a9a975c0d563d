"""`risloc localize`'s own logic without running an estimator: its argument checks, its
inputs' expansion, the arguments it passes the localizer and its summary (the runs
themselves: tests/integration/test_cli_localize.py)."""

import io
import re
from pathlib import Path

import pytest
import torch
import typer
from rich.console import Console

from risloc.cli import localize as lc
from risloc.config import SceneConfig, SystemConfig
from risloc.core.params import Estimates
from risloc.io import write_scenes
from risloc.pipeline import Localizer
from risloc.pipeline.localizer import LocalizationResult
from risloc.simulation import simulate_range

run = lc.localize_command.__wrapped__  # (the ValueError itself, not handle_errors' exit)


def _scenes(path: Path, n: int, K: int = 1, **system) -> Path:
    sysc = SystemConfig(**system)
    sc = simulate_range(0, max(n, 1), sysc, SceneConfig(), seed=1, split="test", K=K,
                        snr_db=10.0)
    write_scenes(path, sc, sysc)
    if n == 0:  # (write_scenes refuses 0 scenes: the datasets cut to none)
        import h5py

        with h5py.File(path, "a") as h:
            for name in list(h):
                data = h[name][:0]
                del h[name]
                h[name] = data

    return path


def _args(**kw) -> dict:
    base = {"out_path": Path("x.csv"), "method": "classical", "checkpoint": None, "K": None,
            "start": 0, "stop": None, "batch_size": None, "device": "cpu", "resume": False,
            "restart": False, "bf16": True, "graphs": False, "snr_given": True,
            "snr_bin_db": 5.0, "fov_opts": None}
    return base | kw


def _said(capsys) -> str:
    got = capsys.readouterr()
    return got.out + got.err


class _Calls(list):
    bad_first = False


@pytest.fixture
def calls(monkeypatch):
    """Localizer.localize replaced: every scene estimated at K = 0 (scene 0 of each call
    bad where ``bad_first``); the calls' arguments recorded."""
    seen = _Calls()

    def fake(self, y, H, codes, snr_db=None, K=None, system=None):
        seen.append({"n": len(y), "snr_db": snr_db, "K": K})
        nan = torch.full((len(y), 1), float("nan"))
        est = Estimates(torch.zeros(len(y), dtype=torch.int64), nan, nan.clone(),
                        nan.clone(), nan.clone())
        return LocalizationResult(est, ((0, "boom"),) if seen.bad_first else ())

    monkeypatch.setattr(Localizer, "localize", fake)
    return seen


def test_inputs_expand_in_order_each_file_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for n in ("b.h5", "a.h5", "c.npz"):
        (tmp_path / n).touch()
    got = lc.expand_inputs(["c.npz", "*.h5", str(tmp_path / "a.h5"), "./c.npz"])
    assert got == [Path("c.npz"), Path("a.h5"), Path("b.h5")]
    with pytest.raises(FileNotFoundError, match="no scene file matches d\\*.h5"):
        lc.expand_inputs(["d*.h5"])
    with pytest.raises(FileNotFoundError, match="^d.h5: no such file$"):
        lc.expand_inputs(["d.h5"])


@pytest.mark.parametrize("kw, message", [
    ({"method": "nope"}, "--method must be one of"),
    ({"resume": True, "restart": True}, "give one"),
    ({"device": "tpu"}, "--device must be cpu or cuda, got 'tpu'"),
    ({"K": 0}, "--K must lie in 1..K_max=4, got 0"),
    ({"K": 5}, "--K must lie in 1..K_max=4, got 5"),
    ({"start": 3}, "--start 3 selects no scene range of its 3 scenes"),
    ({"start": 2, "stop": 2}, "--start 2 / --stop 2 select no scene range of its 3"),
])
def test_arguments_are_checked_before_anything_is_written(tmp_path, kw, message, calls):
    f = _scenes(tmp_path / "s.h5", 3, K_max=4)
    out = tmp_path / "e.csv"
    with pytest.raises(ValueError, match=re.escape(message)):
        run([str(f)], **_args(out_path=out) | kw)
    assert not calls and not list(tmp_path.glob("e.csv*"))


def test_k_at_the_bounds_and_a_stop_past_the_end_are_taken(tmp_path, calls):
    f = _scenes(tmp_path / "s.h5", 3, K_max=4)
    for i, kw in enumerate(({"K": 1}, {"K": 4, "start": 2, "stop": 9})):
        run([str(f)], **_args(out_path=tmp_path / f"e{i}.csv") | kw)
    assert [c["n"] for c in calls] == [3, 1] and [c["K"] for c in calls] == [1, 4]


def test_files_of_no_scenes_are_named(tmp_path, calls, capsys):
    e = _scenes(tmp_path / "e.h5", 0)
    with pytest.raises(ValueError, match="e.h5: the file holds no scenes"):
        run([str(e)], **_args(out_path=tmp_path / "x.csv"))
    f = _scenes(tmp_path / "f.h5", 2)
    with pytest.raises(ValueError, match="none of the files holds scenes"):
        run([str(e), str(_scenes(tmp_path / "e2.h5", 0))], **_args(out_path=tmp_path / "x.csv"))
    run([str(tmp_path / "e2.h5"), str(f)], **_args(out_path=tmp_path / "y.csv"))
    text = " ".join(_said(capsys).split())
    assert "e2.h5: the file holds no scenes: nothing of it is localized" in text
    assert "0 = " in text and "1 = " in text
    assert "file" in (tmp_path / "y.csv").read_text().splitlines()[0].split(",")


def test_one_file_has_no_file_column_and_the_snr_is_passed_or_withheld(tmp_path, calls,
                                                                       capsys):
    f = _scenes(tmp_path / "s.h5", 4)
    run([str(f)], **_args(out_path=tmp_path / "a.csv", batch_size=2))
    assert "file" not in (tmp_path / "a.csv").read_text().splitlines()[0].split(",")
    assert [c["n"] for c in calls] == [2, 2]
    assert all(c["snr_db"] is not None and float(c["snr_db"].min()) == 10.0 for c in calls)
    calls.clear()
    run([str(f)], **_args(out_path=tmp_path / "b.csv", snr_given=False))
    assert [c["snr_db"] for c in calls] == [None] and [c["n"] for c in calls] == [4]
    assert "file` column" not in _said(capsys)


def test_graphs_off_cuda_are_said_to_be_ignored(tmp_path, calls, capsys):
    f = _scenes(tmp_path / "s.h5", 1)
    run([str(f)], **_args(out_path=tmp_path / "a.csv"))
    assert "ignored" not in _said(capsys)
    run([str(f)], **_args(out_path=tmp_path / "b.csv", graphs=True))
    assert "--graphs applies to the learned method on CUDA only" in _said(capsys)


def test_bad_scenes_are_named_counted_and_end_with_exit_1(tmp_path, calls, capsys):
    f = _scenes(tmp_path / "s.h5", 3)
    run([str(f)], **_args(out_path=tmp_path / "a.csv"))
    text = " ".join(_said(capsys).split())
    assert "3 scenes in" in text and "estimates of 3 scenes in" in text
    assert "not localized" not in text
    calls.bad_first = True
    with pytest.raises(typer.Exit) as ex:
        run([str(f)], **_args(out_path=tmp_path / "b.csv", start=1))
    assert ex.value.exit_code == 1
    text = " ".join(_said(capsys).split())
    assert "scene 1 not localized: boom" in text
    assert "estimates of 1 scene in" in text and "(1 not localized, above)" in text
    assert "1 scene not localized is counted" in text


def test_classical_with_a_checkpoint_says_it_is_unused(capsys):
    loc = lc._localizer("classical", Path("m.pt"), SystemConfig(), "cpu")
    assert loc.method == "classical"
    assert "m.pt is not used by --method classical" in " ".join(_said(capsys).split())
    lc._localizer("classical", None, SystemConfig(), "cpu")
    assert "not used" not in _said(capsys)
    with pytest.raises(ValueError, match="--method must be one of"):
        lc._localizer("nope", None, SystemConfig(), "cpu")


def _text(table) -> str:
    buf = io.StringIO()
    Console(file=buf, width=300, color_system=None).print(table)
    return " ".join(buf.getvalue().split())


def test_metrics_caption_counts_the_scenes_not_localized():
    from risloc.evaluation.metrics import match_sources

    sc = simulate_range(0, 2, SystemConfig(), SceneConfig(), seed=1, split="test", K=1,
                        snr_db=10.0)
    est = Estimates(sc.K.clone(), sc.azimuth[:, :1], sc.elevation[:, :1], sc.range_m[:, :1],
                    torch.ones(2, 1))
    m = match_sources(est, sc.azimuth, sc.elevation, sc.range_m, sc.K)
    snr = torch.tensor([0.0, 20.0])
    assert "not localized" not in _text(lc._metrics_table(m, snr, 5.0))
    assert "1 scene not localized is counted" in _text(lc._metrics_table(m, snr, 5.0, 1))
    two = _text(lc._metrics_table(m, snr, 5.0, 2))
    assert "2 scenes not localized are counted" in two and " all " in two
    assert " all " not in _text(lc._metrics_table(m, torch.tensor([1.0, 2.0]), 5.0))


def test_small_files_share_a_call_up_to_the_batch_size(tmp_path, calls):
    f, g = _scenes(tmp_path / "f.h5", 3), _scenes(tmp_path / "g.h5", 2)
    run([str(f), str(g)], **_args(out_path=tmp_path / "a.csv", batch_size=4))
    assert [c["n"] for c in calls] == [3, 2]
    calls.clear()
    run([str(f), str(g)], **_args(out_path=tmp_path / "b.csv", batch_size=5))
    assert [c["n"] for c in calls] == [5]


def test_a_read_only_part_file_is_one_clear_error(tmp_path, calls, capsys, monkeypatch):
    """--resume where the interrupted run's .part is read-only (faked: root ignores the
    mode): exit 2 with the file named and what to do, not "[Errno 13] Permission denied"."""
    from risloc.pipeline.estimates_file import COLUMNS, EstimatesStream

    f, out = _scenes(tmp_path / "f.h5", 2), tmp_path / "x.csv"
    EstimatesStream(out, {}, COLUMNS).close()  # an interrupted run's .part and record
    opened = Path.open

    def refuse(self, mode="r", *args, **kw):
        if self.name == "x.csv.part" and mode == "ab":
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, mode, *args, **kw)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(typer.Exit) as ex:
        lc.localize_command([str(f)], **_args(out_path=out, resume=True))
    said = " ".join(_said(capsys).split())
    assert ex.value.exit_code == 2 and not calls
    assert f"{out}.part is not writable (Permission denied): make it writable" in said
    assert "Errno" not in said
