"""The training logs (risloc.training.logs); their rows across a resume:
tests/integration/test_training.py."""

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
    f.write_bytes(b"epoch,loss\r\n1,0.5\r\n2,0")  # (a cut the keep rule alone would keep)
    CsvLog(f, append=True).write({"epoch": 2, "loss": 0.25})
    assert f.read_bytes() == b"epoch,loss\r\n1,0.5\r\n2,0.25\r\n"
