"""Prove a store whole: manifest valid and sealed, every shard's checksum and
chunks good, and every (epoch, sample) present exactly once."""
from __future__ import annotations

import numpy as np

from .codec import ceil_div
from .location import StoreUnreachable, locate
from .manifest import MANIFEST, ShardEntry, StoreError, load_manifest
from .reader import LogitStore
from .shards import CorruptShard


def framing_bytes(entry: ShardEntry, chunk_records: int) -> int:
    """A shard's bytes that hold no record: a 512-byte tar header per chunk and the archive's
    1 KiB end marker (each chunk's padding to 512 bytes is left with the records)."""
    chunks = ceil_div(entry.records, chunk_records)
    return 512 * chunks + 1024


def verify_store(path) -> tuple[list[str], list[str], dict]:
    """(problems, warnings, stats) of the store at `path` (a directory or URL).
    No problems means the store is safe to train on."""
    path = locate(path)
    try:
        manifest = load_manifest(path)
    except StoreUnreachable:
        raise  # not a problem of the store: the caller's error to report
    except StoreError as e:
        return [str(e)], [], {}
    if not manifest.complete:
        return [f"{path / MANIFEST}: store is incomplete; re-run its save_logits command"], [], {}
    store = LogitStore(path)
    manifest_bytes = len(path.read_bytes(MANIFEST))
    settings = manifest.settings
    problems = []
    top1 = np.zeros(settings.num_classes, dtype=np.int64)
    # Every (epoch, sample) once: load_manifest proved that each epoch's shards tile its seeded
    # sample order, and each shard read holds exactly its slice of it (read_shard).
    for entry in manifest.shards:
        try:
            cols = store.read(entry)
        except CorruptShard as e:
            problems.append(str(e))
            continue
        top1 += np.bincount(cols["topk_idx"][:, 0].astype(np.int64), minlength=settings.num_classes)
    known = {MANIFEST} | {e.name for e in manifest.shards}
    warnings = [f"{f}: not part of the store (ignored by readers)" for f in path.names() or [] if f not in known]
    # every shard was just read and matched its manifest size (or is named in problems)
    total_bytes = manifest_bytes + sum(e.bytes for e in manifest.shards)
    stats = {"records": manifest.records, "shards": len(manifest.shards), "bytes": total_bytes,
             "bytes_per_record": total_bytes / max(manifest.records, 1),
             "framing_bytes": manifest_bytes + sum(framing_bytes(e, settings.chunk_records) for e in manifest.shards),
             "top1_histogram": top1.tolist()}
    return problems, warnings, stats
