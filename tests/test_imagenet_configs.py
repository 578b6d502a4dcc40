"""configs/imagenet1k_tinyvit{5m,11m,21m}.yaml are GPU configs; here each one builds its
student (the trainer's build_model) and data pipeline (an `imagenet`-recipe store of an image
folder with Mixup/CutMix, replayed by StoreViews, refused by check_store if it did not fit)
and takes two AdamW steps on the config's loss, at 64 px on a tiny generated folder, so the
configs cannot rot. In-process and without DeepSpeed: the engine itself is exercised with a
folder store by tests/test_transfer.py, and a 21M-parameter checkpoint per config would cost
a minute each here."""
from __future__ import annotations

import pytest
import torch
from helpers import REPO, run_program
from image_folder import CLASSES, write_image_folder, write_teacher
from timm.optim import param_groups_weight_decay

from distill.config import load_config
from distill.datasets import build_dataset, labels_of
from distill.loss import DistillationLoss
from distill.replay import StoreViews, store_view_maker
from distill.student_data import check_store
from distill.student_stage import build_model
from teacher_logits.reader import LogitStore


@pytest.fixture(scope="module")
def folder_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("in1k")
    folder = write_image_folder(root / "images")
    teacher = write_teacher(root / "teacher.pt", len(CLASSES))
    code, _, err = run_program("save_logits", [
        "--teacher", "cifar10_resnet20", "--checkpoint", teacher, "--dataset", "folder", "--data-root", folder,
        "--aug", "imagenet", "--img-size", "64", "--mixup", "0.8", "--cutmix", "1.0", "--topk", "3",
        "--out", root / "store", "--workers", "0", "--batch-size", "24"])
    assert code == 0, err
    return folder, root / "store"


@pytest.mark.parametrize("size", ["5m", "11m", "21m"])
def test_imagenet_config_trains_two_steps_at_64px(size, folder_store, one_thread):
    folder, store_path = folder_store
    config = REPO / "configs" / f"imagenet1k_tinyvit{size}.yaml"
    assert load_config(config).data.img_size == 224  # TinyViT's recipe, as the file says
    cfg = load_config(config, [f"data.root={folder}", f"logits.store={store_path}", "data.img_size=64",
                               "train.batch_size=4"])
    assert (cfg.data.dataset, cfg.data.recipe, cfg.model.name) == ("folder", "imagenet", f"tiny_vit_{size}")
    assert cfg.train.epochs == 300 and cfg.optim.warmup_epochs == 20 and cfg.optim.weight_decay == 0.05
    train_set = build_dataset("folder", cfg.data.root, train=True)
    store = LogitStore(store_path)
    samples = check_store(store, cfg, train_set)
    maker = store_view_maker(train_set, store, samples)
    batches = StoreViews(store, maker, labels_of(train_set)[:samples], cfg.train.batch_size, shuffle_seed=0)

    torch.manual_seed(0)
    student, kind = build_model(cfg, len(CLASSES))
    assert kind == "student" and student.input_size == (3, 64, 64)
    groups = param_groups_weight_decay(student.model, cfg.optim.weight_decay, student.model.no_weight_decay())
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas)
    criterion = DistillationLoss(cfg.loss.mode, cfg.loss.temperature, cfg.loss.alpha, cfg.loss.label_smoothing,
                                 cfg.loss.teacher_target, cfg.loss.standardize)
    before = [p.detach().clone() for p in student.parameters()]
    for _, batch in zip(range(2), batches.batches(num_workers=0)):
        assert batch.view.shape == (4, 3, 64, 64)
        loss = criterion(student(batch.view), batch.target, batch.label, batch.partner_label,
                         batch.lam)
        assert torch.isfinite(loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.deepspeed.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
