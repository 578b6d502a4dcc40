"""A tiny image folder in ImageFolder's layout, for the `folder` dataset's tests:
class-coloured noise as JPEG and PNG files of different sizes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ("ant", "bee", "cat")


def write_image_folder(root: Path, classes=CLASSES, train_per_class: int = 8, val_per_class: int = 3,
                       seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(len(classes), 3))
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = (int(v) for v in rng.integers(24, 72, size=2))  # any size, any aspect
                pixels = np.clip(palette[c] + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
                fmt = ("jpg", "png")[i % 2]
                Image.fromarray(pixels).save(folder / f"{split}_{i}.{fmt}")
    return root


def write_teacher(path: Path, num_classes: int) -> Path:
    """A fixed random-init cifar10_resnet20 with a `num_classes` head."""
    import timm

    import distill.models  # noqa: F401  (registers the CIFAR teachers)

    torch.manual_seed(0)
    torch.save(timm.create_model("cifar10_resnet20", num_classes=num_classes).state_dict(), path)
    return path
