"""Where a store lives: a local directory, or any fsspec URL.

The one home of fsspec in the project: the rest of the code asks a StoreLocation to
read, write, list and delete the store's files by name, and never sees a path.

A local directory (a plain path or a file:// URL) is written as before: temp file,
fsync, rename, so a killed run leaves the old file or the whole new one. Object
stores (s3://, gs://, az://, memory://) have no rename; a file is written there as
one object put, which readers see whole or not at all. http(s):// is read-only.

Network time is bounded: every request to a remote store has a connect and a read timeout
(TVD_STORE_TIMEOUT seconds, default 15; http(s) and s3, where the back-end takes one; gs and
az keep their libraries' own) and is tried again after a timeout or a dropped
connection, at most TVD_STORE_RETRIES times (default 2), waiting 1 s, 2 s, ... between tries.
So a host that accepts a connection and never answers fails the program in about 50 s, not
the HTTP library's 300 s per request. A download cut short is an error (aiohttp checks the
length the server announced), and every shard's size and sha256 are checked before a byte
of it is used (teacher_logits/shards.py), so a partial download is never taken for a shard.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import fsspec

from .files import atomic_write, sha256_bytes
from .errors import StoreError

# protocol -> the pyproject extra that installs its fsspec back-end
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure",
          "adl": "azure", "http": "http", "https": "http"}
READ_ONLY = {"http", "https"}
DEFAULT_TIMEOUT_S, DEFAULT_RETRIES = 15.0, 2


def network_limits() -> tuple[float, int]:
    """(seconds per request before it times out, retries after a timeout): TVD_STORE_TIMEOUT
    and TVD_STORE_RETRIES, or the defaults."""
    limits = []
    for name, default, kind, low in (("TVD_STORE_TIMEOUT", DEFAULT_TIMEOUT_S, float, 0.01),
                                     ("TVD_STORE_RETRIES", DEFAULT_RETRIES, int, 0)):
        text = os.environ.get(name, "").strip()
        try:
            value = kind(text) if text else default
        except ValueError:
            value = None
        if value is None or not low <= value <= 3600:
            raise StoreError(f"${name}={text!r}: expected a number from {low} to 3600 ({kind.__name__}); "
                             f"unset it for the default {default}")
        limits.append(value)
    return limits[0], limits[1]


def timeout_options(protocol: str, seconds: float, retries: int) -> dict:
    """fsspec storage options that bound one request of `protocol`'s back-end to `seconds`
    (http(s): aiohttp's; s3: botocore's, which also retries its own errors, `retries` times).
    Other back-ends keep their libraries' own timeouts; ours retry them all the same."""
    if protocol in READ_ONLY:
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, connect=seconds,
                                                                   sock_connect=seconds, sock_read=seconds)}}
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": seconds, "read_timeout": seconds,
                                  "retries": {"total_max_attempts": retries + 1, "mode": "standard"}}}
    return {}


def transient(error: BaseException) -> bool:
    """A timeout or a dropped connection, worth trying again (by kind: the back-ends' own
    types where they have them)."""
    kinds = [TimeoutError, ConnectionError]
    try:
        import aiohttp

        kinds += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:
        pass
    return isinstance(error, tuple(kinds))


class StoreUnreachable(StoreError):
    """The store's back-end is missing, or its host did not answer: not a fault of the store."""


def is_url(where) -> bool:
    return "://" in str(where)


class StoreLocation:
    """A store's directory, local or remote, addressed by file name."""

    def __init__(self, where):
        self.url = str(where).rstrip("/")
        self.protocol = self.url.split("://", 1)[0] if is_url(self.url) else "file"
        self.local = Path(self.url.removeprefix("file://")) if self.protocol == "file" else None
        self._fs, self.root, self._pid = None, None, None
        if not self.local:
            self.fs  # noqa: B018  a missing back-end or a malformed URL is reported now, not at first read

    @property
    def fs(self):
        """The fsspec file system, opened again in a forked DataLoader worker (async back-ends
        such as http refuse to be used across a fork)."""
        if self._pid != os.getpid():
            self._fs, self.root = self._connect()
            self._pid = os.getpid()
        return self._fs

    def __getstate__(self):  # spawned workers and pickling: reconnect on first use
        return {**self.__dict__, "_fs": None, "_pid": None}

    def _connect(self):
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **timeout_options(self.protocol, *network_limits()))
        except ImportError:
            extra = EXTRAS.get(self.protocol)
            hint = (f'pip install "tinyvit-distill[{extra}]"' if extra
                    else f"install the fsspec back-end for {self.protocol}://")
            raise StoreUnreachable(f"{self.url}: {self.protocol}:// stores need an fsspec back-end that is "
                                   f"not installed: {hint}") from None
        except ValueError as e:
            raise StoreError(f"{self.url}: not a usable store URL ({e}); pass a directory or an fsspec URL "
                             "(file://, s3://, gs://, az://, memory://, http(s)://)") from None
        return fs, root.rstrip("/")

    def __str__(self) -> str:
        return self.url

    def __truediv__(self, name: str) -> str:
        """The full path or URL of one file, for messages."""
        return str(self.local / name) if self.local else f"{self.url}/{name}"

    def _remote(self, name: str) -> str:
        self.fs  # noqa: B018  sets self.root
        return f"{self.root}/{name}"

    def _call(self, what: str, fn, *args):
        """Run a back-end call, again after a timeout or a dropped connection (network_limits);
        anything but 'not found' ends as a one-line StoreUnreachable naming the URL."""
        seconds, retries = network_limits()
        for attempt in range(retries + 1):
            try:
                return fn(*args)
            except FileNotFoundError:
                raise
            except Exception as e:  # noqa: BLE001  back-ends raise their own types (aiohttp, botocore, ...)
                if transient(e) and attempt < retries:
                    time.sleep(2 ** attempt)
                    continue
                reason = " ".join(str(e).split()) or "no answer"
                tries = (f" after {attempt + 1} tries of at most {seconds:g} s (TVD_STORE_TIMEOUT, "
                         "TVD_STORE_RETRIES)") if transient(e) else ""
                raise StoreUnreachable(f"{self.url}: cannot {what} ({type(e).__name__}: {reason}){tries}; "
                                       "check the URL, the network and the credentials") from None

    # ---- reading
    def read_bytes(self, name: str) -> bytes:
        """The file's bytes; FileNotFoundError if it does not exist."""
        if self.local:
            return (self.local / name).read_bytes()
        return self._call(f"read {name}", self.fs.cat_file, self._remote(name))

    def exists(self, name: str | None = None) -> bool:
        """Whether the file `name` (or the store's directory) exists."""
        if self.local:
            return (self.local / name if name else self.local).exists()
        target = self._remote(name) if name else self.root
        if self.protocol in READ_ONLY:  # http: exists() says False for an unreachable host; ask for the bytes
            try:
                self.read_bytes(name or "")
                return True
            except FileNotFoundError:
                return False
        return self._call("reach the store", self.fs.exists, target)

    def names(self) -> list[str] | None:
        """File names in the store's directory (hidden temp files included); None where the
        back-end cannot list (http)."""
        if self.local:
            return sorted(p.name for p in self.local.iterdir()) if self.local.is_dir() else []
        if self.protocol in READ_ONLY:
            return None
        try:
            listed = self._call("list the store", self.fs.ls, self.root, False)
        except FileNotFoundError:
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in listed)

    def sizes(self, names: list[str]) -> dict[str, int]:
        """Byte sizes of those of `names` that exist: one listing where the back-end lists,
        a HEAD request each over http; nothing is downloaded."""
        if self.local:
            return {n: (self.local / n).stat().st_size for n in names if (self.local / n).is_file()}
        if self.protocol in READ_ONLY:
            found = {}
            for name in names:
                try:
                    found[name] = int(self._call(f"reach {name}", self.fs.info, self._remote(name))["size"])
                except FileNotFoundError:
                    pass
            return found
        try:
            listed = self._call("list the store", self.fs.ls, self.root, True)
        except FileNotFoundError:
            return {}
        sizes = {entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry.get("size") for entry in listed}
        return {n: int(sizes[n]) for n in names if sizes.get(n) is not None}

    def has_file(self, name: str) -> bool:
        """Whether `name` exists, without fetching it (a HEAD request over http)."""
        if self.local or self.protocol not in READ_ONLY:
            return self.exists(name)
        try:
            self._call(f"reach {name}", self.fs.info, self._remote(name))
            return True
        except FileNotFoundError:
            return False

    def is_file(self) -> bool:
        """The location names a file, not a directory (local only: object stores have no such clash)."""
        return bool(self.local and self.local.exists() and not self.local.is_dir())

    def size_and_sha256(self, name: str) -> tuple[int, str]:
        data = self.read_bytes(name)
        return len(data), sha256_bytes(data)

    # ---- writing
    def check_writable(self) -> None:
        if self.protocol in READ_ONLY:
            raise StoreError(f"{self.url}: {self.protocol}:// stores are read-only; write the store to a "
                             "directory or an object store (s3://, gs://, az://) and serve it from there")

    def makedirs(self) -> None:
        if self.local:
            self.local.mkdir(parents=True, exist_ok=True)
        else:
            self._call("create the store", self.fs.makedirs, self.root, True)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Local: atomic (temp, fsync, rename). Remote: one object put."""
        if self.local:
            atomic_write(self.local / name, data)
        else:
            self._call(f"write {name}", self.fs.pipe_file, self._remote(name), data)

    def remove(self, name: str) -> None:
        if self.local:
            (self.local / name).unlink(missing_ok=True)
        else:
            try:
                self._call(f"remove {name}", self.fs.rm_file, self._remote(name))
            except FileNotFoundError:
                pass

    def remove_dir(self) -> None:
        """Remove the store's directory if it is empty (local only: object stores have no directories)."""
        if self.local:
            try:
                self.local.rmdir()
            except OSError:
                pass

    def sweep_temp_files(self) -> None:
        """Delete half-written temp files a killed local run left (object puts leave none)."""
        for name in self.names() or []:
            if name.startswith(".") and ".tmp-" in name:
                self.remove(name)


def locate(where) -> StoreLocation:
    """A StoreLocation for a path, a URL or an existing StoreLocation."""
    return where if isinstance(where, StoreLocation) else StoreLocation(os.fspath(where))
