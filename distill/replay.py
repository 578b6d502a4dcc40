"""The two sides of the data path, built on one ViewMaker so they cannot drift.

TeacherViews: the views the teacher labels (map-style, one shard's indices).
StoreViews:   the student's batches, rebuilt from store records (streaming).

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

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from distill.augment import Mixing, ViewMaker, record_seed
from distill.loss import SparseTarget
from teacher_logits.schema import stored_mix_weight
from teacher_logits.stream import rank_stream, records_per_rank
from teacher_logits.errors import UserError
from teacher_logits.manifest import StoreError


def store_view_maker(dataset, store, num_samples: int | None = None) -> ViewMaker:
    """The ViewMaker that rebuilds a store's views: its recipe, mixing and resolution. Every
    consumer of a store (trainer, verify, benchmarks) gets its maker here, so none can drift."""
    aug = store.settings["augmentation"]
    size = store.settings["dataset"]["size"] if num_samples is None else num_samples
    return ViewMaker(dataset, aug["recipe"], Mixing(**aug["mixing"]), aug["resolution"], num_samples=size)


class TeacherViews(Dataset):
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
        partner_label = self.labels[mix.partner] if mix.partner >= 0 else -1
        return {"view": view, "index": index, "seed": seed, "mix_partner": mix.partner, "lam": mix.lam,
                "label": int(self.labels[index]), "partner_label": int(partner_label)}


class StoreViews(IterableDataset):
    """One student epoch of (view, sparse target, label) batches from a LogitStore, for one rank.

    `stored_epochs` (default: all of the store's) are the first stored epochs the student
    cycles through: student epoch e reads stored epoch e % stored_epochs.
    Iterate `batches(num_workers)`; the dataset itself yields views only (in workers).
    """

    def __init__(self, store, maker: ViewMaker, labels: np.ndarray, batch_size: int,
                 rank: int = 0, world: int = 1, shuffle_seed: int | None = 0, stored_epochs: int | None = None):
        self.store, self.maker, self.labels = store, maker, np.asarray(labels)
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
        return -(-self.records_per_rank() // self.batch_size)

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
        """This rank's batches: views from `num_workers` DataLoader processes, joined in order
        with the sparse targets this process decodes from the rank's shards."""
        views = DataLoader(self, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available())
        targets = itertools.islice(iter(self._stream(decode=True)), self.skip_batches, None)
        for batch, stored in zip(views, targets):
            self._check(batch, stored)
            batch["target"] = SparseTarget(torch.from_numpy(stored.top_classes), torch.from_numpy(stored.top_probs),
                                           torch.from_numpy(stored.tail))
            yield batch

    def _views(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        run_seed, stored_epoch = self.store.settings["seed"], self.epoch % self.stored_epochs
        seeds = record_seed(run_seed, stored_epoch, indices)
        views, mixed_labels, lams, partners = [], [], [], []
        for index, seed in zip(indices.tolist(), seeds.tolist()):
            view, mix = self.maker(index, seed)
            views.append(view)
            partners.append(mix.partner)
            mixed_labels.append(self.labels[mix.partner] if mix.partner >= 0 else self.labels[index])
            lams.append(mix.lam)
        return {"view": torch.stack(views), "label": torch.as_tensor(self.labels[indices]),
                "partner_label": torch.as_tensor(mixed_labels), "lam": torch.as_tensor(lams, dtype=torch.float64),
                "index": torch.as_tensor(indices), "seed": torch.as_tensor(seeds.astype(np.int64)),
                "mix_partner": torch.as_tensor(partners)}

    def _check(self, batch, stored) -> None:
        """The views were built for the records whose targets are joined to them."""
        if not np.array_equal(batch["index"].numpy(), stored.index) or \
                not np.array_equal(batch["seed"].numpy(), stored.seed):
            raise StoreError(f"{self.store.path}: stored records differ from the manifest's plan (index or "
                             "seed): the store was edited or made by another version; re-create it")
        replayed_partner, replayed_lam = batch["mix_partner"].numpy(), stored_mix_weight(batch["lam"].numpy())
        bad = np.flatnonzero((replayed_partner != stored.partner) | (replayed_lam != stored.lam.astype(np.float16)))
        if len(bad):
            r = bad[0]
            raise StoreError(f"{self.store.path}: record for sample {stored.index[r]} names mix partner "
                             f"{stored.partner[r]} at weight {stored.lam[r]:.4f}, its seed gives "
                             f"{replayed_partner[r]} at {replayed_lam[r]:.4f}: the store was made with other "
                             "mixing settings")
