"""Bad input to tools/train_teacher.py, and the number, device and weights inputs of the other
programs that the per-program files do not cover.

Part of the bad-input catalogue (docs/reliability.md): one line naming the input and the fix,
exit 2, no output folder. Every case runs the program's main in this process (run_main's way);
those that fail after the process group starts (weights) are still refused before output.dir
is created. The shared helpers are in helpers.py, the fixtures in conftest.py.
"""
from __future__ import annotations

import pytest
import torch
from helpers import run_program, user_error, with_out

pytestmark = pytest.mark.usefixtures("one_thread", "no_tvd_debug")


def teacher_args(out, *extra):
    return ["--teacher", "cifar10_resnet20", "--dataset", "digits", "--epochs", "1", "--limit", "64",
            "--workers", "0", "--batch-size", "32", "--out", out, *extra]


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "--epochs: must lie in [1, 100000], got 0"),
    (["--lr", "0"], "--lr: must lie in (0, 10], got 0.0"),  # was ignored: trained at the config's rate
    (["--limit", "0"], "--limit: must lie in [1, 2147483647], got 0"),  # was ignored: trained on everything
    (["--batch-size", "-8"], "--batch-size: must lie in [1, 1048576], got -8"),
    (["--workers", "-1"], "--workers: must lie in [0, 512], got -1"),
    (["--img-size", "4"], "--img-size: must lie in [8, 4096], got 4"),
    (["--checkpoint", "nope.pt"], "--checkpoint nope.pt: no such file"),
    (["--pretrained"], "timm has no pretrained weights for cifar10_resnet20"),
    (["train.epoch=2"], "unknown config key train.epoch (did you mean train.epochs?)"),
    (["optim.weight_decay=-1"], "config key optim.weight_decay: must lie in [0, 10], got -1.0"),
])
def test_train_teacher_bad_flags(tmp_path, extra, message):
    out = tmp_path / "t"
    user_error(run_program("train_teacher", teacher_args(out, *extra)), message)
    assert not out.exists()


def test_train_teacher_unknown_name_and_tag(tmp_path):
    out = tmp_path / "t"
    args = teacher_args(out)
    for name, message in (("cifar10_resnet2O", "unknown model 'cifar10_resnet2O' (did you mean cifar10_resnet20"),
                          ("resnet18.a1_in1kk", "resnet18 has no pretrained tag 'a1_in1kk' (did you mean a1_in1k")):
        args[1] = name
        user_error(run_program("train_teacher", args), message)
    assert not out.exists()


def test_train_teacher_out_is_a_file(tmp_path):
    out = tmp_path / "t"
    out.write_text("mine")
    user_error(run_program("train_teacher", teacher_args(out)),
               f"output.dir {out} is a file, not a directory")
    assert out.read_text() == "mine"


def test_train_teacher_out_with_a_mistyped_run_record(tmp_path):
    """Run folders are typed on read: a run.json whose config is not a mapping was an AttributeError."""
    import json

    out = tmp_path / "t"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"format": "tinyvit-distill run", "config": [1, 2]}))
    user_error(run_program("train_teacher", teacher_args(out)),
               f"{out / 'run.json'} is not a run record of this trainer")
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


# ------------------------------------------------------------------ weights files that do not fit


@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory):
    import timm
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("weights")
    (d / "empty.pt").write_bytes(b"")
    torch.manual_seed(0)
    save_file(timm.create_model("cifar10_resnet20").state_dict(), d / "r20.safetensors")
    data = (d / "r20.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    torch.save({"fc.weight": torch.zeros(3, 3)}, d / "other.pt")
    torch.save([1, 2, 3], d / "list.pt")
    return d


@pytest.mark.parametrize("file, message", [
    ("empty.pt", "not a torch checkpoint of plain tensors"),
    ("truncated.safetensors", "not a readable safetensors file"),
    ("other.pt", "does not match CifarResNet"),
    ("list.pt", "no state_dict of tensors found"),
])
def test_train_teacher_init_weights_that_do_not_fit(bad_weights, tmp_path, file, message):
    out = tmp_path / "t"
    r = run_program("train_teacher", teacher_args(out, "--checkpoint", bad_weights / file))
    user_error(r, str(bad_weights / file), message)
    assert not out.exists()


# ------------------------------------------------------------------ other programs' numbers and devices


@pytest.mark.parametrize("extra, message", [
    (["--workers", "-1"], "--workers: must lie in [0, 512], got -1"),  # was DataLoader's ValueError traceback
    (["--mix-prob", "2"], "--mix-prob: must lie in [0, 1], got 2.0"),
    (["--mixup", "-0.5"], "--mixup: must lie in [0, 100], got -0.5"),
    (["--seed", "-3"], "--seed: must lie in [0, 9223372036854775807], got -3"),
    (["--device", "gpu"], "--device 'gpu': expected auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:7"], "--device cuda:7:"),
])
def test_save_logits_bad_flags(base, tmp_path, extra, message):
    if extra == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    out = tmp_path / "s"
    user_error(run_program("save_logits", with_out(base, out, *extra)), message)
    assert not out.exists()


@pytest.mark.parametrize("program, extra, message", [
    ("verify_logits", ["--min-agreement", "150"], "--min-agreement: must lie in [0, 100], got 150.0"),
    ("verify_logits", ["--check", "-1"], "--check: must lie in [0, 2147483647], got -1"),
    ("evaluate", ["--workers", "-2", "--dataset", "digits", "--teacher", "cifar10_resnet20", "--pretrained"],
     "--workers: must lie in [0, 512], got -2"),
    ("evaluate", ["--device", "tpu", "--dataset", "digits", "--teacher", "cifar10_resnet20", "--checkpoint",
                  "x.pt"], "--device 'tpu': expected auto, cpu, cuda or cuda:N"),
])
def test_other_programs_bad_flags(store, tmp_path, program, extra, message):
    argv = [store, *extra] if program == "verify_logits" else [*extra, "--out", tmp_path / "eval"]
    user_error(run_program(program, argv), message)
    assert not (tmp_path / "eval").exists()
