"""Fidelity of what a student sees: the stored 8-bit / fp16 soft targets equal the teacher re-run
on the replayed views (what `online` mode computes) within the codec's stated error; verify_logits'
and inspect_logits' figures and bf16 labelling hold up. Tiny CIFAR of conftest, in-process tools,
one student run as a subprocess (strong recipes' replay: tests/test_recipes.py)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import SHARED, needs_shared, run_program, run_tool, save_logits_args

from distill.augment import ViewMaker
from distill.datasets import build_dataset, labels_of
from distill.replay import StoreViews, store_view_maker
from teacher_logits.codec import LOG_RANGE, STEP, decode_values
from teacher_logits.reader import LogitStore

R20 = "cifar10_resnet20"
MIX = ["--mixup", "0.8", "--cutmix", "1.0", "--mix-prob", "0.7"]


def save(root, ckpt, out, *extra):
    """A store of the cifar10_resnet20 `ckpt` over CIFAR-10 at `root`, made in this process."""
    run_program("save_logits", save_logits_args(root, ckpt, out, *extra), check=True)
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """In-process teacher runs on one thread, like the subprocesses."""


@pytest.fixture(scope="module")
def spread_teacher(cifar_root, tmp_path_factory):
    """A random ResNet-20 whose BatchNorm statistics are set on the tiny CIFAR's views and whose
    head is a least-squares fit to the labels: its probabilities vary per sample and are spread
    (top-1 ~0.65 on average, not near-constant), and its top-1 varies over classes."""
    import timm

    from distill.models import Preprocessed

    dataset = build_dataset("cifar10", cifar_root, train=True, skip_md5=True)
    maker = ViewMaker(dataset, "cifar")
    views = torch.stack([maker(i, i)[0] for i in range(len(dataset))])
    torch.manual_seed(3)
    model = timm.create_model(R20)
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None
    feats = []
    hook = model.linear.register_forward_hook(lambda mod, inp, out: feats.append(inp[0]))
    with torch.no_grad():
        Preprocessed(model).train()(views)
        feats.clear()
        Preprocessed(model).eval()(views)
    hook.remove()
    design = torch.cat([feats[0], torch.ones(len(views), 1)], 1)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(labels_of(dataset)), 10).float()
    fit = torch.linalg.lstsq(design, 2 * onehot - 0.2, driver="gelsd").solution
    with torch.no_grad():
        model.linear.weight.copy_(2 * fit[:-1].T)
        model.linear.bias.copy_(2 * fit[-1])
    path = tmp_path_factory.mktemp("teacher") / "r20_spread.pt"
    torch.save(model.state_dict(), path)
    return path


def load_teacher(ckpt):
    """The teacher as online mode builds it (train_student.py: create_teachers, eval)."""
    from distill.models import create_teachers

    return create_teachers([R20], [str(ckpt)], False, 10)


@pytest.fixture(scope="module")
def log8_store(cifar_root, spread_teacher, tmp_path_factory):
    return save(cifar_root, spread_teacher, tmp_path_factory.mktemp("log8") / "s", "--topk", "5",
                "--shard-records", "64", *MIX)


@pytest.fixture(scope="module")
def fp16_store(cifar_root, spread_teacher, tmp_path_factory):
    return save(cifar_root, spread_teacher, tmp_path_factory.mktemp("fp16") / "s", "--topk", "5", "--values", "fp16")


# ------------------------------------------------------------------ 1. online mode vs the store

def test_online_teacher_equals_stored_targets(log8_store, cifar_root, spread_teacher):
    store = LogitStore(log8_store)
    dataset = build_dataset("cifar10", cifar_root, train=True, skip_md5=True)
    maker = store_view_maker(dataset, store, 200)
    stream = StoreViews(store, maker, labels_of(dataset), 50)
    teacher = load_teacher(spread_teacher)
    k, clear, mixed, checked = store.settings.k, 0, 0, 0
    with torch.no_grad():
        for batch in stream.batches(num_workers=0):
            online = teacher(batch.view).float().softmax(-1).double()  # train_student.py, loss.mode=online
            target = batch.target.dense(store.num_classes).double()
            top = online.topk(k, dim=1)
            # the teacher's probabilities are spread: not near-constant over samples
            assert online.max(1).values.std() > 0.05
            stored_idx = target.topk(k, dim=1).indices
            margin = top.values[:, 0] - top.values[:, 1]
            ok = margin > 1e-3
            assert torch.equal(stored_idx[ok, 0], top.indices[ok, 0])
            clear += int(ok.sum())
            # every decoded log-ratio to the top-1 is within STEP/2 of the teacher's (the codec's
            # stated error); a near-tie (d > -STEP/2) is stored as -STEP, within STEP
            p1, t1 = online.gather(1, top.indices[:, :1]), target.gather(1, top.indices[:, :1])
            true_d = (online.gather(1, top.indices[:, 1:]) / p1).log()
            got_d = (target.gather(1, top.indices[:, 1:]) / t1).log()
            usable = true_d > -LOG_RANGE + STEP
            bound = torch.where(true_d > -STEP / 2, torch.full_like(true_d, STEP), torch.full_like(true_d, STEP / 2))
            err = (got_d - true_d).abs()
            assert bool((err[usable & ok[:, None]] <= bound[usable & ok[:, None]] + 1e-6).all()), err.max()
            # the tail mass outside the top-k, relative to the top-1, within STEP/2 as well
            tail_true = (1 - top.values.sum(1)) / p1[:, 0]
            tail_got = (1 - target.gather(1, top.indices).sum(1)) / t1[:, 0]
            has_tail = tail_true / (10 - k) > np.exp(-LOG_RANGE + STEP)
            assert bool(((tail_got[has_tail] / tail_true[has_tail]).log().abs() <= STEP / 2 + 1e-5).all())
            # so each stored top-k probability is within STEP (ratio error + renormalisation) of the
            # teacher's in log space; 2 * STEP in a row holding a near-tie. (The classes outside the
            # top-k share the tail mass evenly, TinyViT's rule: not compared one by one.)
            got_p, true_p = target.gather(1, top.indices), top.values
            log_err = (got_p.log() - true_p.log()).abs()
            row_bound = torch.where((true_d > -STEP / 2).any(1), 2 * STEP, STEP)[:, None].double()
            assert bool((log_err[ok] <= row_bound[ok] + 1e-5).all()), (log_err - row_bound).max()
            assert bool(((got_p - true_p).abs()[ok] <= (true_p * torch.expm1(row_bound))[ok] + 1e-6).all())
            assert not torch.equal(target.float(), online.float())  # 8-bit: not bit-identical
            mixed += int((batch.lam < 1).sum())
            checked += len(target)
    assert checked == 200 and clear >= 190 and mixed > 50


# ------------------------------------------------------------------ 2. verify_logits --check

def check_output(store, ckpt, root) -> tuple[float, float]:
    code, out, err = run_program("verify_logits", [store, "--teacher", R20, "--checkpoint", ckpt, "--data-root", root,
                                                   "--skip-md5", "--check", "200", "--device", "cpu"])
    assert code == 0, out + err
    m = re.search(r"teacher check: 200 views, top-1 agreement ([\d.]+)%, mean \|p - stored p\| ([\d.]+)", out)
    assert m, out
    return float(m.group(1)), float(m.group(2))


def test_verify_check_error_within_codec_bound(log8_store, fp16_store, cifar_root, spread_teacher):
    agreement, mae = check_output(log8_store, spread_teacher, cifar_root)
    assert agreement == 100.0
    # each stored p is within a relative exp(STEP) - 1 of the teacher's; the k stored values of
    # a record sum to at most 1, so their mean error is at most (exp(STEP) - 1) / k
    assert 0 < mae < (np.exp(STEP) - 1) / 5
    agreement16, mae16 = check_output(fp16_store, spread_teacher, cifar_root)
    assert agreement16 == 100.0 and mae16 < 1e-3
    assert mae16 < mae


# ------------------------------------------------------------------ 3. fp16 stores end to end

def test_fp16_store_targets_and_student(fp16_store, cifar_root, spread_teacher, tmp_path):
    store = LogitStore(fp16_store)
    assert store.settings.values == "fp16"
    dataset = build_dataset("cifar10", cifar_root, train=True, skip_md5=True)
    maker = store_view_maker(dataset, store, 200)
    teacher = load_teacher(spread_teacher)
    n = 0
    for cols in store.iter_shards(0):
        assert cols["topk_val"].dtype == np.dtype("<f2")
        views = torch.stack([maker(int(i), int(s))[0] for i, s in zip(cols["index"], cols["seed"])])
        with torch.no_grad():
            probs = teacher(views).float().softmax(-1).numpy()
        idx = cols["topk_idx"].astype(np.int64)
        top, tail = decode_values(cols["topk_val"], "fp16", 10)
        expected = np.take_along_axis(probs, idx, 1)
        assert np.all(np.abs(top - expected) <= expected * 2.0 ** -11 + 1e-7)  # fp16 rounding
        assert np.array_equal(idx[:, 0], probs.argmax(1))
        dense = store.soft_targets(cols)
        assert np.allclose(dense.sum(1), 1, atol=1e-2) and np.allclose(np.take_along_axis(dense, idx, 1), top)
        assert np.allclose(tail, 1 - np.take_along_axis(probs, idx, 1).sum(1), atol=5e-3)
        n += len(idx)
    assert n == 200
    from test_train_student import train_args

    out = tmp_path / "run"
    run_tool("distill/train_student.py", *train_args(cifar_root, fp16_store, out, "train.epochs=1", "loss.mode=kd",
                                                     "loss.alpha=0.5", "loss.temperature=2", "data.workers=0",
                                                     "train.checkpoint_every=0", "wandb.enabled=false",
                                                     "data.test_limit=32", "train.log_every=1"),
             timeout=240, env={"DS_ACCELERATOR": "cpu"})
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 7 and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)
    assert (out / "final" / "model.pt").is_file()


# ------------------------------------------------------------------ 4. inspect_logits

def test_inspect_figures_match_manifest(log8_store, spread_teacher):
    code, out, err = run_program("inspect_logits", [log8_store])
    assert code == 0, out + err
    shown = {}
    for line in out.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            shown.setdefault(key.strip(), value.strip())
    manifest = json.loads((log8_store / "manifest.json").read_text())
    settings = manifest["settings"]
    shard_bytes = {e["name"]: (log8_store / e["name"]).stat().st_size for e in manifest["shards"]}
    assert shard_bytes == {e["name"]: e["bytes"] for e in manifest["shards"]}
    total = sum(shard_bytes.values()) + (log8_store / "manifest.json").stat().st_size
    assert int(shown["records"]) == manifest["records"] == 200
    assert int(shown["epochs"]) == settings["epochs"] == 1
    assert int(shown["k"]) == settings["k"] == 5
    assert int(shown["num_classes"]) == settings["num_classes"] == 10
    assert shown["values"] == settings["values"] == "log8"
    assert int(shown["bytes"]) == total
    per_record, rest = shown["bytes/record"].split(" ", 1)
    assert float(per_record) == pytest.approx(total / manifest["records"], abs=0.006)
    import tarfile

    members = sum(len(tarfile.open(log8_store / name).getmembers()) for name in shard_bytes)
    framing = 512 * members + 1024 * len(shard_bytes) + (log8_store / "manifest.json").stat().st_size
    assert f"{framing / 200:.2f} of tar headers and manifest" in rest  # the small store's fixed cost, said
    from distill.store_teachers import file_sha256

    assert shown["teacher"] == f"{R20} (checkpoint sha256 {file_sha256(str(spread_teacher))})"
    histogram = dict(item.split(":") for item in shown["top-1 classes"].split(", "))
    store = LogitStore(log8_store)
    top1 = np.concatenate([c["topk_idx"][:, 0] for c in store.iter_shards(0)])
    counts = np.bincount(top1, minlength=10)
    assert {int(c): float(p.rstrip("%")) for c, p in histogram.items()} == \
        {c: round(100 * n / 200, 1) for c, n in enumerate(counts) if n}
    assert len(histogram) >= 2  # the teacher's top-1 varies over samples


# ------------------------------------------------------------------ 5. bf16 labelling

def by_index(store):
    """An epoch's columns of a store, in sample order."""
    cols = list(store.iter_shards(0))
    index = np.concatenate([c["index"] for c in cols])
    return {name: np.concatenate([c[name] for c in cols])[np.argsort(index)] for name in cols[0]}


def test_bf16_top1_agrees_with_fp32(cifar_root, spread_teacher, fp16_store, tmp_path):
    """bf16 labelling of the same views keeps the fp32 top-1 wherever fp32's top-1/top-2 margin
    exceeds bf16's error. This teacher (random features, least-squares head) has 5 % of its
    records within a 0.03 margin, and bf16 flips ~1.5 % of all top-1s, every one at a margin
    below 0.025 (scaling the head does not help: bf16's error scales with the logits), so here
    the 99 % criterion is taken over records with a clear margin; the test below holds a trained
    teacher on real data to 99 % of all views."""
    bf16 = LogitStore(save(cifar_root, spread_teacher, tmp_path / "bf16", "--topk", "5", "--values", "fp16",
                           "--precision", "bf16"))
    fp32 = LogitStore(fp16_store)  # the same settings at --precision fp32 (the default)

    a, b = by_index(fp32), by_index(bf16)
    assert np.array_equal(a["index"], np.arange(200)) and np.array_equal(b["index"], np.arange(200))
    assert np.array_equal(a["seed"], b["seed"])  # the same views
    agree = a["topk_idx"][:, 0] == b["topk_idx"][:, 0]
    margin = a["topk_val"][:, 0].astype(np.float64) - a["topk_val"][:, 1].astype(np.float64)
    clear = margin > 0.05
    assert clear.mean() >= 0.9
    assert agree[clear].mean() >= 0.99 and agree[clear].all()
    assert agree.mean() >= 0.97
    assert len(np.unique(a["topk_idx"][:, 0])) >= 5  # the teacher's top-1 is not constant
    assert not np.array_equal(a["topk_val"], b["topk_val"])  # bf16 really ran


def test_bf16_top1_agrees_with_fp32_for_a_trained_teacher(tmp_path):
    """The acceptance criterion on real data: the shared pretrained ResNet-20 labels 2,000 real
    CIFAR-10 training views at --precision bf16 and fp32; the stored top-1 agrees on at least
    99 % of views, and every disagreement is a near-tie that bf16 swapped (fp32's top-1 and
    top-2 trade places, at a margin below 0.1)."""
    checkpoint = needs_shared(SHARED / "teachers" / "cifar10" / "resnet20_akamaster-12fca82f.th")
    needs_shared(SHARED / "data" / "cifar10" / "train.npz")
    subprocess.run([sys.executable, str(SHARED / "data" / "materialize.py"), "--root", str(tmp_path / "data"),
                    "--datasets", "cifar10"], check=True, capture_output=True, timeout=300)
    stores = {precision: LogitStore(save(tmp_path / "data", checkpoint, tmp_path / precision, "--limit", "2000",
                                         "--topk", "5", "--values", "fp16", "--precision", precision))
              for precision in ("fp32", "bf16")}
    a, b = by_index(stores["fp32"]), by_index(stores["bf16"])
    assert np.array_equal(a["index"], np.arange(2000)) and np.array_equal(a["seed"], b["seed"])  # the same views
    agree = a["topk_idx"][:, 0] == b["topk_idx"][:, 0]
    assert agree.mean() >= 0.99, f"bf16 top-1 agrees with fp32 on {agree.mean():.2%} of views"
    swapped = (b["topk_idx"][~agree, 0] == a["topk_idx"][~agree, 1]) & (b["topk_idx"][~agree, 1] == a["topk_idx"][~agree, 0])
    assert swapped.all()
    margin = a["topk_val"][:, 0].astype(np.float64) - a["topk_val"][:, 1].astype(np.float64)
    assert (margin[~agree] < 0.1).all(), f"flips at fp32 margins {np.sort(margin[~agree])}"
    assert np.median(margin) > 0.5  # a trained teacher: most views are far from a tie
    assert not np.array_equal(a["topk_val"], b["topk_val"])  # bf16 really ran
    # softmax and top-k run in fp32 after the bf16 forward: the stored fp16 probabilities are
    # mostly not bf16 numbers (a softmax in bf16 would make every one of them a bf16 number)
    values = b["topk_val"].astype(np.float32)
    assert (values != torch.from_numpy(values).bfloat16().float().numpy()).mean() > 0.25
