"""Test doubles of the store reader (imported as `from store_doubles import ...`, as the tests
import helpers and image_folder)."""
from __future__ import annotations

import os

from teacher_logits.reader import LogitStore


class CountingStore(LogitStore):
    """Appends `pid shard bytes` to a file on every shard read (reads in any process count)."""

    def __init__(self, path, log):
        super().__init__(path)
        self.log = log

    def read(self, entry):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {entry.name} {entry.bytes}\n")
        return super().read(entry)
