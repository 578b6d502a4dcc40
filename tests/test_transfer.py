"""Bring your own data, end to end, and the transfer step.

The acceptance run of issue 10: an image folder (JPEG and PNG, several sizes) ->
save_logits --dataset folder --aug imagenet at 32 px -> verify_logits --check ->
train_student in kd mode for a few steps -> evaluate --dataset folder -> a transfer run
on digits from the exported student, its 3-class head re-made for 10 classes.
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import TINY_STUDENT, run_program, run_tool, tiny_student_args
from image_folder import CLASSES, write_image_folder, write_teacher

from distill.models import create_student, load_adapted

TINY = [*tiny_student_args(), "data.img_size=32", "data.workers=0", "wandb.enabled=false"]


def train(*args):
    return run_tool("distill/train_student.py", "--config", "configs/smoke_digits.yaml", *TINY, *args,
                    timeout=300, env={"DS_ACCELERATOR": "cpu"})


def test_folder_to_transfer_end_to_end(tmp_path):
    folder = write_image_folder(tmp_path / "pets")
    teacher = write_teacher(tmp_path / "r20_3cls.pt", len(CLASSES))
    store = tmp_path / "store"
    code, out, err = run_program("save_logits", [
        "--teacher", "cifar10_resnet20", "--checkpoint", teacher, "--dataset", "folder", "--data-root", folder,
        "--aug", "imagenet", "--img-size", "32", "--mixup", "0.8", "--cutmix", "1.0", "--topk", "3",
        "--epochs", "2", "--out", store, "--workers", "0", "--batch-size", "16"])
    assert code == 0, err
    assert "labelled 48 views" in out

    code, out, err = run_program("verify_logits", [store, "--teacher", "cifar10_resnet20", "--checkpoint", teacher,
                                                   "--data-root", folder, "--check", "16", "--device", "cpu"])
    assert code == 0, out + err
    assert "top-1 agreement 100.00%" in out  # the teacher, re-run on replayed 32 px views, agrees
    assert "re-labelling views" in err  # with a progress bar

    run = tmp_path / "kd"
    train("data.dataset=folder", f"data.root={folder}", "data.recipe=imagenet", f"logits.store={store}",
          "loss.mode=kd", f"output.dir={run}", "train.batch_size=8", "train.epochs=1")
    exported = yaml.safe_load((run / "final" / "config.yaml").read_text())["student"]
    assert exported["num_classes"] == len(CLASSES) and exported["img_size"] == 32
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3  # 24 images / batch 8

    code, out, err = run_program("evaluate", ["--checkpoint", run / "final", "--dataset", "folder", "--data-root",
                                              folder, "--out", tmp_path / "eval", "--throughput-iters", "0"])
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["models"]["kd"]
    assert metrics["num_samples"] == 3 * len(CLASSES)
    assert [c["name"] for c in metrics["per_class"]] == sorted(CLASSES)

    fine = tmp_path / "digits"
    proc = train("loss.mode=scratch", f"model.init={run / 'final'}", f"output.dir={fine}", "train.max_steps=2")
    assert "classifier head re-made for 10 classes (the source's has 3" in proc.stdout
    assert yaml.safe_load((fine / "final" / "config.yaml").read_text())["student"]["num_classes"] == 10


def tiny_student(num_classes, seed, **kwargs):
    torch.manual_seed(seed)
    return create_student("cifar_vit", num_classes, 32, **TINY_STUDENT, **kwargs)


def test_init_student_keeps_body_and_remakes_only_the_head(tmp_path):
    source = tiny_student(3, seed=0)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    target = tiny_student(10, seed=1)
    fresh_head = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("head.")}
    message = load_adapted(target, str(tmp_path))  # an export directory, or its model.pt
    assert message.startswith("classifier head re-made for 10 classes (the source's has 3")
    for key, value in target.state_dict().items():
        expected = fresh_head[key] if key.startswith("head.") else source.state_dict()[key]
        assert torch.equal(value, expected), key
    same = tiny_student(3, seed=2)
    assert load_adapted(same, str(tmp_path / "model.pt")) is None
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in same.state_dict().items())


def test_init_student_refuses_another_body(tmp_path):
    torch.save(tiny_student(3, seed=0).state_dict(), tmp_path / "model.pt")
    wider = create_student("cifar_vit", 10, 32, embed_dim=64, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="keep the source's model.name and model.kwargs"):
        load_adapted(wider, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"an export directory \(a run's final/\)"):
        load_adapted(wider, str(tmp_path / "nowhere"))
