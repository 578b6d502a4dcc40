#!/usr/bin/env python
"""`python tools/train_airbench.py` in a checkout; installed, the same program is `tvd-train-airbench`
(distill/programs/train_airbench.py, where its --help text lives)."""
from distill.programs.train_airbench import cli, main  # noqa: F401

if __name__ == "__main__":
    cli()
