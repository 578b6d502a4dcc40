#!/usr/bin/env python
"""`python tools/verify_logits.py` in a checkout; installed, the same program is `tvd-verify-logits`
(distill/programs/verify_logits.py, where its --help text lives)."""
from distill.programs.verify_logits import cli, main, parse_args  # noqa: F401

if __name__ == "__main__":
    cli()
