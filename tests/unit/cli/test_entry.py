"""The entry point: SIGTERM is taken as Ctrl-C once, a second one ends the process at once
(docs/guide.md), and the last flush before the immediate exit survives a closed stream."""

import io
import signal
import time

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


def test_an_interrupt_raised_inside_a_finalizer_is_raised_again_not_lost(monkeypatch):
    # a review: a SIGTERM during `risloc tune` landed in SQLAlchemy's weakref callback,
    # Python printed "Exception ignored in: ... KeyboardInterrupt" and the command went on
    # to its end with exit code 0
    monkeypatch.setattr(entry.sys, "unraisablehook", entry.sys.unraisablehook)
    monkeypatch.setattr(entry.signal, "signal", lambda *args: None)  # (pytest's kept)
    monkeypatch.setattr("risloc.cli.main.app", lambda prog_name: None)
    entry.main()  # installs the hook

    class Finalized:
        def __del__(self):
            raise KeyboardInterrupt  # as the signal handler raises it there

    with pytest.raises(KeyboardInterrupt):
        Finalized()  # dropped at once: its __del__ runs and Python ignores what it raises
        deadline = time.monotonic() + 2.0  # (raised again in the main thread a moment later)
        while time.monotonic() < deadline:
            time.sleep(0.001)


def test_other_exceptions_of_finalizers_go_to_pythons_own_hook(monkeypatch):
    seen = []
    monkeypatch.setattr(entry.sys, "__unraisablehook__", seen.append)
    unraisable = type("Unraisable", (), {"exc_value": ValueError("x")})()
    entry._unraisable(unraisable)
    assert seen == [unraisable]


def test_an_interrupt_lost_in_a_finalizer_is_raised_again_where_sigint_is_ignored():
    # a job a script starts with & ignores SIGINT: interrupt_main, SIGINT's handler, did
    # nothing there, and the SIGTERM the finalizer swallowed was lost again (exit code 0)
    unraisable = type("Unraisable", (), {"exc_value": KeyboardInterrupt()})()
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt):
            entry._unraisable(unraisable)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                time.sleep(0.001)
    finally:
        signal.signal(signal.SIGINT, before)



def test_an_interrupt_raised_again_keeps_a_sigint_handler_and_never_holds_the_exit(
        monkeypatch, request):
    """A SIGINT handler of the program's own is kept (only an ignored SIGINT gets Python's),
    and the timer raising it again is a daemon: it never keeps the process alive (a third
    mutation review: neither was tested)."""
    timers = []

    class Timer:
        def __init__(self, delay, func):
            self.delay, self.func, self.daemon = delay, func, False
            timers.append(self)

        def start(self):
            self.started = True

    monkeypatch.setattr(entry.threading, "Timer", Timer)
    own = lambda signum, frame: None  # noqa: E731
    before = signal.signal(signal.SIGINT, own)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, before))
    entry._unraisable(type("Unraisable", (), {"exc_value": KeyboardInterrupt()})())
    assert signal.getsignal(signal.SIGINT) is own
    timer, = timers
    assert timer.daemon and timer.started and timer.func is entry._thread.interrupt_main

@pytest.fixture
def quiet_main(monkeypatch):
    """entry.main with its signal handler and finalizer hook recorded, not installed."""
    installed = []
    monkeypatch.setattr(entry.sys, "unraisablehook", entry.sys.unraisablehook)
    monkeypatch.setattr(entry.signal, "signal", lambda *args: installed.append(args))
    return installed


def test_main_takes_sigterm_as_ctrl_c_before_the_imports(quiet_main, monkeypatch):
    monkeypatch.setattr("risloc.cli.main.app", lambda prog_name: None)
    entry.main()
    assert quiet_main == [(signal.SIGTERM, entry._interrupt)]


def test_an_interrupt_during_the_imports_ends_quietly_with_exit_code_130(quiet_main,
                                                                          monkeypatch, capsys):
    import sys
    import types

    class Importing(types.ModuleType):
        def __getattr__(self, name):
            if name != "app":
                raise AttributeError(name)
            raise KeyboardInterrupt  # Ctrl-C while risloc.cli.main (torch) is imported

    monkeypatch.setitem(sys.modules, "risloc.cli.main", Importing("risloc.cli.main"))
    with pytest.raises(SystemExit) as done:
        entry.main()
    assert done.value.code == entry.INTERRUPTED == 130
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("code,immediate", [(130, [130]), (1, []), (0, []), (2, [])])
def test_only_an_interrupted_command_ends_at_once(quiet_main, monkeypatch, code, immediate):
    """Exit code 130 (interrupted): os._exit, without the interpreter's teardown; any
    other code: the ordinary SystemExit."""
    ended = []

    def app(prog_name):
        raise SystemExit(code)

    monkeypatch.setattr("risloc.cli.main.app", app)
    monkeypatch.setattr(entry, "exit_now", ended.append)
    with pytest.raises(SystemExit) as done:
        entry.main()
    assert done.value.code == code and ended == immediate


def test_the_immediate_exit_survives_a_broken_pipe(monkeypatch):
    class Broken(io.StringIO):
        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")  # `risloc ... | head` gone

    ended = []
    monkeypatch.setattr(entry.sys, "stdout", Broken())
    monkeypatch.setattr(entry.sys, "stderr", Broken())
    monkeypatch.setattr(entry.logging, "shutdown", lambda: ended.append("logs"))
    monkeypatch.setattr(entry.os, "_exit", ended.append)
    entry.exit_now(130)
    assert ended == ["logs", 130]
