"""configs/imagenet1k_tinyvit{5m,11m,21m}.yaml are GPU configs; here each one builds its
student and data pipeline (an `imagenet`-recipe store of an image folder, Mixup/CutMix)
and trains two steps, at 64 px on a tiny generated folder, so the configs cannot rot."""
from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO, run_tool
from image_folder import CLASSES, call_quietly, write_image_folder, write_teacher

from distill.config import load_config


@pytest.fixture(scope="module")
def folder_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("in1k")
    folder = write_image_folder(root / "images")
    teacher = write_teacher(root / "teacher.pt", len(CLASSES))
    code, _, err = call_quietly("save_logits", [
        "--teacher", "cifar10_resnet20", "--checkpoint", teacher, "--dataset", "folder", "--data-root", folder,
        "--aug", "imagenet", "--img-size", "64", "--mixup", "0.8", "--cutmix", "1.0", "--topk", "3",
        "--out", root / "store", "--workers", "0", "--batch-size", "24"])
    assert code == 0, err
    return folder, root / "store"


@pytest.mark.parametrize("size", ["5m", "11m", "21m"])
def test_imagenet_config_trains_two_steps_at_64px(size, folder_store, tmp_path):
    config = REPO / "configs" / f"imagenet1k_tinyvit{size}.yaml"
    cfg = load_config(config)
    # TinyViT's recipe, as the file says
    assert (cfg.data.dataset, cfg.data.recipe, cfg.data.img_size) == ("folder", "imagenet", 224)
    assert cfg.model.name == f"tiny_vit_{size}" and cfg.train.epochs == 300 and cfg.optim.warmup_epochs == 20
    assert cfg.optim.weight_decay == 0.05 and cfg.deepspeed.grad_clip == 5.0
    folder, store = folder_store
    out = tmp_path / "run"
    run_tool("distill/train_student.py", "--config", config, f"data.root={folder}", f"logits.store={store}",
             "data.img_size=64", "data.workers=0", "train.batch_size=4", "train.max_steps=2", f"output.dir={out}",
             "deepspeed.bf16=false", "wandb.enabled=false", timeout=300, env={"DS_ACCELERATOR": "cpu"})
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    student = yaml.safe_load((out / "final" / "config.yaml").read_text())["student"]
    assert (student["name"], student["img_size"], student["num_classes"]) == (f"tiny_vit_{size}", 64, 3)
