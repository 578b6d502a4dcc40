#!/usr/bin/env python
"""`python tools/evaluate.py` in a checkout; installed, the same program is `tvd-evaluate`
(distill/programs/evaluate.py, where its --help text lives)."""
from distill.programs.evaluate import cli, main, parse_args  # noqa: F401

if __name__ == "__main__":
    cli()
