"""The error types for bad input: a flag, file, store or config the user must change.

Programs (distill.cli.run_main) print its message on one line and exit 2. Any other
exception is a bug, and keeps its traceback. It is a ValueError, so code that treats bad
values generically still catches it.
"""


class UserError(ValueError):
    """Bad input; the message names the input and the fix."""


class StoreError(UserError):
    """A store that cannot be used as asked; the message names the file and the fix."""
