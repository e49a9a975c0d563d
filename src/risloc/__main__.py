"""`python -m risloc ...`: the `risloc` command (also under torchrun: `torchrun -m risloc`)."""

from risloc.cli.main import app

if __name__ == "__main__":
    app(prog_name="risloc")
