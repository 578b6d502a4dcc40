"""Real full and read-only disks for the bad-input tests: a tiny tmpfs mounted for one test
(needs root or CAP_SYS_ADMIN; skipped, saying why, elsewhere). Imported as `from disks import ...`."""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(mnt: Path, size: str, options: str = ""):
    """A tmpfs of `size` (e.g. '64k') at `mnt`, mounted with extra `options` (e.g. 'ro'): a real
    full or read-only disk. Skips, saying why, where mounting is not permitted (needs root)."""
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(filter(None, [f"size={size}", options])), "tmpfs",
                           str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()}): needs root / CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)])


def remount(mnt: Path, options: str) -> None:
    """Change a small_disk's options in place: 'size=2m' frees space, 'ro' makes it read-only."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)
