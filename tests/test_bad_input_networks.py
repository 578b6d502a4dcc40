"""Stores at URLs when the network misbehaves: a host that accepts and never answers, a
download cut short, and bad limits. Everything runs against 127.0.0.1 in threads of this
process, with short timeouts (TVD_STORE_TIMEOUT) so that each case takes seconds. Part of the
bad-input catalogue (docs/reliability.md)."""
from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
import time

import pytest
from helpers import run_program, user_error
from test_store_urls import QuietHandler

from teacher_logits import location

pytestmark = [pytest.mark.usefixtures("no_tvd_debug"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]
aiohttp = pytest.importorskip("aiohttp", reason="fsspec's http back-end needs aiohttp (the [http] extra)")


@pytest.fixture
def stalled_host():
    """A server on 127.0.0.1 that accepts every connection and never sends a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/store"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_stalled_store_host_fails_in_bounded_time(stalled_host, monkeypatch):
    """The issue's example: verify_logits (and the trainer) waited ~300 s per request, the HTTP
    library's default. With 0.5 s per request and 1 retry it fails in about 2 s, naming the URL
    and the settings."""
    monkeypatch.setenv("TVD_STORE_TIMEOUT", "0.5")
    monkeypatch.setenv("TVD_STORE_RETRIES", "1")
    start = time.monotonic()
    result = run_program("verify_logits", [stalled_host])
    elapsed = time.monotonic() - start
    user_error(result, stalled_host, "after 2 tries", "TVD_STORE_TIMEOUT")
    assert elapsed < 10, elapsed


def test_the_default_limits_fail_a_stalled_host_within_90_s():
    """Every try waits at most the timeout, and the back-off between tries is 1, 2, ... s."""
    seconds, retries = location.network_limits()
    assert (seconds, retries) == (location.DEFAULT_TIMEOUT_S, location.DEFAULT_RETRIES)
    assert seconds * (retries + 1) + sum(2 ** n for n in range(retries)) <= 90
    timeout = location.timeout_options("http", seconds, retries)["client_kwargs"]["timeout"]
    assert timeout.connect == timeout.sock_read == seconds and timeout.total is None


@pytest.mark.parametrize("value", ["soon", "-1", "1e9"])
def test_bad_network_limits_are_named(value, monkeypatch):
    monkeypatch.setenv("TVD_STORE_TIMEOUT", value)
    user_error(run_program("verify_logits", ["http://127.0.0.1:9/store"]), "$TVD_STORE_TIMEOUT",
               "unset it for the default 15")


class CutShort(QuietHandler):
    """Serves the store, but every shard stops after half its bytes (the announced length is whole)."""

    def copyfile(self, source, outputfile):
        if self.path.endswith(".tar"):
            data = source.read()
            outputfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().copyfile(source, outputfile)


@pytest.fixture
def cut_short_server(tmp_path, store):
    root = tmp_path / "www"
    shutil.copytree(store, root / "store")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CutShort, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/store"
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_download_cut_short_is_never_taken_for_a_shard(cut_short_server, monkeypatch):
    """The reader retries, then refuses in one line naming the store; no record is read."""
    from teacher_logits.location import StoreUnreachable
    from teacher_logits.reader import LogitStore

    monkeypatch.setenv("TVD_STORE_RETRIES", "1")
    reader = LogitStore(cut_short_server)
    with pytest.raises(StoreUnreachable, match="cannot read e0000-000000000.tar.*after 2 tries"):
        reader.read(reader.shards(0)[0])
