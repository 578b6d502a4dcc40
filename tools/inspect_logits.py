#!/usr/bin/env python
"""`python tools/inspect_logits.py` in a checkout; installed, the same program is `tvd-inspect-logits`
(distill/programs/inspect_logits.py, where its --help text lives)."""
from distill.programs.inspect_logits import cli, main  # noqa: F401

if __name__ == "__main__":
    cli()
