"""`--dataset folder` and the replayable `imagenet` recipe: the store's fingerprint of a
folder, replay exactness across DataLoader workers (Mixup/CutMix included), timm's eval
crop for test views, and each bad input refused in one line with no partial store."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from helpers import check_student_side, run_program, run_tool, teacher_side, user_error
from image_folder import CLASSES, write_image_folder, write_teacher
from PIL import Image

from distill.augment import Mixing, ViewMaker
from distill.datasets import build_dataset, fingerprint, labels_of
from teacher_logits.reader import LogitStore

MIX = ["--mixup", "0.8", "--cutmix", "1.0", "--mix-prob", "0.8"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images") / "pets")


@pytest.fixture(scope="module")
def teacher3(tmp_path_factory):
    return write_teacher(tmp_path_factory.mktemp("teacher") / "r20_3cls.pt", len(CLASSES))


def label(root, ckpt, out, *extra):
    return ["--teacher", "cifar10_resnet20", "--checkpoint", ckpt, "--dataset", "folder", "--data-root", root,
            "--out", out, "--workers", "0", "--batch-size", "16", "--aug", "imagenet", "--img-size", "40",
            "--topk", "3", *extra]


@pytest.fixture(scope="module")
def folder_store(folder, teacher3, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "pets"
    argv = label(folder, teacher3, out, "--epochs", "2", "--shard-records", "10", *MIX)
    code, _, err = run_program("save_logits", argv)
    assert code == 0, err
    return out


def test_folder_dataset_reads_imagefolder_layout(folder):
    train, val = build_dataset("folder", str(folder), True), build_dataset("folder", str(folder), False)
    assert train.classes == val.classes == sorted(CLASSES)
    assert len(train) == 8 * len(CLASSES) and len(val) == 3 * len(CLASSES)
    image, label_ = train[1]
    assert image.mode == "RGB" and 0 <= label_ < len(CLASSES)
    assert {Image.open(p).format for p, _ in train.samples} == {"JPEG", "PNG"}
    fp = fingerprint("folder", train, True)
    assert fp["classes"] == sorted(CLASSES) and fp["num_classes"] == 3 and len(fp["files_sha256"]) == 64


def test_store_records_folder_and_resolution(folder_store):
    settings = LogitStore(folder_store).settings
    assert settings.dataset["classes"] == sorted(CLASSES) and settings.num_classes == 3
    assert settings.augmentation["recipe"] == "imagenet" and settings.augmentation["resolution"] == 40


def test_imagenet_recipe_replays_exactly_across_workers(folder, folder_store):
    store = LogitStore(folder_store)
    dataset = build_dataset("folder", str(folder), True)
    aug = store.settings.augmentation
    maker = ViewMaker(dataset, "imagenet", Mixing(**aug["mixing"]), aug["resolution"], num_samples=len(dataset))
    labels = labels_of(dataset)
    side0, side2 = teacher_side(store, maker, labels, 0), teacher_side(store, maker, labels, 2)
    assert side0.keys() == side2.keys() and len(side0) == 2 * len(dataset)
    assert all(torch.equal(side0[k], side2[k]) for k in side0)
    assert next(iter(side0.values())).shape == (3, 40, 40)
    # real augmentation: each sample's two epochs differ
    assert all(not torch.equal(side0[(0, i)], side0[(1, i)]) for i in range(len(dataset)))
    mixed = 0
    for workers in (0, 2):
        for epoch in range(2):
            seen, mixed_here = check_student_side(store, maker, labels, side0, epoch, workers)
            mixed += mixed_here
            assert sorted(seen) == list(range(len(dataset)))
    assert mixed > 10  # Mixup/CutMix views were compared


def test_test_views_use_timm_eval_crop(folder):
    from distill.evaluation import eval_views_loader

    val = build_dataset("folder", str(folder), False)
    batch = next(iter(eval_views_loader(val, 48, 4, recipe="center-crop")))
    assert batch.view.shape == (4, 3, 48, 48)
    assert batch.view.min() >= -1e-6 and batch.view.max() <= 1 + 1e-6  # normalisation undone


# ---------------------------------------------------------------- bad input: one line, exit 2, no store

def refused(argv, out, *needles):
    line = user_error(run_program("save_logits", argv), *needles)
    assert not out.exists()  # no partial store
    return line


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_split_folder_refused(folder, teacher3, tmp_path, split):
    root = tmp_path / "pets"
    shutil.copytree(folder, root)
    shutil.rmtree(root / split)
    refused(label(root, teacher3, tmp_path / "store"), tmp_path / "store", str(root), f"{split}/", "train/<class>")


def test_class_folder_without_images_refused(folder, teacher3, tmp_path):
    root = tmp_path / "pets"
    shutil.copytree(folder, root)
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "notes.txt").write_text("no images here")
    refused(label(root, teacher3, tmp_path / "store"), tmp_path / "store", str(root / "train" / "dog"),
            "holds no images", "add images")


def test_undecodable_image_refused_without_partial_store(folder, teacher3, tmp_path):
    root = tmp_path / "pets"
    shutil.copytree(folder, root)
    bad = root / "train" / "bee" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # small shards: complete ones are written before the broken image is reached, and removed too
    refused(label(root, teacher3, tmp_path / "store", "--shard-records", "5"), tmp_path / "store", str(bad),
            "cannot be decoded", "replace or delete")


def decompression_bomb() -> bytes:
    """A 1-pixel PNG whose header claims 30,000 x 30,000 pixels (Pillow refuses past 179 M)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"IHDR")
    data[at + 4:at + 12] = struct.pack(">II", 30_000, 30_000)
    data[at + 17:at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 17])))
    return bytes(data)


def truncated_jpeg() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()[:300]


@pytest.mark.parametrize("name, content", [
    ("bomb.png", decompression_bomb()),  # was Pillow's DecompressionBombError traceback
    ("cut.jpg", truncated_jpeg()),
    ("empty.jpg", b""),
    ("text.png", b"just some words"),
], ids=["decompression bomb", "truncated jpeg", "empty file", "not an image"])
def test_every_kind_of_undecodable_image_is_named(folder, teacher3, tmp_path, name, content):
    root = tmp_path / "pets"
    shutil.copytree(folder, root)
    bad = root / "train" / "ant" / name
    bad.write_bytes(content)
    refused(label(root, teacher3, tmp_path / "store"), tmp_path / "store", str(bad), "cannot be decoded")


def test_undecodable_image_named_from_a_worker(folder, teacher3, tmp_path):
    root = tmp_path / "pets"
    shutil.copytree(folder, root)
    bad = root / "train" / "ant" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    argv = label(root, teacher3, tmp_path / "store")
    argv[argv.index("--workers") + 1] = "1"
    refused(argv, tmp_path / "store", str(bad), "cannot be decoded")


def test_teacher_head_with_other_class_count_refused(folder, tmp_path):
    ckpt = write_teacher(tmp_path / "r20_10cls.pt", 10)
    refused(label(folder, ckpt, tmp_path / "store"), tmp_path / "store", "10 classes", "has 3",
            "tools/train_teacher.py")


def test_streaming_source_refused(teacher3, tmp_path):
    refused(label("wds/my-shards", teacher3, tmp_path / "store"), tmp_path / "store", "wds/my-shards",
            "random access", "image folder")


def test_store_refused_for_changed_folder_or_other_classes(folder, folder_store, teacher3, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    Image.new("RGB", (30, 30)).save(changed / "train" / "cat" / "extra.png")
    check = ["--teacher", "cifar10_resnet20", "--checkpoint", teacher3, "--check", "4", "--device", "cpu"]
    code, _, err = run_program("verify_logits", [folder_store, *check, "--data-root", changed])
    assert code == 2 and "dataset.files_sha256" in err and "pass the data the store was made from" in err
    renamed = tmp_path / "renamed"
    shutil.copytree(folder, renamed)
    (renamed / "train" / "cat").rename(renamed / "train" / "cow")
    code, _, err = run_program("verify_logits", [folder_store, *check, "--data-root", renamed])
    assert code == 2 and "dataset.classes" in err and "'cow'" in err


def test_inspect_and_train_teacher_take_a_folder(folder, folder_store, tmp_path):
    code, out, err = run_program("inspect_logits", [folder_store, "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["dataset"] == "folder" and summary["num_classes"] == len(CLASSES)
    run = tmp_path / "teacher"
    run_tool("tools/train_teacher.py", "--teacher", "cifar10_resnet20", "--dataset", "folder", "--data-root", folder,
             "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--out", run,
             "wandb.enabled=false", timeout=300, env={"DS_ACCELERATOR": "cpu"})
    exported = yaml.safe_load((run / "final" / "config.yaml").read_text())
    assert exported["data"]["recipe"] == "imagenet" and exported["student"]["num_classes"] == len(CLASSES)
    assert (run / "final" / "model.pt").is_file()


def test_pretrained_hub_teacher_with_another_head_refused(folder, tmp_path):
    """A 1000-class hub teacher on a 3-class folder would get a random head: refused before any
    download, pointing at train_teacher.py."""
    argv = ["--teacher", "resnet18.a1_in1k", "--pretrained", "--dataset", "folder", "--data-root", folder,
            "--out", tmp_path / "store", "--aug", "imagenet", "--topk", "3"]
    refused(argv, tmp_path / "store", "1000 classes", "has 3", "tools/train_teacher.py")
