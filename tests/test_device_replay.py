"""Replay on the training device (distill/device_replay.py), checked on CPU tensors: the views
equal the per-sample CPU path's bit for bit (crop, flip, Mixup, CutMix) for both ways of drawing
their parameters (distill/view_draws.py: the generators of stores made before issue 29, and
counter draws), a store of either kind streams the same batches either way (resume included) and
the same as its teacher stage made, a student trains from either the same through workers and
through `auto`'s in-process path, and recipes replay cannot make exact are refused."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from helpers import run_program, run_tool, save_logits_args, teacher_side, tiny_student_args

from distill.augment import Mixing, ViewMaker, record_seed
from distill.datasets import build_dataset, labels_of
from distill.device_replay import CounterViewMaker, DeviceReplay, render, replay_device
from distill.replay import StoreViews, store_view_maker
from teacher_logits.errors import UserError
from teacher_logits.reader import LogitStore

pytestmark = pytest.mark.usefixtures("one_thread")

MIXINGS = [Mixing(), Mixing(0.8, 1.0), Mixing(0.8, 0.0), Mixing(0.0, 1.0, prob=0.5)]


@pytest.fixture(scope="module")
def train_set(cifar_root):
    return build_dataset("cifar10", cifar_root, train=True, skip_md5=True)


@pytest.mark.parametrize("params", ["generators", "counter"])
@pytest.mark.parametrize("recipe", ["none", "crop", "cifar"])
@pytest.mark.parametrize("mixing", MIXINGS, ids=["plain", "mixup+cutmix", "mixup", "cutmix-half"])
def test_device_views_equal_the_cpu_path(train_set, recipe, mixing, params):
    maker = (CounterViewMaker if params == "counter" else ViewMaker)(train_set, recipe, mixing)
    replay = DeviceReplay(train_set, recipe, mixing, len(train_set), "cpu", params=params)
    indices = np.arange(len(train_set))
    seeds = record_seed(5, 2, indices)
    views, partners, lams = replay.views(indices, seeds)
    expected = [maker(int(i), int(s)) for i, s in zip(indices, seeds)]
    assert np.array_equal(partners, [m.partner for _, m in expected])
    assert np.array_equal(lams, [m.lam for _, m in expected])
    assert torch.equal(views, torch.stack([v for v, _ in expected]))
    if recipe != "none":  # the views really are augmented: crops moved, flips and mixes happened
        centre, unflipped = np.full(len(indices), replay.steps.padding), np.zeros(len(indices), bool)
        assert not torch.equal(views, render(replay.images, indices, centre, centre, unflipped, 32))


def test_grey_images_replay_as_rgb():
    """digits are greyscale arrays; the CPU path converts to RGB, and so does the resident copy."""
    digits = build_dataset("digits", None, train=True)
    maker, replay = ViewMaker(digits, "crop"), DeviceReplay(digits, "crop", Mixing(), len(digits), "cpu")
    indices = np.arange(0, len(digits), 97)
    seeds = record_seed(0, 0, indices)
    assert torch.equal(replay.views(indices, seeds)[0], torch.stack([maker(int(i), int(s))[0]
                                                                    for i, s in zip(indices, seeds)]))


def test_counter_views_are_the_recipes_crops_flips_and_mixes(train_set):
    """A counter view is torchvision's pad-4 crop at the drawn offsets, flipped where drawn, mixed
    with its partner's view as augment.ViewMaker mixes: built here from torchvision's functional ops."""
    from torchvision.transforms import functional as F

    mixing = Mixing(0.8, 1.0, prob=0.7)
    maker = CounterViewMaker(train_set, "cifar", mixing)

    def view(index, top, left, flipped):
        crop = F.crop(F.pad(train_set[index][0], 4), int(top), int(left), 32, 32)
        return F.to_tensor(F.hflip(crop) if flipped else crop)

    kinds = set()
    for seed in record_seed(3, 0, np.arange(60)).tolist():
        index, p = seed % len(train_set), maker.draw(np.array([seed]))
        expected = view(index, p.top[0], p.left[0], p.flipped[0])
        if p.partner[0] >= 0:
            other = view(int(p.partner[0]), p.partner_top[0], p.partner_left[0], p.partner_flipped[0])
            if p.cut[0]:
                y0, y1, x0, x1 = p.box[0]
                expected[:, y0:y1, x0:x1] = other[:, y0:y1, x0:x1]
            else:
                expected = expected * float(p.lam[0]) + other * (1.0 - float(p.lam[0]))
        kinds.add("cutmix" if p.cut[0] else "mixup" if p.partner[0] >= 0 else "plain")
        assert torch.equal(maker(index, seed)[0], expected), seed
    assert kinds == {"plain", "mixup", "cutmix"}


def test_counter_draws_have_the_recipes_distributions():
    """Uniform offsets, fair flips, mixing at its probability, a fair Mixup/CutMix choice,
    lambda ~ Beta(0.8, 0.8) for Mixup, partners and CutMix boxes within range."""
    from distill.recipes import CropFlip
    from distill.view_draws import counter_params

    seeds, num_samples = record_seed(1, 0, np.arange(20_000)), 1000
    p = counter_params(seeds.astype(np.int64), CropFlip(4, True), Mixing(0.8, 1.0, prob=0.7), num_samples, 32)
    for offsets in (p.top, p.left, p.partner_top):
        assert np.abs(np.bincount(offsets, minlength=9) / len(seeds) - 1 / 9).max() < 0.01
    assert abs(p.flipped.mean() - 0.5) < 0.02 and abs(p.partner_flipped.mean() - 0.5) < 0.02
    mixed = p.partner >= 0
    assert abs(mixed.mean() - 0.7) < 0.02 and abs(p.cut[mixed].mean() - 0.5) < 0.02
    assert p.partner[mixed].min() >= 0 and p.partner.max() < num_samples and len(np.unique(p.partner)) > 900
    mixup = p.lam[mixed & ~p.cut]
    assert abs(mixup.mean() - 0.5) < 0.01 and abs(mixup.var() - 1 / (4 * (2 * 0.8 + 1))) < 0.005
    assert np.all(p.lam[~mixed] == 1) and np.all((p.lam >= 0) & (p.lam <= 1))
    boxes = p.box[p.cut]
    assert boxes.min() >= 0 and boxes.max() <= 32 and np.all(boxes[:, 0] <= boxes[:, 1])
    assert np.array_equal(p.lam[p.cut], 1 - (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]) / 32**2)


MIXED_STORE = ["--epochs", "2", "--limit", "120", "--shard-records", "40", "--mix-prob", "0.7"]  # conftest's
# conftest's mixed_store of each kind: `generators` is a store as made before issue 29
EACH_KIND = pytest.mark.parametrize("mixed_store", [["--view-params", "generators"], ["--view-params", "counter"]],
                                    ids=["generators", "counter"], indirect=True)


@EACH_KIND
def test_the_manifest_says_how_a_store_draws(mixed_store, cifar_root, teacher_ckpt, tmp_path):
    """Counter stores say so; a generators store has today's settings exactly (no new key), so a
    store made before issue 29 reads as one; a new store of a counter recipe is counter by default."""
    store = LogitStore(str(mixed_store))
    augmentation = store.settings.augmentation
    assert augmentation.get("params") == ("counter" if "params" in augmentation else None)
    assert set(augmentation) - {"params"} == {"recipe", "resolution", "mixing"}
    if "params" not in augmentation:
        out = tmp_path / "default"
        run_program("save_logits", save_logits_args(cifar_root, teacher_ckpt, out, "--limit", "40"), check=True)
        assert LogitStore(str(out)).settings.augmentation["params"] == "counter"
        grown = shutil.copytree(mixed_store, tmp_path / "grown")  # grown without --view-params: keeps its own
        run_program("save_logits", save_logits_args(
            cifar_root, teacher_ckpt, grown, "--epochs", "3", "--limit", "120", "--shard-records", "40", "--mixup",
            "0.8", "--cutmix", "1.0", "--mix-prob", "0.7"), check=True)
        assert LogitStore(str(grown)).settings == dataclasses.replace(store.settings, epochs=3)


@pytest.mark.parametrize("batch_size, cpu_workers", [(16, 2), (48, 0)])  # 48: a last batch of 24
@EACH_KIND
def test_a_store_streams_the_same_batches_replayed_on_the_device(mixed_store, train_set, batch_size, cpu_workers):
    """Per-sample views in 0 or 2 workers, device replay, and the teacher stage's views: all equal."""
    store = LogitStore(str(mixed_store))
    maker = store_view_maker(train_set, store)
    labels = labels_of(train_set)[:120]
    teacher = teacher_side(store, maker, labels, 0)
    replay = DeviceReplay(train_set, maker.recipe, maker.mixing, 120, "cpu", params=maker.params)
    for epoch, skip in ((0, 0), (1, 0), (1, 1)):
        runs = []
        for device_replay, workers in ((None, cpu_workers), (replay, 0)):
            stream = StoreViews(store, maker, labels, batch_size, replay=device_replay)
            stream.set_epoch(epoch, skip_batches=skip)
            runs.append(list(stream.batches(num_workers=workers)))
        cpu, device = runs
        assert len(cpu) == len(device) == -(-120 // batch_size) - skip
        for a, b in zip(cpu, device):
            for name in ("view", "label", "partner_label", "lam", "index", "seed", "mix_partner"):
                assert torch.equal(getattr(a, name), getattr(b, name)), (epoch, name)
            assert torch.equal(a.target.dense(10), b.target.dense(10))
            assert torch.equal(b.view, torch.stack([teacher[(epoch, i)] for i in b.index.tolist()]))
    assert sum(int((b.mix_partner >= 0).sum()) for b in device) > 0


def test_recipes_without_device_steps_stay_on_the_cpu(train_set):
    for recipe in ("cifar-strong", "stl10", "imagenet"):
        with pytest.raises(UserError, match="data.replay_device=cpu"):
            DeviceReplay(train_set, recipe, Mixing(), len(train_set), "cpu")
        assert replay_device("auto", recipe, 32) is None
    with pytest.raises(UserError, match="resizes its views"):
        DeviceReplay(train_set, "cifar", Mixing(), len(train_set), "cpu", resolution=64)
    assert replay_device("cpu", "cifar", 32) is None
    assert replay_device("auto", "cifar", 32) is None  # a generators store: its per-view draws stay in workers
    if not torch.cuda.is_available():  # a counter store: batch-wise in this process
        assert replay_device("auto", "cifar", 32, "counter", train_set) == torch.device("cpu")
        with pytest.raises(UserError, match="no CUDA device"):
            replay_device("cuda", "cifar", 32)


def test_auto_keeps_images_that_would_not_fit_in_workers(train_set, monkeypatch):
    """auto gathers a dataset's images into one array only where they are one already
    (torchvision's CIFAR) or stacking them stays under the limit: a large image folder keeps
    its views in the workers rather than filling memory."""
    import distill.device_replay as device_replay

    class Folder(torch.utils.data.Dataset):  # images read one at a time, no resident array
        def __len__(self):
            return len(train_set)

        def __getitem__(self, i):
            return train_set[i]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_replay, "RESIDENT_LIMIT", len(train_set) * 32 * 32 * 3)
    assert replay_device("auto", "cifar", 32, "counter", Folder()) == torch.device("cpu")
    monkeypatch.setattr(device_replay, "RESIDENT_LIMIT", len(train_set) * 32 * 32 * 3 - 1)
    assert replay_device("auto", "cifar", 32, "counter", Folder()) is None
    assert replay_device("auto", "cifar", 32, "counter", train_set) == torch.device("cpu")  # resident already


@EACH_KIND
def test_a_student_trains_the_same_from_workers_and_auto(mixed_store, cifar_root, tmp_path):
    """The trainer on either kind of store: data.replay_device=auto, the default (a counter
    store's views built batch-wise in the training process on this CPU host; a generators
    store's in workers, as before) logs the very losses of data.replay_device=cpu's per-sample
    views in a worker."""
    logs = []
    for choice, workers in (("cpu", 1), ("auto", 0)):
        out = tmp_path / choice
        run_tool("distill/train_student.py", "--config", "configs/smoke_cifar10.yaml", f"data.root={cifar_root}",
                 "data.skip_md5=true", f"logits.store={mixed_store}", f"output.dir={out}", *tiny_student_args(),
                 "train.batch_size=32", "train.epochs=1", "train.max_steps=null", "train.log_every=1",
                 "data.test_limit=20", f"data.replay_device={choice}", f"data.workers={workers}", "wandb.enabled=false",
                 env={"DS_ACCELERATOR": "cpu"}, timeout=240)
        rows = map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
        logs.append([(row["step"], row["loss"]) for row in rows])
    assert logs[0] == logs[1] and len(logs[0]) >= 3
