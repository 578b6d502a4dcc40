"""One rank's stream of a store epoch, as a chain of small named steps (webdataset-style):

    epoch_shards -> reading_units -> split_by_rank -> records -> first(records_per_rank) -> shuffle -> batched

The chain runs twice per rank, on the same steps and seeds, with one step swapped:

- planned_records: each record's sample index, from the manifest alone (no shard read).
  The rank's DataLoader workers run this chain, keep the batches numbered w, w + W, ...
  and build their views (seeds are a pure function of the run seed, epoch and index).
- decoded_records: each shard fetched, size/sha256-verified and decoded by the rank's
  main process, once: the records' stored seeds and sparse targets (teacher_logits.schema's
  StoredRecords: top-k classes and probabilities, tail mass). distill/replay.py joins them to the views batch by batch
  and checks that index, seed and partner agree.

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
- Memory: a shuffle buffer of records, never an epoch: flat in epochs and dataset size.

webdataset's own `shuffle` (seeded, buffer of `shuffle_buffer` records), `batched` and
`DataPipeline` do the generic work; its split_by_node/split_by_worker take ranks from the
environment and deal shards round-robin, so the balancing split is ours.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import fields
from functools import partial

import numpy as np
import webdataset as wds

from .manifest import epoch_order
from .schema import StoredRecords


def epoch_shards(store, stored_epoch: int, order_seed: int | None) -> list[dict]:
    """The manifest entries of one stored epoch, in a seeded order (None: as stored)."""
    entries = store.shards(stored_epoch)
    if order_seed is None:
        return entries
    return [entries[i] for i in np.random.default_rng(order_seed).permutation(len(entries))]


def reading_units(entries: list[dict], world: int) -> list[dict]:
    """What ranks are dealt: the shards themselves, or (fewer shards than ranks) each shard cut
    into `world` contiguous ranges of its records, as entries with `part` = (first, stop)
    positions within the shard."""
    if len(entries) >= world:
        return entries
    units = []
    for entry in entries:
        bounds = np.linspace(0, entry["stop"] - entry["start"], world + 1).round().astype(int).tolist()
        units += [dict(entry, part=(lo, hi)) for lo, hi in zip(bounds, bounds[1:])]
    return units


def unit_records(entry: dict) -> int:
    lo, hi = entry.get("part", (0, entry["stop"] - entry["start"]))
    return hi - lo


def rank_of_shards(sizes: list[int], world: int) -> list[int]:
    """The rank that reads each shard: largest first, to the rank with the fewest records."""
    totals, owner = [0] * world, [0] * len(sizes)
    for n in sorted(range(len(sizes)), key=lambda n: -sizes[n]):  # stable: the seeded order breaks ties
        rank = min(range(world), key=lambda r: totals[r])
        owner[n], totals[rank] = rank, totals[rank] + sizes[n]
    return owner


def split_by_rank(units: list[dict], rank: int, world: int) -> list[dict]:
    owner = rank_of_shards([unit_records(u) for u in units], world)
    return [u for u, r in zip(units, owner) if r == rank]


def records_per_rank(store, world: int) -> int:
    """Records every rank streams per epoch: the smallest rank's share (the same every epoch)."""
    sizes = [unit_records(u) for u in reading_units(store.shards(0), world)]
    owner = rank_of_shards(sizes, world)
    return min(sum(s for s, r in zip(sizes, owner) if r == rank) for rank in range(world))


def planned_records(units, settings: dict):
    """(index,) records of each unit, from the manifest's seeded sample order: no read."""
    orders = {}
    for unit in units:
        if unit["epoch"] not in orders:
            orders[unit["epoch"]] = epoch_order(settings["seed"], unit["epoch"], settings["dataset"]["size"])
        indices = np.sort(orders[unit["epoch"]][unit["start"]:unit["stop"]])  # a shard holds them sorted
        for index in indices[slice(*unit.get("part", (None, None)))]:
            yield {"index": int(index)}


def decoded_records(units, store):
    """Each unit's shard read, verified and decoded (once for consecutive units of one shard),
    then the unit's records one by one (StoredRecords fields)."""
    names, shard, records = [f.name for f in fields(StoredRecords)], None, None
    for unit in units:
        if unit["name"] != shard:
            cols = store.read(unit)
            if cols is None:  # a skipped bad shard would desynchronise the planned views
                raise RuntimeError(f"shard {unit['name']} is unreadable; the student cannot skip shards")
            shard, records = unit["name"], StoredRecords.from_columns(cols, store.settings)
        for r in range(*unit.get("part", (0, len(records)))):
            yield {name: getattr(records, name)[r] for name in names}


def first(records, count: int):
    return itertools.islice(records, count)


def stack_records(rows: list[dict]) -> dict[str, np.ndarray]:
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def stack_stored(rows: list[dict]) -> StoredRecords:
    return StoredRecords(**stack_records(rows))


def rank_stream(store, stored_epoch: int, rank: int, world: int, batch_size: int, seed: int | list[int] | None,
                decode: bool, shuffle_buffer: int | None = None) -> wds.DataPipeline:
    """This rank's batches of one epoch: planned (decode=False) or decoded (decode=True).
    `seed` fixes the shard order and the record shuffle (None: stored order, no shuffle)."""
    rng = None if seed is None else np.random.default_rng(seed)
    order_seed, shuffle_seed = (None, None) if rng is None else (int(rng.integers(1 << 62)), int(rng.integers(1 << 62)))
    units = split_by_rank(reading_units(epoch_shards(store, stored_epoch, order_seed), world), rank, world)
    records = partial(decoded_records, store=store) if decode else partial(planned_records, settings=store.settings)
    steps = [partial(iter, units), records, partial(first, count=records_per_rank(store, world))]
    if seed is not None:
        bufsize = shuffle_buffer or 2 * store.settings["shard_records"]
        steps.append(wds.shuffle(bufsize, bufsize, rng=random.Random(shuffle_seed ^ rank)))
    steps.append(wds.batched(batch_size, collation_fn=stack_stored if decode else stack_records, partial=True))
    return wds.DataPipeline(*steps)
