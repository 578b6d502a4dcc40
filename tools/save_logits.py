#!/usr/bin/env python
"""`python tools/save_logits.py` in a checkout; installed, the same program is `tvd-save-logits`
(distill/programs/save_logits.py, where its --help text lives)."""
from distill.programs.save_logits import cli, main, parse_args  # noqa: F401

if __name__ == "__main__":
    cli()
