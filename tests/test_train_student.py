"""distill/train_student.py end to end, on the tiny class-coloured CIFAR of conftest.

Processes are expensive here (5-15 s each), so runs are module fixtures shared by the
tests: one store; one plain-python kd run (export, W&B, reference for resume); a run
stopped at step 10 and resumed; one 2-rank `deepspeed` run (ZeRO-1, scratch mode).
The student is a one-block, 32-wide cifar_vit: ~400 img/s on one core.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from helpers import REPO, run_tool, save_logits_args, tiny_student_args, write_cifar

from distill.tracking import read_wandb_records

TINY = [*tiny_student_args(), "train.batch_size=32", "data.test_limit=null", "train.max_steps=null"]
# 200 samples / 32 = 7 steps per epoch; 21 steps, checkpoints at 4, 7, 8, 12, 14, 16, 20, 21.
KD = ["train.epochs=3", "optim.lr=3e-3", "loss.alpha=0.5", "loss.temperature=2", "train.checkpoint_every=4",
      "train.log_every=1", "data.workers=0"]


@pytest.fixture(scope="module")
def store(cifar_root, teacher_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "store"
    run_tool("tools/save_logits.py", *save_logits_args(cifar_root, teacher_ckpt, out, "--epochs", "2",
                                                       "--shard-records", "50"))  # a shard per rank and worker
    return out


def train_args(cifar_root, store, out, *extra):
    return ["--config", "configs/smoke_cifar10.yaml", f"data.root={cifar_root}", "data.skip_md5=true",
            f"logits.store={store}", f"output.dir={out}", *TINY, *extra]


def train(*args, check=True):
    return run_tool("distill/train_student.py", *args, check=check, timeout=240, env={"DS_ACCELERATOR": "cpu"})


def losses(out):
    """{step: (loss, lr)} from a run's train_log.jsonl; a re-logged step keeps its last entry."""
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["lr"]) for r in rows}


@pytest.fixture(scope="module")
def kd_run(cifar_root, store, tmp_path_factory):
    out = tmp_path_factory.mktemp("kd") / "run"
    train(*train_args(cifar_root, store, out, *KD, "wandb.enabled=true"))
    return out


@pytest.fixture(scope="module")
def deepspeed_run(cifar_root, teacher_ckpt, tmp_path_factory):
    """2 ranks through the launcher: ZeRO-1, scratch mode on the views of a store with one shard
    per epoch (the ranks share it by records), 4 epochs of 7 steps."""
    from distill.distributed import free_port

    store = tmp_path_factory.mktemp("store1") / "store"
    run_tool("tools/save_logits.py", *save_logits_args(cifar_root, teacher_ckpt, store, "--epochs", "2",
                                                       "--shard-records", "200"))
    out = tmp_path_factory.mktemp("ds") / "run"
    launcher = [shutil.which("deepspeed")] if shutil.which("deepspeed") else [sys.executable, "-m",
                                                                              "deepspeed.launcher.runner"]
    cmd = [*launcher, "--num_gpus", "2", "--master_port", str(free_port()), "distill/train_student.py",
           *train_args(cifar_root, store, out, "train.batch_size=16", "train.epochs=4", "loss.mode=scratch",
                       "optim.lr=1e-2", "deepspeed.zero_stage=1", "wandb.enabled=false", "data.workers=0")]
    # no OMP_NUM_THREADS: each rank takes its share of the cores itself (distill/distributed.py)
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, "DEEPSPEED_TIMEOUT": "2",
           "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    # Own session: on a timeout the whole group (launcher and ranks) is killed, no orphans.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"deepspeed run timed out:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    assert proc.returncode == 0, f"deepspeed run failed:\n{stdout[-3000:]}\n{stderr[-5000:]}"
    return out, stdout


def rebuild_and_evaluate(final_dir, cifar_root) -> float:
    """What tools/evaluate.py does: the student from final/ alone, no DeepSpeed; test top-1."""
    from distill.augment import ViewMaker
    from distill.datasets import build_dataset, labels_of
    from distill.models import Preprocessed, create_student

    info = yaml.safe_load((final_dir / "config.yaml").read_text())["student"]
    model = create_student(info["name"], info["num_classes"], info["img_size"], **info["kwargs"])
    model.load_state_dict(torch.load(final_dir / "model.pt", weights_only=True), strict=True)
    model = Preprocessed(model, info["mean"], info["std"], (info["img_size"],) * 2).eval()
    test = build_dataset("cifar10", cifar_root, train=False, skip_md5=True)
    maker = ViewMaker(test, "none")
    views = torch.stack([maker(i, 0)[0] for i in range(len(test))])
    with torch.no_grad():
        preds = model(views).argmax(1).numpy()
    return 100.0 * float((preds == labels_of(test)).mean())


def test_plain_python_run_trains_from_store_and_exports(kd_run, cifar_root):
    metrics = json.loads((kd_run / "metrics.json").read_text())
    assert metrics["steps"] == 21 and metrics["world_size"] == 1 and metrics["eval"]["num_samples"] == 40
    state = torch.load(kd_run / "final" / "model.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert rebuild_and_evaluate(kd_run / "final", cifar_root) == pytest.approx(metrics["eval"]["top1"])
    log = losses(kd_run)
    assert sorted(log) == list(range(1, 22))
    assert np.mean([log[s][0] for s in (19, 20, 21)]) < 0.8 * log[1][0]  # kd term learns the teacher
    assert (kd_run / "checkpoints" / "latest").read_text().strip() == "step21"
    assert len(list((kd_run / "checkpoints").glob("step*"))) == 2  # older checkpoints pruned


def test_resume_mid_epoch_repeats_the_uninterrupted_run(kd_run, cifar_root, store, tmp_path):
    out = tmp_path / "resumed"
    args = train_args(cifar_root, store, out, *KD, "wandb.enabled=false")
    train(*args, "train.max_steps=10")  # stops in epoch 1 after 3 of its 7 steps
    assert sorted(losses(out)) == list(range(1, 11))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step10"
    first_wall = json.loads((out / "metrics.json").read_text())["train_wall_s"]
    proc = train(*args, "data.workers=1")  # resume; another worker count must not change the stream
    assert "resumed from" in proc.stdout and "global step 10" in proc.stdout
    # the clock goes on from the checkpoint's: the whole run's wall time, not the second process's
    walls = [json.loads(line)["wall_s"] for line in (out / "evals.jsonl").read_text().splitlines()]
    stamps = {row["step"]: row["time"] for row in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())}
    second = stamps[21] - stamps[11]  # the resumed process's steps
    assert walls == sorted(walls)
    assert json.loads((out / "metrics.json").read_text())["train_wall_s"] >= first_wall + second
    assert losses(out) == losses(kd_run)  # every step's loss and lr, bit for bit
    resumed = torch.load(out / "final" / "model.pt", weights_only=True)
    reference = torch.load(kd_run / "final" / "model.pt", weights_only=True)
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in resumed)


def test_two_rank_deepspeed_run_learns_and_exports(deepspeed_run, cifar_root):
    out, stdout = deepspeed_run
    from distill.distributed import usable_cores

    threads = max(1, usable_cores() // 2)  # each rank's share of the cores
    assert f"(200 samples, 2 rank(s) of {threads} thread(s))" in stdout
    assert "left out" not in stdout  # one shard, every record
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 28
    log = losses(out)
    assert np.mean([log[s][0] for s in (26, 27, 28)]) < 0.5 * log[1][0]  # class-coloured noise is learnable
    assert metrics["eval"]["top1"] > 50  # chance is 10
    assert rebuild_and_evaluate(out / "final", cifar_root) == pytest.approx(metrics["eval"]["top1"])


def test_online_teacher_without_store_on_digits(teacher_ckpt, tmp_path):
    """No store: seeded views of the bundled digits; the teacher runs in the loop (online mode)."""
    out = tmp_path / "digits"
    train("--config", "configs/smoke_digits.yaml", "loss.mode=online", "teacher.name=cifar10_resnet20",
          f"teacher.checkpoint={teacher_ckpt}", "loss.alpha=0.5", f"output.dir={out}", "train.max_steps=4",
          "data.test_limit=64")
    assert sorted(losses(out)) == [1, 2, 3, 4]
    assert json.loads((out / "metrics.json").read_text())["eval"]["num_samples"] == 64
    assert (out / "final" / "model.pt").is_file()


def test_online_teacher_ensemble_on_digits(teacher_ckpt, tmp_path):
    """online mode with two teachers (config lists) and unequal weights runs (the ensemble's
    weighted mean itself is proved in test_ensemble.py)."""
    import timm

    import distill.models  # noqa: F401  (registers the CIFAR teachers)

    other = tmp_path / "r20_seed1.pt"
    torch.manual_seed(1)
    torch.save(timm.create_model("cifar10_resnet20").state_dict(), other)
    out = tmp_path / "digits"
    train("--config", "configs/smoke_digits.yaml", "loss.mode=online",
          "teacher.name=[cifar10_resnet20,cifar10_resnet20]", f"teacher.checkpoint=[{teacher_ckpt},{other}]",
          "teacher.weights=[1,3]", f"output.dir={out}", "train.max_steps=2", "data.test_limit=32",
          "wandb.enabled=false")
    assert sorted(losses(out)) == [1, 2] and all(np.isfinite(v[0]) for v in losses(out).values())
    teacher = yaml.safe_load((out / "config.yaml").read_text())["teacher"]
    assert teacher["name"] == ["cifar10_resnet20"] * 2 and teacher["weights"] == [1.0, 3.0]


def test_store_made_for_other_data_is_refused(cifar_root, store, tmp_path):
    from distill.config import load_config
    from distill.datasets import build_dataset
    from distill.student_data import check_store
    from teacher_logits.manifest import StoreError
    from teacher_logits.reader import LogitStore

    logits = LogitStore(store)
    cifar10 = build_dataset("cifar10", cifar_root, train=True, skip_md5=True)
    cifar100 = build_dataset("cifar100", write_cifar(tmp_path / "c100", num_classes=100), train=True, skip_md5=True)

    def check(dataset, *overrides):
        return check_store(logits, load_config("configs/smoke_cifar10.yaml", list(overrides)), dataset)

    assert check(cifar10) == 200
    cases = [((cifar10, "data.recipe=crop"), "augmentation.recipe: 'cifar' != 'crop'"),
             ((cifar10, "data.recipe=stl10"), "augmentation.resolution: 32 != 96"),
             ((cifar10, "data.limit=100"), "dataset.size: 200 != 100"),
             ((cifar100, "data.dataset=cifar100"), "dataset.num_classes: 10 != 100"),
             ((cifar100, "data.dataset=cifar100"), "dataset.name: 'cifar10' != 'cifar100'")]
    for (dataset, override), message in cases:
        with pytest.raises(StoreError) as e:
            check(dataset, override)
        assert message in str(e.value) and "[store != config]" in str(e.value)
    # other labels under the same name and size (e.g. another copy of the data): the label hash differs
    relabelled = build_dataset("cifar10", write_cifar(tmp_path / "other", seed=1), train=True, skip_md5=True)
    with pytest.raises(StoreError, match="dataset.labels_sha256"):
        check(relabelled)
    # and the program says it in one line, exit status 2
    proc = train(*train_args(cifar_root, store, tmp_path / "refused", "data.recipe=crop", "wandb.enabled=false"),
                 check=False)
    assert proc.returncode == 2
    assert "error: logits.store" in proc.stderr and "augmentation.recipe: 'cifar' != 'crop'" in proc.stderr


# ---------------------------------------------------------------------------- W&B


def test_wandb_offline_run_logs_the_training_loss(kd_run):
    runs = glob.glob(str(kd_run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    history, summary = {}, {}
    for record in read_wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(items["_step"], {}).update(items)
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    logged = {step: row["train/loss"] for step, row in history.items() if "train/loss" in row}
    assert logged == {step: loss for step, (loss, _) in losses(kd_run).items()}
    assert history[21]["eval/top1"] == json.loads((kd_run / "metrics.json").read_text())["eval"]["top1"]
    assert "final/top1" in summary


def test_wandb_mode_resolution(monkeypatch, tmp_path):
    from distill.config import load_config
    from distill.tracking import NoTracker, resolve_mode, start_tracking

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode(None) == "offline"  # no key: offline, never a hang or a prompt
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(None) == "disabled"  # the environment beats the key
    assert resolve_mode("offline") == "offline"  # the config beats the environment
    monkeypatch.setenv("WANDB_MODE", "sideways")
    with pytest.raises(ValueError, match=r"wandb.mode \(\$WANDB_MODE\): expected one of online, offline, disabled"):
        resolve_mode(None)
    cfg = load_config(None, ["wandb.mode=offline"]).wandb
    assert isinstance(start_tracking(cfg, {}, tmp_path, rank=1), NoTracker)  # rank 1 never starts W&B
    cfg.enabled = False
    assert type(start_tracking(cfg, {}, tmp_path, rank=0)) is NoTracker
    cfg.mode = "cloud"
    with pytest.raises(ValueError, match="wandb.mode"):
        start_tracking(cfg, {}, tmp_path, rank=1)


# ZeRO 1 and 2 cast as ZeRO 0 does, and CCT's layers are cifar_vit's and cifar_cnn's kinds: those
# cases run with --slow, to keep the default suite under 15 minutes
SLOW = pytest.mark.slow


@pytest.mark.parametrize("student,zero_stage", [("tiny_vit_5m", 0), ("cifar_cnn", 0), ("cifar_vit", 0),
                                                pytest.param("cct_7_3x1", 0, marks=SLOW),
                                                pytest.param("tiny_vit_5m", 1, marks=SLOW),
                                                pytest.param("tiny_vit_5m", 2, marks=SLOW), ("tiny_vit_5m", 3)])
def test_bf16_step_matches_fp32(cifar_root, store, tmp_path, student, zero_stage):
    """deepspeed.bf16=true trains every student, at every ZeRO stage: DeepSpeed casts the
    running statistics of students with BatchNorm (TinyViT, cifar_cnn) with the weights, and
    the first step's loss (same weights, same batch) is the fp32 one within bf16's precision."""
    first = {}
    for bf16 in (False, True):
        out = tmp_path / f"bf16_{bf16}"
        train(*train_args(cifar_root, store, out, f"model.name={student}", "model.kwargs={}",
                          f"deepspeed.bf16={str(bf16).lower()}", f"deepspeed.zero_stage={zero_stage}",
                          "train.max_steps=2", "train.epochs=1", "data.test_limit=32", "loss.mode=kd",
                          "data.workers=0"))
        first[bf16] = losses(out)[1][0]
    assert np.isfinite(first[True]) and abs(first[True] - first[False]) < 0.02 * abs(first[False]) + 1e-3

