"""Bad input to tools/save_logits.py: teacher and checkpoint, dataset, numbers, output
directory (a full disk: tests/test_bad_input_disks.py).

Part of the bad-input catalogue (docs/reliability.md): every program refuses bad input with one
line that names the input and what to do, a non-zero exit (2 for user errors), and no partial or
overwritten output. The shared helpers (run_program, user_error, snapshot) are in helpers.py, the
fixtures in conftest.py.
"""
from __future__ import annotations

import os
import shutil
import struct

import numpy as np
import pytest
import torch
from helpers import replace, run_program, run_tool, save_logits_args, snapshot, user_error, with_out


# in-process teacher runs on one thread, like the subprocesses; the errors users see
pytestmark = pytest.mark.usefixtures("one_thread", "no_tvd_debug")


# ============================================================ save_logits: teacher and checkpoint


def test_unknown_teacher_name(base, tmp_path):
    out = tmp_path / "s"
    r = run_program("save_logits", replace(with_out(base, out), "--teacher", "cifar10_resnet2O"))
    user_error(r, "--teacher: unknown model 'cifar10_resnet2O'", "did you mean", "cifar10_resnet20")
    assert not out.exists()


def test_checkpoint_for_wrong_number_of_classes(base, ckpts, tmp_path):
    out = tmp_path / "s"
    args = replace(replace(with_out(base, out), "--teacher", "cifar100_resnet56"), "--checkpoint",
                   ckpts / "r56_c100.pt")
    r = run_program("save_logits", args)
    user_error(r, "r56_c100.pt", "fc.weight", "(100, 64)", "(10, 64)", "use a checkpoint for 10 classes")
    assert not out.exists()


def test_checkpoint_for_another_architecture(base, ckpts, tmp_path):
    out = tmp_path / "s"
    r = run_program("save_logits", replace(with_out(base, out), "--checkpoint", ckpts / "r56_c10.pt"))
    line = user_error(r, "r56_c10.pt", "unexpected keys")
    assert not out.exists()
    assert "--teacher" in line and "architecture" in line


def test_checkpoint_file_missing(base, tmp_path):
    out = tmp_path / "s"
    r = run_program("save_logits", replace(with_out(base, out), "--checkpoint", tmp_path / "nope.pt"))
    user_error(r, f"--checkpoint {tmp_path / 'nope.pt'}", "no such file", "pass the path")
    assert not out.exists()


def test_checkpoint_not_a_torch_file(base, ckpts, tmp_path):
    out = tmp_path / "s"
    r = run_program("save_logits", replace(with_out(base, out), "--checkpoint", ckpts / "random.pt"))
    user_error(r, "random.pt", "not a torch checkpoint", "re-save just the state_dict")
    assert not out.exists()


class _Payload:
    """Pickles as a call to os.system: what a hostile checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_checkpoint_is_refused_unexecuted(base, tmp_path):
    marker, ckpt, out = tmp_path / "pwned", tmp_path / "evil.pt", tmp_path / "s"
    torch.save({"state_dict": {"linear.bias": _Payload(marker)}}, ckpt)
    r = run_program("save_logits", replace(with_out(base, out), "--checkpoint", ckpt))
    user_error(r, "evil.pt", "refusing to unpickle untrusted data")
    assert not marker.exists() and not out.exists()
    live = tmp_path / "live"  # the payload is real: a plain unpickle would have run it
    torch.save({"x": _Payload(live)}, tmp_path / "live.pt")
    torch.load(tmp_path / "live.pt", weights_only=False)
    assert live.exists()


def test_teacher_without_weights(base, tmp_path):
    out = tmp_path / "s"
    args = with_out(base, out)
    i = args.index("--checkpoint")
    r = run_program("save_logits", args[:i] + args[i + 2:])
    user_error(r, "--teacher cifar10_resnet20 has no weights", "pass --checkpoint FILE or --pretrained")
    assert not out.exists()


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_or_inf_teacher_outputs_write_nothing(base, ckpts, tmp_path, bad):
    out = tmp_path / "s"
    r = run_program("save_logits", replace(with_out(base, out), "--checkpoint", ckpts / f"r20_{bad}.pt"))
    user_error(r, "teacher cifar10_resnet20 gave NaN/inf logits for samples", "check the checkpoint")
    assert not out.exists()  # no shard, and no half-made store that would refuse the fixed re-run


# ============================================================ save_logits: dataset


def test_unknown_dataset_subprocess(cifar_root, teacher_ckpt, tmp_path):
    out = tmp_path / "s"
    proc = run_tool("tools/save_logits.py", *save_logits_args(cifar_root, teacher_ckpt, out, "--dataset", "imagenet"),
                    check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # argparse: usage, then one error line
    assert "error: argument --dataset: invalid choice: 'imagenet'" in last and "choose from" in last
    assert not out.exists()


def test_dataset_root_missing(base, tmp_path):
    out = tmp_path / "s"
    r = run_program("save_logits", replace(with_out(base, out), "--data-root", tmp_path / "nodata"))
    user_error(r, f"{tmp_path / 'nodata' / 'cifar-10-batches-py'}", "files not found", "write them there")
    assert not out.exists()


def test_dataset_root_empty(base, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "s"
    r = run_program("save_logits", replace(with_out(base, out), "--data-root", tmp_path / "empty"))
    user_error(r, f"{tmp_path / 'empty' / 'cifar-10-batches-py'}", "files not found", "write them there")
    assert not out.exists()


def test_recreated_dataset_without_skip_md5(base, tmp_path, monkeypatch):
    """Our copy fails torchvision's md5 check, and the download fallback fails. The download
    is pointed at a closed local port, so it fails the same way online (it must never fetch
    CIFAR-10 into the shared fixture)."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    out = tmp_path / "s"
    args = with_out(base, out)
    args.remove("--skip-md5")
    r = run_program("save_logits", args)
    user_error(r, "failed its md5 check", "cifar-10-batches-py", "pass --skip-md5", "data.skip_md5=true")
    assert not out.exists()


# Pickles whose opcodes ask for ~1 TB (or a 2^31-slot memo): a reader that trusts them runs out
# of memory before it finds out that the file is 13 bytes long.
HUGE_PICKLES = {
    "memo-slot": b"\x80\x02}r" + struct.pack("<I", 2**31) + b".",      # EMPTY_DICT, LONG_BINPUT 2^31
    "frame": b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"}.",      # FRAME of 2^40 bytes
    "bytes8": b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"xx.",    # BINBYTES8 of 2^40 bytes
    "unicode8": b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"xx.",  # BINUNICODE8 of 2^40 bytes
}
CORRUPT = {**{f"random-{seed}": np.random.default_rng(seed).bytes(3000) for seed in range(4)}, **HUGE_PICKLES}


@pytest.mark.parametrize("content", list(CORRUPT))
def test_dataset_file_corrupt(base, cifar_root, tmp_path, content):
    """Any content in a batch file, random or crafted to ask for huge sizes: one line, no store."""
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(CORRUPT[content])
    out = tmp_path / "s"
    r = run_program("save_logits", replace(with_out(base, out), "--data-root", root))
    user_error(r, f"CIFAR10 file {root / 'cifar-10-batches-py' / 'data_batch_3'} is unreadable",
               "re-create or re-download it")  # the file, not its folder (issue 27)
    assert not out.exists()


@pytest.mark.parametrize("content", [{"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4},
                                     {"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3}, [1, 2, 3]],
                         ids=["short rows", "labels missing", "a list"])
def test_dataset_file_of_another_layout(base, cifar_root, tmp_path, content):
    """A well-formed pickle of another layout was a ValueError or KeyError from torchvision."""
    import pickle

    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(content))
    r = run_program("save_logits", replace(with_out(base, out := tmp_path / "s"), "--data-root", root))
    user_error(r, str(root / "cifar-10-batches-py" / "test_batch"), "unreadable")
    assert not out.exists()


# ============================================================ save_logits: numbers


@pytest.mark.parametrize("flag, value, message", [
    ("--epochs", 0, "--epochs must be positive, got 0"),
    ("--epochs", -1, "--epochs must be positive, got -1"),
    ("--batch-size", 0, "--batch-size must be positive, got 0"),
    ("--limit", 0, "--limit must be positive, got 0"),
    ("--topk", 11, "--topk 11 exceeds the teacher's 10 classes: pass --topk 10 or less"),
    ("--limit", 100000, "--limit 100000 exceeds the 200 samples of cifar10 train: lower it"),
    ("--img-size", 64, "--view-params counter: recipe cifar at 64 px resizes its views"),  # with --view-params counter
])
def test_bad_numbers(base, tmp_path, flag, value, message):
    out = tmp_path / "s"
    args = with_out(base, out)
    args = replace(args, flag, value) if flag in args else args + [flag, str(value)]
    fix = ["use --view-params generators"] if "view-params" in message else []
    args += ["--view-params", "counter"] if fix else []
    user_error(run_program("save_logits", args), message, *fix)
    assert not out.exists()


# ============================================================ save_logits: output directory


def test_out_not_writable(base, tmp_path):
    """A directory cannot be made under a regular file (chmod does not stop root)."""
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "store"
    r = run_program("save_logits", with_out(base, out))
    user_error(r, f"--out {out}", "cannot write there", "choose a writable directory")
    assert (tmp_path / "file").read_text() == "x"


def test_out_is_a_file(base, tmp_path):
    out = tmp_path / "file"
    out.write_text("keep me")
    r = run_program("save_logits", with_out(base, out))
    user_error(r, f"--out {out}", "is a file", "choose a new directory")
    assert out.read_text() == "keep me"


def test_out_is_a_non_store_directory(base, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    r = run_program("save_logits", with_out(base, out))
    user_error(r, f"--out {out}", "is not a logit store", "choose a new directory")
    assert snapshot(out) == before


@pytest.mark.parametrize("flag, value, field", [
    ("--topk", "5", "k: 10 != 5"),
    ("--seed", "3", "seed: 0 != 3"),
    ("--aug", "crop", "augmentation.recipe: 'cifar' != 'crop'"),
    ("--values", "fp16", "values: 'log8' != 'fp16'"),
    ("--view-params", "generators", "augmentation.params: 'counter' != None"),
])  # a larger --epochs grows the store, a smaller one is refused: tests/test_grow_store.py
def test_rerun_with_other_settings_is_refused(base, store, flag, value, field):
    before = snapshot(store)
    args = with_out(base, store)
    args = replace(args, flag, value) if flag in args else args + [flag, value]
    r = run_program("save_logits", args)
    user_error(r, f"--out {store} holds a store made with other settings", field,
               "use a new --out, or the original settings to resume")
    assert snapshot(store) == before


def test_rerun_with_another_teacher_checkpoint_is_refused(base, store, ckpts, tmp_path):
    import timm

    ckpt = tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save(timm.create_model("cifar10_resnet20").state_dict(), ckpt)
    before = snapshot(store)
    r = run_program("save_logits", replace(with_out(base, store), "--checkpoint", ckpt))
    user_error(r, "teacher.checkpoint_sha256", "use a new --out")
    assert snapshot(store) == before
