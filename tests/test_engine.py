"""The DeepSpeed engine of distill/train_student.py, checked on outcomes, in small one-process
CPU runs (scratch mode on seeded views, no store) of a one-block, 32-wide cifar_vit:

- ZeRO-3: the exported fp32 final/model.pt is the trained model (same logits as the ZeRO-3
  checkpoint consolidated by DeepSpeed, and as a ZeRO-0 run of the same config and seed);
- gradient accumulation: grad_accum=2 at batch B repeats grad_accum=1 at batch 2B;
- W&B: a run SIGKILLed and resumed keeps one run id, and its history holds every step once.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO
from test_train_student import losses, read_wandb_records, train

# no dropout or drop-path anywhere (cifar_vit defaults pos/proj dropout to 0.1): runs are deterministic
NO_DROP = "{embed_dim: 32, depth: 1, num_heads: 2, pos_drop_rate: 0.0, proj_drop_rate: 0.0, " \
          "attn_drop_rate: 0.0, drop_path_rate: 0.0}"
BASE = ["model.name=cifar_vit", f"model.kwargs={NO_DROP}", "loss.mode=scratch", "logits.store=null",
        "data.test_limit=32", "data.workers=0", "train.log_every=1", "optim.lr=3e-3", "train.epochs=1"]


def scratch_args(cifar_root, out, *extra):
    return ["--config", "configs/smoke_cifar10.yaml", f"data.root={cifar_root}", "data.skip_md5=true",
            f"output.dir={out}", *BASE, *extra]


def fixed_batch(n=16):
    torch.manual_seed(123)
    return torch.rand(n, 3, 32, 32)


def exported(final_dir):
    """final/ rebuilt the way tools/evaluate.py does (distill.evaluation.load_student, weights_only)."""
    from distill.evaluation import load_student

    return load_student(final_dir).eval()


def fresh_student(final_dir, state):
    """Another fresh student from final/config.yaml, loaded (strictly) with `state`."""
    from distill.models import Preprocessed, create_student

    info = yaml.safe_load((final_dir / "config.yaml").read_text())["student"]
    model = create_student(info["name"], info["num_classes"], info["img_size"], **info["kwargs"])
    model.load_state_dict(state, strict=True)
    return Preprocessed(model, info["mean"], info["std"], info["img_size"]).eval()


# ---------------------------------------------------------------------------- ZeRO-3 export


def test_zero3_export_is_the_trained_model(cifar_root, tmp_path, one_thread):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    runs = {}
    for stage in (3, 0):
        out = tmp_path / f"zero{stage}"
        # 200 samples / 32 = 7 steps; a checkpoint at step 4 and the final one at step 6
        train(*scratch_args(cifar_root, out, f"deepspeed.zero_stage={stage}", "train.batch_size=32",
                            "train.max_steps=6", "train.checkpoint_every=4", "wandb.enabled=false"))
        runs[stage] = out
    z3, z0 = runs[3], runs[0]
    assert (z3 / "checkpoints" / "latest").read_text().strip() == "step6"

    # the same loss curve as ZeRO-0 (same seed, same batches), and it moved: the steps are real
    curve3, curve0 = losses(z3), losses(z0)
    assert sorted(curve3) == sorted(curve0) == list(range(1, 7))
    np.testing.assert_allclose([curve3[s][0] for s in range(1, 7)], [curve0[s][0] for s in range(1, 7)],
                               rtol=1e-4, atol=1e-6)
    assert [curve3[s][1] for s in range(1, 7)] == [curve0[s][1] for s in range(1, 7)]
    assert len({round(curve3[s][0], 4) for s in range(1, 7)}) == 6

    state = torch.load(z3 / "final" / "model.pt", weights_only=True)
    assert state and all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    consolidated = {k.removeprefix("model."): v.float()
                    for k, v in get_fp32_state_dict_from_zero_checkpoint(str(z3 / "checkpoints")).items()}
    assert state.keys() == consolidated.keys()
    # the step-4 checkpoint (kept: the newest two are) for the negative control below
    step4 = {k.removeprefix("model."): v.float() for k, v in
             get_fp32_state_dict_from_zero_checkpoint(str(z3 / "checkpoints"), tag="step4").items()}

    from distill.models import create_student

    info = yaml.safe_load((z3 / "final" / "config.yaml").read_text())["student"]
    torch.manual_seed(0)
    untrained = create_student(info["name"], info["num_classes"], info["img_size"], **info["kwargs"]).state_dict()
    x = fixed_batch()
    with torch.no_grad():
        logits = exported(z3 / "final")(x)  # strict load inside: an empty or partial export fails here
        torch.testing.assert_close(logits, fresh_student(z3 / "final", consolidated)(x))  # fp32 defaults
        torch.testing.assert_close(logits, exported(z0 / "final")(x), rtol=1e-4, atol=1e-4)
        # the tolerances above separate steps: the step-4 weights and the untrained student differ
        for other in (step4, untrained):
            assert (logits - fresh_student(z3 / "final", other)(x)).abs().max() > 1e-2


# ---------------------------------------------------------------------------- gradient accumulation


def test_grad_accum_two_at_b_equals_one_at_2b(cifar_root, tmp_path):
    """Without a store, an epoch is a seeded permutation cut into micro-batches of B: two
    consecutive micro-batches of B are exactly one batch of 2B. data.limit=192 makes both
    runs 6 optimizer steps an epoch, so the LR schedule (warm-up + cosine) is the same too."""
    curves = {}
    for accum, batch in ((2, 16), (1, 32)):
        out = tmp_path / f"accum{accum}"
        train(*scratch_args(cifar_root, out, "data.limit=192", f"train.batch_size={batch}",
                            f"train.grad_accum={accum}", "train.max_steps=4", "train.checkpoint_every=0",
                            "wandb.enabled=false"))
        curves[accum] = losses(out)
    assert sorted(curves[1]) == sorted(curves[2]) == [1, 2, 3, 4]
    loss2, loss1 = ([curves[a][s][0] for s in range(1, 5)] for a in (2, 1))
    np.testing.assert_allclose(loss2, loss1, rtol=1e-4)
    assert [curves[2][s][1] for s in range(1, 5)] == [curves[1][s][1] for s in range(1, 5)]
    assert len(set(np.round(loss1, 4))) == 4  # the curve moves: steps 2-4 depend on the updates


# ---------------------------------------------------------------------------- W&B across a kill


def history_steps(path):
    """[(_step, keys)] of the history records of one offline .wandb file, and its run id."""
    rows, run_ids = [], set()
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_ids.add(record.run.run_id)
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.append((items["_step"], items))
    return rows, run_ids


def kill_and_resume(cifar_root, out, flush_interval=None):
    """A W&B (offline) run SIGKILLed at its 3rd checkpoint, then the same command again.
    192 samples / 32 = 6 steps an epoch, 2 epochs = 12 steps, checkpoints at 4, 6 (epoch end), 8,
    12: the kill lands at step 8 (files written, `latest` still step6), so steps 7-8 are trained
    and logged twice, once by each process. Returns ({step: train/loss} per .wandb file, run ids)."""
    args = scratch_args(cifar_root, out, "data.limit=192", "train.batch_size=32", "train.epochs=2",
                        "train.checkpoint_every=4", "wandb.enabled=true", "wandb.mode=offline",
                        "output.resume=auto")
    cmd = [sys.executable, str(REPO / "distill/train_student.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    if flush_interval is not None:  # wandb-core writes the .wandb file every 15 s by default
        env["WANDB__TRANSACTION_LOG_FLUSH_INTERVAL"] = str(flush_interval)
    killed = subprocess.run(cmd, cwd=REPO, env={**env, "TVD_FAILPOINT": "checkpoint:latest#3"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / "checkpoints" / "latest").read_text() == "step6"
    first_id = (out / "wandb_run_id").read_text().strip()
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "global step 6" in resumed.stdout
    assert (out / "wandb_run_id").read_text().strip() == first_id

    # one offline run directory per process, in start order (their names begin with the start time)
    files = sorted(glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 2
    per_process, run_ids = [], set()
    for path in files:
        assert os.path.basename(path) == f"run-{first_id}.wandb"
        rows, ids = history_steps(path)
        run_ids |= ids
        steps = [step for step, _ in rows]
        assert len(steps) == len(set(steps)), f"{path}: a step logged twice: {steps}"
        per_process.append({step: items["train/loss"] for step, items in rows if "train/loss" in items})
    return per_process, run_ids, first_id


def test_wandb_run_killed_and_resumed_keeps_one_id(cifar_root, tmp_path):
    # a short flush interval, so the killed process's rows reach its .wandb file and the checks
    # across the two processes are not vacuous
    out = tmp_path / "run"
    (killed, resumed), run_ids, run_id = kill_and_resume(cifar_root, out, flush_interval=0.01)
    assert run_ids == {run_id}  # every run record of both processes: one W&B run
    assert killed, "the killed process flushed no history: the checks across processes would be vacuous"
    assert set(killed) <= set(range(1, 9))  # it trained steps 1-8 only
    assert sorted(resumed) == list(range(7, 13))  # the resumed process logs what it trained, once each
    trained = {step: loss for step, (loss, _) in losses(out).items()}
    assert sorted(trained) == list(range(1, 13))
    # every logged value is the trained one; a step in both processes is a re-done step (7-8)
    # with the same loss (the resume is bit-exact), never another step's value
    for process in (killed, resumed):
        assert process == {s: trained[s] for s in process}
    assert set(killed) & set(resumed) <= {7, 8}


@pytest.mark.xfail(strict=True, reason="KNOWN GAP (not fixed): after a SIGKILL the W&B history does not hold "
                   "each step once. wandb-core 0.31 writes an offline run's .wandb file every 15 s "
                   "(x_transaction_log_flush_interval) and exits without flushing when its parent is killed, "
                   "so rows up to the resumed checkpoint are lost; rows it did flush after that checkpoint "
                   "are logged again by the resumed process")
def test_wandb_history_after_a_kill_has_each_step_once(cifar_root, tmp_path):
    out = tmp_path / "run"
    (killed, resumed), _, _ = kill_and_resume(cifar_root, out)  # wandb's default flush interval
    steps = sorted([*killed, *resumed])
    assert steps == list(range(1, 13)), f"W&B history steps across the kill: {steps}"
