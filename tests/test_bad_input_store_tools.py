"""Bad input to tools/verify_logits.py and tools/inspect_logits.py.

Part of the bad-input catalogue (docs/reliability.md): every program refuses bad input with one
line that names the input and what to do, a non-zero exit (2 for user errors), and no partial or
overwritten output. The shared helpers (run_program, user_error, snapshot) are in helpers.py, the
fixtures in conftest.py.
"""
from __future__ import annotations

import shutil

import pytest
from helpers import Result, run_program, run_tool, snapshot, user_error


# in-process teacher runs on one thread, like the subprocesses; the errors users see
pytestmark = pytest.mark.usefixtures("one_thread", "no_tvd_debug")


# ============================================================ verify_logits / inspect_logits


def verify(argv) -> Result:
    return run_program("verify_logits", argv)


def test_verify_missing_dir_subprocess(tmp_path):
    proc = run_tool("tools/verify_logits.py", tmp_path / "nope", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stdout.splitlines() == [f"FAIL: {tmp_path / 'nope' / 'manifest.json'} not found: is "
                                        f"{tmp_path / 'nope'} a logit store? (create one with tools/save_logits.py)"]
    assert not (tmp_path / "nope").exists()


def test_verify_non_store_dir(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    r = verify([tmp_path])
    assert r.code == 1
    assert r.out.splitlines() == [f"FAIL: {tmp_path / 'manifest.json'} not found: is {tmp_path} a logit store? "
                                  "(create one with tools/save_logits.py)"]


def test_verify_incomplete_store(incomplete_store):
    before = snapshot(incomplete_store)
    r = verify([incomplete_store])
    assert r.code == 1
    assert r.out.splitlines() == [f"FAIL: {incomplete_store / 'manifest.json'}: store is incomplete; "
                                  "re-run its save_logits command"]
    assert snapshot(incomplete_store) == before


def test_verify_invalid_manifest(store, tmp_path):
    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    (bad / "manifest.json").write_text("{not json")
    r = verify([bad])
    assert r.code == 1 and len(r.out.splitlines()) == 1
    assert "manifest.json is not a valid store manifest: re-create the store" in r.out


def test_inspect_missing_dir_subprocess(tmp_path):
    proc = run_tool("tools/inspect_logits.py", tmp_path / "nope", check=False)
    user_error(proc, f"{tmp_path / 'nope' / 'manifest.json'} not found",
               "create one with tools/save_logits.py")
    assert not (tmp_path / "nope").exists()


def test_inspect_incomplete_store(incomplete_store):
    r = run_program("inspect_logits", [incomplete_store])
    assert r.code == 1
    assert r.out.splitlines()[-1] == (f"FAIL: {incomplete_store / 'manifest.json'}: store is incomplete; "
                                      "re-run its save_logits command")


