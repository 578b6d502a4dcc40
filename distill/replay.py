"""The two sides of the data path, built on one ViewMaker so they cannot drift.

SeededViews: views drawn from seeds for aligned (epoch, sample) arrays, no store: what the
             teacher labels, what a student trains on without a store, the test views.
StoreViews:  the student's batches, rebuilt from store records (streaming).
Both hand their consumers a distill.batch.Batch (`views_loader` batches SeededViews).

StoreViews streams one rank's share of a store epoch through the named steps of
teacher_logits/stream.py. Its DataLoader workers build the views of the planned batches
(worker w of W: batches w, w + W, ...; the DataLoader takes them round-robin) and read no
shard; the rank's main process reads, verifies and decodes each of its shards once and
joins their sparse targets (top-k indices, probabilities, tail mass) to the views, batch
by batch, checking index, seed and partner. The guarantees (one reader per shard, equal
steps per rank, batches independent of the number of workers, exact resume) are listed in
teacher_logits/stream.py. The dense target is built on the training device, by the loss.
"""
from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from distill.augment import Mixing, ViewMaker, record_seed
from distill.device_replay import view_maker
from distill.batch import Batch, SparseTarget
from teacher_logits.codec import ceil_div
from teacher_logits.schema import stored_mix_weight
from teacher_logits.stream import rank_stream, records_per_rank
from teacher_logits.manifest import StoreError


def mix_label(labels: np.ndarray, index, partner):
    """The label of a view's mix partner: the sample's own where the view is not mixed
    (partner -1). Scalars or aligned arrays."""
    return labels[np.where(np.asarray(partner) >= 0, partner, index)]


def store_view_maker(dataset, store, num_samples: int | None = None) -> ViewMaker:
    """The ViewMaker that rebuilds a store's views: its recipe, mixing and resolution. Every
    consumer of a store (trainer, verify, benchmarks) gets its maker here, so none can drift."""
    aug = store.settings.augmentation
    size = store.settings.dataset["size"] if num_samples is None else num_samples
    # stores made before counter parameters have no "params": their views draw from the generators
    return view_maker(dataset, aug["recipe"], Mixing(**aug["mixing"]), aug["resolution"], size,
                      aug.get("params", "generators"))


class SeededViews(Dataset):
    """view(i, seed(run_seed, e, i)) for aligned arrays of epochs e and sample indices i."""

    def __init__(self, maker: ViewMaker, run_seed: int, epochs: np.ndarray, indices: np.ndarray,
                 labels: np.ndarray):
        self.maker, self.indices, self.labels = maker, np.asarray(indices), np.asarray(labels)
        self.seeds = record_seed(run_seed, np.asarray(epochs), self.indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, n):
        index, seed = int(self.indices[n]), int(self.seeds[n])
        view, mix = self.maker(index, seed)
        return self._item(index, seed, view, mix.partner, mix.lam)

    def __getitems__(self, ns: list[int]) -> list[dict]:
        """The items of a batch, their views built together (the DataLoader asks so): a counter
        maker then draws and renders the batch at once, a generators maker view by view."""
        indices, seeds = self.indices[ns], self.seeds[ns]
        views, partners, lams = self.maker.views(indices, seeds)
        return [self._item(int(i), int(s), v, int(p), float(lam))
                for i, s, v, p, lam in zip(indices, seeds, views, partners, lams)]

    def _item(self, index: int, seed: int, view, partner: int, lam: float) -> dict:
        return {"view": view, "index": index, "seed": seed, "mix_partner": partner, "lam": lam,
                "label": int(self.labels[index]), "partner_label": int(mix_label(self.labels, index, partner))}


def views_loader(views: SeededViews, batch_size: int, workers: int = 0, pin_memory: bool | None = None) -> DataLoader:
    """SeededViews in Batches, built by `workers` DataLoader processes (pinned on CUDA hosts)."""
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    return DataLoader(views, batch_size=batch_size, num_workers=workers, collate_fn=Batch.collate, pin_memory=pin)


class StoreViews(IterableDataset):
    """One student epoch of (view, sparse target, label) batches from a LogitStore, for one rank.

    `stored_epochs` (default: all of the store's) are the first stored epochs the student
    cycles through: student epoch e reads stored epoch e % stored_epochs.
    Iterate `batches(num_workers)`; the dataset itself yields views only (in workers).
    With `replay` (a distill.device_replay.DeviceReplay) the views are built batch-wise on its
    device by this process instead, from the decoded records: no workers.
    """

    def __init__(self, store, maker: ViewMaker, labels: np.ndarray, batch_size: int,
                 rank: int = 0, world: int = 1, shuffle_seed: int | None = 0, stored_epochs: int | None = None,
                 replay=None):
        self.store, self.maker, self.labels, self.replay = store, maker, np.asarray(labels), replay
        self.batch_size, self.rank, self.world, self.shuffle_seed = batch_size, rank, world, shuffle_seed
        self.stored_epochs = stored_epochs or store.epochs
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Stream epoch `epoch`, leaving out its first `skip_batches` batches (a resumed run)
        without building their views."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def records_per_rank(self) -> int:
        return records_per_rank(self.store, self.world)

    def __len__(self):  # batches per rank
        return ceil_div(self.records_per_rank(), self.batch_size)

    def _stream(self, decode: bool):
        seed = None if self.shuffle_seed is None else [self.shuffle_seed, self.epoch]
        return rank_stream(self.store, self.epoch % self.stored_epochs, self.rank, self.world, self.batch_size,
                           seed, decode)

    def __iter__(self):
        """Views of this worker's share of the planned batches: w, w + W, ... after the skipped ones."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for number, planned in enumerate(self._stream(decode=False)):
            if number >= self.skip_batches and (number - self.skip_batches) % workers == worker:
                yield self._views(planned["index"])

    def batches(self, num_workers: int = 0):
        """This rank's batches: views from `num_workers` DataLoader processes (or the device
        replay), joined in order with the sparse targets this process decodes from the rank's shards."""
        targets = itertools.islice(iter(self._stream(decode=True)), self.skip_batches, None)
        if self.replay is not None:  # views from the decoded records' indices, on the replay's device
            pairs = ((self._views(stored.index), stored) for stored in targets)
        else:
            views = DataLoader(self, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available())
            pairs = zip(views, targets)
        for batch, stored in pairs:
            self._check(batch, stored)
            yield replace(batch, target=SparseTarget.of(stored))

    def _views(self, indices: np.ndarray) -> Batch:
        run_seed, stored_epoch = self.store.settings.seed, self.epoch % self.stored_epochs
        seeds = record_seed(run_seed, stored_epoch, indices)
        views, partners, lams = (self.replay or self.maker).views(indices, seeds)
        return Batch(views, torch.as_tensor(self.labels[indices]), torch.as_tensor(mix_label(self.labels, indices, partners)),
                     torch.as_tensor(lams, dtype=torch.float64), torch.as_tensor(indices),
                     torch.as_tensor(seeds.astype(np.int64)), torch.as_tensor(partners, dtype=torch.int64))

    def _check(self, batch, stored) -> None:
        """The views were built for the records whose targets are joined to them."""
        if not np.array_equal(batch.index.numpy(), stored.index) or not np.array_equal(batch.seed.numpy(), stored.seed):
            raise StoreError(f"{self.store.path}: stored records differ from the manifest's plan (index or "
                             "seed): the store was edited or made by another version; re-create it")
        replayed_partner, replayed_lam = batch.mix_partner.numpy(), stored_mix_weight(batch.lam.numpy())
        bad = np.flatnonzero((replayed_partner != stored.partner) | (replayed_lam != stored.lam.astype(np.float16)))
        if len(bad):
            r = bad[0]
            raise StoreError(f"{self.store.path}: record for sample {stored.index[r]} names mix partner "
                             f"{stored.partner[r]} at weight {stored.lam[r]:.4f}, its seed gives "
                             f"{replayed_partner[r]} at {replayed_lam[r]:.4f}: the store was made with other "
                             "mixing settings")
