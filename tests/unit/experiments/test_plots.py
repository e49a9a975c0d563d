"""The evaluation plots say what they show: each estimator keeps its colour and marker
whatever the order it is given in, and the titles carry the run's conditions."""

import math

import pytest

from risloc.experiments import plots
from risloc.experiments.harness import ResultRow


def _rows(order):
    rows = []
    for name in order:
        for snr in (0.0, 10.0, 20.0):
            m = {"azimuth_median_deg": 1 / (1 + snr), "elevation_median_deg": 0.5,
                 "range_median_m": 0.2, "crb_azimuth_median_deg": 0.5,
                 "crb_elevation_median_deg": 0.4, "crb_range_median_m": 0.1,
                 "K_accuracy": 0.9, "f1": 0.95}  # equal curves: told apart by their styles
            rows.append(ResultRow(name, snr, "all", 8, 10.0, m))
    return rows


@pytest.fixture
def figures(monkeypatch):
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: kept.append(fig) or path)
    return kept


@pytest.mark.parametrize("plot", [plots.plot_error_vs_snr, plots.plot_k_accuracy])
def test_an_estimator_keeps_its_style_and_the_title_says_what_ran(figures, tmp_path, plot):
    styles = []
    for order in (["learned", "classical", "mine"], ["mine", "classical", "learned"]):
        plot(_rows(order), tmp_path / "p.png", "a file; K unknown, SNR withheld")
        lines = {ln.get_label(): (ln.get_color(), ln.get_marker(), ln.get_linestyle())
                 for ln in figures[-1].axes[0].get_lines()}
        styles.append({k: lines[k] for k in ("learned", "classical", "mine")})
        title = figures[-1].get_suptitle()
        assert "K unknown, SNR withheld" in title
    assert styles[0] == styles[1]  # the order given changes nothing
    assert len({s[1:] for s in styles[0].values()}) == 3  # equal curves stay visible
    ticks = [t for t in figures[-1].axes[0].get_xticks()]
    assert ticks == [0.0, 10.0, 20.0]  # at the SNRs evaluated
    if plot is plots.plot_error_vs_snr:
        assert "mine's paired sources" in title and "median_over_bound" in title
        assert not math.isnan(figures[-1].axes[0].get_lines()[-1].get_ydata()[0])
        # the dashed line is 0.6745 sqrt(CRB) (a mutation review: the bound itself passed)
        for ax, crb in zip(figures[-1].axes, (0.5, 0.4, 0.1), strict=True):
            dashed = [ln for ln in ax.get_lines() if "sqrt(CRB)" in ln.get_label()]
            assert len(dashed) == 1
            assert list(dashed[0].get_ydata()) == pytest.approx([0.6745 * crb] * 3, rel=1e-3)


def test_the_bound_is_drawn_where_a_file_holds_one_snr(figures, tmp_path):
    """A user's file is often taken at one SNR: one point per curve. The estimators' markers
    showed; the bound, a dashed line without a marker, was drawn as nothing."""
    rows = [r for r in _rows(["learned", "classical"]) if r.snr_db == 10.0]
    plots.plot_error_vs_snr(rows, tmp_path / "p.png", "a file")
    for ax in figures[-1].axes:
        dashed = [ln for ln in ax.get_lines() if "sqrt(CRB)" in ln.get_label()]
        assert len(dashed) == 1 and len(dashed[0].get_xdata()) == 1
        assert dashed[0].get_marker() not in (None, "", "None", " ")
        assert dashed[0].get_markersize() > 0 and dashed[0].get_visible()


def test_the_run_curves_mark_the_best_epoch_and_give_each_unit_its_axis(figures, tmp_path):
    """A review: the objective and the angle median shared one unlabelled axis, the range
    median was not drawn, the best epoch and the SWA epochs were not marked."""
    import csv

    rows = [{"epoch": k, "train_total": 5 - k / 2, "val_objective": o, "val_angle_median_deg": a,
             "val_range_median_m": 0.5, "lr": 2e-3 / k, "beta": 0.3, "swa": int(k >= 3),
             "val_K_accuracy": 0.5, "val_f1": 0.6}
            for k, o, a in ((1, 9.0, 3.0), (2, 4.0, 1.0), (3, 5.0, 1.5), (4, 6.0, 2.0))]
    with (tmp_path / "epochs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plots.plot_run(tmp_path, tmp_path / "curves.png")
    fig = figures[-1]
    assert "the best epoch (2, as training chose it); shaded, the SWA epochs" in \
        fig.get_suptitle()
    objective, errors = fig.axes[1], fig.axes[-2]  # (the twin axes come last)
    assert [ln.get_label() for ln in objective.get_lines()][:1] == ["objective (left)"]
    assert {ln.get_label() for ln in errors.get_lines()} == {
        "angle median [deg] (right)", "range median [m] (right)"}
    marks = [ln for ln in objective.get_lines() if ln.get_linestyle() == ":"]
    assert marks and list(marks[0].get_xdata()) == [2, 2]  # the best epoch's line


def test_the_run_curves_mark_the_epoch_training_chose(figures, tmp_path):
    """A review: the lowest objective was marked, a NaN first epoch included (min() keeps
    it), where training (with schedule.min_improvement) may keep another: the run's record
    decides (metrics.json, else last.pt), then the lowest finite objective."""
    import csv
    import json

    from risloc.inference.checkpoint import save_checkpoint

    rows = [{"epoch": k, "train_total": 1.0, "val_objective": o, "val_angle_median_deg": 1.0,
             "lr": 1e-3, "beta": 0.3} for k, o in ((1, math.nan), (2, 4.0), (3, 3.9))]
    with (tmp_path / "epochs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    def marked() -> str:
        plots.plot_run(tmp_path, tmp_path / "curves.png")
        return figures[-1].get_suptitle()

    assert "the best epoch (3, as training chose it)" in marked()  # NaN is no epoch's best
    (tmp_path / "metrics.json").write_text(json.dumps({"best_epoch": 1}))
    assert "the best epoch (1," in marked()
    save_checkpoint(tmp_path / "last.pt", {"best": {"objective": 4.0, "epoch": 2}})
    assert "the best epoch (2," in marked()  # 3.9 did not improve by min_improvement;
    (tmp_path / "metrics.json").unlink()  # last.pt, every epoch's, over an older metrics.json
    (tmp_path / "last.pt").unlink()
    for r in rows:
        r["val_objective"] = math.nan
    with (tmp_path / "epochs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert "best epoch" not in marked()  # no finite objective: no epoch is marked


def test_the_run_curves_leave_out_a_row_cut_off_by_a_kill(figures, tmp_path):
    """A review: a cut-off last row of epochs.csv (a run killed while writing it) gave a
    KeyError traceback; a line of too few cells elsewhere is named."""
    head = "epoch,train_total,val_objective,val_angle_median_deg,lr,beta\r\n"
    whole = "1,1.0,4.0,2.0,0.001,0.3\r\n2,0.9,3.0,1.5,0.001,0.3\r\n"
    (tmp_path / "epochs.csv").write_bytes((head + whole + "3,0.8,2.").encode())
    plots.plot_run(tmp_path, tmp_path / "curves.png")
    objective = figures[-1].axes[1].get_lines()[0]
    assert list(objective.get_xdata()) == [1.0, 2.0]
    (tmp_path / "epochs.csv").write_bytes((head + "1,1.0\r\n" + whole).encode())
    with pytest.raises(ValueError, match=r"epochs.csv: line 2 lacks val_objective"):
        plots.plot_run(tmp_path, tmp_path / "curves.png")

