"""Bad input catalogue: every program refuses bad input with one line that names the input
and what to do, a non-zero exit (2 for user errors), and no partial or overwritten output.

Most cases call a tool's `main(argv)` in this process, wrapped in `distill.cli.run_main` as
the script's `__main__` does, so they cost milliseconds; a few run the real programs in a
subprocess to prove the exit code (one per tool, and the trainer cases that fail only after
DeepSpeed starts). The catalogue, with what each case gets, is in docs/reliability.md.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, run_tool, save_logits_args, tool, write_cifar

from distill.cli import run_main

TINY_STUDENT = {"embed_dim": 32, "depth": 1, "num_heads": 2}


# ------------------------------------------------------------------------------ helpers

_TOOLS: dict[str, object] = {}


def train_student_module():
    if "train_student" not in _TOOLS:
        spec = importlib.util.spec_from_file_location("tvd_train_student", REPO / "distill" / "train_student.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _TOOLS["train_student"] = module
    return _TOOLS["train_student"]


@dataclass
class Result:
    code: int | None
    out: str
    err: str


def call(main, argv, capsys) -> Result:
    """main(argv) as its script runs it; the exit code and what it printed."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_main(lambda: main([str(a) for a in argv]))
    captured = capsys.readouterr()
    return Result(exc.value.code, captured.out, captured.err)


def save_logits(argv, capsys) -> Result:
    return call(tool("save_logits").main, argv, capsys)


def user_error(result, *needles: str, code: int = 2) -> str:
    """The one `error: ...` line (stderr's last), no traceback, exit `code`; returns the line."""
    err = result.err if hasattr(result, "err") else result.stderr
    got = result.code if hasattr(result, "code") else result.returncode
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert got == code, f"exit {got}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(errors) == 1 and lines[-1] == errors[0], f"not one error line at the end:\n{err}"
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` (hidden ones too), by relative name, with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("TVD_DEBUG", raising=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """In-process teacher runs on one thread, like the subprocesses (conftest.one_thread)."""


@pytest.fixture(scope="module")
def base(cifar_root, teacher_ckpt):
    """save_logits arguments without --out: 40 samples, batches of 16, no workers."""
    return save_logits_args(cifar_root, teacher_ckpt, "OUT", "--limit", "40", "--batch-size", "16")


def with_out(base, out, *extra):
    args = list(base)
    args[args.index("--out") + 1] = out
    return args + [str(e) for e in extra]


def replace(args, flag, value):
    """args with every `flag X` set to `flag value`."""
    return [value if i and args[i - 1] == flag else a for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def store(base, tmp_path_factory):
    """A good 40-sample store (one shard)."""
    out = tmp_path_factory.mktemp("good") / "store"
    tool("save_logits").main([str(a) for a in with_out(base, out)])
    return out


@pytest.fixture(scope="module")
def incomplete_store(store, tmp_path_factory):
    """The good store with its manifest marked unsealed, as a killed run leaves it."""
    out = tmp_path_factory.mktemp("incomplete") / "store"
    shutil.copytree(store, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def ckpts(teacher_ckpt, tmp_path_factory):
    """Checkpoints that do not fit: other class count, other architecture, NaN/inf weights,
    random bytes."""
    import timm

    import distill.models  # noqa: F401

    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    torch.save(timm.create_model("cifar100_resnet56").state_dict(), d / "r56_c100.pt")
    torch.save(timm.create_model("cifar10_resnet56").state_dict(), d / "r56_c10.pt")
    for bad in ("nan", "inf"):
        state = torch.load(teacher_ckpt, weights_only=True)
        state["linear.bias"][:] = float(bad)
        torch.save(state, d / f"r20_{bad}.pt")
    (d / "random.pt").write_bytes(os.urandom(4096))
    return d


@pytest.fixture(scope="module")
def student_c100(tmp_path_factory):
    """A student export (final/: config.yaml + model.pt) for 100 classes."""
    from distill.models import create_student

    final = tmp_path_factory.mktemp("student") / "run" / "final"
    final.mkdir(parents=True)
    model = create_student("cifar_vit", 100, 32, **TINY_STUDENT)
    torch.save(model.state_dict(), final / "model.pt")
    info = {"name": "cifar_vit", "num_classes": 100, "img_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
            "kwargs": TINY_STUDENT}
    (final / "config.yaml").write_text(yaml.safe_dump({"student": info}))
    return final


# ============================================================ save_logits: teacher and checkpoint


def test_unknown_teacher_name(base, tmp_path, capsys):
    out = tmp_path / "s"
    r = save_logits(replace(with_out(base, out), "--teacher", "cifar10_resnet2O"), capsys)
    user_error(r, "unknown teacher 'cifar10_resnet2O'", "did you mean", "cifar10_resnet20")
    assert not out.exists()


def test_checkpoint_for_wrong_number_of_classes(base, ckpts, tmp_path, capsys):
    out = tmp_path / "s"
    args = replace(replace(with_out(base, out), "--teacher", "cifar100_resnet56"), "--checkpoint",
                   ckpts / "r56_c100.pt")
    r = save_logits(args, capsys)
    user_error(r, "r56_c100.pt", "fc.weight", "(100, 64)", "(10, 64)", "use a checkpoint for 10 classes")
    assert not out.exists()


def test_checkpoint_for_another_architecture(base, ckpts, tmp_path, capsys):
    out = tmp_path / "s"
    r = save_logits(replace(with_out(base, out), "--checkpoint", ckpts / "r56_c10.pt"), capsys)
    line = user_error(r, "r56_c10.pt", "unexpected keys")
    assert not out.exists()
    assert "--teacher" in line and "architecture" in line


def test_checkpoint_file_missing(base, tmp_path, capsys):
    out = tmp_path / "s"
    r = save_logits(replace(with_out(base, out), "--checkpoint", tmp_path / "nope.pt"), capsys)
    user_error(r, f"--checkpoint {tmp_path / 'nope.pt'}", "no such file", "pass the path")
    assert not out.exists()


def test_checkpoint_not_a_torch_file(base, ckpts, tmp_path, capsys):
    out = tmp_path / "s"
    r = save_logits(replace(with_out(base, out), "--checkpoint", ckpts / "random.pt"), capsys)
    user_error(r, "random.pt", "not a torch checkpoint", "re-save just the state_dict")
    assert not out.exists()


class _Payload:
    """Pickles as a call to os.system: what a hostile checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_checkpoint_is_refused_unexecuted(base, tmp_path, capsys):
    marker, ckpt, out = tmp_path / "pwned", tmp_path / "evil.pt", tmp_path / "s"
    torch.save({"state_dict": {"linear.bias": _Payload(marker)}}, ckpt)
    r = save_logits(replace(with_out(base, out), "--checkpoint", ckpt), capsys)
    user_error(r, "evil.pt", "refusing to unpickle untrusted data")
    assert not marker.exists() and not out.exists()
    live = tmp_path / "live"  # the payload is real: a plain unpickle would have run it
    torch.save({"x": _Payload(live)}, tmp_path / "live.pt")
    torch.load(tmp_path / "live.pt", weights_only=False)
    assert live.exists()


def test_teacher_without_weights(base, tmp_path, capsys):
    out = tmp_path / "s"
    args = with_out(base, out)
    i = args.index("--checkpoint")
    r = save_logits(args[:i] + args[i + 2:], capsys)
    user_error(r, "--teacher cifar10_resnet20 has no weights", "pass --checkpoint FILE or --pretrained")
    assert not out.exists()


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_or_inf_teacher_outputs_write_nothing(base, ckpts, tmp_path, capsys, bad):
    out = tmp_path / "s"
    r = save_logits(replace(with_out(base, out), "--checkpoint", ckpts / f"r20_{bad}.pt"), capsys)
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


def test_dataset_root_missing(base, tmp_path, capsys):
    out = tmp_path / "s"
    r = save_logits(replace(with_out(base, out), "--data-root", tmp_path / "nodata"), capsys)
    user_error(r, f"{tmp_path / 'nodata' / 'cifar-10-batches-py'}", "files not found", "write them there")
    assert not out.exists()


def test_dataset_root_empty(base, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "s"
    r = save_logits(replace(with_out(base, out), "--data-root", tmp_path / "empty"), capsys)
    user_error(r, f"{tmp_path / 'empty' / 'cifar-10-batches-py'}", "files not found", "write them there")
    assert not out.exists()


def test_recreated_dataset_without_skip_md5(base, tmp_path, capsys, monkeypatch):
    """Our copy fails torchvision's md5 check, and the download fallback fails. The download
    is pointed at a closed local port, so it fails the same way online (it must never fetch
    CIFAR-10 into the shared fixture)."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    out = tmp_path / "s"
    args = with_out(base, out)
    args.remove("--skip-md5")
    r = save_logits(args, capsys)
    user_error(r, "failed its md5 check", "cifar-10-batches-py", "pass --skip-md5", "data.skip_md5=true")
    assert not out.exists()


def test_dataset_file_corrupt(base, cifar_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(os.urandom(3000))
    out = tmp_path / "s"
    r = save_logits(replace(with_out(base, out), "--data-root", root), capsys)
    user_error(r, str(root / "cifar-10-batches-py"), "unreadable", "re-create or re-download")
    assert not out.exists()


# ============================================================ save_logits: numbers


@pytest.mark.parametrize("flag, value, message", [
    ("--epochs", 0, "--epochs must be positive, got 0"),
    ("--epochs", -1, "--epochs must be positive, got -1"),
    ("--batch-size", 0, "--batch-size must be positive, got 0"),
    ("--limit", 0, "--limit must be positive, got 0"),
    ("--topk", 11, "--topk 11 exceeds the teacher's 10 classes: pass --topk 10 or less"),
    ("--limit", 100000, "--limit 100000 exceeds the 200 samples of cifar10 train: lower it"),
])
def test_bad_numbers(base, tmp_path, capsys, flag, value, message):
    out = tmp_path / "s"
    args = with_out(base, out)
    args = replace(args, flag, value) if flag in args else args + [flag, str(value)]
    user_error(save_logits(args, capsys), message)
    assert not out.exists()


# ============================================================ save_logits: output directory


def test_out_not_writable(base, tmp_path, capsys):
    """A directory cannot be made under a regular file (chmod does not stop root)."""
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "store"
    r = save_logits(with_out(base, out), capsys)
    user_error(r, f"--out {out}", "cannot write there", "choose a writable directory")
    assert (tmp_path / "file").read_text() == "x"


def test_out_is_a_file(base, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("keep me")
    r = save_logits(with_out(base, out), capsys)
    user_error(r, f"--out {out}", "is a file", "choose a new directory")
    assert out.read_text() == "keep me"


def test_out_is_a_non_store_directory(base, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    r = save_logits(with_out(base, out), capsys)
    user_error(r, f"--out {out}", "is not a logit store", "choose a new directory")
    assert snapshot(out) == before


@pytest.mark.parametrize("flag, value, field", [
    ("--topk", "5", "k: 10 != 5"),
    ("--seed", "3", "seed: 0 != 3"),
    ("--aug", "crop", "augmentation.recipe: 'cifar' != 'crop'"),
    ("--values", "fp16", "values: 'log8' != 'fp16'"),
])  # a larger --epochs grows the store, a smaller one is refused: tests/test_grow_store.py
def test_rerun_with_other_settings_is_refused(base, store, capsys, flag, value, field):
    before = snapshot(store)
    args = with_out(base, store)
    args = replace(args, flag, value) if flag in args else args + [flag, value]
    r = save_logits(args, capsys)
    user_error(r, f"--out {store} holds a store made with other settings", field,
               "use a new --out, or the original settings to resume")
    assert snapshot(store) == before


def test_rerun_with_another_teacher_checkpoint_is_refused(base, store, ckpts, tmp_path, capsys):
    import timm

    ckpt = tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save(timm.create_model("cifar10_resnet20").state_dict(), ckpt)
    before = snapshot(store)
    r = save_logits(replace(with_out(base, store), "--checkpoint", ckpt), capsys)
    user_error(r, "teacher.checkpoint_sha256", "use a new --out")
    assert snapshot(store) == before


# ============================================================ save_logits: out of disk space


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs, filled up to `leave` free bytes by the test (root only)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()}): needs root / CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)])


def fill(mnt: Path, leave: int) -> None:
    st = os.statvfs(mnt)
    (mnt / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))


def test_disk_full_during_a_shard_write(base, tiny_disk, capsys):
    fill(tiny_disk, 4096)  # room for the manifest (1 KB), not for the 10 KB shard
    out = tiny_disk / "store"
    r = save_logits(with_out(base, out), capsys)
    user_error(r, f"--out {out}", "e0000-000000000.tar", "No space left on device", "free space",
               "re-run the same command")
    assert sorted(os.listdir(tiny_disk)) == ["filler"]  # no shard, no temp file, no half-made store


def test_disk_full_before_the_manifest(base, tiny_disk, capsys):
    fill(tiny_disk, 0)
    out = tiny_disk / "store"
    r = save_logits(with_out(base, out), capsys)
    user_error(r, f"--out {out}", "cannot write there (No space left on device)", "choose a writable directory")
    assert sorted(os.listdir(tiny_disk)) == ["filler"]


# ============================================================ verify_logits / inspect_logits


def verify(argv, capsys) -> Result:
    return call(tool("verify_logits").main, argv, capsys)


def test_verify_missing_dir_subprocess(tmp_path):
    proc = run_tool("tools/verify_logits.py", tmp_path / "nope", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stdout.splitlines() == [f"FAIL: {tmp_path / 'nope' / 'manifest.json'} not found: is "
                                        f"{tmp_path / 'nope'} a logit store? (create one with tools/save_logits.py)"]
    assert not (tmp_path / "nope").exists()


def test_verify_non_store_dir(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("x")
    r = verify([tmp_path], capsys)
    assert r.code == 1
    assert r.out.splitlines() == [f"FAIL: {tmp_path / 'manifest.json'} not found: is {tmp_path} a logit store? "
                                  "(create one with tools/save_logits.py)"]


def test_verify_incomplete_store(incomplete_store, capsys):
    before = snapshot(incomplete_store)
    r = verify([incomplete_store], capsys)
    assert r.code == 1
    assert r.out.splitlines() == [f"FAIL: {incomplete_store / 'manifest.json'}: store is incomplete; "
                                  "re-run its save_logits command"]
    assert snapshot(incomplete_store) == before


def test_verify_invalid_manifest(store, tmp_path, capsys):
    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    (bad / "manifest.json").write_text("{not json")
    r = verify([bad], capsys)
    assert r.code == 1 and len(r.out.splitlines()) == 1
    assert "manifest.json is not a valid store manifest: re-create the store" in r.out


def test_inspect_missing_dir_subprocess(tmp_path):
    proc = run_tool("tools/inspect_logits.py", tmp_path / "nope", check=False)
    user_error(proc, f"{tmp_path / 'nope' / 'manifest.json'} not found",
               "create one with tools/save_logits.py")
    assert not (tmp_path / "nope").exists()


def test_inspect_incomplete_store(incomplete_store, capsys):
    r = call(tool("inspect_logits").main, [incomplete_store], capsys)
    assert r.code == 1
    assert r.out.splitlines()[-1] == (f"FAIL: {incomplete_store / 'manifest.json'}: store is incomplete; "
                                      "re-run its save_logits command")


# ============================================================ evaluate


@pytest.fixture(scope="module")
def eval_base(cifar_root):
    return ["--dataset", "cifar10", "--data-root", cifar_root, "--skip-md5", "--limit", "20",
            "--throughput-iters", "0"]


def evaluate(eval_base, out, extra, capsys) -> Result:
    return call(tool("evaluate").main, [*eval_base, "--out", out, *extra], capsys)


def test_evaluate_nothing_to_evaluate_subprocess(cifar_root, tmp_path):
    out = tmp_path / "eval"
    proc = run_tool("tools/evaluate.py", "--dataset", "cifar10", "--data-root", cifar_root, "--skip-md5",
                    "--out", out, check=False)
    user_error(proc, "nothing to evaluate", "pass --checkpoint, --teacher or --compare")
    assert not out.exists()


def test_evaluate_good_student_export_control(eval_base, student_c100, tmp_path):
    """Control: a 10-class export of the same shape evaluates, so the refusals below are about the input."""
    from distill.models import create_student

    final = tmp_path / "run" / "final"
    shutil.copytree(student_c100, final)
    torch.save(create_student("cifar_vit", 10, 32, **TINY_STUDENT).state_dict(), final / "model.pt")
    info = yaml.safe_load((final / "config.yaml").read_text())
    info["student"]["num_classes"] = 10
    (final / "config.yaml").write_text(yaml.safe_dump(info))
    tool("evaluate").main([str(a) for a in [*eval_base, "--out", tmp_path / "eval", "--checkpoint", final]])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["models"]["run"]["num_samples"] == 20


def test_evaluate_dir_that_is_not_a_student_export(eval_base, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--checkpoint", tmp_path / "run"], capsys)
    user_error(r, f"{tmp_path / 'run'}: not a student export", "--teacher NAME --checkpoint FILE")
    assert not out.exists()


def test_evaluate_teacher_file_without_teacher_flag(eval_base, teacher_ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--checkpoint", teacher_ckpt], capsys)
    user_error(r, f"{teacher_ckpt}: not a student export", "pass --teacher NAME --checkpoint FILE")
    assert not out.exists()


def test_evaluate_missing_student_export(eval_base, tmp_path, capsys):
    out, spec = tmp_path / "eval", tmp_path / "runs" / "kd" / "final"
    r = evaluate(eval_base, out, ["--checkpoint", spec], capsys)
    user_error(r, f"{spec}: no such path", "pass a student export")
    assert not out.exists()


def test_evaluate_export_without_student_section(eval_base, student_c100, tmp_path, capsys):
    folder = tmp_path / "final"
    shutil.copytree(student_c100, folder)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "cifar_vit"}}))
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--checkpoint", folder], capsys)
    user_error(r, f"{folder / 'config.yaml'}: no complete `student` section", "pass the final/ directory")
    assert not out.exists()


def test_evaluate_student_for_wrong_number_of_classes(eval_base, student_c100, tmp_path, capsys):
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--checkpoint", student_c100], capsys)
    user_error(r, f"{student_c100}: the student has 100 classes, --dataset has 10",
               "evaluate it on the dataset it was trained for")
    assert not out.exists()


def test_evaluate_teacher_for_wrong_number_of_classes(eval_base, ckpts, tmp_path, capsys):
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--teacher", "cifar100_resnet56", "--checkpoint", ckpts / "r56_c100.pt"], capsys)
    user_error(r, "r56_c100.pt", "trained for 100 classes, the dataset has 10", "use a checkpoint for 10 classes")
    assert not out.exists()


def test_evaluate_teacher_checkpoint_missing(eval_base, tmp_path, capsys):
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--compare", f"cifar10_resnet20={tmp_path / 'nope.pt'}"], capsys)
    user_error(r, f"checkpoint {tmp_path / 'nope.pt'} of teacher cifar10_resnet20 not found",
               "pass the teacher's weights file")
    assert not out.exists()


def test_evaluate_teacher_without_weights(eval_base, tmp_path, capsys):
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--teacher", "cifar10_resnet20"], capsys)
    user_error(r, "--teacher needs --checkpoint FILE or --pretrained")
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--limit", "-5")])
def test_evaluate_bad_numbers(eval_base, teacher_ckpt, tmp_path, capsys, flag, value):
    out = tmp_path / "eval"
    args = replace(eval_base, flag, value) if flag in eval_base else [*eval_base, flag, value]
    r = call(tool("evaluate").main, [*args, "--out", out, "--teacher", "cifar10_resnet20",
                                     "--checkpoint", teacher_ckpt], capsys)
    user_error(r, f"{flag} must be positive, got {value}")
    assert not out.exists()


def test_evaluate_out_not_writable(eval_base, teacher_ckpt, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "eval"
    r = evaluate(eval_base, out, ["--teacher", "cifar10_resnet20", "--checkpoint", teacher_ckpt], capsys)
    user_error(r, f"--out {out}: cannot create it", "choose a writable directory")


def test_evaluate_wandb_misconfigured(eval_base, teacher_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "banana")
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--teacher", "cifar10_resnet20", "--checkpoint", teacher_ckpt, "--wandb"], capsys)
    user_error(r, "wandb.mode ($WANDB_MODE)", "expected one of online, offline, disabled", "'banana'")
    assert not out.exists()  # refused before evaluating, not after writing the metrics


# ============================================================ train_student: config (in-process:
# these fail in load_config / check_runnable, before DeepSpeed starts)


def train_args(cifar_root, store, out, *extra):
    return ["--config", REPO / "configs/smoke_cifar10.yaml", f"data.root={cifar_root}", "data.skip_md5=true",
            f"logits.store={store}", f"output.dir={out}", "model.name=cifar_vit",
            "model.kwargs={embed_dim: 32, depth: 1, num_heads: 2}", "train.batch_size=8", "data.workers=0",
            "wandb.enabled=false", *extra]


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key train.epoch (did you mean train.epochs?)"),
    ("trian.epochs=3", "unknown config key trian (did you mean train?)"),
    ("train.epochs=three", "config key train.epochs: expected int, got 'three'"),
    ("optim.lr=fast", "config key optim.lr: expected float, got 'fast'"),
    ("loss.mode=foo", "config key loss.mode: expected one of kd, scratch, online, got 'foo'"),
    ("wandb.mode=banana", "config key wandb.mode: expected one of None, online, offline, disabled, got 'banana'"),
    ("train.epochs=0", "config key train.epochs: must be positive"),
    ("train.epochs=-1", "config key train.epochs: must be positive"),
    ("train.batch_size=0", "config key train.batch_size: must be positive"),
    ("logits.store=null", "config key logits.store is required for loss.mode kd (or use loss.mode scratch)"),
    ("data.root=null", "config key data.root is required for dataset cifar10"),
])
def test_train_config_errors(cifar_root, store, tmp_path, capsys, override, message):
    out = tmp_path / "run"
    r = call(train_student_module().main, train_args(cifar_root, store, out, override), capsys)
    user_error(r, message)
    assert not out.exists()


def test_train_config_file_with_unknown_key(cifar_root, store, tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("data:\n  dataset: cifar10\noptim:\n  learning_rate: 0.1\n")
    out = tmp_path / "run"
    args = train_args(cifar_root, store, out)
    args[1] = str(cfg)
    r = call(train_student_module().main, args, capsys)
    user_error(r, "unknown config key optim.learning_rate", "valid: lr, weight_decay")
    assert not out.exists()


def test_train_config_override_not_yaml(cifar_root, store, tmp_path, capsys):
    out = tmp_path / "run"
    r = call(train_student_module().main, train_args(cifar_root, store, out, "optim.betas=[0.9, 0.99"), capsys)
    user_error(r, "optim.betas")
    assert not out.exists()


# ============================================================ train_student: stores (in-process
# for the refusals a function makes; real processes for the ones after DeepSpeed starts)


def test_train_empty_store(tmp_path):
    """A directory with no manifest: what logits.store=DIR gets."""
    from teacher_logits.manifest import StoreError
    from teacher_logits.reader import LogitStore

    (tmp_path / "store").mkdir()
    with pytest.raises(StoreError) as e:
        LogitStore(tmp_path / "store")
    assert str(e.value) == (f"{tmp_path / 'store' / 'manifest.json'} not found: is {tmp_path / 'store'} a logit "
                            "store? (create one with tools/save_logits.py)")


def test_train_incomplete_store(incomplete_store):
    from teacher_logits.manifest import StoreError
    from teacher_logits.reader import LogitStore

    with pytest.raises(StoreError, match="is incomplete: re-run its save_logits command to finish it"):
        LogitStore(incomplete_store)


@pytest.mark.parametrize("case, field", [
    ("other data", "dataset.labels_sha256"),
    ("cifar100", "dataset.name: 'cifar10' != 'cifar100'"),
    ("stl10 recipe", "augmentation.resolution: 32 != 96"),
])
def test_train_store_for_other_data(store, cifar_root, tmp_path, case, field):
    from distill.config import load_config
    from distill.datasets import build_dataset
    from teacher_logits.manifest import StoreError
    from teacher_logits.reader import LogitStore

    root, dataset, overrides = tmp_path, "cifar10", []
    if case == "other data":  # same layout and size, other images and labels
        write_cifar(root, seed=1)
    elif case == "cifar100":
        dataset, overrides = "cifar100", ["data.dataset=cifar100"]
        write_cifar(root, num_classes=100)
    else:  # the store's own data, but a recipe of another resolution
        root, overrides = cifar_root, ["data.recipe=stl10"]
    cfg = load_config(REPO / "configs/smoke_cifar10.yaml", [f"data.root={root}", *overrides])
    train_set = build_dataset(dataset, root, train=True, skip_md5=True)
    with pytest.raises(StoreError) as e:
        train_student_module().check_store(LogitStore(store), cfg, train_set)
    message = str(e.value)
    assert f"logits.store {store} was made for other data than this config" in message and field in message
    assert "use a store made for this config" in message and "\n" not in message


def train(*args, env=None):
    return run_tool("distill/train_student.py", *args, check=False, timeout=240,
                    env={"DS_ACCELERATOR": "cpu", **(env or {})})


def test_train_store_for_another_recipe_subprocess(cifar_root, store, tmp_path):
    out = tmp_path / "run"
    before = snapshot(store)
    proc = train(*train_args(cifar_root, store, out, "data.recipe=crop"))
    user_error(proc, f"logits.store {store} was made for other data",
               "augmentation.recipe: 'cifar' != 'crop' [store != config]", "use a store made for this config")
    assert not out.exists() and snapshot(store) == before


def test_train_unknown_student_subprocess(cifar_root, store, tmp_path):
    out = tmp_path / "run"
    proc = train(*train_args(cifar_root, store, out, "model.name=tiny_vit_6m"))
    user_error(proc, "model.name", "'tiny_vit_6m'", "students: ", "tiny_vit_5m")  # the key, the bad name, the valid
    assert not out.exists()


@pytest.fixture(scope="module")
def wandb_banana(cifar_root, store, tmp_path_factory):
    out = tmp_path_factory.mktemp("wandb") / "run"
    proc = train(*train_args(cifar_root, store, out, "wandb.enabled=true", "train.max_steps=1"),
                 env={"WANDB_MODE": "banana"})
    return proc, out


def test_train_wandb_misconfigured_subprocess(wandb_banana):
    proc, _ = wandb_banana
    user_error(proc, "config key wandb.mode ($WANDB_MODE): expected one of online, offline, disabled, got 'banana'")


def test_train_wandb_misconfigured_leaves_no_output(wandb_banana):
    _, out = wandb_banana
    assert not out.exists(), sorted(p.name for p in out.iterdir())
