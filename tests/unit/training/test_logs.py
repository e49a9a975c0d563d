"""The training logs (risloc.training.logs); their rows across a resume:
tests/integration/test_training.py."""

import logging
import os

from risloc.training.logs import CsvLog


def test_each_row_is_on_disk_before_the_checkpoint_that_follows_it(tmp_path, monkeypatch):
    """A row is synced as it is written: a checkpoint written after it (synced itself) never
    covers epochs whose rows a power loss took, which a resumed run would then miss."""
    synced = []  # the file's size at each sync
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_size),
                                                 real(fd)))
    log = CsvLog(tmp_path / "epochs.csv")
    log.write({"epoch": 1, "loss": 0.5})
    log.write({"epoch": 2, "loss": 0.25})
    assert synced == [len("epoch,loss\r\n1,0.5\r\n"), len("epoch,loss\r\n1,0.5\r\n2,0.25\r\n")]


def test_a_row_cut_off_by_a_kill_is_not_a_row(tmp_path):
    """A review: a run killed while writing a row left it cut off; plot-run then failed
    with a KeyError traceback, and a resumed run's next row would have continued the cut
    line. The cut row is left out; the resumed log starts a whole line."""
    from risloc.training.logs import read_log

    f = tmp_path / "epochs.csv"
    f.write_bytes(b"epoch,loss\r\n1,0.5\r\n2,0.2")  # killed within row 2
    assert read_log(f) == (["epoch", "loss"], [{"epoch": "1", "loss": "0.5"}], True)
    log = CsvLog(f, append=True, keep=lambda r: int(r["epoch"]) <= 1)
    log.write({"epoch": 2, "loss": 0.25})
    assert f.read_bytes() == b"epoch,loss\r\n1,0.5\r\n2,0.25\r\n"
    f.write_bytes(b"")  # an empty file has no row to be cut (a mutation review: cut True)
    assert read_log(f) == ([], [], False)
    f.write_bytes(b"epoch,loss\r\n1,0.5\r\n2,0")  # (a cut the keep rule alone would keep)
    CsvLog(f, append=True).write({"epoch": 2, "loss": 0.25})
    assert f.read_bytes() == b"epoch,loss\r\n1,0.5\r\n2,0.25\r\n"


def test_a_resumed_log_that_is_missing_or_empty_starts_with_its_header(tmp_path):
    """A resumed run whose steps.csv was never written (log_every beyond the steps done) or
    is empty (killed before its header reached the disk) starts it as a fresh run would."""
    for f in (tmp_path / "missing.csv", tmp_path / "empty.csv"):
        if f.name == "empty.csv":
            f.write_bytes(b"")
        log = CsvLog(f, append=True, keep=lambda r: True)
        log.write({"step": 1, "loss": 0.5})
        log.write({"step": 2, "loss": 0.25})
        assert f.read_bytes() == b"step,loss\r\n1,0.5\r\n2,0.25\r\n"
    f = tmp_path / "cut.csv"  # killed within its header: no whole line, a fresh log
    f.write_bytes(b"step,lo")  # (a review: the new header followed the cut one, b"step,lostep,")
    CsvLog(f, append=True, keep=lambda r: True).write({"step": 1, "loss": 0.5})
    assert f.read_bytes() == b"step,loss\r\n1,0.5\r\n"


def test_a_fresh_log_replaces_an_old_one_and_a_resumed_one_keeps_its_columns(tmp_path):
    """Without append an old file of the name is gone (its header not repeated mid-file);
    a resumed log writes its own columns, in their order, whatever a new row adds, and drops
    the rows ``keep`` refuses wherever they are."""
    f = tmp_path / "epochs.csv"
    f.write_bytes(b"epoch,loss\r\n1,0.5\r\n2,0.4\r\n")
    CsvLog(f).write({"epoch": 1, "loss": 0.75})
    assert f.read_bytes() == b"epoch,loss\r\n1,0.75\r\n"
    f.write_bytes(b"epoch,loss\r\n1,0.5\r\n3,0.1\r\n2,0.4\r\n")  # a stale row amid
    log = CsvLog(f, append=True, keep=lambda r: int(r["epoch"]) <= 2)
    log.write({"loss": 0.3, "epoch": 3, "swa_loss": 0.2})  # a column the file lacks
    assert f.read_bytes() == b"epoch,loss\r\n1,0.5\r\n2,0.4\r\n3,0.3\r\n"
    CsvLog(f, append=True, keep=lambda r: int(r["epoch"]) <= 2)  # the last row alone stale
    assert f.read_bytes() == b"epoch,loss\r\n1,0.5\r\n2,0.4\r\n"


def test_the_epoch_summary_means_finite_terms_and_counts_the_rest():
    """Means over every micro-batch with a NaN / inf term left out of its own mean only;
    non-finite totals, gradients and skipped steps counted; the gradient norms' mean and
    largest over the finite ones; the last step's rate and beta."""
    import math

    from risloc.training.logs import EpochStats

    s = EpochStats()
    s.add_terms({"total": 1.0, "a": 2.0})
    s.add_terms({"total": math.nan, "a": 4.0, "b": math.inf})
    s.add_terms({"total": 3.0, "a": 6.0})
    s.add_terms({"a": 1.0})  # (no total: no bad loss)
    s.add_step(2.0, 0, True, 1e-3, 0.1)
    s.add_step(math.inf, 3, False, 2e-3, 0.2)
    s.add_step(4.0, 1, True, 3e-3, 0.3)
    out = s.summary()
    assert out["train_total"] == 2.0 and out["train_a"] == 13.0 / 4
    assert math.isnan(out["train_b"])
    assert (out["lr"], out["beta"]) == (3e-3, 0.3)
    assert (out["grad_norm_mean"], out["grad_norm_max"]) == (3.0, 4.0)
    assert (out["nonfinite_grads"], out["skipped_steps"], out["nonfinite_losses"]) == (4, 1, 1)
    empty = EpochStats().summary()
    assert math.isnan(empty["grad_norm_mean"]) and math.isnan(empty["grad_norm_max"])


def test_epoch_stats_count_skipped_steps_and_non_finite_entries_over_the_epoch():
    """(a mutation review: the taken steps counted as skipped, the last step's count as the
    epoch's, an infinite norm as the largest all passed)"""
    import math

    from risloc.training.logs import EpochStats

    stats = EpochStats()
    for norm, n_bad, taken in ((1.0, 2, True), (math.inf, 0, False), (3.0, 1, True)):
        stats.add_step(norm, n_bad, taken, 0.1, 0.2)
    row = stats.summary()
    assert row["skipped_steps"] == 1 and row["nonfinite_grads"] == 3
    assert row["grad_norm_max"] == 3.0 and row["grad_norm_mean"] == 2.0


def test_the_epoch_bar_writes_nothing_where_stderr_is_a_log_file(capsys):
    """stdout and stderr redirected to a file (a long run's log): the transient bar drew
    nothing there but left an empty line an epoch between the epoch lines."""
    from risloc.training.logs import epoch_progress

    with epoch_progress(True, "epoch 1/2", 3) as advance:
        for _ in range(3):
            advance(1.0)
    assert capsys.readouterr().err == ""


def test_the_epoch_bar_is_drawn_on_a_terminal_unless_turned_off(capsys, monkeypatch):
    """(its mutant: the terminal check alone drew the bar under --no-progress)"""
    from risloc.training.logs import epoch_progress

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich takes stderr for a terminal
    for enabled in (True, False):
        with epoch_progress(enabled, "epoch 1/2", 3) as advance:
            advance(1.0)
        assert ("epoch 1/2" in capsys.readouterr().err) == enabled


def test_a_resumed_log_names_the_new_columns_it_does_not_log(tmp_path, caplog):
    """A review: a column a resumed run logs and the old file lacks was dropped without a
    word; the file keeps its header (the class docstring), and a warning names the column,
    once."""
    f = tmp_path / "epochs.csv"
    CsvLog(f).write({"epoch": 1, "loss": 0.5})
    log = CsvLog(f, append=True, keep=lambda r: True)
    with caplog.at_level(logging.WARNING, logger="risloc.training.logs"):
        log.write({"epoch": 2, "loss": 0.25, "swa_loss": 0.2})
        log.write({"epoch": 3, "loss": 0.125, "swa_loss": 0.1})
    assert f.read_bytes() == b"epoch,loss\r\n1,0.5\r\n2,0.25\r\n3,0.125\r\n"
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "column(s) swa_loss not logged" in warned[0], warned
