"""Read a complete logit store: its settings, and its records shard by shard.

Memory holds one shard at a time, whatever the number of epochs or samples.
Corruption is refused by default, naming the shard; `skip_bad_shards=True`
skips such shards instead and counts the records it lost.
"""
from __future__ import annotations

import sys

import numpy as np

from .codec import dense_distribution
from .location import locate
from .manifest import ShardEntry, StoreError, load_manifest, seeded_order
from .shards import CorruptShard, read_shard


class LogitStore:
    def __init__(self, path, skip_bad_shards: bool = False):
        """`path`: the store's directory or URL (file://, s3://, gs://, az://, memory://, http(s)://)."""
        self.location = locate(path)
        self.path = str(self.location)  # for messages
        self.manifest = load_manifest(self.location)
        if not self.manifest.complete:
            raise StoreError(f"{self.path} is incomplete: re-run its save_logits command to finish it")
        self.settings = self.manifest.settings
        self.skip_bad_shards = skip_bad_shards
        self.skipped_records = 0

    @property
    def epochs(self) -> int:
        return self.settings.epochs

    @property
    def num_classes(self) -> int:
        return self.settings.num_classes

    def check_present(self, epochs: int | None = None) -> None:
        """Refuse a store with a shard missing, or of another size than the manifest's, among its
        first `epochs` epochs (all by default), naming it: a run that would stop at that shard
        can refuse before it writes anything. Sizes come from one listing (a HEAD request each
        over http); the bytes themselves are checked when each shard is read."""
        wanted = {e.name: e.bytes for e in self.manifest.shards if epochs is None or e.epoch < epochs}
        sizes = self.location.sizes(list(wanted))
        missing = sorted(set(wanted) - set(sizes))
        if missing:
            raise StoreError(f"{self.location / missing[0]}: shard missing ({len(missing)} of {len(wanted)} "
                             "missing); re-run the save_logits command to rewrite it")
        other = sorted(n for n, size in sizes.items() if size != wanted[n])
        if other:
            raise StoreError(f"{self.location / other[0]}: {sizes[other[0]]} bytes, the manifest says "
                             f"{wanted[other[0]]} ({len(other)} shard(s) differ: truncated or replaced); delete "
                             "them and re-run the save_logits command")

    def shards(self, epoch: int | None = None, order_seed: int | None = None) -> list[ShardEntry]:
        """The manifest entries of `epoch` (None: all), in the order `order_seed` fixes (None: as stored)."""
        return seeded_order(self.manifest.epoch_shards(epoch), order_seed)

    def read(self, entry: ShardEntry) -> dict[str, np.ndarray] | None:
        """One shard's columns; None for a bad shard when skipping is on."""
        try:
            return read_shard(self.location, entry, self.manifest.store_id, self.settings)
        except CorruptShard as e:
            if not self.skip_bad_shards:
                raise
            self.skipped_records += entry.records
            print(f"warning: skipped {entry.records} records: {e}", file=sys.stderr)
            return None

    def iter_shards(self, epoch: int, order_seed: int | None = None):
        """Columns of each shard of `epoch`, in a seeded shuffled order when order_seed is set."""
        for entry in self.shards(epoch, order_seed):
            columns = self.read(entry)
            if columns is not None:
                yield columns

    def soft_targets(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """(N, C) float32 teacher distributions rebuilt from the stored top-k."""
        return dense_distribution(columns["topk_idx"], columns["topk_val"], self.settings.values,
                                  self.num_classes)
