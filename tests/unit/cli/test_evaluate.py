"""`risloc evaluate`'s own logic without running an estimator: its argument checks, the
results table's cells and the plots' subtitle (the runs themselves: tests/integration)."""

import io
from pathlib import Path

import pytest
from rich.console import Console

from risloc.cli import evaluate as ev
from risloc.evaluation.metrics import EFFICIENT_MEDIAN
from risloc.experiments.harness import ResultRow, SweepSettings

run = ev.evaluate_command.__wrapped__  # (the ValueError itself, not handle_errors' exit)


def _text(table) -> str:
    buf = io.StringIO()
    Console(file=buf, width=300, color_system=None).print(table)
    return buf.getvalue()


@pytest.mark.parametrize("kwargs, message", [
    ({"estimators": " , "}, "none given"),
    ({"estimators": "none"}, "scores the CSVs of --estimates alone"),
    ({"estimators": "classical,none", "estimates": [Path("a.csv")]}, "scores the CSVs"),
    ({"estimators": "nope"}, "unknown estimator 'nope'"),
    ({"estimators": "classical,classical"}, "classical is given twice"),
    ({"estimators": "classical", "estimates": [Path("x/classical.csv")]},
     "'classical' is taken \\(by an estimator\\)"),
    ({"estimators": "classical", "estimates": [Path("a/m.csv"), Path("b/m.csv")]},
     "'m' is taken \\(by another --estimates\\)"),
    ({"crb": "exact"}, "--crb must be deterministic or stochastic"),
    ({"scenes": Path("s.h5"), "crb": "deterministic"}, "does not carry"),
    ({"snr_db": "5,500"}, "--snr-db"),
    ({"start": 1}, "concern a scene file's scenes"),
    ({"stop": 0}, "concern a scene file's scenes"),
    ({"estimates": [Path("a.csv")], "estimators": "classical"},
     "concern a scene file's scenes"),
])
def test_bad_arguments_are_refused_before_any_work(kwargs, message, tmp_path, monkeypatch):
    def no_work(*a, **k):  # (a missing check: fail here, not after a whole sweep)
        raise AssertionError("no check refused it")

    for entry in ("sweep_config", "sweep_points", "run_report"):
        monkeypatch.setattr(ev, entry, no_work)
    with pytest.raises(ValueError, match=message):
        run(**{"out_dir": tmp_path, "plots": False} | kwargs)


@pytest.mark.parametrize("K", ["0", "1,9"])
def test_sweep_K_beyond_K_max_is_refused_as_the_option(K, tmp_path, monkeypatch):
    """--K outside 1..K_max: refused as --K (exit 2) before a scene is drawn (a bad-input
    persona: the simulator refused it late, as "K=0", exit 1 with the drawing stubbed)."""
    from typer.testing import CliRunner

    from risloc.cli.main import app

    def no_work(*a, **k):
        raise AssertionError("scenes drawn before --K was checked")

    monkeypatch.setattr(ev, "sweep_points", no_work)
    res = CliRunner().invoke(app, ["evaluate", "--K", K, "--n", "1", "--estimators",
                                   "classical", "--no-plots", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert "--K must lie in 1..K_max=5, got" in res.output
    assert not (tmp_path / "r").exists()


def test_none_with_estimates_passes_the_name_checks(tmp_path):
    """--estimators none --estimates x.csv: no estimator (the CSVs alone), so it gets as
    far as the sweep's check that estimates need a scene file."""
    with pytest.raises(ValueError, match="concern a scene file's scenes"):
        run(estimators="none", estimates=[Path("x.csv")], out_dir=tmp_path, plots=False)


def test_fmt():
    assert ev._fmt(None) == "-" and ev._fmt(float("nan")) == "-"
    assert ev._fmt(0.123456) == "0.123" and ev._fmt(0.123456, 2) == "0.12"
    assert ev._fmt(0) == "0"


def _row(est="classical", snr=5.0, K="all", n=10, ms=1.25, **metrics):
    return ResultRow(est, snr, K, n, ms, metrics)


def test_table_cells_bound_and_standard_error():
    m = {"K_accuracy": 0.5, "se_K_accuracy_diff": 0.0123, "f1": 0.75,
         "azimuth_median_deg": 2.0, "crb_azimuth_median_deg": 1.0,
         "elevation_median_deg": 3.0, "crb_elevation_median_deg": None,
         "range_median_m": 0.25, "reference": "learned"}
    text = _text(ev.results_table([_row(**m)], "t"))
    assert f"2 ({EFFICIENT_MEDIAN:.3g})" in text
    assert "3 (-)" in text and "0.25 (-)" in text
    assert "0.5 (±0.012)" in text and "0.75 " in text and "0.75 (±" not in text
    assert "1.2" in text and "paired bootstrap" in text and "learned" in text
    assert "left out" not in text and "without a bound" not in text
    assert "n_paired" not in text


def test_table_rows_kept_and_dropped_and_notes():
    rows = [_row(K="all", snr=10.25), _row(K="2", snr=10.25, ms=9.0),
            _row(K="file", snr=float("nan"), n=7, n_paired=3)]
    text = _text(ev.results_table(rows, "t", left=1))
    assert "10.25" in text and "unknown" not in text  # K file: its SNR cell is 'all'
    assert text.count("classical") == 2  # the per-K row dropped
    assert "1 scene(s) are left out" in text and "without a bound" in text
    assert "n_paired of n_true)" in text and "median_ratio_common" not in text
    text = _text(ev.results_table(rows, "t", per_K=True))
    assert text.count("classical") == 3 and "9.0" not in text  # a K's row: no time
    assert "left out" not in text
    text = _text(ev.results_table([_row(snr=float("nan"), ms=float("nan"))], "t"))
    assert "unknown" in text


def test_searched_boxes():
    from risloc.config import FieldOfView

    d = FieldOfView()
    other = FieldOfView(range_m=(0.2, 0.4))
    assert ev._searched_boxes() == [(d, "the estimators search")]
    assert ev._searched_boxes(d) == [(d, "the estimators search")]
    assert [b for b, _ in ev._searched_boxes(other)] == [d, other]
    assert [b for b, _ in ev._searched_boxes(d, other)] == [other, d]
    assert ev._searched_boxes(other, other) == [(other, "the estimators search")]


def test_plot_subtitle():
    s = SweepSettings(("classical",), (0.0,), (1, 3), 20)
    sub = ev._plot_subtitle(s, "sim", False)
    assert sub == ("sim, 40 scenes per SNR (20 of each K = 1, 3), equal source powers; "
                   "K unknown, SNR given; deterministic CRB")
    s1 = SweepSettings(("classical",), (0.0,), (2,), 20, known_K=True, power_spread_db=6)
    assert ev._plot_subtitle(s1, "sim", False, with_bound=False) == (
        "sim, 20 scenes per SNR, K = 2, source powers spread over 6 dB; K given, SNR given")
    f = SweepSettings(("classical",), (), None, 20, crb="stochastic", snr_given=False)
    assert ev._plot_subtitle(f, "f.h5", True, "some").endswith(
        "SNR withheld; stochastic CRB at the noise and powers fitted at the truth where a "
        "scene has no SNR")
    g = SweepSettings(("classical",), (), None, 20, crb="stochastic")
    assert "SNR given where the file has one" in ev._plot_subtitle(g, "f", True, "some")
    sub = ev._plot_subtitle(g, "f", True, "none")
    assert "no SNR in the file" in sub and sub.endswith("fitted at the truth")
    assert ev._plot_subtitle(g, "f", True, "all").endswith("; stochastic CRB")
    assert "the estimates given" in ev._plot_subtitle(SweepSettings(()), "f", True)


def test_plot_subtitle_of_a_sweep_of_drawn_K():
    """K drawn per scene (no --K): n scenes per SNR, not 0."""
    s = SweepSettings(("classical",), (0.0,), None, 20)
    assert ev._plot_subtitle(s, "sim", False).startswith("sim, 20 scenes per SNR, equal")


@pytest.mark.parametrize("K, per_K", [(None, False), ((2,), False), ((1, 3), True)])
def test_report_has_a_K_column_for_several_K_only(K, per_K, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(ev, "evaluate_points", lambda *a: [_row()])
    monkeypatch.setattr(ev, "results_table", lambda *a: seen.append(a[3]))
    monkeypatch.setattr(ev, "print_table", lambda *a: None)
    monkeypatch.setattr(ev, "write_results", lambda *a: (tmp_path / "metrics.csv", None))
    system = type("System", (), {"model_dump": lambda self: {}})()
    s = SweepSettings(("classical",), (5.0,), K, 10)
    ev.run_report([], system, s, tmp_path, False, "sim")
    assert seen == [per_K]
