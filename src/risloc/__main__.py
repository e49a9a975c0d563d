"""`python -m risloc ...`: the `risloc` command (also under torchrun: `torchrun -m risloc`)."""

from risloc.cli.entry import main

if __name__ == "__main__":
    main()
