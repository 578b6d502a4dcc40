"""The record layout of the logit store: one module, used by writer and reader.

A record is one (epoch, sample) view: its sample index, seed, optional mixing
partner, and the teacher's top-k probabilities. Records are packed column-wise
into chunks of many records (a tar header is 512 bytes, so one member per record
would cost more than the payload); each chunk is one zstd frame. Class indices
are uint8 up to 256 classes and little-endian uint16 up to 65,535 (ImageNet-21k's
21,841 included); k may be anything up to C.

Values are stored as 8-bit log-ratios to the top-1 probability:
  byte[0]      = q(log(p_tail / (C-k)) - log(p_1))   a class outside the top-k
  byte[1..k-1] = q(log(p_i)    - log(p_1))   the 2nd..k-th probabilities
with q(d) = round(-d / STEP) clipped to 1..255, STEP = LOG_RANGE / 255.
p_1 needs no byte: normalisation gives it back. Every decoded log-ratio is
within STEP / 2 (0.039) of the true one (a near-tie with p_1, d > -STEP/2, is
stored as -STEP so the rebuilt target keeps the teacher's top-1 strictly first), so each probability has a relative
error of at most ~4% before renormalisation, and the KL cost of quantisation is
about STEP**2 / 24 ~ 0.0003 nats (measured in docs/benchmarks.md). Ratios below
exp(-LOG_RANGE) ~ 2e-9 are clipped: such classes carry no usable signal.
`values="fp16"` stores raw fp16 probabilities instead (TinyViT's choice).

Chunk payload (before zstd): 4-byte magic, uint32 header length, JSON header
({n, k, num_classes, values, columns: [[name, dtype, shape]], store_id, shard}),
then each column's raw little-endian bytes in header order. Decoding uses
np.frombuffer only; nothing is ever unpickled.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import zstandard

from .errors import UserError

CODEC_VERSION = 1
MAGIC = b"TLR1"
LOG_RANGE = 20.0
STEP = LOG_RANGE / 255.0
MAX_CHUNK_RECORDS = 1 << 16
MAX_HEADER_BYTES = 1 << 16
ZSTD_LEVEL = 19
MAX_CLASSES = 65535  # class indices are uint16 above 256 classes


class CorruptChunk(ValueError):
    """A chunk that fails to decode: bad magic, bad header, size or checksum."""


def ceil_div(items, per_part):
    """How many parts of `per_part` items hold `items` (chunks of a shard, shards of an epoch,
    batches of a rank): the ceiling of items / per_part, in integers."""
    return -(-items // per_part)


def index_dtype(num_classes: int) -> np.dtype:
    """Class indices: uint8 up to 256 classes, little-endian uint16 up to MAX_CLASSES."""
    if not 0 < num_classes <= MAX_CLASSES:
        raise UserError(f"{num_classes} classes: the store holds class indices as uint16, so at most {MAX_CLASSES}")
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype("<u2")


def encode_values(probs: np.ndarray, topk_idx: np.ndarray, mode: str) -> np.ndarray:
    """(N, C) probabilities and their top-k indices (descending) -> (N, k) stored values."""
    return encode_topk(np.take_along_axis(probs, topk_idx, axis=1), probs.shape[1], mode)


def encode_topk(top: np.ndarray, num_classes: int, mode: str) -> np.ndarray:
    """(N, k) top-k probabilities (descending) of a C-class distribution -> (N, k) stored values.
    Only the top-k are needed: the tail mass is what they leave of 1."""
    top = np.asarray(top).astype(np.float64)
    if mode == "fp16":
        return top.astype("<f2")
    rest = max(num_classes - top.shape[1], 1)
    tail_each = np.clip(1.0 - top.sum(axis=1, keepdims=True), 0.0, None) / rest
    with np.errstate(divide="ignore"):
        ratios = np.log(np.concatenate([tail_each, top[:, 1:]], axis=1)) - np.log(top[:, :1])
    return np.clip(np.rint(-ratios / STEP), 1, 255).astype(np.uint8)


def decode_values(values: np.ndarray, mode: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Stored values -> (top-k probabilities (N, k), tail mass (N,)), float32, summing to 1."""
    if mode == "fp16":
        top = values.astype(np.float32)
        return top, np.clip(1.0 - top.sum(axis=1), 0.0, None)
    ratios = np.exp(-values.astype(np.float64) * STEP)
    weights = np.concatenate([np.ones_like(ratios[:, :1]), ratios[:, 1:]], axis=1)
    tail = ratios[:, 0] * (num_classes - values.shape[1])
    total = weights.sum(axis=1) + tail
    return (weights / total[:, None]).astype(np.float32), (tail / total).astype(np.float32)


def tail_share(tail, num_classes: int, k: int):
    """What each class outside the top-k gets of the tail mass (numpy or torch): an even share
    of the C - k others, TinyViT's rule, and nothing when the top-k is every class. The one
    rule both dense targets follow: dense_distribution here, distill.batch.SparseTarget.dense
    on the training device."""
    return tail / max(num_classes - k, 1) if num_classes > k else tail * 0


def dense_distribution(topk_idx: np.ndarray, values: np.ndarray, mode: str, num_classes: int) -> np.ndarray:
    """Stored top-k -> (N, C) soft target: the k probabilities where they were, the tail mass
    spread over the other classes (tail_share)."""
    top, tail = decode_values(values, mode, num_classes)
    rest = tail_share(tail, num_classes, top.shape[1])
    dense = np.repeat(rest[:, None], num_classes, axis=1).astype(np.float32)
    np.put_along_axis(dense, topk_idx.astype(np.int64), top, axis=1)
    return dense


def encode_records(records: dict[str, np.ndarray], header: dict) -> bytes:
    """Record columns -> one chunk. Columns: index (ascending within a shard; stored
    as deltas so zstd shrinks it to ~1 byte), seed, topk_idx, topk_val, and with
    mixing on, partner (int32, -1 unmixed) and lam (fp16)."""
    index = records["index"].astype(np.int64)
    deltas = np.diff(index, prepend=0).astype("<u4")
    return _encode_chunk({**records, "index": deltas}, header)


def decode_records(blob: bytes, max_bytes: int = 64 << 20) -> tuple[dict, dict[str, np.ndarray]]:
    header, columns = _decode_chunk(blob, max_bytes)
    if "index" not in columns:
        raise CorruptChunk("no index column")
    columns["index"] = np.cumsum(columns["index"], dtype=np.int64)
    return header, columns


def _encode_chunk(columns: dict[str, np.ndarray], header: dict) -> bytes:
    """Pack named arrays (all with the same first dimension) into one zstd frame."""
    n = len(next(iter(columns.values())))
    layout = []
    for name, arr in columns.items():
        if len(arr) != n:
            raise ValueError(f"column {name!r} has {len(arr)} rows, expected {n}")
        layout.append([name, arr.dtype.str, list(arr.shape[1:])])
    head = json.dumps({**header, "n": n, "columns": layout}, sort_keys=True).encode()
    body = b"".join(np.ascontiguousarray(a).tobytes() for a in columns.values())
    raw = MAGIC + struct.pack("<I", len(head)) + head + body
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(raw)


def _decode_chunk(blob: bytes, max_bytes: int) -> tuple[dict, dict[str, np.ndarray]]:
    """One zstd frame -> (header, columns). Bounded: a frame inflating past
    max_bytes (a decompression bomb) is refused before it is inflated."""
    try:
        params = zstandard.get_frame_parameters(blob)
        if params.content_size in (0, zstandard.CONTENTSIZE_UNKNOWN) or params.content_size > max_bytes:
            raise CorruptChunk(f"chunk declares {params.content_size} bytes (limit {max_bytes})")
        raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=max_bytes)
    except zstandard.ZstdError as e:
        raise CorruptChunk(f"zstd: {e}") from None
    if raw[:4] != MAGIC or len(raw) < 8:
        raise CorruptChunk("bad magic")
    (head_len,) = struct.unpack("<I", raw[4:8])
    if head_len > MAX_HEADER_BYTES:
        raise CorruptChunk("header too large")
    try:
        header = json.loads(raw[8 : 8 + head_len])
        n = int(header["n"])
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptChunk(f"bad header: {e}") from None
    if not 0 < n <= MAX_CHUNK_RECORDS:
        raise CorruptChunk(f"bad record count {n}")
    columns, offset = {}, 8 + head_len
    for name, dtype, shape in _column_layout(header):
        count = n * int(np.prod(shape, dtype=np.int64))
        end = offset + count * dtype.itemsize
        if end > len(raw):
            raise CorruptChunk(f"column {name!r} runs past the end of the chunk")
        columns[name] = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(n, *shape)
        offset = end
    if offset != len(raw):
        raise CorruptChunk("trailing bytes after the last column")
    return header, columns


ALLOWED_DTYPES = ("|u1", "<u2", "<u4", "<i4", "<i8", "<f2", "<f4")  # what any column may be stored as


def _column_layout(header: dict) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """(name, dtype, shape) of each column a header declares, checked before any byte is read:
    names are strings, dtypes from ALLOWED_DTYPES, shapes short lists of small non-negative ints."""
    try:
        layout = [(name, dtype, tuple(shape)) for name, dtype, shape in header["columns"]]
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptChunk(f"bad header: no valid column list ({type(e).__name__})") from None
    for name, dtype, shape in layout:
        if type(name) is not str or dtype not in ALLOWED_DTYPES or len(shape) > 2 or \
                not all(type(d) is int and 0 <= d <= MAX_CLASSES for d in shape):
            raise CorruptChunk(f"column {name!r} has a disallowed dtype {dtype!r} or shape {list(shape)!r}")
    return [(name, np.dtype(dtype), shape) for name, dtype, shape in layout]
