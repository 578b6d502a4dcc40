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
import torch
import yaml
from helpers import REPO, tiny_student_args
from test_train_student import losses, train

from distill.tracking import read_wandb_records

# no dropout or drop-path anywhere (cifar_vit defaults pos/proj dropout to 0.1): runs are deterministic
NO_DROP = tiny_student_args(pos_drop_rate=0.0, proj_drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0)
BASE = [*NO_DROP, "loss.mode=scratch", "logits.store=null",
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


def history_rows(path):
    """[(_step, {key: value})] of the history records of one .wandb file, and its run ids."""
    rows, run_ids = [], set()
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_ids.add(record.run.run_id)
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.append((items["_step"], items))
    return rows, run_ids


def kill_and_resume(cifar_root, out, flush_interval):
    """A W&B (offline) run SIGKILLed at its 3rd checkpoint, then the same command again.
    192 samples / 32 = 6 steps an epoch, 2 epochs = 12 steps, an evaluation at each epoch end,
    checkpoints at 4, 6 (epoch end), 8, 12: the kill lands at step 8 (files written, `latest`
    still step6), so the resumed process trains steps 7-12. `flush_interval` is wandb-core's
    x_transaction_log_flush_interval (15 s by default): how much of the killed process's
    history reached its .wandb file. Returns ({step: row} per .wandb file in process order,
    run ids, the run id)."""
    args = scratch_args(cifar_root, out, "data.limit=192", "train.batch_size=32", "train.epochs=2",
                        "train.checkpoint_every=4", "wandb.enabled=true", "wandb.mode=offline",
                        "output.resume=auto")
    cmd = [sys.executable, str(REPO / "distill/train_student.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu",
           "WANDB__TRANSACTION_LOG_FLUSH_INTERVAL": str(flush_interval)}
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
        rows, ids = history_rows(path)
        run_ids |= ids
        steps = [step for step, _ in rows]
        assert len(steps) == len(set(steps)), f"{path}: a step logged twice: {steps}"
        per_process.append(dict(rows))
    return per_process, run_ids, first_id


def assert_history_has_each_step_once(out, killed, resumed):
    """The two processes' histories together: steps 1-12 once each, in order across the files
    (W&B drops a step below one it has), each with the trained loss and lr of train_log.jsonl,
    and the two epoch-end evaluations (steps 6 and 12) with the values of evals.jsonl."""
    assert not set(killed) & set(resumed), f"steps in both processes: {sorted(set(killed) & set(resumed))}"
    assert sorted([*killed, *resumed]) == list(range(1, 13))
    assert not killed or max(killed) < min(resumed)
    history = {**killed, **resumed}
    assert {s: (row["train/loss"], row["train/lr"]) for s, row in history.items()} == losses(out)
    evals = {row["step"]: row for row in map(json.loads, (out / "evals.jsonl").read_text().splitlines())}
    assert sorted(evals) == [6, 12]
    assert {s: row["eval/top1"] for s, row in history.items() if "eval/top1" in row} == \
        {s: row["top1"] for s, row in evals.items()}


def test_wandb_run_killed_and_resumed_keeps_one_id(cifar_root, tmp_path):
    """wandb-core flushing every 10 ms: the killed process's file holds steps past the
    checkpoint (7), which the resumed process trains again and must not log again."""
    out = tmp_path / "run"
    (killed, resumed), run_ids, run_id = kill_and_resume(cifar_root, out, flush_interval=0.01)
    assert run_ids == {run_id}  # every run record of both processes: one W&B run
    assert max(killed, default=0) > 6, f"the killed process's file ends at step {max(killed, default=0)}: " \
                                       "nothing past the checkpoint to skip, the check would be vacuous"
    assert_history_has_each_step_once(out, killed, resumed)


def test_wandb_history_after_a_kill_has_each_step_once(cifar_root, tmp_path):
    """wandb-core not flushing before the kill (an interval longer than the run): W&B lost
    every row the killed process logged, so the resumed process logs steps 1-6 again from
    train_log.jsonl and evals.jsonl before it trains 7-12. wandb's default interval (15 s)
    lands between this case and the one above."""
    out = tmp_path / "run"
    (killed, resumed), _, _ = kill_and_resume(cifar_root, out, flush_interval=3600)
    assert not killed, f"the killed process flushed steps {sorted(killed)}: nothing was lost"
    assert_history_has_each_step_once(out, killed, resumed)
