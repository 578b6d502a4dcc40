"""The operating system refusing a write: a full disk (ENOSPC), a read-only file system (EROFS)
and permission denied (EACCES), met by the trainer's checkpoints, evaluate's files and stores.

Full and read-only disks are real: a tiny tmpfs (small_disk in tests/disks.py; skipped where
mounting is not permitted). Root ignores file modes, so EACCES is raised by the real write path's lowest
call, `open` in teacher_logits/files.py (what atomic_write opens), monkeypatched to refuse one
file. Each case ends in one line naming the input and the fix, exit 2, and nothing partial left:
no half-written checkpoint tag or metrics, and a run folder that resumes. Part of the bad-input
catalogue (docs/reliability.md).
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from disks import remount, small_disk
from helpers import REPO, run_program, tiny_student_args, user_error, with_out

pytestmark = pytest.mark.usefixtures("one_thread", "no_tvd_debug")


def train_args(out):
    return ["--config", REPO / "configs/smoke_digits.yaml", "loss.mode=scratch", "wandb.enabled=false",
            f"output.dir={out}", *tiny_student_args(), "train.max_steps=2",
            "data.limit=64", "train.batch_size=16", "data.test_limit=32"]


def test_trainer_disk_full_at_its_first_checkpoint_then_resumes(tmp_path):
    """The issue's example: torch.save inside DeepSpeed's checkpoint writer raised a RuntimeError
    on a full disk. Now: one line, the half-written tag removed, and the same command finishes
    once there is room. 128 KiB holds the run's logs, not its 220 KB checkpoint."""
    with small_disk(tmp_path / "disk", "128k") as disk:
        out = disk / "run"
        r = run_program("train_student", train_args(out))
        user_error(r, f"output.dir {out}: cannot write checkpoint step2 (No space left on device)", "free space",
                   "re-run the same command")
        assert not list((out / "checkpoints").glob("step*")) and not (out / "final").exists()
        assert not (out / "metrics.json").exists()
        remount(disk, "size=2m")
        run_program("train_student", train_args(out), check=True)
        assert (out / "final/model.pt").is_file() and json.loads((out / "metrics.json").read_text())["steps"] == 2


def test_trainer_disk_full_at_the_export_then_resumes(tmp_path):
    """512 KiB hold the checkpoint, not the export as well: one line naming final/, no half
    export; the same command, with room, resumes from the checkpoint and exports."""
    with small_disk(tmp_path / "disk", "512k") as disk:
        out = disk / "run"
        r = run_program("train_student", train_args(out))
        user_error(r, f"output.dir {out}: cannot write the export final/ (No space left on device)")
        assert (out / "checkpoints/latest").is_file()
        assert not (out / "final").exists() and not (out / ".final.tmp").exists()
        remount(disk, "size=4m")
        run_program("train_student", train_args(out), check=True)
        assert (out / "final/model.safetensors").is_file()


def test_trainer_output_on_a_read_only_file_system(tmp_path):
    with small_disk(tmp_path / "disk", "1m", "ro") as disk:
        out = disk / "run"
        r = run_program("train_student", train_args(out))
        user_error(r, f"output.dir {out}", "Read-only file system")
        assert not out.exists()


@pytest.fixture(scope="module")
def eval_args(cifar_root, teacher_ckpt):
    return ["--dataset", "cifar10", "--data-root", cifar_root, "--skip-md5", "--limit", "20", "--throughput-iters",
            "0", "--teacher", "cifar10_resnet20", "--checkpoint", teacher_ckpt]


def test_evaluate_on_a_full_disk_writes_nothing(eval_args, tmp_path):
    with small_disk(tmp_path / "disk", "16k") as disk:
        out = disk / "eval"
        r = run_program("evaluate", [*eval_args, "--out", out])
        user_error(r, f"--out {out}: cannot write", "No space left", "nothing was written")
        assert not out.exists()


def test_evaluate_permission_denied_on_metrics_leaves_no_half_result(eval_args, tmp_path, monkeypatch):
    import builtins

    import teacher_logits.files

    def refuse_metrics(path, *args, **kwargs):
        if "metrics.json" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(teacher_logits.files, "open", refuse_metrics, raising=False)
    out = tmp_path / "eval"
    r = run_program("evaluate", [*eval_args, "--out", out])
    user_error(r, "cannot write metrics.json (Permission denied)")
    assert not out.exists()  # the confusion PNG written before it is removed again, and the folder


def test_save_logits_out_on_a_read_only_file_system(base, tmp_path):
    with small_disk(tmp_path / "disk", "1m", "ro") as disk:
        out = disk / "store"
        r = run_program("save_logits", with_out(base, out))
        user_error(r, f"--out {out}", "Read-only file system")
        assert not out.exists()


def test_teacher_stage_stopped_before_its_first_shard_leaves_no_store(base, tmp_path, monkeypatch):
    """Whatever stops the labelling before a shard is complete (here Ctrl-C at the first batch),
    the store this run created goes: it would only refuse a corrected re-run."""
    import distill.teacher_stage

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(distill.teacher_stage, "label_batch", interrupted)
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        run_program("save_logits", with_out(base, out), check=True)
    assert not out.exists()


# ============================================================ save_logits: out of disk space


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs, filled up to `leave` free bytes by the test (root only)."""
    with small_disk(tmp_path / "disk", "64k") as mnt:
        yield mnt


def fill(mnt: Path, leave: int) -> None:
    st = os.statvfs(mnt)
    (mnt / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))


def test_disk_full_during_a_shard_write(base, tiny_disk):
    fill(tiny_disk, 4096)  # room for the manifest (1 KB), not for the 10 KB shard
    out = tiny_disk / "store"
    r = run_program("save_logits", with_out(base, out))
    user_error(r, f"--out {out}", "e0000-000000000.tar", "No space left on device", "free space",
               "re-run the same command")
    assert sorted(os.listdir(tiny_disk)) == ["filler"]  # no shard, no temp file, no half-made store


def test_disk_full_before_the_manifest(base, tiny_disk):
    fill(tiny_disk, 0)
    out = tiny_disk / "store"
    r = run_program("save_logits", with_out(base, out))
    user_error(r, f"--out {out}", "cannot write there (No space left on device)", "choose a writable directory")
    assert sorted(os.listdir(tiny_disk)) == ["filler"]
