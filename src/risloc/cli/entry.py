"""The `risloc` command's entry point: a Ctrl-C or SIGTERM while the command's modules
(torch among them) are still being imported ends it quietly, as one during the command
does. SIGTERM
(`kill`, a batch system's preemption) ends every command as Ctrl-C does: its message, its
outputs closed and kept (`risloc localize --resume`, `risloc train --resume`, a tune trial
continued from its last epoch), no temporary file left, exit code 130; a second SIGTERM
ends it at once (the default action: a rank of torchrun blocked in a collective never
reaches the handler of the first).

An interrupted command (exit code 130: its outputs closed, what it keeps written, its
message printed) ends without the interpreter's teardown. There, torch's thread pools were
sometimes torn down under a thread still inside an operation, and the process aborted
('terminate called without an active exception', exit code 134) after a clean interrupt:
about 1 in 6 Ctrl-C of `risloc localize`, and of 12 lines of torch alone run in a thread
pool, so not risloc's to fix below this point."""

from __future__ import annotations

import _thread
import logging
import os
import signal
import sys
import threading

INTERRUPTED = 130


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # (before the imports: they take seconds)
    sys.unraisablehook = _unraisable
    try:
        from risloc.cli.main import app
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    try:
        app(prog_name="risloc")
    except SystemExit as done:
        if done.code == INTERRUPTED:
            exit_now(INTERRUPTED)
        raise


def _interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl-C; a second one ends the process at once (the default action)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt


def _unraisable(unraisable) -> None:
    """A Ctrl-C or SIGTERM whose KeyboardInterrupt was raised inside a finalizer (a
    `__del__`, a weakref callback such as SQLAlchemy's during `risloc tune`) is ignored by
    Python: the command went on to its end, exit code 0 (a review: a SIGTERM printed
    'Exception ignored in: ... KeyboardInterrupt' and was lost). It is raised again in the
    main thread's next step instead, from another thread a moment later (here, inside the
    hook, it would be ignored again): `_thread.interrupt_main`, Ctrl-C's handler, which
    raises KeyboardInterrupt. Anything else goes to Python's own hook."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        # interrupt_main does nothing where SIGINT is ignored, as in a job a script starts
        # with & (its SIGTERM was lost again): Python's own handler is installed for it
        if (not callable(signal.getsignal(signal.SIGINT))
                and threading.current_thread() is threading.main_thread()):
            signal.signal(signal.SIGINT, signal.default_int_handler)
        again = threading.Timer(0.01, _thread.interrupt_main)
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(unraisable)


def exit_now(code: int) -> None:
    """Flush what was printed and logged, then end the process at once (os._exit): no
    atexit handler or static destructor runs after this point."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
            pass
    logging.shutdown()
    os._exit(code)
