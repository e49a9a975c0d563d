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
