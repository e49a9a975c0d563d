import os

import pytest


@pytest.fixture
def sync_events(monkeypatch):
    """[("fsync", path synced) or ("replace", target)] in the order the code under test did
    them (os.fsync and os.replace spied on, still done)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(
        f"/proc/self/fd/{fd}"))), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))),
                                                     real_replace(a, b)))
    return events
