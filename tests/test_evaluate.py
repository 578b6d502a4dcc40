"""The eval stage on real exports: a teacher fine-tuned by train_teacher.py, a student
from train_student.py and a teacher checkpoint, in one table, with confusion PNGs."""
import json

import pytest
from PIL import Image

from helpers import run_tool
from distill.report import confusion_figure_size


@pytest.fixture(scope="module")
def exports(tmp_path_factory, teacher_ckpt):
    root = tmp_path_factory.mktemp("exports")
    run_tool("tools/train_teacher.py", "--teacher", "cifar10_resnet20", "--dataset", "digits", "--epochs", "1",
             "--workers", "0", "--batch-size", "64", "--out", root / "teacher", "train.checkpoint_every=0")
    run_tool("distill/train_student.py", "--config", "configs/smoke_digits.yaml", "loss.mode=scratch",
             "train.epochs=1", "wandb.enabled=false", f"output.dir={root / 'student'}")
    return root


def test_evaluate_compares_student_teacher_export_and_checkpoint(exports, teacher_ckpt, tmp_path):
    out = tmp_path / "eval"
    proc = run_tool("tools/evaluate.py", "--dataset", "digits", "--out", out, "--throughput-iters", "1",
                    "--compare", exports / "student/final", exports / "teacher/final",
                    f"cifar10_resnet20={teacher_ckpt}")
    results = json.loads((out / "metrics.json").read_text())["models"]
    assert set(results) == {"student", "teacher", "cifar10_resnet20"}
    # the trainer's own evaluation of its export (another code path) agrees with evaluate.py
    for run in ("student", "teacher"):
        trained = json.loads((exports / run / "metrics.json").read_text())["eval"]
        assert results[run]["top1"] == pytest.approx(trained["top1"], abs=1e-6)
        assert results[run]["num_samples"] == trained["num_samples"] == 450
    for name, metrics in results.items():
        assert metrics["params"] > 0 and metrics["flops"] > 0 and metrics["images_per_s"] > 0
        assert len(metrics["per_class"]) == 10 and sum(map(sum, metrics["confusion"])) == 450
        with Image.open(metrics["confusion_png"]) as png:
            side = round(confusion_figure_size(10) * 100)
            assert png.size == (side, side)
        assert f"| {name} |" in proc.stdout
    assert (out / "metrics.md").read_text().count("\n| ") == 4  # header + 3 models
    assert f"confusion PNGs in {out.resolve()}" in proc.stdout  # says where it wrote them


@pytest.mark.parametrize("checkpoint", ["teacher/final/model.pt", "teacher"])  # the file, or the run's folder
def test_teacher_export_feeds_save_logits(exports, tmp_path, checkpoint):
    """A fine-tuned teacher's export is a checkpoint save_logits accepts, named by its weights
    file or by a folder; either way the store fingerprints the same file."""
    from teacher_logits.files import sha256_file

    store = tmp_path / "store"
    run_tool("tools/save_logits.py", "--teacher", "cifar10_resnet20", "--checkpoint", exports / checkpoint,
             "--dataset", "digits", "--aug", "crop", "--limit", "64", "--workers", "0", "--out", store)
    assert run_tool("tools/verify_logits.py", store).returncode == 0
    teacher = json.loads((store / "manifest.json").read_text())["settings"]["teacher"]
    assert teacher["checkpoint_sha256"] == sha256_file(exports / "teacher/final/model.pt")


def test_evaluate_takes_run_folders_for_exports_and_teacher_checkpoints(exports, tmp_path):
    """Run folders name their exports; more --workers than cores are capped to the cores, as the
    trainer caps data.workers, and said."""
    from distill.distributed import usable_cores

    out = tmp_path / "eval"
    proc = run_tool("tools/evaluate.py", "--dataset", "digits", "--out", out, "--throughput-iters", "0", "--limit",
                    "32", "--teacher", "cifar10_resnet20", "--checkpoint", exports / "teacher/final", "--compare",
                    exports / "student", "--workers", str(usable_cores() + 6))
    results = json.loads((out / "metrics.json").read_text())["models"]
    assert set(results) == {"cifar10_resnet20", "student"}
    assert f"--workers: {usable_cores() + 6} DataLoader workers capped to {usable_cores()}" in proc.stdout


def test_wandb_gets_the_table_per_class_scores_and_confusion_image(exports, tmp_path):
    """evaluate.py --wandb (offline here): one history row with the comparison table, each
    model's per-class table and confusion image, besides the summary scalars."""
    from distill.tracking import read_wandb_records

    out = tmp_path / "eval"
    run_tool("tools/evaluate.py", "--dataset", "digits", "--out", out, "--throughput-iters", "0", "--wandb",
             "--compare", exports / "student/final", env={"WANDB_MODE": "offline"})
    (log,) = out.glob("wandb/offline-run-*/run-*.wandb")
    rows = [r.history for r in read_wandb_records(log) if r.HasField("history")]
    keys = {item.key or "/".join(item.nested_key) for row in rows for item in row.item}
    media = {key.removesuffix("/_type") for key in keys if key.endswith("/_type")}  # a table or image: its type
    assert {"eval/table", "eval/student/per_class", "eval/student/confusion"} <= media, keys
