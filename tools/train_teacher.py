#!/usr/bin/env python
"""`python tools/train_teacher.py` in a checkout; installed, the same program is `tvd-train-teacher`
(distill/programs/train_teacher.py, where its --help text lives)."""
from distill.programs.train_teacher import cli, main  # noqa: F401

if __name__ == "__main__":
    cli()
