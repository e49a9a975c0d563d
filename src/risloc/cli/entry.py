"""The `risloc` command's entry point: a Ctrl-C while the command's modules (torch among
them) are still being imported ends it quietly, as one during the command does."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from risloc.cli.main import app
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    app(prog_name="risloc")
