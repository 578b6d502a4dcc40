"""What a store's records hold: the one place that names the columns and their dtypes.

A record is one (sample, epoch) view. The codec (codec.py) stores records column-wise:

    index     int64           sample index in the dataset (delta-coded by the codec)
    seed      uint32          the view's augmentation seed: replays it bit-exactly
    topk_idx  uint8 / uint16  the teacher's k most probable classes, most probable first
                              (uint8 when C <= 256, else uint16: codec.index_dtype)
    topk_val  uint8 / float16 their probabilities, coded by codec.encode_topk (log8 or fp16)
    partner   int32           Mixup/CutMix partner's sample index, -1 unmixed (mixed stores only)
    lam       float16         the mixing weight of the view's own image (mixed stores only)

`column_layout` is that table in code, for the writer (`pack_records`) and the checker
(`check_chunk`) alike. The rest of the code builds records with `pack_records` and reads them
as `StoredRecords`, never by column name.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .codec import CODEC_VERSION, decode_values, encode_topk, index_dtype

VALUE_DTYPES = {"log8": "|u1", "fp16": "<f2"}  # the topk_val column of each value codec (codec.encode_topk)


def column_layout(k: int, num_classes: int, values: str, mixed: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every column of a store's records: name -> (dtype, shape of one record's entry)."""
    layout = {"index": ("<i8", ()), "seed": ("<u4", ()),
              "topk_idx": (index_dtype(num_classes).str, (k,)), "topk_val": (VALUE_DTYPES[values], (k,))}
    if mixed:
        layout.update(partner=("<i4", ()), lam=("<f2", ()))
    return layout


@dataclass(frozen=True)
class StoreSettings:
    """How a store was made: the manifest's `settings`, which a re-run or a student must match.
    The fingerprints (dataset, augmentation, teacher) are the dicts their owners produce."""
    k: int                # teacher probabilities kept per record
    num_classes: int
    values: str           # value codec: "log8" or "fp16"
    epochs: int
    seed: int             # run seed: every view's seed derives from it
    shard_records: int
    chunk_records: int
    dataset: dict         # distill.datasets.fingerprint
    augmentation: dict    # distill.augment.ViewMaker.fingerprint
    teacher: dict         # distill.store_teachers.teacher_settings
    codec_version: int = CODEC_VERSION  # the codec that wrote the chunks (manifest.new_manifest sets it)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def chunk_header(manifest) -> dict:
    """What every chunk of a store's shards carries besides its records (shards.py adds the
    shard, epoch and chunk number): readers refuse a chunk of another store. `manifest`: a
    manifest.Manifest (which imports this module, so it is not named here)."""
    settings = manifest.settings
    return {"store_id": manifest.store_id, "values": settings.values, "k": settings.k,
            "num_classes": settings.num_classes}


def check_chunk(header: dict, columns: dict, settings: StoreSettings, shard, chunk: int) -> str | None:
    """What is wrong with one decoded chunk of `shard` (its manifest.ShardEntry), or None.

    Checksums prove the bytes are the ones the manifest names, not that they mean what a
    reader assumes; a store made by someone else is checked for that too: every header
    field present with its value, exactly the schema's columns with their dtypes and
    shapes, class indices below C, values in range, partners among the dataset's samples."""
    expected_header = {"store_id": None, "shard": shard.name, "epoch": shard.epoch, "chunk": chunk,
                       "k": settings.k, "num_classes": settings.num_classes, "values": settings.values}
    for field, want in expected_header.items():
        got = header.get(field)
        if type(got) is not (str if field in ("store_id", "shard", "values") else int) or \
                (want is not None and got != want):
            return f"header field {field!r} is {got!r}, expected {want!r}"
    layout = column_layout(settings.k, settings.num_classes, settings.values,
                           mixed="partner" in columns or "lam" in columns)  # mixed stores: both columns
    if set(columns) != set(layout):
        return f"columns {sorted(columns)}, expected {sorted(layout)}"
    for name, (dtype, shape) in layout.items():
        if columns[name].dtype.str != np.dtype(dtype).str or columns[name].shape[1:] != shape:
            return f"column {name!r} is {columns[name].dtype.str} {columns[name].shape[1:]}, expected {dtype} {shape}"
    values, size = columns["topk_val"], settings.dataset["size"]
    problems = {"topk_idx": columns["topk_idx"] >= settings.num_classes,
                "topk_val": (values == 0) if values.dtype == np.uint8 else ~((values >= 0) & (values <= 1)),
                "partner": (columns["partner"] < -1) | (columns["partner"] >= size) if "partner" in columns else None,
                "lam": ~((columns["lam"] >= 0) & (columns["lam"] <= 1)) if "lam" in columns else None}
    for name, bad in problems.items():
        if bad is not None and bad.any():
            return f"column {name!r} holds {bad.sum()} out-of-range values"
    return None


def stored_mix_weight(lam) -> np.ndarray:
    """The float16 a mixed record stores for its replayed Mixup/CutMix weight: the one cast
    from the replayed float64 weight, for the writer and for the student's check alike
    (float64 -> float32 -> float16 rounds differently from float64 -> float16 now and then)."""
    return np.asarray(lam, dtype=np.float64).astype("<f2")


def pack_records(index, seed, top_classes, top_probs, settings: StoreSettings, partner=None, lam=None) -> dict:
    """Columns for the codec from labelled views: top_classes/top_probs are the teacher's (N, k)
    most probable classes and their probabilities; partner and lam only for mixed stores."""
    coded = encode_topk(np.asarray(top_probs), settings.num_classes, settings.values)
    return pack_coded(index, seed, top_classes, coded, settings.num_classes, partner, lam)


def pack_coded(index, seed, top_classes, coded_values, num_classes: int, partner=None, lam=None) -> dict:
    """Columns for the codec, in column_layout's dtypes, from top-k values already coded
    (codec.encode_topk/encode_values, whose dtype says the value codec)."""
    values = next(name for name, dtype in VALUE_DTYPES.items() if np.dtype(dtype) == coded_values.dtype)
    given = {"index": index, "seed": seed, "topk_idx": top_classes, "topk_val": coded_values, "partner": partner,
             "lam": None if lam is None else stored_mix_weight(lam)}
    layout = column_layout(coded_values.shape[1], num_classes, values, mixed=partner is not None)
    return {name: np.asarray(given[name]).astype(dtype) for name, (dtype, _) in layout.items()}


@dataclass
class StoredRecords:
    """Decoded records, row-aligned arrays: what a reader needs of a shard."""
    index: np.ndarray        # (N,) int64
    seed: np.ndarray         # (N,) uint32
    top_classes: np.ndarray  # (N, k) int64, most probable first
    top_probs: np.ndarray    # (N, k) float32
    tail: np.ndarray         # (N,) float32: probability mass outside the top-k
    partner: np.ndarray      # (N,) int32, -1 where the view is not mixed
    lam: np.ndarray          # (N,) float32, 1 where the view is not mixed

    @classmethod
    def from_columns(cls, columns: dict, settings: StoreSettings) -> StoredRecords:
        probs, tail = decode_values(columns["topk_val"], settings.values, settings.num_classes)
        n = len(columns["index"])
        return cls(columns["index"], columns["seed"], columns["topk_idx"].astype(np.int64), probs, tail,
                   columns.get("partner", np.full(n, -1, np.int32)),
                   columns.get("lam", np.ones(n, np.float16)).astype(np.float32))

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows) -> StoredRecords:
        """The records at `rows` (indices or a mask), in that order."""
        return StoredRecords(*(getattr(self, f.name)[rows] for f in fields(self)))

    @classmethod
    def concatenate(cls, parts: list[StoredRecords]) -> StoredRecords:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))
