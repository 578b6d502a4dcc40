"""Stores at fsspec URLs: written to and read from memory://, served over HTTP from
127.0.0.1 to the trainer and the tools, and the errors of a missing back-end, an
unreachable host and a missing shard. Nothing here touches the real network."""
from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import shutil
import socket
import threading
import uuid

import fsspec
import numpy as np
import pytest

from helpers import REPO, run_program, run_tool, save_logits_args, tiny_student_args, user_error
from teacher_logits.manifest import new_manifest
from teacher_logits.reader import LogitStore
from teacher_logits.verify import verify_store

SMALL = ["--epochs", "2", "--limit", "64", "--shard-records", "16", "--chunk-records", "8"]
SHARDS = 2 * 64 // 16


@pytest.fixture
def memory_url():
    """A fresh memory:// directory, removed after the test."""
    url = f"memory://tvd-{uuid.uuid4().hex[:8]}/store"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url.removeprefix("memory://").split("/")[0]):
        fs.rm(url.removeprefix("memory://").split("/")[0], recursive=True)


@pytest.fixture(scope="module")
def disk_store(tmp_path_factory, cifar_root, teacher_ckpt):
    out = tmp_path_factory.mktemp("urls") / "store"
    run_tool("tools/save_logits.py", *save_logits_args(cifar_root, teacher_ckpt, out, *SMALL))
    return out


def records(store: LogitStore) -> list[dict[str, np.ndarray]]:
    return [store.read(entry) for entry in store.shards()]


def shard_digests(manifest) -> dict[str, str]:
    return {s.name: s.sha256 for s in manifest.shards}


def test_memory_store_equals_the_disk_store_and_resumes(memory_url, disk_store, cifar_root, teacher_ckpt,
                                                        one_thread):
    args = save_logits_args(cifar_root, teacher_ckpt, memory_url, *SMALL)
    code, out, err = run_program("save_logits", args)
    assert code == 0, err
    remote, local = LogitStore(memory_url), LogitStore(disk_store)
    assert shard_digests(remote.manifest) == shard_digests(local.manifest)  # byte-identical shards
    for got, want in zip(records(remote), records(local), strict=True):
        assert got.keys() == want.keys()
        for name in want:
            assert np.array_equal(got[name], want[name]), name
    assert verify_store(memory_url)[:2] == ([], [])
    code, out, _ = run_program("inspect_logits", [memory_url, "--json"])
    assert code == 0 and json.loads(out)["records"] == 2 * 64

    # a run killed after some shards: unsealed manifest, one shard not yet put
    fs, root = fsspec.core.url_to_fs(memory_url)
    lost = local.manifest.shards[5].name
    fs.rm_file(f"{root}/{lost}")
    fs.pipe_file(f"{root}/manifest.json", json.dumps(new_manifest(local.settings).as_json()).encode())
    code, out, err = run_program("save_logits", args)
    assert code == 0, err
    assert "in 1 new shards" in out  # complete shards are skipped, as on disk
    assert shard_digests(LogitStore(memory_url).manifest) == shard_digests(local.manifest)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """A static file server on 127.0.0.1 over tmp_path/www, in a thread; its base URL."""
    pytest.importorskip("aiohttp", reason="fsspec's http back-end needs aiohttp (the [http] extra)")
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


TRAIN = ["--config", "configs/smoke_cifar10.yaml", "data.skip_md5=true", *tiny_student_args(), "train.batch_size=16",
         "train.epochs=1", "train.max_steps=3", "train.log_every=1", "data.test_limit=32", "wandb.enabled=false"]


def test_trainer_reads_a_store_served_over_http(http_server, disk_store, cifar_root, tmp_path):
    www, base = http_server
    shutil.copytree(disk_store, www / "store")
    url = f"{base}/store"
    code, out, err = run_program("verify_logits", [url])
    assert code == 0 and "exactly once" in out, err
    out = tmp_path / "run"
    proc = train_from(url, cifar_root, out, "data.workers=1")  # a forked worker reads the shards
    assert proc.returncode == 0, proc.stderr
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s][-1] == 3


def train_from(url, cifar_root, out, *extra):
    proc = run_tool("distill/train_student.py", *TRAIN, f"data.root={cifar_root}", f"logits.store={url}",
                    f"output.dir={out}", *extra, check=False, timeout=240, env={"DS_ACCELERATOR": "cpu"})
    return proc


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed: no missing extra")
def test_missing_back_end_names_the_extra(cifar_root, teacher_ckpt):
    url = "s3://tvd-test-bucket/store"
    for tool, argv in (("save_logits", save_logits_args(cifar_root, teacher_ckpt, url)), ("verify_logits", [url])):
        user_error(run_program(tool, argv), url, 'pip install "tinyvit-distill[s3]"')
    assert not (REPO / "s3:").exists()  # the URL was never taken for a relative path


def test_unreachable_url_is_named(tmp_path, cifar_root):
    url = f"http://127.0.0.1:{closed_port()}/store"
    for tool in ("verify_logits", "inspect_logits"):
        user_error(run_program(tool, [url]), url)
    user_error(train_from(url, cifar_root, tmp_path / "run"), url)
    assert not (tmp_path / "run").exists()


def test_missing_shard_over_http_is_named(http_server, disk_store, cifar_root, tmp_path):
    www, base = http_server
    shutil.copytree(disk_store, www / "store")
    lost = "e0000-000000000.tar"
    (www / "store" / lost).unlink()  # the server answers 404
    url = f"{base}/store"
    code, out, _ = run_program("verify_logits", [url])
    assert code == 1 and f"FAIL: {url}/{lost}: shard missing" in out
    run = tmp_path / "run"
    user_error(train_from(url, cifar_root, run, "data.workers=1"), f"{url}/{lost}")
    assert not run.exists()  # refused before the run wrote anything


def test_read_only_url_is_refused_for_writing(http_server, cifar_root, teacher_ckpt):
    www, base = http_server
    url = f"{base}/new"
    user_error(run_program("save_logits", save_logits_args(cifar_root, teacher_ckpt, url)), url, "read-only")
    assert list(www.iterdir()) == []
