"""The evaluation plots say what they show: each estimator keeps its colour and marker
whatever the order it is given in, and the titles carry the run's conditions."""

import contextlib
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
    yield kept
    for fig in kept:  # (the figures _save would have closed)
        plots.plt.close(fig)


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



def test_each_curve_is_its_estimator_s_over_all_scenes_in_snr_order(figures, tmp_path):
    """The lines are the rows over all scenes (K = "all"; a sweep of several K adds rows per
    true K, which are not drawn), joined in SNR order whatever the rows' order, on a log
    error axis; the bound is the first estimator's (the title says so) and K accuracy and
    F1 keep their own panels on the whole 0..1 scale."""
    import dataclasses

    rows = []
    for name, crb in (("classical", 0.5), ("learned", 0.25)):
        for snr in (20.0, 0.0, 10.0):
            m = {"azimuth_median_deg": 1 + snr, "elevation_median_deg": 1 + snr,
                 "range_median_m": 1 + snr, "crb_azimuth_median_deg": crb,
                 "crb_elevation_median_deg": crb, "crb_range_median_m": crb,
                 "K_accuracy": 0.5 + snr / 100, "f1": 0.6 + snr / 100}
            rows.append(ResultRow(name, snr, "all", 8, 10.0, m))
            rows.append(ResultRow(name, snr, "2", 4, 10.0, {k: 99.0 for k in m}))
    rows.sort(key=lambda r: (r.estimator != "classical", -r.snr_db))  # 20, 10, 0 dB
    plots.plot_error_vs_snr(rows, tmp_path / "e.png")
    fig = figures[-1]
    assert "over classical's paired sources" in fig.get_suptitle()
    for ax in fig.axes:
        assert ax.get_yscale() == "log"
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        for name in ("classical", "learned"):
            assert list(lines[name].get_xdata()) == [0.0, 10.0, 20.0]
            assert list(lines[name].get_ydata()) == [1.0, 11.0, 21.0]
        bound = lines["0.674 x median sqrt(CRB)"]
        assert list(bound.get_ydata()) == pytest.approx([0.6745 * 0.5] * 3, rel=1e-3)
    plots.plot_k_accuracy(rows, tmp_path / "k.png")
    for ax, want in zip(figures[-1].axes, ([0.5, 0.6, 0.7], [0.6, 0.7, 0.8]), strict=True):
        line = next(ln for ln in ax.get_lines() if ln.get_label() == "learned")
        assert list(line.get_ydata()) == pytest.approx(want)
        bottom, top = ax.get_ylim()
        assert bottom <= 0 and top >= 1
    bare = [dataclasses.replace(r, metrics={k: v for k, v in r.metrics.items()
                                            if not k.startswith("crb_")})
            for r in rows]  # no bound (--estimates alone, or one that cannot be computed)
    plots.plot_error_vs_snr(bare, tmp_path / "e.png")
    assert all(ax.get_yscale() == "log" for ax in figures[-1].axes)


def test_estimates_made_elsewhere_each_get_their_own_style(figures, tmp_path):
    plots.plot_k_accuracy(_rows(["learned", "mine", "theirs", "yours"]), tmp_path / "k.png")
    lines = {ln.get_label(): (ln.get_color(), ln.get_marker(), ln.get_linestyle())
             for ln in figures[-1].axes[0].get_lines()}
    assert len(set(lines.values())) == 4


def test_a_plot_is_a_png_and_its_figure_is_closed(tmp_path):
    """A report draws many plots: each figure is closed once written (matplotlib keeps every
    open one, and warns past 20)."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    path = plots.plot_k_accuracy(_rows(["learned"]), tmp_path / "k.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == before


def test_the_run_curves_put_epoch_means_on_the_step_axis_and_a_decaying_rate_on_a_log_one(
        figures, tmp_path):
    """The training loss per logged step and per epoch share the optimizer-step axis (each
    epoch's mean at its last step); a learning rate over decades is drawn on a log axis; the
    SWA epochs are shaded in every epoch panel."""
    head = "epoch,train_total,val_objective,val_angle_median_deg,lr,beta,swa\n"
    (tmp_path / "epochs.csv").write_text(head + "1,2.0,3.0,2.0,0.01,0.3,0\n"
                                         "2,1.5,2.0,1.0,0.0001,0.3,1\n")
    (tmp_path / "steps.csv").write_text("step,epoch,total\n" + "".join(
        f"{s},{(s - 1) // 3},{3.0 - s / 10}\n" for s in range(1, 7)))
    plots.plot_run(tmp_path, tmp_path / "curves.png")
    fig = figures[-1]
    loss, schedule = fig.axes[0], fig.axes[3]
    assert loss.get_xlabel() == "optimizer step"
    means = next(ln for ln in loss.get_lines() if ln.get_label() == "train (epoch mean)")
    assert list(means.get_xdata()) == [3.0, 6.0]
    assert schedule.get_yscale() == "log"
    for ax in fig.axes[1:4]:
        assert len(ax.patches) == 1  # the SWA epoch (2) shaded
        assert ax.patches[0].get_x() == pytest.approx(1.5)


def test_a_running_run_s_epoch_means_sit_at_their_epochs_last_steps(figures, tmp_path):
    """Plotted while training runs (the guide's `risloc plot-run RUN`), steps.csv already
    holds rows of the epoch not in epochs.csv yet: the epoch mean stays at step 160, not at
    240 / 2 = 120 (measured on a default run one and a half epochs in)."""
    head = "epoch,train_total,val_objective,val_angle_median_deg,lr,beta,swa\n"
    (tmp_path / "epochs.csv").write_text(head + "1,2.0,3.0,2.0,0.01,0.3,0\n")
    (tmp_path / "steps.csv").write_text("step,epoch,total\n" + "".join(
        f"{s},{(s - 1) // 160},2.0\n" for s in range(20, 241, 20)))
    plots.plot_run(tmp_path, tmp_path / "curves.png")
    loss = figures[-1].axes[0]
    means = next(ln for ln in loss.get_lines() if ln.get_label() == "train (epoch mean)")
    assert list(means.get_xdata()) == [160.0]
    # steps logged more rarely than an epoch's length: none of a finished epoch yet
    (tmp_path / "steps.csv").write_text("step,epoch,total\n20,1,2.0\n")
    plots.plot_run(tmp_path, tmp_path / "curves.png")
    means = next(ln for ln in figures[-1].axes[0].get_lines()
                 if ln.get_label() == "train (epoch mean)")
    assert list(means.get_xdata()) == [10.0]


def test_a_run_whose_record_has_no_best_epoch_marks_the_lowest_finite_objective(figures,
                                                                                  tmp_path):
    """last.pt's best epoch is -1 until an epoch improves (every objective NaN so far): no
    epoch of that number is marked, the rule of the lowest finite objective decides."""
    from risloc.inference.checkpoint import save_checkpoint

    (tmp_path / "epochs.csv").write_text(
        "epoch,train_total,val_objective,val_angle_median_deg,lr,beta\n"
        "1,1.0,nan,1.0,0.001,0.3\n2,1.0,nan,1.0,0.001,0.3\n")
    save_checkpoint(tmp_path / "last.pt", {"best": {"objective": math.inf, "epoch": -1}})
    plots.plot_run(tmp_path, tmp_path / "curves.png")
    assert "best epoch" not in figures[-1].get_suptitle()


def test_the_spectrum_slice_marks_the_true_and_the_estimated_sources(figures, tmp_path, system):
    import torch

    N = system.N_H * system.N_V
    A = torch.randn(N, 3, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    R = A @ A.conj().T + 0.1 * torch.eye(N, dtype=torch.complex128)
    plots.plot_spectrum_slice(R, 1, system, 2.0, tmp_path / "s.png", truth=([0.1], [0.0]),
                              estimates=([0.2], [0.1]), n=21)
    ax = figures[-1].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["true", "estimated"]
    marks = {ln.get_label(): (ln.get_xdata()[0], ln.get_ydata()[0]) for ln in ax.get_lines()}
    assert marks["true"] == pytest.approx((math.degrees(0.1), 0.0))
    assert marks["estimated"] == pytest.approx((math.degrees(0.2), math.degrees(0.1)))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("azimuth [deg]", "elevation [deg]")
    assert ax.get_title() == "MUSIC spectrum slice at r = 2.00 m"
    # in dB, the marks told apart (a mutation review: the spectrum drawn linear, and the
    # two marks' styles swapped, passed)
    from risloc.config import FieldOfView
    from risloc.estimators.music import music_spectrum

    fov = FieldOfView()
    el = torch.linspace(*map(math.radians, fov.elevation_deg), 21 // 2, dtype=torch.float64)
    az = torch.full_like(el, math.radians(fov.azimuth_deg[0]))  # the first column
    P = music_spectrum(R.unsqueeze(0), 1, system, az, el, torch.full_like(el, 2.0))[0]
    shown = torch.tensor(ax.collections[0].get_array()).reshape(len(el), 21)
    assert shown[:, 0] == pytest.approx(10 * torch.log10(P), rel=1e-6)
    styles = {ln.get_label(): (ln.get_marker(), ln.get_color()) for ln in ax.get_lines()}
    assert styles == {"true": ("x", "w"), "estimated": ("+", "r")}


def test_the_spectrum_slice_spans_the_box_it_is_given(figures, tmp_path, system):
    """The slice is drawn over the field of view given (the box searched), not the default
    one whatever the box (a near-field model's example showed -60..60 x -30..30 deg)."""
    import torch

    from risloc.config import FieldOfView

    N = system.N_H * system.N_V
    R = torch.eye(N, dtype=torch.complex128)
    box = FieldOfView(azimuth_deg=(0.0, 40.0), elevation_deg=(-10.0, 20.0), range_m=(0.2, 0.6))
    plots.plot_spectrum_slice(R, 1, system, 0.4, tmp_path / "s.png", n=21, fov=box)
    mesh = figures[-1].axes[0].collections[0]
    x, y = (mesh.get_coordinates()[..., i] for i in (0, 1))
    assert (x.min(), x.max()) == pytest.approx((0.0, 40.0), abs=2.0)  # (cell edges)
    assert (y.min(), y.max()) == pytest.approx((-10.0, 20.0), abs=2.0)


def test_the_run_curves_take_empty_cells_and_a_rate_within_a_decade(figures, tmp_path):
    """A row written without a column of the header (CsvLog leaves its cell empty) is drawn,
    the range median only where every epoch has one; a rate within one decade keeps a linear
    axis (a log one crowds or loses its labels). (a mutation review: an empty cell read as a
    number, the range median drawn where one epoch lacks it, any rate change on a log axis
    all passed)"""
    (tmp_path / "epochs.csv").write_text(
        "epoch,train_total,val_objective,val_angle_median_deg,val_range_median_m,lr,beta\n"
        "1,2.0,3.0,2.0,,0.005,0.3\n2,1.5,2.0,1.0,0.4,0.001,0.3\n")
    plots.plot_run(tmp_path, tmp_path / "curves.png")
    fig = figures[-1]
    assert {ln.get_label() for ln in fig.axes[-2].get_lines()} == {"angle median [deg] (right)"}
    assert fig.axes[3].get_yscale() == "linear"


def test_the_snr_ticks_are_the_snrs_evaluated_only_where_few_enough_to_read(figures, tmp_path):
    m = {"azimuth_median_deg": 1.0, "elevation_median_deg": 1.0, "range_median_m": 1.0}
    rows = [ResultRow("learned", float(s), "all", 8, 1.0, m) for s in range(13)]
    plots.plot_error_vs_snr(rows, tmp_path / "p.png")
    assert list(figures[-1].axes[0].get_xticks()) != [float(s) for s in range(13)]
    plots.plot_error_vs_snr(rows[:12], tmp_path / "p.png")
    assert list(figures[-1].axes[0].get_xticks()) == [float(s) for s in range(12)]


@pytest.mark.parametrize("plot", [plots.plot_error_vs_snr, plots.plot_k_accuracy])
def test_a_long_subtitle_is_wrapped_within_the_figure(figures, tmp_path, plot):
    """A review: a file's subtitle (its path, what was told, the bound and the scenes left
    to the table) was one line, and the tight PNG grew to 2129 px for its 1100 px panels."""
    what = ("/data/some/long/folder/measurements_campaign_2026.h5, scenes 0..23, its scenes "
            "grouped by SNR (x: a group's mean SNR); K unknown, SNR given where the file has "
            "one; stochastic CRB at the noise and powers fitted at the truth where a scene has "
            "no SNR (the 12 scenes without an SNR: in the table only)")
    plot(_rows(["learned", "classical"]), tmp_path / "p.png", what)
    fig = figures[-1]
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # nothing beyond the panels' width
    assert " ".join(fig.get_suptitle().split()).count("in the table only") == 1  # all kept


@pytest.mark.parametrize("plot", [plots.plot_error_vs_snr, plots.plot_k_accuracy])
def test_snr_ticks_close_together_are_not_printed_over_each_other(figures, tmp_path, plot):
    """A review: a file's SNR groups at 16.6 and 18.1 dB of -3.7..18.1 got a tick each,
    their labels printed over each other ("16.618.1")."""
    m = {"azimuth_median_deg": 1.0, "elevation_median_deg": 1.0, "range_median_m": 1.0,
         "K_accuracy": 1.0, "f1": 1.0}
    snrs = (-3.7, -1.0, 5.8, 10.3, 16.6, 18.1)
    plot([ResultRow("classical", s, "all", 2, 1.0, m) for s in snrs], tmp_path / "p.png")
    for ax in figures[-1].axes[:2]:
        assert list(ax.get_xticks()) == [-3.7, -1.0, 5.8, 10.3, 16.6]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["-3.7", "-1", "5.8", "10.3",
                                                                "16.6"]


def test_each_estimator_s_line_is_its_own_and_per_k_and_pooled_rows_are_no_ticks(figures,
                                                                                 tmp_path):
    """(a mutation review: every line drawn from the first estimator's rows, the x ticks
    taken from per-K and pooled "file" rows, and the bound's note left out where one group
    has no bound all passed: the fixture's curves were equal and all rows K = "all")"""
    rows = _rows(["learned", "classical"])
    for r in rows:
        if r.estimator == "classical":
            r.metrics["azimuth_median_deg"] *= 3
    rows.append(ResultRow("learned", 15.0, "file", 8, 10.0, {"azimuth_median_deg": 9.0}))
    rows.append(ResultRow("learned", 5.0, 1, 8, 10.0, {"azimuth_median_deg": 9.0}))
    rows.append(ResultRow("learned", 30.0, "all", 8, 10.0, {"azimuth_median_deg": 0.1}))
    plots.plot_error_vs_snr(rows, tmp_path / "p.png", "")
    ax = figures[-1].axes[0]
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()}
    assert lines["classical"] == pytest.approx([3 / (1 + s) for s in (0, 10, 20)])
    assert lines["learned"] == pytest.approx([1 / (1 + s) for s in (0, 10, 20)] + [0.1])
    assert list(ax.get_xticks()) == [0.0, 10.0, 20.0, 30.0]
    assert "median_over_bound" in figures[-1].get_suptitle()  # (the 30 dB row has no bound)


def test_the_run_curves_name_a_missing_column_start_the_rates_at_zero_and_label_epochs(
        figures, tmp_path):
    """(a mutation review: the header's missing column named only per line, the scores'
    axis not from 0, and "optimizer step" under epoch means with no step logged passed)"""
    (tmp_path / "epochs.csv").write_text("epoch,train_total,val_objective,val_angle_median_deg,"
                                         "lr\n1,2.0,3.0,2.0,0.001\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) beta \(not written by risloc"):
        plots.plot_run(tmp_path, tmp_path / "curves.png")
    (tmp_path / "epochs.csv").write_text(
        "epoch,train_total,val_objective,val_angle_median_deg,lr,beta,val_K_accuracy\n"
        "1,2.0,3.0,2.0,0.001,0.3,0.8\n2,1.5,2.0,1.0,0.001,0.3,0.9\n")
    plots.plot_run(tmp_path, tmp_path / "curves.png")
    axes = figures[-1].axes
    assert axes[0].get_xlabel() == "epoch"
    assert axes[2].get_title().startswith("validation (higher") and axes[2].get_ylim()[0] == 0


def test_each_validation_curve_draws_its_own_column_and_the_swa_span_covers_its_epochs(
        figures, tmp_path):
    """The right axis draws the angle median (not the objective), the NMSE curve its own
    column, and the SWA shading spans each SWA epoch whole (a mutation review: the
    objective as the angle median, val_overlap as the NMSE and a span cut short by an
    epoch all passed)."""
    (tmp_path / "epochs.csv").write_text(
        "epoch,train_total,val_objective,val_angle_median_deg,lr,beta,swa,val_overlap,"
        "val_nmse\n1,2.0,9.0,3.0,0.001,0.3,0,0.7,0.2\n2,1.5,8.0,2.0,0.001,0.3,1,0.8,0.1\n"
        "3,1.4,7.0,1.0,0.001,0.3,1,0.9,0.05\n")
    plots.plot_run(tmp_path, tmp_path / "curves.png")
    fig = figures[-1]
    by_label = {ln.get_label(): list(ln.get_ydata()) for ax in fig.axes
                for ln in ax.get_lines()}
    assert by_label["angle median [deg] (right)"] == [3.0, 2.0, 1.0]
    assert by_label["objective (left)"] == [9.0, 8.0, 7.0]
    assert by_label["NMSE R_blend (lower is better)"] == [0.2, 0.1, 0.05]
    assert by_label["subspace overlap"] == [0.7, 0.8, 0.9]
    span = fig.axes[1].patches[0]
    assert (span.get_x(), span.get_width()) == (pytest.approx(1.5), pytest.approx(2.0))


def test_a_plot_is_written_through_an_atomic_path(tmp_path, monkeypatch):
    """The PNG goes to a temporary file renamed into place (a kill mid-write leaves no
    half PNG): a mutation review's savefig straight to the path passed."""
    seen = []
    real = plots.atomic_path

    @contextlib.contextmanager
    def spy(path):
        with real(path) as tmp:
            seen.append((path, tmp))
            yield tmp

    monkeypatch.setattr(plots, "atomic_path", spy)
    out = plots.plot_k_accuracy(_rows(["learned"]), tmp_path / "k.png")
    assert [p for p, _ in seen] == [out] and seen[0][1] != out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
