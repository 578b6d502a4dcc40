"""Crash safety and corruption of the logit store: killed runs resume to a verified
store; damaged, foreign, edited or hostile files are named and never read as data."""
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import zstandard

from helpers import REPO, run_tool, save_logits_args
from teacher_logits.files import sha256_bytes
from teacher_logits.reader import LogitStore
from teacher_logits.shards import CorruptShard
from teacher_logits.verify import verify_store

SHARD_ARGS = ["--epochs", "2", "--limit", "80", "--shard-records", "16", "--chunk-records", "8"]
RECORDS, PER_SHARD = 160, 16


def start(args, env=None):
    full = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([sys.executable, str(REPO / "tools/save_logits.py"), *map(str, args)], env=full,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


# Kill points: inside the Nth shard write, inside the first and the sealing manifest
# write, and at moments picked by how many shards exist.
FAILPOINTS = ["write:.tar#1", "write:.tar#6", "write:.json#1", "write:.json#2"]
SHARDS = RECORDS // PER_SHARD


def shards_in(out):
    return len(list(out.glob("e*.tar"))) if out.is_dir() else 0


def kill_after_shards(proc, out, count: int, timeout: float = 120) -> int:
    """SIGKILL `proc` as soon as `count` shard files exist; the number that exist after it died."""
    deadline = time.time() + timeout
    while shards_in(out) < count and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return shards_in(out)


def kill_trial(tmp_path, cifar_root, teacher_ckpt, trial, failpoint=None, after_shards=None):
    out = tmp_path / f"trial{trial}"
    args = save_logits_args(cifar_root, teacher_ckpt, out, *SHARD_ARGS)
    proc = start(args, {"TVD_FAILPOINT": failpoint} if failpoint else None)
    if after_shards is not None:
        existed = kill_after_shards(proc, out, after_shards)
        # the kill landed mid-run: the process died of it, after some shards, before the seal
        assert proc.returncode == -signal.SIGKILL, "the run finished before the kill: the trial proves nothing"
        assert 0 < existed <= SHARDS, existed
        assert not json.loads((out / "manifest.json").read_text())["complete"]
    proc.wait(timeout=120)
    if failpoint:
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    rerun = run_tool("tools/save_logits.py", *args)
    problems, warnings, stats = verify_store(out)
    assert problems == [] and warnings == [], (failpoint, after_shards, problems, warnings, rerun.stderr)
    assert stats["records"] == RECORDS
    return out


@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_killed_inside_a_write_resumes_to_a_verified_store(tmp_path, cifar_root, teacher_ckpt, failpoint):
    kill_trial(tmp_path, cifar_root, teacher_ckpt, 0, failpoint=failpoint)


@pytest.mark.parametrize("after_shards", [1, 5, SHARDS - 2])
def test_killed_mid_labelling_resumes_to_a_verified_store(tmp_path, cifar_root, teacher_ckpt, after_shards):
    """Early, half-way and near the end, each kill proven to land mid-run."""
    kill_trial(tmp_path, cifar_root, teacher_ckpt, after_shards, after_shards=after_shards)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(10))
def test_killed_at_random_moments(tmp_path, cifar_root, teacher_ckpt, trial):
    kill_trial(tmp_path, cifar_root, teacher_ckpt, trial, after_shards=random.Random(trial).randint(1, SHARDS - 1))


@pytest.fixture(scope="module")
def good_store(tmp_path_factory, cifar_root, teacher_ckpt):
    out = tmp_path_factory.mktemp("good") / "store"
    run_tool("tools/save_logits.py", *save_logits_args(cifar_root, teacher_ckpt, out, *SHARD_ARGS))
    return out


@pytest.fixture
def store(tmp_path, good_store):
    copy = tmp_path / "store"
    shutil.copytree(good_store, copy)
    return copy


def manifest(store):
    return json.loads((store / "manifest.json").read_text())


def damage_truncate(store):
    path = store / "e0000-000000016.tar"
    path.write_bytes(path.read_bytes()[:1500])
    return path.name


def damage_flip_byte(store):
    path = store / "e0000-000000016.tar"
    data = bytearray(path.read_bytes())
    data[512 + 64] ^= 0x01  # inside the first chunk's compressed payload
    path.write_bytes(bytes(data))
    return path.name


def damage_missing(store):
    (store / "e0001-000000032.tar").unlink()
    return "e0001-000000032.tar"


def damage_duplicate(store):
    shutil.copy(store / "e0000-000000000.tar", store / "e0000-000000048.tar")
    return "e0000-000000048.tar"


def damage_foreign(store, tmp_path, cifar_root, teacher_ckpt):
    other = tmp_path / "other"
    run_tool("tools/save_logits.py", *save_logits_args(cifar_root, teacher_ckpt, other, *SHARD_ARGS, "--seed", "7"))
    shutil.copy(other / "e0001-000000000.tar", store / "e0001-000000000.tar")
    return "e0001-000000000.tar"


@pytest.mark.parametrize("damage", [damage_truncate, damage_flip_byte, damage_missing, damage_duplicate,
                                    damage_foreign])
def test_damaged_shard_is_named_by_verify_and_refused_by_reader(store, tmp_path, cifar_root, teacher_ckpt, damage):
    args = (store, tmp_path, cifar_root, teacher_ckpt) if damage is damage_foreign else (store,)
    name = damage(*args)
    proc = run_tool("tools/verify_logits.py", store, check=False)
    assert proc.returncode == 1 and name in proc.stdout
    reader = LogitStore(store)
    with pytest.raises(CorruptShard, match=name):
        for epoch in range(2):
            list(reader.iter_shards(epoch))
    skipping = LogitStore(store, skip_bad_shards=True)
    kept = sum(len(c["index"]) for e in range(2) for c in skipping.iter_shards(e))
    assert skipping.skipped_records == PER_SHARD and kept == RECORDS - PER_SHARD


def test_foreign_chunk_with_matching_checksum_is_refused(store, tmp_path, cifar_root, teacher_ckpt):
    """Even with the manifest checksum edited to match, a chunk names its own store."""
    name = damage_foreign(store, tmp_path, cifar_root, teacher_ckpt)
    m = manifest(store)
    entry = next(s for s in m["shards"] if s["name"] == name)
    data = (store / name).read_bytes()
    entry["bytes"], entry["sha256"] = len(data), sha256_bytes(data)
    (store / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptShard, match="another store"):
        list(LogitStore(store).iter_shards(1))


def test_edited_manifest_settings_are_refused(store):
    m = manifest(store)
    m["settings"]["k"] = 5
    (store / "manifest.json").write_text(json.dumps(m))
    proc = run_tool("tools/verify_logits.py", store, check=False)
    assert proc.returncode == 1 and "edited manifest" in proc.stdout


def shard_with_member(name: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.mark.parametrize("member,payload", [
    ("e0000-000000000-00000.rec.zst", zstandard.ZstdCompressor().compress(b"\0" * (200 << 20))),  # bomb
    ("../../escaped.rec.zst", b"x" * 100),  # path traversal
    ("e0000-000000000-00000.pyd", b"cos\nsystem\n(S'touch PWNED'\ntR."),  # a pickle member
])
def test_hostile_members_are_refused_without_side_effects(store, member, payload):
    """The attacker also fixes the manifest checksum; the reader must still refuse, cheaply."""
    data = shard_with_member(member, payload)
    (store / "e0000-000000000.tar").write_bytes(data)
    m = manifest(store)
    m["shards"][0].update(bytes=len(data), sha256=sha256_bytes(data))
    (store / "manifest.json").write_text(json.dumps(m))
    started = time.time()
    with pytest.raises(CorruptShard):
        list(LogitStore(store).iter_shards(0))
    assert time.time() - started < 5
    assert not (store.parent.parent / "escaped.rec.zst").exists() and not (REPO / "PWNED").exists()
