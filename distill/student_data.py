"""A student run's data: the training views (from a store, or seeded without one), the test
split, and the checks that a store was made for this config's data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.augment import ViewMaker
from distill.device_replay import DeviceReplay, replay_device
from distill.recipes import view_size
from distill.datasets import (
    DatasetError,
    build_dataset,
    fingerprint,
    labels_of,
    num_classes_of,
)
from distill.replay import SeededViews, StoreViews, store_view_maker, views_loader
from teacher_logits.manifest import StoreError, differences
from teacher_logits.reader import LogitStore
from teacher_logits.codec import ceil_div
from teacher_logits.errors import UserError


@dataclass
class TrainingData:
    """A run's training and test data, and the batches of one epoch on this rank."""
    train_set: object
    test_set: object
    num_classes: int
    size: int  # training samples used (a store may cover a --limit prefix)
    labels: np.ndarray
    maker: ViewMaker
    store_views: StoreViews | None  # None: seeded views of the config's recipe, no store
    micro_per_epoch: int  # micro-batches per epoch on this rank
    batch_size: int

    def steps_per_epoch(self, grad_accum: int, world: int) -> int:
        """Optimizer steps in an epoch; a tail shorter than grad_accum is dropped."""
        steps = self.micro_per_epoch // grad_accum
        if steps == 0:
            raise UserError(f"train.batch_size x train.grad_accum = {self.batch_size * grad_accum} exceeds the "
                            f"{self.size // world} samples per rank: lower them")
        return steps

    def batches(self, cfg, epoch: int, rank: int, world: int, skip: int):
        """This rank's batches of `epoch`, leaving out its first `skip` (a resumed run)."""
        if self.store_views is not None:
            self.store_views.set_epoch(epoch, skip_batches=skip)  # a resumed run replays the rest of the epoch
            return self.store_views.batches(cfg.data.workers)
        return seeded_batches(self.maker, self.labels, cfg, epoch, rank, world, skip)


def load_data(cfg, rank: int, world: int) -> TrainingData:
    """A run's data, downhill: the dataset's splits and labels, then (with logits.store) the store
    resolved once against them, then the views built from both."""
    train_set, test_set = load_splits(cfg)
    labels, num_classes = labels_of(train_set), num_classes_of(cfg.data.dataset, train_set)
    if cfg.logits.store:
        source = resolve_store(cfg, train_set)
        store_views = replayed_views(source, train_set, labels[:source.size], cfg, rank, world)
        return TrainingData(train_set, test_set, num_classes, source.size, labels[:source.size], store_views.maker,
                            store_views, len(store_views), cfg.train.batch_size)
    size = cfg.data.limit or len(train_set)
    maker = ViewMaker(train_set, cfg.data.recipe, resolution=view_size(cfg.data.recipe, cfg.data.img_size),
                      num_samples=size)
    return TrainingData(train_set, test_set, num_classes, size, labels[:size], maker, None,
                        ceil_div(size // world, cfg.train.batch_size), cfg.train.batch_size)


def load_splits(cfg):
    """(train split, test split) of the config's dataset; an image folder's must hold the same classes."""
    train_set = build_dataset(cfg.data.dataset, cfg.data.root, train=True, skip_md5=cfg.data.skip_md5)
    test_set = build_dataset(cfg.data.dataset, cfg.data.root, train=False, skip_md5=cfg.data.skip_md5)
    if cfg.data.dataset == "folder" and test_set.classes != train_set.classes:
        odd = sorted(set(train_set.classes) ^ set(test_set.classes)) or "the same names"
        raise DatasetError(f"image folder {cfg.data.root}: train/ and val/ have other class folders ({odd}): "
                           "give both the same classes")
    return train_set, test_set


@dataclass(frozen=True)
class ResolvedStore:
    """logits.store opened once and checked for this run."""
    store: LogitStore
    size: int  # training samples it covers (a store may cover a --limit prefix)
    epochs: int  # the first stored epochs the student cycles through (logits.epochs)


def resolve_store(cfg, train_set) -> ResolvedStore:
    """The config's store, refused unless it serves this run: made for this data (check_store),
    holding the epochs asked for, each of their shards present and the first one readable."""
    store = LogitStore(cfg.logits.store)
    size = check_store(store, cfg, train_set)
    epochs = stored_epochs(store, cfg)
    store.check_present(epochs)  # before the run writes anything, and so is
    # one shard read whole (checksum and schema: a crafted store stops here), by every rank, so that
    # all refuse together: one extra shard per rank at start, outside the epochs' one-reader rule
    store.read(store.shards(0)[0])
    return ResolvedStore(store, size, epochs)


def replayed_views(source: ResolvedStore, train_set, labels: np.ndarray, cfg, rank: int, world: int) -> StoreViews:
    """This rank's student batches from the store: its views rebuilt by the store's own view maker
    (in DataLoader workers, or batch-wise on the replay device) and joined to its targets."""
    maker = store_view_maker(train_set, source.store, source.size)
    device = replay_device(cfg.data.replay_device, maker.recipe, maker.size, maker.params, train_set)
    replay = None if device is None else DeviceReplay(train_set, maker.recipe, maker.mixing, source.size, device,
                                                      params=maker.params)
    views = StoreViews(source.store, maker, labels, cfg.train.batch_size, rank, world, shuffle_seed=cfg.train.seed,
                       stored_epochs=source.epochs, replay=replay)
    left_out = source.store.manifest.records // source.store.epochs - views.records_per_rank() * world
    if left_out and rank == 0:
        print(f"warning: {left_out} records per epoch left out to give the {world} ranks equal steps (their "
              "shards differ in size); a store whose shards split evenly over the ranks loses none")
    return views


def check_store(store: LogitStore, cfg, dataset) -> int:
    """Refuse a store made for other data; return the number of samples it covers."""
    settings = store.settings
    size = cfg.data.limit or settings.dataset["size"]  # the store may cover a --limit prefix
    if size > len(dataset):
        raise StoreError(f"logits.store {store.path} covers {size} samples, but {cfg.data.dataset} train has "
                         f"only {len(dataset)}: was it made on another dataset?")
    # an any-size recipe's store is read at the size it was made at
    expected = {"dataset": fingerprint(cfg.data.dataset, dataset, True, size),
                "augmentation": {"recipe": cfg.data.recipe,
                                 "resolution": view_size(cfg.data.recipe, settings.augmentation["resolution"])}}
    actual = {"dataset": settings.dataset,
              "augmentation": {k: settings.augmentation[k] for k in ("recipe", "resolution")}}
    diff = differences(actual, expected)
    if diff:
        raise StoreError(f"logits.store {store.path} was made for other data than this config "
                         f"({'; '.join(diff)} [store != config]): use a store made for this config")
    return size


def stored_epochs(store: LogitStore, cfg) -> int:
    """How many of the store's epochs the student cycles through (logits.epochs: the first N)."""
    if cfg.logits.epochs is None:
        return store.epochs
    if not 0 < cfg.logits.epochs <= store.epochs:
        raise UserError(f"config key logits.epochs: {cfg.logits.epochs} asked of {store.path}, which holds "
                        f"{store.epochs} epochs: use 1 to {store.epochs}, or null for all")
    return cfg.logits.epochs


def seeded_batches(maker, labels, cfg, epoch, rank, world, skip):
    """No store: one epoch of this rank's batches over a seeded permutation."""
    order = np.random.default_rng([cfg.train.seed, epoch]).permutation(len(labels))
    order = order[: len(order) // world * world][rank::world]  # equal step counts on every rank
    order = order[skip * cfg.train.batch_size:]  # resuming: never build the skipped views
    views = SeededViews(maker, cfg.train.seed, np.full(len(order), epoch), order, labels)
    return views_loader(views, cfg.train.batch_size, cfg.data.workers)
