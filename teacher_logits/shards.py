"""Shard files: webdataset tars of zstd chunks, written atomically, read verified.

A shard holds the records of one epoch's index range, split into chunks of
`chunk_records` (one tar member `<shard>-<chunk>.rec.zst` each). Tar headers are
fixed (mtime 0, fixed owner) so the same records give byte-identical shards, and end at
the end-of-archive marker (no padding to tar's 10 KiB records).

Reading loads one shard (a few hundred KB) into memory, checks its size and
sha256 against the manifest before parsing a byte of it, then decodes each
chunk with the bounded codec. Member names are matched against the expected
names and never used as paths.
"""
from __future__ import annotations

import io
import tarfile

import numpy as np
import webdataset as wds
from webdataset.tariterators import tar_file_iterator

from .codec import CorruptChunk, decode_records, encode_records
from .location import locate
from .files import sha256_bytes
from .manifest import ShardEntry, StoreError, shard_indices
from .schema import StoreSettings, check_chunk

CHUNK_SUFFIX = "rec.zst"


class CorruptShard(StoreError):
    """A shard whose bytes differ from what the manifest promises."""


def shard_bytes(plan: ShardEntry, columns: dict[str, np.ndarray], header: dict, chunk_records: int) -> bytes:
    buf = io.BytesIO()
    writer = wds.TarWriter(buf, encoder=False, mtime=0, user="tvd", group="tvd")
    stem = plan.name.removesuffix(".tar")
    for c, a in enumerate(range(0, plan.records, chunk_records)):
        part = {name: col[a : a + chunk_records] for name, col in columns.items()}
        chunk_header = {**header, "shard": plan.name, "epoch": plan.epoch, "chunk": c}
        writer.write({"__key__": f"{stem}-{c:05d}", CHUNK_SUFFIX: encode_records(part, chunk_header)})
    # The archive ends with two zero blocks; tarfile then pads it to a multiple of 10 KiB,
    # which readers ignore and which would double a shard of a few hundred records: cut.
    end = writer.tarstream.offset + 2 * tarfile.BLOCKSIZE
    writer.close()
    return buf.getvalue()[:end]


def write_shard(store, plan: ShardEntry, columns: dict[str, np.ndarray], header: dict,
                chunk_records: int) -> tuple[int, str]:
    """Write one shard whole (atomic on disk, one object put remotely); its (size, sha256)."""
    data = shard_bytes(plan, columns, header, chunk_records)
    locate(store).write_bytes(plan.name, data)
    return len(data), sha256_bytes(data)


def read_shard(store, entry: ShardEntry, store_id: str, settings: StoreSettings,
               max_chunk_bytes: int = 64 << 20) -> dict[str, np.ndarray]:
    """All columns of one shard, verified against its manifest entry, the store's schema
    (schema.check_chunk) and its planned indices (derived only once its bytes are proven, so
    a manifest's claims allocate nothing the store does not hold)."""
    store = locate(store)
    path = store / entry.name
    try:
        data = store.read_bytes(entry.name)
    except FileNotFoundError:
        raise CorruptShard(f"{path}: shard missing; re-run the save_logits command to rewrite it") from None
    if len(data) != entry.bytes or sha256_bytes(data) != entry.sha256:
        raise CorruptShard(f"{path}: size or sha256 differs from the manifest (truncated, corrupted or "
                           "replaced); delete it and re-run the save_logits command")
    stem = entry.name.removesuffix(".tar")
    parts = []
    try:
        for c, member in enumerate(tar_file_iterator(io.BytesIO(data))):
            if member["fname"] != f"{stem}-{c:05d}.{CHUNK_SUFFIX}":
                raise CorruptShard(f"{path}: unexpected member {member['fname']!r}")
            header, cols = decode_records(member["data"], max_chunk_bytes)
            if header.get("store_id") != store_id or header.get("shard") != entry.name:
                raise CorruptShard(f"{path}: chunk {c} belongs to another store or shard")
            problem = check_chunk(header, cols, settings, entry, c)
            if problem:
                raise CorruptShard(f"{path}: chunk {c}: {problem}; the store was edited or made by other "
                                   "software: re-create it with tools/save_logits.py")
            parts.append(cols)
    except (CorruptChunk, OSError, EOFError, ValueError) as e:
        if isinstance(e, CorruptShard):
            raise
        raise CorruptShard(f"{path}: undecodable ({e}); delete it and re-run the save_logits command") from None
    columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {}
    if not parts or not np.array_equal(columns["index"], shard_indices(settings, entry)):
        raise CorruptShard(f"{path}: records do not cover the shard's planned sample indices once each")
    return columns
