"""The two sides of the data path, built on one ViewMaker so they cannot drift.

TeacherViews: the views the teacher labels (map-style, one shard's indices).
StoreViews:   the student's batches, rebuilt from store records (streaming).

StoreViews batches inside the dataset and hands whole batches to the
DataLoader (batch_size=None). Worker w of W builds batches w, w+W, ...; the
DataLoader takes them round-robin, so the batch sequence is the same for any
number of workers. Every rank walks the same seeded record stream and keeps
positions p with p % world == rank, after trimming the stream to a multiple of
world: ranks get equal step counts, and their union is the whole epoch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from distill.augment import ViewMaker, record_seed


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
        return {"view": view, "index": index, "seed": seed, "partner": mix.partner, "lam": mix.lam,
                "label": int(self.labels[index]), "partner_label": int(partner_label)}


class StoreViews(IterableDataset):
    """One student epoch of (view, soft target, label) batches from a LogitStore."""

    def __init__(self, store, maker: ViewMaker, labels: np.ndarray, batch_size: int,
                 rank: int = 0, world: int = 1, shuffle_seed: int | None = 0):
        self.store, self.maker, self.labels = store, maker, np.asarray(labels)
        self.batch_size, self.rank, self.world, self.shuffle_seed = batch_size, rank, world, shuffle_seed
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Stream epoch `epoch`, leaving out its first `skip_batches` batches (a resumed run)
        without building their views."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def records_per_rank(self) -> int:
        return self.store.manifest["records"] // self.store.epochs // self.world

    def __len__(self):  # batches per rank
        return -(-self.records_per_rank() // self.batch_size)

    def _records(self):
        """(index, seed, partner, soft target) rows of store epoch epoch % E, seeded order."""
        rng = None if self.shuffle_seed is None else np.random.default_rng([self.shuffle_seed, self.epoch])
        order_seed = None if rng is None else int(rng.integers(1 << 31))
        for cols in self.store.iter_shards(self.epoch % self.store.epochs, order_seed):
            targets = self.store.soft_targets(cols)
            order = rng.permutation(len(targets)) if rng is not None else range(len(targets))
            partner = cols.get("partner")
            for r in order:
                yield int(cols["index"][r]), int(cols["seed"][r]), -1 if partner is None else int(partner[r]), targets[r]

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        limit = self.records_per_rank() * self.world
        batch = []
        for pos, record in enumerate(self._records()):
            if pos >= limit:
                break
            number = pos // self.world // self.batch_size  # this rank's batch number
            if pos % self.world != self.rank or number < self.skip_batches \
                    or (number - self.skip_batches) % workers != worker:  # the DataLoader asks worker 0 first
                continue
            batch.append(record)
            if len(batch) == self.batch_size:
                yield self._collate(batch)
                batch = []
        if batch:
            yield self._collate(batch)

    def _collate(self, rows) -> dict[str, torch.Tensor]:
        views, labels, mixed_labels, lams = [], [], [], []
        for index, seed, partner, _ in rows:
            view, mix = self.maker(index, seed)
            if mix.partner != partner:
                raise RuntimeError(f"record for sample {index} names partner {partner}, its seed gives "
                                   f"{mix.partner}: the store was made with other mixing settings")
            views.append(view)
            labels.append(self.labels[index])
            mixed_labels.append(self.labels[mix.partner] if mix.partner >= 0 else self.labels[index])
            lams.append(mix.lam)
        return {"view": torch.stack(views), "target": torch.from_numpy(np.stack([r[3] for r in rows])),
                "label": torch.as_tensor(labels), "partner_label": torch.as_tensor(mixed_labels),
                "lam": torch.as_tensor(lams, dtype=torch.float32),
                "index": torch.as_tensor([r[0] for r in rows])}
