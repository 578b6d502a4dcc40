"""How the programs end on bad input: one line naming the input and the fix, exit 2.

Errors of the types below are the user's to fix; anything else is our bug and
keeps its traceback. TVD_DEBUG=1 shows the traceback for every error.
"""
from __future__ import annotations

import os
import sys

from distill.datasets import DatasetError
from teacher_logits.manifest import StoreError

USER_ERRORS = (ValueError, OSError, DatasetError, StoreError)


def run_main(main) -> None:
    try:
        main()
    except USER_ERRORS as e:
        if os.environ.get("TVD_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
