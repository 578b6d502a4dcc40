"""Bad input to tools/evaluate.py.

Part of the bad-input catalogue (docs/reliability.md): every program refuses bad input with one
line that names the input and what to do, a non-zero exit (2 for user errors), and no partial or
overwritten output. The shared helpers (run_program, user_error, snapshot) are in helpers.py, the
fixtures in conftest.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_STUDENT, replace, Result, run_program, run_tool, user_error


# in-process teacher runs on one thread, like the subprocesses; the errors users see
pytestmark = pytest.mark.usefixtures("one_thread", "no_tvd_debug")


# ============================================================ evaluate


@pytest.fixture(scope="module")
def eval_base(cifar_root):
    return ["--dataset", "cifar10", "--data-root", cifar_root, "--skip-md5", "--limit", "20",
            "--throughput-iters", "0"]


def evaluate(eval_base, out, extra) -> Result:
    return run_program("evaluate", [*eval_base, "--out", out, *extra])


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
    run_program("evaluate", [*eval_base, "--out", tmp_path / "eval", "--checkpoint", final], check=True)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["models"]["run"]["num_samples"] == 20


def test_evaluate_dir_that_is_not_a_student_export(eval_base, tmp_path):
    (tmp_path / "run").mkdir()
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--checkpoint", tmp_path / "run"])
    user_error(r, f"{tmp_path / 'run'}: not a student export", "--teacher NAME --checkpoint FILE")
    assert not out.exists()


def test_evaluate_teacher_file_without_teacher_flag(eval_base, teacher_ckpt, tmp_path):
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--checkpoint", teacher_ckpt])
    user_error(r, f"{teacher_ckpt}: not a student export", "pass --teacher NAME --checkpoint FILE")
    assert not out.exists()


def test_evaluate_missing_student_export(eval_base, tmp_path):
    out, spec = tmp_path / "eval", tmp_path / "runs" / "kd" / "final"
    r = evaluate(eval_base, out, ["--checkpoint", spec])
    user_error(r, f"{spec}: no such path", "pass a student export")
    assert not out.exists()


def test_evaluate_export_without_student_section(eval_base, student_c100, tmp_path):
    folder = tmp_path / "final"
    shutil.copytree(student_c100, folder)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "cifar_vit"}}))
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--checkpoint", folder])
    user_error(r, f"{folder / 'config.yaml'}: no complete `student` section", "pass the final/ directory")
    assert not out.exists()


def test_evaluate_student_for_wrong_number_of_classes(eval_base, student_c100, tmp_path):
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--checkpoint", student_c100])
    user_error(r, f"{student_c100}: the student has 100 classes, --dataset has 10",
               "evaluate it on the dataset it was trained for")
    assert not out.exists()


def test_evaluate_teacher_for_wrong_number_of_classes(eval_base, ckpts, tmp_path):
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--teacher", "cifar100_resnet56", "--checkpoint", ckpts / "r56_c100.pt"])
    user_error(r, "r56_c100.pt", "trained for 100 classes, the dataset has 10", "use a checkpoint for 10 classes")
    assert not out.exists()


def test_evaluate_teacher_checkpoint_missing(eval_base, tmp_path):
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--compare", f"cifar10_resnet20={tmp_path / 'nope.pt'}"])
    user_error(r, f"teacher cifar10_resnet20's checkpoint {tmp_path / 'nope.pt'}: no such file",
               "pass the teacher's weights file")
    assert not out.exists()


def test_evaluate_teacher_without_weights(eval_base, tmp_path):
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--teacher", "cifar10_resnet20"])
    user_error(r, "--teacher needs --checkpoint FILE or --pretrained")
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--limit", "-5")])
def test_evaluate_bad_numbers(eval_base, teacher_ckpt, tmp_path, flag, value):
    out = tmp_path / "eval"
    args = replace(eval_base, flag, value) if flag in eval_base else [*eval_base, flag, value]
    r = run_program("evaluate", [*args, "--out", out, "--teacher", "cifar10_resnet20",
                                 "--checkpoint", teacher_ckpt])
    user_error(r, f"{flag} must be positive, got {value}")
    assert not out.exists()


def test_evaluate_out_not_writable(eval_base, teacher_ckpt, tmp_path):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "eval"
    r = evaluate(eval_base, out, ["--teacher", "cifar10_resnet20", "--checkpoint", teacher_ckpt])
    user_error(r, f"--out {out}: cannot create it", "choose a writable directory")


def test_evaluate_wandb_misconfigured(eval_base, teacher_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "banana")
    out = tmp_path / "eval"
    r = evaluate(eval_base, out, ["--teacher", "cifar10_resnet20", "--checkpoint", teacher_ckpt, "--wandb"])
    user_error(r, "wandb.mode ($WANDB_MODE)", "expected one of online, offline, disabled", "'banana'")
    assert not out.exists()  # refused before evaluating, not after writing the metrics




# ============================================================ evaluate: no result dropped


def test_compare_keeps_every_model_of_the_same_name(eval_base, teacher_ckpt, tmp_path):
    """The issue's example: two cifar10_resnet20 checkpoints (before and after fine-tuning) in one
    --compare. The table showed both, but metrics.json and the images kept only the last."""
    out, after = tmp_path / "eval", tmp_path / "after.pt"
    shutil.copy(teacher_ckpt, after)
    r = run_program("evaluate", [*eval_base, "--out", out, "--compare", f"cifar10_resnet20={teacher_ckpt}",
                                 f"cifar10_resnet20={after}", f"tuned=cifar10_resnet20={after}"])
    assert r[0] == 0, r[2]
    models = json.loads((out / "metrics.json").read_text())["models"]
    assert list(models) == ["cifar10_resnet20", "cifar10_resnet20-2", "tuned"]
    pngs = {m["confusion_png"] for m in models.values()}
    assert len(pngs) == 3 and all(Path(p).is_file() for p in pngs)
    table = (out / "metrics.md").read_text()
    assert all(f"| {name} |" in table for name in models)


def test_unique_names_never_collide_with_a_given_name():
    from distill.programs.evaluate import unique_names

    assert unique_names(["a", "a", "a-2", "a"]) == ["a", "a-3", "a-2", "a-4"]


@pytest.mark.parametrize("edit, message", [
    ({"num_classes": "ten"}, "student.num_classes: expected int, got 'ten'"),
    ({"mean": "red"}, "student.mean: expected a list, got 'red'"),
    ({"img_size": -3}, "student.img_size must be positive, got -3"),
], ids=["classes a word", "mean a word", "negative size"])
def test_evaluate_export_with_a_mistyped_student_section(eval_base, student_c100, tmp_path, edit, message):
    """Exports are typed on read: an edited config.yaml was a TypeError inside the model."""
    final = tmp_path / "run" / "final"
    shutil.copytree(student_c100, final)
    info = yaml.safe_load((final / "config.yaml").read_text())
    info["student"].update(edit)
    (final / "config.yaml").write_text(yaml.safe_dump(info))
    user_error(evaluate(eval_base, tmp_path / "eval", ["--checkpoint", final]),
               f"{final / 'config.yaml'}: {message}")
    assert not (tmp_path / "eval").exists()
