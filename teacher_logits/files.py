"""File utilities of the store: atomic writes, checksums, and the failpoints the crash tests
use to kill a run inside a write."""
from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path


_failpoint_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """SIGKILL this process at the Nth pass through `name` when TVD_FAILPOINT=name#N:
    how the crash tests kill a run inside a write, not only between writes."""
    want = os.environ.get("TVD_FAILPOINT")
    if want and want.split("#")[0] == name:
        _failpoint_hits[name] = _failpoint_hits.get(name, 0) + 1
        if _failpoint_hits[name] == int(want.partition("#")[2] or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: Path, data: bytes) -> None:
    """Write, fsync, rename: a reader sees the old file or the whole new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            failpoint(f"write:{path.suffix}")
            f.write(data[len(data) // 2 :])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # e.g. ENOSPC: leave no temp file behind (a SIGKILL's is swept by the next run)
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
