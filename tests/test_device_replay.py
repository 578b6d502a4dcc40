"""Replay on the training device (distill/device_replay.py), checked on CPU tensors: the views
equal the per-sample CPU path's bit for bit (crop, flip, Mixup, CutMix), a store streams the
same batches either way (resume included), and recipes it cannot make exact are refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import save_logits_args, tool

from distill.augment import Mixing, ViewMaker, record_seed
from distill.datasets import build_dataset, labels_of
from distill.device_replay import DeviceReplay, replay_device
from distill.replay import StoreViews, store_view_maker
from teacher_logits.errors import UserError
from teacher_logits.reader import LogitStore

pytestmark = pytest.mark.usefixtures("one_thread")

MIXINGS = [Mixing(), Mixing(0.8, 1.0), Mixing(0.8, 0.0), Mixing(0.0, 1.0, prob=0.5)]


@pytest.fixture(scope="module")
def train_set(cifar_root):
    return build_dataset("cifar10", cifar_root, train=True, skip_md5=True)


@pytest.mark.parametrize("recipe", ["none", "crop", "cifar"])
@pytest.mark.parametrize("mixing", MIXINGS, ids=["plain", "mixup+cutmix", "mixup", "cutmix-half"])
def test_device_views_equal_the_cpu_path(train_set, recipe, mixing):
    maker, replay = ViewMaker(train_set, recipe, mixing), DeviceReplay(train_set, recipe, mixing, len(train_set), "cpu")
    indices = np.arange(len(train_set))
    seeds = record_seed(5, 2, indices)
    views, partners, lams = replay.views(indices, seeds)
    expected = [maker(int(i), int(s)) for i, s in zip(indices, seeds)]
    assert np.array_equal(partners, [m.partner for _, m in expected])
    assert np.array_equal(lams, [m.lam for _, m in expected])
    assert torch.equal(views, torch.stack([v for v, _ in expected]))
    if recipe != "none":  # the views really are augmented: crops moved, flips and mixes happened
        assert not torch.equal(views, replay.render(indices, np.zeros(len(indices), np.int64)))


def test_grey_images_replay_as_rgb():
    """digits are greyscale arrays; the CPU path converts to RGB, and so does the resident copy."""
    digits = build_dataset("digits", None, train=True)
    maker, replay = ViewMaker(digits, "crop"), DeviceReplay(digits, "crop", Mixing(), len(digits), "cpu")
    indices = np.arange(0, len(digits), 97)
    seeds = record_seed(0, 0, indices)
    assert torch.equal(replay.views(indices, seeds)[0], torch.stack([maker(int(i), int(s))[0]
                                                                    for i, s in zip(indices, seeds)]))


@pytest.fixture(scope="module")
def mixed_store(cifar_root, teacher_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("device_replay") / "store"
    tool("save_logits").main([str(a) for a in save_logits_args(
        cifar_root, teacher_ckpt, out, "--epochs", "2", "--limit", "120", "--shard-records", "40",
        "--mixup", "0.8", "--cutmix", "1.0", "--mix-prob", "0.7")])
    return LogitStore(str(out))


@pytest.mark.parametrize("batch_size, cpu_workers", [(16, 2), (48, 0)])  # 48: a last batch of 24
def test_a_store_streams_the_same_batches_replayed_on_the_device(mixed_store, train_set, batch_size, cpu_workers):
    maker = store_view_maker(train_set, mixed_store)
    labels = labels_of(train_set)[:120]
    replay = DeviceReplay(train_set, maker.recipe, maker.mixing, 120, "cpu")
    for epoch, skip in ((0, 0), (1, 0), (1, 1)):
        runs = []
        for device_replay, workers in ((None, cpu_workers), (replay, 0)):
            stream = StoreViews(mixed_store, maker, labels, batch_size, replay=device_replay)
            stream.set_epoch(epoch, skip_batches=skip)
            runs.append(list(stream.batches(num_workers=workers)))
        cpu, device = runs
        assert len(cpu) == len(device) == -(-120 // batch_size) - skip
        for a, b in zip(cpu, device):
            for name in ("view", "label", "partner_label", "lam", "index", "seed", "mix_partner"):
                assert torch.equal(getattr(a, name), getattr(b, name)), (epoch, name)
            assert torch.equal(a.target.dense(10), b.target.dense(10))
    assert sum(int((b.mix_partner >= 0).sum()) for b in device) > 0


def test_recipes_without_device_steps_stay_on_the_cpu(train_set):
    for recipe in ("cifar-strong", "stl10", "imagenet"):
        with pytest.raises(UserError, match="data.replay_device=cpu"):
            DeviceReplay(train_set, recipe, Mixing(), len(train_set), "cpu")
        assert replay_device("auto", recipe, 32) is None
    with pytest.raises(UserError, match="resizes its views"):
        DeviceReplay(train_set, "cifar", Mixing(), len(train_set), "cpu", resolution=64)
    assert replay_device("cpu", "cifar", 32) is None
    if not torch.cuda.is_available():
        assert replay_device("auto", "cifar", 32) is None
        with pytest.raises(UserError, match="no CUDA device"):
            replay_device("cuda", "cifar", 32)
