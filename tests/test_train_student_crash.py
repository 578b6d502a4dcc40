"""Crash safety of train_student.py: SIGKILL mid-epoch and mid-checkpoint (files written,
`latest` not yet moved), then the same command with resume auto finishes; the run resumes
from the last complete checkpoint only, and its exported model loads and scores."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, run_tool, save_logits_args, tiny_student_args
from distill.evaluation import load_student

TINY = [*tiny_student_args(), "train.batch_size=32", "data.test_limit=64", "train.max_steps=null",
        "train.epochs=3", "train.checkpoint_every=3", "data.workers=0", "wandb.enabled=false",
        "output.resume=auto"]  # 7 steps an epoch, 21 in all


@pytest.fixture(scope="module")
def store(cifar_root, teacher_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "store"
    run_tool("tools/save_logits.py", *save_logits_args(cifar_root, teacher_ckpt, out, "--epochs", "2"))
    return out


def command(cifar_root, store, out):
    return [sys.executable, str(REPO / "distill/train_student.py"), "--config", "configs/smoke_cifar10.yaml",
            f"data.root={cifar_root}", "data.skip_md5=true", f"logits.store={store}", f"output.dir={out}", *TINY]


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", **extra}


def finish_and_check(cmd, out, resumed_from_step):
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"global step {resumed_from_step}" in proc.stdout, proc.stdout[-1500:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 21
    model = load_student(out / "final")  # the export loads without DeepSpeed
    assert model.num_classes == 10


def test_killed_mid_checkpoint_resumes_from_the_previous_one(cifar_root, store, tmp_path):
    out = tmp_path / "run"
    cmd = command(cifar_root, store, out)
    # the 2nd checkpoint (step 6) has its files but not `latest`: the kill lands between them
    killed = subprocess.run(cmd, cwd=REPO, env=env(TVD_FAILPOINT="checkpoint:latest#2"), capture_output=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert (out / "checkpoints/step6").is_dir() and (out / "checkpoints/latest").read_text() == "step3"
    finish_and_check(cmd, out, resumed_from_step=3)


def test_killed_mid_epoch_resumes_from_the_last_checkpoint(cifar_root, store, tmp_path):
    out = tmp_path / "run"
    cmd = command(cifar_root, store, out)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    log = out / "train_log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 10):
        time.sleep(0.05)  # step 10: mid-epoch 2, after the step-9 checkpoint
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    last = (out / "checkpoints/latest").read_text().strip()
    assert last in {"step9", "step12"}  # the newest complete checkpoint when the kill landed
    finish_and_check(cmd, out, resumed_from_step=int(last[4:]))
