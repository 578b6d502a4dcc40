"""Growing a store: the same save_logits command with a larger --epochs labels only the new
epochs, leaves the existing shards and their manifest entries untouched, and gives the store
a direct run with that --epochs makes (same records, same shard bytes up to the store id in
the chunk headers). Fewer epochs are refused; a kill while growing loses nothing."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from helpers import REPO, run_program, user_error
from teacher_logits.files import sha256_bytes
from teacher_logits.manifest import load_manifest
from teacher_logits.schema import chunk_header
from teacher_logits.reader import LogitStore
from teacher_logits.shards import shard_bytes
from teacher_logits.verify import verify_store

# 100 digits in shards of 40 (40 + 40 + 20 per epoch), mixed views
ARGS = ["--dataset", "digits", "--aug", "crop", "--mixup", "0.8", "--limit", "100", "--shard-records", "40",
        "--chunk-records", "16", "--topk", "5", "--workers", "0", "--batch-size", "32"]


def command(ckpt, out, epochs, *extra) -> list[str]:
    return ["--teacher", "cifar10_resnet20", "--checkpoint", str(ckpt), *ARGS, "--epochs", str(epochs),
            "--out", str(out), *extra]


def files(store) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.iterdir())}


def manifest(store) -> dict:
    return json.loads((store / "manifest.json").read_text())


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """In-process teacher runs on one thread, like the subprocesses (conftest.one_thread)."""


@pytest.fixture(scope="module")
def one_epoch(teacher_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("grow") / "e1"
    run_program("save_logits", command(teacher_ckpt, out, 1), check=True)
    return out


@pytest.fixture(scope="module")
def three_epochs(teacher_ckpt, tmp_path_factory):
    """The store a direct --epochs 3 run makes."""
    out = tmp_path_factory.mktemp("direct") / "e3"
    run_program("save_logits", command(teacher_ckpt, out, 3), check=True)
    return out


def assert_same_store_as_direct(grown, direct):
    """Same settings and shard plan; every shard holds the same records, and re-encoded under
    the direct store's id its bytes are the direct shard's (sha256 equal)."""
    g, d = load_manifest(grown), load_manifest(direct)
    assert g.settings == d.settings and [s.plan for s in g.shards] == [s.plan for s in d.shards]
    store = LogitStore(grown)
    for entry, want in zip(g.shards, d.shards):
        rebuilt = shard_bytes(entry, store.read(entry), chunk_header(d), d.settings.chunk_records)
        assert sha256_bytes(rebuilt) == want.sha256, entry.name


def test_growing_labels_only_the_new_epochs(one_epoch, three_epochs, teacher_ckpt, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(one_epoch, store)
    before, old = files(store), manifest(store)
    run_program("save_logits", command(teacher_ckpt, store, 3), check=True)
    after, new = files(store), manifest(store)
    old_shards = [e["name"] for e in old["shards"]]
    assert len(old_shards) == 3 and all(after[name] == before[name] for name in old_shards)  # byte-identical
    assert new["shards"][:3] == old["shards"]  # entries (and recorded sha256) untouched
    assert new["complete"] and new["settings"]["epochs"] == 3 and len(new["shards"]) == 9
    assert new["store_id"] == old["store_id"] and new["id_epochs"] == 1  # the chunk headers' id is kept
    problems, _, stats = verify_store(store)
    assert problems == [] and stats["records"] == 300
    assert_same_store_as_direct(store, three_epochs)
    # a second grow (3 -> 4) keeps the first id and the first three epochs
    run_program("save_logits", command(teacher_ckpt, store, 4), check=True)
    grown = manifest(store)
    assert grown["store_id"] == old["store_id"] and grown["id_epochs"] == 1 and grown["shards"][:9] == new["shards"]
    assert verify_store(store)[0] == [] and LogitStore(store).epochs == 4


def test_a_grown_store_keeps_its_shard_size_without_the_flag(one_epoch, teacher_ckpt, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(one_epoch, store)
    argv = command(teacher_ckpt, store, 2)
    del argv[argv.index("--shard-records"):argv.index("--shard-records") + 2]  # the default would be 16
    run_program("save_logits", argv, check=True)
    assert manifest(store)["settings"]["shard_records"] == 40 and len(manifest(store)["shards"]) == 6


def test_default_shard_size_gives_many_shards_per_epoch():
    from distill.teacher_stage import default_shard_records

    shards = lambda size: -(-size // default_shard_records(size, 4096))  # noqa: E731
    assert shards(1_281_167) == 129 and shards(300_000) == 64  # ImageNet-1k; data large enough for 64
    assert shards(50_000) == 13  # CIFAR: shards of one 4,096-record chunk, which compress as well as larger ones
    assert default_shard_records(1_000, 4096) == 4096 and default_shard_records(10**8, 4096) == 10_000  # bounds


def test_fewer_epochs_are_refused(three_epochs, teacher_ckpt):
    before = files(three_epochs)
    result = run_program("save_logits", command(teacher_ckpt, three_epochs, 2))
    line = user_error(result, "holds a store of 3 epochs; stores only grow, so --epochs 2 is refused",
                      "use the existing store (students cycle through its stored epochs)")
    assert result.err.strip() == line  # nothing else printed
    assert files(three_epochs) == before


def test_growing_with_another_change_is_refused_naming_it(one_epoch, teacher_ckpt):
    before = files(one_epoch)
    code, _, err = run_program("save_logits", command(teacher_ckpt, one_epoch, 3, "--seed", "7"))
    assert code == 2 and "other settings (seed: 0 != 7 [store != now])" in err and "epochs" not in err, err
    assert files(one_epoch) == before


@pytest.mark.parametrize("failpoint", ["write:.json#1", "write:.tar#2", "write:.json#2"])
def test_killed_while_growing_keeps_the_old_epochs_and_resumes(one_epoch, three_epochs, teacher_ckpt, tmp_path,
                                                               failpoint):
    """SIGKILL inside the grown manifest's write, inside the second new shard, inside the
    sealing write; then the same command again."""
    store = tmp_path / "store"
    shutil.copytree(one_epoch, store)
    before, old = files(store), manifest(store)
    argv = command(teacher_ckpt, store, 3)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TVD_FAILPOINT": failpoint}
    proc = subprocess.run([sys.executable, str(REPO / "tools/save_logits.py"), *argv], env=env, capture_output=True,
                          text=True, timeout=120, start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = manifest(store)
    assert killed["shards"][:3] == old["shards"]
    assert all((store / name).read_bytes() == data for name, data in before.items() if name.endswith(".tar"))
    if failpoint == "write:.json#1":
        assert killed == old  # the old manifest, whole: a reader still sees the 1-epoch store
        assert LogitStore(store).epochs == 1
    else:
        assert not killed["complete"] and killed["settings"]["epochs"] == 3
    run_program("save_logits", command(teacher_ckpt, store, 3), check=True)
    assert verify_store(store)[0] == [] and manifest(store)["shards"][:3] == old["shards"]
    assert_same_store_as_direct(store, three_epochs)


def test_a_complete_stores_command_builds_no_teacher_and_writes_nothing(one_epoch, teacher_ckpt, tmp_path,
                                                                        monkeypatch):
    import distill.teacher_stage

    store = tmp_path / "store"
    shutil.copytree(one_epoch, store)
    stamps = {p.name: p.stat().st_mtime_ns for p in store.iterdir()}

    def no_teacher(*args, **kwargs):
        raise AssertionError("a complete store's re-run built its teacher")

    monkeypatch.setattr(distill.teacher_stage, "load_teacher", no_teacher)
    code, out, _ = run_program("save_logits", command(teacher_ckpt, store, 1))
    assert code == 0 and "complete already (1 epochs, 100 records), nothing to label" in out
    assert {p.name: p.stat().st_mtime_ns for p in store.iterdir()} == stamps  # not even the manifest rewritten
