"""One rank's stream of a store epoch, as a chain of small named steps (webdataset-style):

    store.shards(epoch, seeded order) -> reading_units -> split_by_rank       (the rank's units)
    positions 0 .. records_per_rank - 1 -> shuffle -> batched -> gather(records)

The shuffle and the batching run on the positions of the records in the rank's stream
(integers); `gather` turns each batch of positions into its records, column-wise. The chain
runs twice per rank, on the same steps and seeds, with one source swapped:

- PlannedRecords: each record's sample index, from the manifest alone (no shard read).
  The rank's DataLoader workers run this chain, keep the batches numbered w, w + W, ...
  and build their views (seeds are a pure function of the run seed, epoch and index).
- DecodedRecords: each shard fetched, size/sha256-verified and decoded by the rank's
  main process, once: the records' stored seeds and sparse targets (teacher_logits.schema's
  StoredRecords: top-k classes and probabilities, tail mass). distill/replay.py joins them to
  the views batch by batch and checks that index, seed and partner agree.

Guarantees (tests/test_store_stream.py proves each):

- One reader per shard: with at least as many shards per epoch as ranks, every shard is read
  by exactly one (rank, process) pair, once (or not at all if trimming, below, leaves out all
  its records); DataLoader workers read no shard. Readers move 1.0x the epoch's bytes.
- Any store feeds any number of ranks: with fewer shards per epoch than ranks, each shard is
  cut into `world` ranges of its records (reading units), and a rank reads the shards it has
  ranges of, keeping only its ranges (one read a shard when its ranges follow each other in
  its stream, as with equal ranges). Bytes read grow (about world x), records do not: every
  record still goes to one rank.
- Equal steps: reading units go to ranks by size, largest first, each to the rank holding
  the fewest records (ties: the lowest rank), taken in a seeded order. Unit sizes are the
  same in every epoch, so every rank gets `records_per_rank` records, each epoch; a rank with
  more takes the first ones of its stream. The union of the ranks' records is the whole
  epoch whenever the units split evenly (e.g. equal shards, a multiple of the ranks per
  epoch); otherwise the few trimmed records change from epoch to epoch (the seeded order).
- Workers never matter: a rank's batch sequence is a function of (store, epoch, rank,
  world, seed, batch size). Worker w builds batches w, w + W, ... of that sequence and
  the DataLoader takes them round-robin, worker 0 first, so any W gives the same batches.
- Resume: the sequence is deterministic, so skipping its first n batches leaves exactly the
  batches an uninterrupted run has still to take (their views are never built).
- Memory: the shards whose records the shuffle buffer still holds (about three for the default
  buffer of two shards), never an epoch: flat in epochs and dataset size.

webdataset's own `shuffle` (seeded, buffer of `shuffle_buffer` positions), `batched` and
`DataPipeline` do the generic work; its split_by_node/split_by_worker take ranks from the
environment and deal shards round-robin, so the balancing split is ours.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial

import numpy as np
import webdataset as wds

from .manifest import ShardEntry, shard_indices
from .schema import StoredRecords, StoreSettings


@dataclass(frozen=True)
class ReadingUnit:
    """What a rank is dealt: the records [first, stop) of one shard (its positions in the shard)."""
    shard: ShardEntry
    first: int
    stop: int

    @property
    def records(self) -> int:
        return self.stop - self.first


def reading_units(entries: list[ShardEntry], world: int) -> list[ReadingUnit]:
    """The shards whole, or (fewer shards than ranks) each shard cut into `world` contiguous
    ranges of its records."""
    if len(entries) >= world:
        return [ReadingUnit(entry, 0, entry.records) for entry in entries]
    units = []
    for entry in entries:
        bounds = np.linspace(0, entry.records, world + 1).round().astype(int).tolist()
        units += [ReadingUnit(entry, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    return units


def rank_of_shards(sizes: list[int], world: int) -> list[int]:
    """The rank that reads each shard: largest first, to the rank with the fewest records."""
    totals, owner = [0] * world, [0] * len(sizes)
    for n in sorted(range(len(sizes)), key=lambda n: -sizes[n]):  # stable: the seeded order breaks ties
        rank = min(range(world), key=lambda r: totals[r])
        owner[n], totals[rank] = rank, totals[rank] + sizes[n]
    return owner


def split_by_rank(units: list[ReadingUnit], rank: int, world: int) -> list[ReadingUnit]:
    owner = rank_of_shards([u.records for u in units], world)
    return [u for u, r in zip(units, owner) if r == rank]


def records_per_rank(store, world: int) -> int:
    """Records every rank streams per epoch: the smallest rank's share (the same every epoch)."""
    sizes = [u.records for u in reading_units(store.shards(0), world)]
    owner = rank_of_shards(sizes, world)
    return min(sum(s for s, r in zip(sizes, owner) if r == rank) for rank in range(world))


class PlannedRecords:
    """The sample indices of a rank's units, from the manifest's seeded sample order alone: no
    shard is read. `take(positions)`: {"index": the indices at those stream positions}."""

    def __init__(self, units: list[ReadingUnit], settings: StoreSettings):
        parts = [shard_indices(settings, unit.shard)[unit.first:unit.stop] for unit in units]
        self.index = np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def take(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        return {"index": self.index[positions]}


class DecodedRecords:
    """The stored records of a rank's units, decoded as the stream reaches them: a unit's shard
    is read, verified and decoded when a batch first needs one of its records (once for
    consecutive units of one shard) and dropped when the last of them is taken. `take(positions)`
    gathers a batch column-wise (StoredRecords): no Python per record."""

    def __init__(self, units: list[ReadingUnit], store):
        self.units, self.store = units, store
        self.starts = np.cumsum([0] + [u.records for u in units])
        self.left = [u.records for u in units]
        self.decoded: dict[int, StoredRecords] = {}
        self.next_unit, self.shard = 0, (None, None)  # the last shard read: (name, records)

    def _decode_through(self, last_unit: int) -> None:
        while self.next_unit <= last_unit:
            unit = self.units[self.next_unit]
            if unit.shard.name != self.shard[0]:
                cols = self.store.read(unit.shard)
                if cols is None:  # a skipped bad shard would desynchronise the planned views
                    raise RuntimeError(f"shard {unit.shard.name} is unreadable; the student cannot skip shards")
                self.shard = (unit.shard.name, StoredRecords.from_columns(cols, self.store.settings))
            self.decoded[self.next_unit] = self.shard[1].take(slice(unit.first, unit.stop))
            self.next_unit += 1

    def take(self, positions: np.ndarray) -> StoredRecords:
        unit_of = np.searchsorted(self.starts, positions, side="right") - 1
        self._decode_through(int(unit_of.max()))
        by_unit = np.argsort(unit_of, kind="stable")
        parts = []
        for unit in np.unique(unit_of).tolist():
            rows = positions[unit_of == unit] - self.starts[unit]
            parts.append(self.decoded[unit].take(rows))
            self.left[unit] -= len(rows)
            if not self.left[unit]:
                del self.decoded[unit]
        return StoredRecords.concatenate(parts).take(np.argsort(by_unit))


def gather(batches, source):
    """Batches of stream positions -> the records at them."""
    for positions in batches:
        yield source.take(positions)


def rank_stream(store, stored_epoch: int, rank: int, world: int, batch_size: int, seed: int | list[int] | None,
                decode: bool, shuffle_buffer: int | None = None) -> wds.DataPipeline:
    """This rank's batches of one epoch: planned (decode=False: {"index"}) or decoded
    (decode=True: StoredRecords). `seed` fixes the shard order and the record shuffle (None:
    stored order, no shuffle). The shuffle and batching run on stream positions (integers);
    the records are gathered batch by batch."""
    rng = None if seed is None else np.random.default_rng(seed)
    order_seed, shuffle_seed = (None, None) if rng is None else (int(rng.integers(1 << 62)), int(rng.integers(1 << 62)))
    units = split_by_rank(reading_units(store.shards(stored_epoch, order_seed), world), rank, world)
    source = DecodedRecords(units, store) if decode else PlannedRecords(units, store.settings)
    steps = [partial(iter, range(records_per_rank(store, world)))]  # the first records of the rank's stream
    if seed is not None:
        bufsize = shuffle_buffer or 2 * store.settings.shard_records
        steps.append(wds.shuffle(bufsize, bufsize, rng=random.Random(shuffle_seed ^ rank)))
    steps += [wds.batched(batch_size, collation_fn=partial(np.array, dtype=np.int64), partial=True),
              partial(gather, source=source)]
    return wds.DataPipeline(*steps)
