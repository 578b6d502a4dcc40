"""The teacher stage under real launchers: `deepspeed --num_gpus 2` and `torchrun
--nproc_per_node 2` (CPU ranks, gloo) write the same store as one process, byte for byte;
a rank SIGKILLed mid-run, then the same command again, gives a complete store."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from helpers import REPO, run_tool, save_logits_args
from distill.distributed import free_port
from teacher_logits.verify import verify_store

# 2 epochs x 5 shards of 16; batches of 32 straddle shards, so ranks batch differently than one process
SHARD_ARGS = ["--epochs", "2", "--limit", "80", "--shard-records", "16", "--chunk-records", "8"]
ENV = {"OMP_NUM_THREADS": "1", "DEEPSPEED_TIMEOUT": "2", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}


def launcher(name: str) -> list[str]:
    if name == "deepspeed":
        return [shutil.which("deepspeed") or sys.executable, *([] if shutil.which("deepspeed") else
                ["-m", "deepspeed.launcher.runner"]), "--num_gpus", "2", "--master_port", str(free_port())]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]


def start(name: str, args) -> subprocess.Popen:
    """The launcher in its own session, so a timeout kills it and its ranks together."""
    cmd = [*launcher(name), str(REPO / "tools/save_logits.py"), *map(str, args)]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"launcher timed out:\n{out[-3000:]}")
    return proc.returncode, out


def shard_files(store):
    return {p.name: p.read_bytes() for p in sorted(store.glob("e*.tar"))}


def shard_sha256s(store):
    return {e["name"]: e["sha256"] for e in json.loads((store / "manifest.json").read_text())["shards"]}


@pytest.fixture(scope="module")
def one_rank_store(tmp_path_factory, cifar_root, teacher_ckpt):
    out = tmp_path_factory.mktemp("one_rank") / "store"
    run_tool("tools/save_logits.py", *save_logits_args(cifar_root, teacher_ckpt, out, *SHARD_ARGS))
    return out


@pytest.mark.parametrize("name", ["deepspeed", "torchrun"])
def test_two_ranks_write_the_one_rank_store_byte_for_byte(name, tmp_path, cifar_root, teacher_ckpt, one_rank_store):
    out = tmp_path / "store"
    code, log = finish(start(name, save_logits_args(cifar_root, teacher_ckpt, out, *SHARD_ARGS)))
    assert code == 0, log[-3000:]
    assert shard_sha256s(out) == shard_sha256s(one_rank_store) and len(shard_sha256s(out)) == 10
    assert "labelled 160 views in 10 new shards" in log  # both ranks' shards, said once
    assert shard_files(out) == shard_files(one_rank_store)
    assert (out / "manifest.json").read_bytes() == (one_rank_store / "manifest.json").read_bytes()


def rank_process(launcher_proc: subprocess.Popen, rank: int) -> psutil.Process | None:
    for child in psutil.Process(launcher_proc.pid).children(recursive=True):
        try:
            if "save_logits.py" in " ".join(child.cmdline()) and child.environ().get("RANK") == str(rank):
                return child
        except psutil.Error:
            pass
    return None


def test_a_rank_killed_mid_run_then_rerun_completes_the_store(tmp_path, cifar_root, teacher_ckpt, one_rank_store):
    out = tmp_path / "store"
    args = save_logits_args(cifar_root, teacher_ckpt, out, *SHARD_ARGS, "--batch-size", "8")
    proc = start("torchrun", args)
    deadline = time.time() + 120
    while len(list(out.glob("e*.tar"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victim = rank_process(proc, 1)
    assert victim is not None and proc.poll() is None, "the run ended before the kill: the trial proves nothing"
    victim.send_signal(signal.SIGKILL)
    code, log = finish(proc)
    assert code != 0, log[-2000:]  # the launcher saw the rank die and stopped the other
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    assert 0 < len(list(out.glob("e*.tar"))) < 10
    code, log = finish(start("torchrun", args))
    assert code == 0, log[-3000:]
    problems, warnings, stats = verify_store(out)  # every (epoch, sample) once, every checksum
    assert problems == [] and warnings == [] and stats["records"] == 160
    assert shard_sha256s(out) == shard_sha256s(one_rank_store)
