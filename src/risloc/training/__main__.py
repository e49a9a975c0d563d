"""`python -m risloc.training --config ...`: the training command without the main CLI."""

import typer

from risloc.cli.common import setup_logging
from risloc.cli.train import train_command


def _main() -> None:
    setup_logging(False)
    typer.run(train_command)


if __name__ == "__main__":
    _main()
