#!/usr/bin/env python
"""Benchmark: what replay costs. Views per second on one core of a recipe's timm/torchvision
transform run inside `scoped_rng(seed)` (how every stored view is made and replayed) against
the same transform run unscoped, alternating the two so machine noise hits both.

`imagenet` (DeiT/TinyViT's recipe, timm's create_transform) at 224 px from real JPEGs: the
CIFAR-10 test images of ../shared/data, upscaled to photograph size (500x375, bicubic) and
written as JPEG files of an image folder, read through the `folder` dataset (decode included).
`cifar` at 32 px from the same images in memory. Both sides decode and transform the same
images, timed back to back per image in alternating order; the scoped side also saves,
seeds and restores the global generators (torch's only, for the torch-only `cifar` recipe).
Goal: scoped / unscoped >= 0.9.

Device replay (distill/device_replay.py) against the per-sample path, for `cifar` with pairwise
Mixup 0.8 / CutMix 1.0 at 32 px on the same in-memory images: batches of --batch records, each
built by ViewMaker view by view (what a DataLoader worker does for a store made with generator
draws) and by DeviceReplay batch-wise on the CPU (and on the GPU where one is visible); and for a
store of counter draws (distill/view_draws.py), its per-view, worker (a batch a call) and device
paths; alternating. Goals: device replay >= 10x views/s per core on the CPU; for counter stores,
the per-sample path >= 3x today's.

  python benchmarks/bench_replay.py --images 256 --repeats 5 --json docs/results/bench_replay.json
  python benchmarks/bench_replay.py --quick     # 16 images, 1 repeat: seconds
"""
import argparse
import io
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distill.augment import Mixing, ViewMaker, build_transform, record_seed, scoped_rng
from distill.cli import HelpFormatter, run_main
from distill.datasets import build_dataset
from distill.device_replay import CounterViewMaker, DeviceReplay
from distill.recipes import VIEW_PARAMS, get_recipe, view_size
from teacher_logits.errors import UserError

CIFAR_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "test.npz"
PHOTO_SIZE = (500, 375)  # width, height: a typical ImageNet photograph


def cifar_images(count: int) -> tuple[list[Image.Image], list[int]]:
    """The first `count` real CIFAR-10 test images (JPEG in ../shared/data), decoded."""
    if not CIFAR_TEST.is_file():
        raise FileNotFoundError(f"{CIFAR_TEST} not found: the benchmark needs ../shared/data beside the checkout")
    data = np.load(CIFAR_TEST, allow_pickle=False)
    encoded, offsets, labels = data["encoded"], data["offsets"], data["y"]
    images = []
    for i in range(count):
        with Image.open(io.BytesIO(encoded[offsets[i]:offsets[i + 1]].tobytes())) as im:
            images.append(im.convert("RGB"))
    return images, [int(v) for v in labels[:count]]


def write_photo_folder(root: Path, images, labels) -> Path:
    """An image folder of photograph-sized JPEGs (the CIFAR images upscaled); val/ holds the first
    ten too, only because the layout needs a val/."""
    for n, (image, label) in enumerate(zip(images, labels)):
        for split in ("train",) + (("val",) if n < 10 else ()):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            image.resize(PHOTO_SIZE, Image.BICUBIC).save(folder / f"{n:05d}.jpg", quality=90)
    return root


def one_view(dataset, transform, index: int, seed: int, scoped: bool, torch_only: bool) -> float:
    """Seconds to decode and transform one image, inside the scope (as ViewMaker does) or not."""
    start = time.perf_counter()
    image = dataset[index][0]
    if scoped:
        with scoped_rng(seed, torch_only):
            transform(image)
    else:
        transform(image)
    return time.perf_counter() - start


def paired_pass(dataset, transform, seeds, torch_only: bool, flip: bool) -> tuple[float, float]:
    """(scoped, unscoped) views/s over every image, the two sides timed back to back per image
    in alternating order: on a shared machine, noise then hits both sides alike."""
    spent = {True: 0.0, False: 0.0}
    for i, seed in enumerate(seeds):
        for scoped in ((True, False) if (i + flip) % 2 else (False, True)):
            spent[scoped] += one_view(dataset, transform, i, int(seed), scoped, torch_only)
    return len(seeds) / spent[True], len(seeds) / spent[False]


def compare(dataset, recipe: str, size: int | None, repeats: int) -> dict:
    """Scoped and unscoped views/s on one core over `repeats` paired passes; medians and the
    ratio's spread over the passes."""
    transform = build_transform(recipe, size)
    seeds = record_seed(0, 0, np.arange(len(dataset)))
    torch_only = get_recipe(recipe).torch_only  # as ViewMaker scopes this recipe
    paired_pass(dataset, transform, seeds, torch_only, False)  # warm-up: imports, page cache, allocator
    passes = [paired_pass(dataset, transform, seeds, torch_only, bool(r % 2)) for r in range(repeats)]
    scoped, unscoped = [p[0] for p in passes], [p[1] for p in passes]
    ratios = [s / u for s, u in passes]
    return {"recipe": recipe, "resolution": size or view_size(recipe), "images": len(dataset),
            "repeats": repeats, "scoped_views_per_s": float(np.median(scoped)),
            "unscoped_views_per_s": float(np.median(unscoped)), "ratio": float(np.median(ratios)),
            "ratio_min": float(min(ratios)), "ratio_max": float(max(ratios))}


def device_vs_cpu(dataset, batch: int, repeats: int) -> dict:
    """views/s of every way to build a store's views over the same batches, alternated per pass:
    today's per-sample path (ViewMaker, generator draws), device replay of a generators store (CPU,
    and CUDA if visible), and for a counter store (distill/view_draws.py) the teacher's per-view
    path (CounterViewMaker, one view a call), a student worker's (CounterViewMaker.views, a batch a
    call) and device replay. Medians over `repeats` passes; each ratio against today's per-sample
    path, its spread over the passes."""
    mixing = Mixing(0.8, 1.0)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    maker, counter = ViewMaker(dataset, "cifar", mixing), CounterViewMaker(dataset, "cifar", mixing)
    indices = np.arange(len(dataset))
    batches = [(indices[a:a + batch], record_seed(0, 0, indices[a:a + batch])) for a in range(0, len(indices), batch)]

    def per_view(make):
        return lambda rows, seeds: [make(int(i), int(s)) for i, s in zip(rows, seeds)]

    sides = {"per_sample": per_view(maker), "counter_per_view": per_view(counter), "counter_worker": counter.views}
    for d in devices:
        for params in VIEW_PARAMS:
            replay = DeviceReplay(dataset, "cifar", mixing, len(dataset), d, params=params)
            sides[f"device_{d}" + ("_counter" if params == "counter" else "")] = replay.views

    def timed(build) -> float:
        start = time.perf_counter()
        for rows, seeds in batches:
            build(rows, seeds)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return len(indices) / (time.perf_counter() - start)

    passes = []
    for r in range(repeats + 1):  # the first pass warms up
        order = list(sides.items()) if r % 2 else list(sides.items())[::-1]
        result = {name: timed(build) for name, build in order}
        passes += [result] if r else []
    out = {"recipe": "cifar", "mixing": "mixup 0.8 / cutmix 1.0", "images": len(indices), "batch": batch,
           "repeats": repeats}
    for name in sides:
        out[f"{name}_views_per_s"] = float(np.median([p[name] for p in passes]))
        if name != "per_sample":
            ratios = [p[name] / p["per_sample"] for p in passes]
            out[f"{name}_ratio"], out[f"{name}_ratio_min"], out[f"{name}_ratio_max"] = (
                float(np.median(ratios)), float(min(ratios)), float(max(ratios)))
    return out


class InMemory:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--images", type=int, default=256, help="CIFAR-10 test images to use (JPEG folder and in memory)")
    p.add_argument("--repeats", type=int, default=5, help="alternated scoped/unscoped passes; medians reported")
    # not add_data_args' --img-size: that one comes with --data-root/--skip-md5, and the images here are
    # always ../shared's CIFAR-10 test file; this sets the imagenet recipe's size only, 224 unless told
    p.add_argument("--img-size", type=int, default=224, help="view resolution of the imagenet recipe")
    p.add_argument("--batch", type=int, default=128, help="records per batch of the device replay comparison")
    p.add_argument("--quick", action="store_true", help="16 images, 1 repeat (the test suite's smoke run)")
    p.add_argument("--json", help="write the results here (e.g. docs/results/bench_replay.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 16, 1
    if args.images <= 0 or args.repeats <= 0:
        raise UserError("--images and --repeats must be positive")
    torch.set_num_threads(1)  # per core
    images, labels = cifar_images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_dataset("folder", str(write_photo_folder(Path(tmp), images, labels)), train=True)
        imagenet = compare(folder, "imagenet", args.img_size, args.repeats)
    cifar = compare(InMemory(images, labels), "cifar", None, args.repeats)
    device = device_vs_cpu(InMemory(images, labels), min(args.batch, args.images), args.repeats)
    result = {"command": "python benchmarks/bench_replay.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "threads": 1, "imagenet": imagenet, "cifar": cifar, "device_replay": device}
    for r in (imagenet, cifar):
        print(f"{r['recipe']:>8} @ {r['resolution']} px: scoped {r['scoped_views_per_s']:.1f} views/s/core, "
              f"unscoped {r['unscoped_views_per_s']:.1f}, ratio {r['ratio']:.3f} "
              f"(min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f}, {r['repeats']} repeats)")
    print(f"  cifar + Mixup/CutMix: per-sample {device['per_sample_views_per_s']:.0f} views/s/core, "
          + ", ".join(f"{name} {device[f'{name}_views_per_s']:.0f} ({device[f'{name}_ratio']:.1f}x, "
                      f"{device[f'{name}_ratio_min']:.1f}-{device[f'{name}_ratio_max']:.1f})"
                      for name in (k.removesuffix("_ratio") for k in device if k.endswith("_ratio"))))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    run_main(main)
