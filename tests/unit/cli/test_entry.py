"""The entry point: SIGTERM is taken as Ctrl-C once, a second one ends the process at once
(docs/guide.md), and the last flush before the immediate exit survives a closed stream."""

import io
import signal

import pytest

from risloc.cli import entry


def test_a_first_sigterm_is_ctrl_c_and_a_second_one_ends_the_process(request):
    saved = signal.getsignal(signal.SIGTERM)
    request.addfinalizer(lambda: signal.signal(signal.SIGTERM, saved))
    signal.signal(signal.SIGTERM, entry._interrupt)
    with pytest.raises(KeyboardInterrupt):
        entry._interrupt(signal.SIGTERM, None)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_immediate_exit_flushes_what_it_can_and_exits_with_its_code(monkeypatch,
                                                                        tmp_path):
    ended = []
    closed = (tmp_path / "stdout").open("w")
    closed.close()  # (flush: ValueError, as a closed stdout gives)
    kept = io.StringIO()
    monkeypatch.setattr(entry.sys, "stdout", closed)
    monkeypatch.setattr(entry.sys, "stderr", kept)
    monkeypatch.setattr(entry.logging, "shutdown", lambda: ended.append("logs"))
    monkeypatch.setattr(entry.os, "_exit", ended.append)
    entry.exit_now(130)
    assert ended == ["logs", 130]
