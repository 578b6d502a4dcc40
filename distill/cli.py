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
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(2)


def user_message(error: BaseException) -> str:
    """The error's message on one line. A DataLoader worker's error arrives re-raised with the
    worker's traceback as its message; its last line is the original message."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split()) or type(error).__name__
