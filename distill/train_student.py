#!/usr/bin/env python
"""`python distill/train_student.py` in a checkout; installed, the same program is `tvd-train-student`
(distill/programs/train_student.py, where its --help text lives)."""
from distill.programs.train_student import cli, main, parse_args  # noqa: F401

if __name__ == "__main__":
    cli()
