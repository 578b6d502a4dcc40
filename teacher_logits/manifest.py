"""The store manifest: what a store holds, how it was made, and its shard checksums.

`manifest.json` is written atomically when a run starts (complete: false, the
planned shards) and again when every shard exists (complete: true, with sizes
and sha256). Its `settings` are the fingerprints a re-run or a student must
agree with: codec, k, classes, epochs, seed, dataset, augmentation, teacher.

In code a manifest is a `Manifest` (its `StoreSettings` and a list of `ShardEntry`);
JSON is only its file format, read and checked by `load_manifest`, written by
`write_manifest`.

A store grows (save_logits with a larger --epochs): the manifest is rewritten,
unsealed, with the new epochs' shards appended and the old entries untouched, then
sealed again. The store id (in every chunk header) stays the one the store was
created with; `id_epochs` records the epochs it was computed with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace

import numpy as np

from .codec import CODEC_VERSION, ceil_div
from .errors import StoreError, UserError  # noqa: F401  (StoreError: importers take it from here too)
from .files import sha256_bytes
from .location import locate
from .schema import VALUE_DTYPES, StoreSettings

MANIFEST = "manifest.json"
FORMAT = "tinyvit-distill logit store"


@dataclass(frozen=True)
class ShardEntry:
    """One shard: its slice [start, stop) of epoch `epoch`'s seeded sample order, and once it
    is written, its size and sha256."""
    name: str
    epoch: int
    start: int  # first position in the epoch's sample order
    stop: int  # one past the last
    bytes: int | None = None
    sha256: str | None = None

    @property
    def records(self) -> int:
        return self.stop - self.start

    @property
    def plan(self) -> tuple[str, int, int, int]:
        """What the store's settings decide (name, epoch, start, stop), without the digests."""
        return self.name, self.epoch, self.start, self.stop

    def as_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class Manifest:
    """What a store holds and how it was made. `id_epochs`: a grown store's epochs when its
    id was computed (None: its epochs)."""
    settings: StoreSettings
    shards: list[ShardEntry]
    store_id: str
    complete: bool = False
    id_epochs: int | None = None
    format: str = field(default=FORMAT, repr=False)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.shards)

    def epoch_shards(self, epoch: int | None = None) -> list[ShardEntry]:
        return [s for s in self.shards if epoch is None or s.epoch == epoch]

    def as_json(self) -> dict:
        out = {"format": self.format, "store_id": self.store_id, "settings": self.settings.as_dict(),
               "complete": self.complete, "records": self.records, "shards": [s.as_json() for s in self.shards]}
        return out if self.id_epochs is None else {**out, "id_epochs": self.id_epochs}

    @classmethod
    def from_json(cls, tree: dict) -> Manifest:
        """A manifest tree load_manifest has checked."""
        return cls(StoreSettings(**tree["settings"]), [ShardEntry(**e) for e in tree["shards"]], tree["store_id"],
                   tree["complete"], tree.get("id_epochs"), tree["format"])


def seeded_order(entries: list, order_seed: int | None) -> list:
    """`entries` (a stored epoch's shards) in the order `order_seed` fixes; None: as stored."""
    if order_seed is None:
        return entries
    return [entries[i] for i in np.random.default_rng(order_seed).permutation(len(entries))]


def epoch_order(run_seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """A seeded permutation of the samples: shards are random subsets, so a student
    reading a few shards at a time sees every class even if the dataset is sorted."""
    return np.random.default_rng([run_seed, epoch, 0x5EED]).permutation(num_samples)


def shard_indices(settings: StoreSettings, shard: ShardEntry) -> np.ndarray:
    """The sample indices a shard holds, ascending."""
    order = epoch_order(settings.seed, shard.epoch, settings.dataset["size"])
    return np.sort(order[shard.start:shard.stop])


def plan_shards(epochs: int, num_samples: int, shard_records: int) -> list[ShardEntry]:
    """Shards split each epoch's sample order into slices: resumable, disjoint per rank."""
    return [ShardEntry(f"e{e:04d}-{a:09d}.tar", e, a, min(a + shard_records, num_samples))
            for e in range(epochs) for a in range(0, num_samples, shard_records)]


def store_id(settings: StoreSettings | dict) -> str:
    settings = settings.as_dict() if isinstance(settings, StoreSettings) else settings
    return sha256_bytes(json.dumps(settings, sort_keys=True).encode())[:16]


def new_manifest(settings: StoreSettings) -> Manifest:
    settings = replace(settings, codec_version=CODEC_VERSION)
    return Manifest(settings, plan_shards(settings.epochs, settings.dataset["size"], settings.shard_records),
                    store_id(settings))


def grown_manifest(manifest: Manifest, epochs: int) -> Manifest:
    """`manifest` extended to `epochs` epochs, unsealed: the new epochs' shards are planned,
    the existing entries (names, sizes, sha256) and the store id are kept as they are, so the
    existing shards stay valid byte for byte. Epoch e's shards depend only on e, the run
    seed, the dataset size and --shard-records, never on the number of epochs.
    `id_epochs` records the epochs the store id was computed with."""
    old = {entry.name: entry for entry in manifest.shards}
    planned = plan_shards(epochs, manifest.settings.dataset["size"], manifest.settings.shard_records)
    return Manifest(replace(manifest.settings, epochs=epochs), [old.get(p.name, p) for p in planned],
                    manifest.store_id, False, manifest.id_epochs or manifest.settings.epochs)


def write_manifest(store, manifest: Manifest) -> None:
    """Write manifest.json of `store` (a path, URL or StoreLocation) whole: atomically on disk, one put remotely."""

    locate(store).write_bytes(MANIFEST, json.dumps(manifest.as_json(), indent=1, sort_keys=True).encode() + b"\n")


def load_manifest(store) -> Manifest:
    """The checked manifest of `store` (a path, URL or StoreLocation)."""

    store = locate(store)
    path = store / MANIFEST
    try:
        text = store.read_bytes(MANIFEST)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise StoreError(f"{path} not found: is {store} a logit store? (create one with tools/save_logits.py)") from None
    try:
        manifest = json.loads(text)
        assert manifest["format"] == FORMAT and isinstance(manifest["shards"], list)
        settings = manifest["settings"]
    except (ValueError, KeyError, TypeError, AssertionError):
        raise StoreError(f"{path} is not a valid store manifest: re-create the store with tools/save_logits.py") from None
    if settings.get("codec_version") != CODEC_VERSION:
        raise StoreError(f"{path}: codec version {settings.get('codec_version')} is not {CODEC_VERSION}; "
                         "re-create the store with this version of tools/save_logits.py")
    id_epochs = manifest.get("id_epochs", settings.get("epochs"))  # a grown store keeps its first id
    epochs = settings.get("epochs")
    if manifest["store_id"] != store_id({**settings, "epochs": id_epochs}) or not (
            type(id_epochs) is int and type(epochs) is int and 0 < id_epochs <= epochs):
        raise StoreError(f"{path}: settings do not match the store id (edited manifest?); re-create the store")
    problem = size_problem(manifest)
    if problem:
        raise StoreError(f"{path}: {problem} (edited or crafted manifest?); re-create the store")
    planned = plan_shards(settings["epochs"], settings["dataset"]["size"], settings["shard_records"])
    try:
        typed = Manifest.from_json(manifest)
    except TypeError:  # settings or shard entries with other keys than the schema's
        raise StoreError(f"{path} is not a valid store manifest: re-create the store with tools/save_logits.py") from None
    if [s.plan for s in typed.shards] != [p.plan for p in planned]:
        raise StoreError(f"{path}: the shard list does not match the store's settings (edited manifest?); "
                         "re-create the store")
    return typed


MAX_SAMPLES = (1 << 31) - 1  # partners are int32
MAX_SHARD_BYTES = 1 << 32  # a shard is read into memory whole
MIN_BYTES_PER_RECORD = 4  # a record's seed alone is 4 random bytes, which no codec shrinks


def size_problem(manifest: dict) -> str | None:
    """What makes the sizes a manifest claims impossible, or None; checked before anything is
    planned or allocated from them. The shard list must have exactly the entries its settings
    imply (so the plan is no larger than the manifest itself), the record total must be theirs,
    and a sealed store must hold at least MIN_BYTES_PER_RECORD bytes a record."""
    settings, shards = manifest["settings"], manifest["shards"]
    numbers = {"k": settings.get("k"), "num_classes": settings.get("num_classes"), "seed": settings.get("seed"),
               "shard_records": settings.get("shard_records"), "chunk_records": settings.get("chunk_records"),
               "dataset.size": (settings.get("dataset") or {}).get("size")}
    for name, value in numbers.items():
        if type(value) is not int or value < 0 or (value == 0 and name != "seed"):
            return f"settings.{name} is {value!r}, not a positive integer"
    if numbers["dataset.size"] > MAX_SAMPLES or settings.get("values") not in VALUE_DTYPES:
        return f"settings claim {numbers['dataset.size']} samples with values {settings.get('values')!r}"
    per_epoch = ceil_div(numbers["dataset.size"], numbers["shard_records"])
    if len(shards) != settings["epochs"] * per_epoch:
        return f"{len(shards)} shards listed, its settings make {settings['epochs'] * per_epoch}"
    try:
        records = sum(int(e["stop"]) - int(e["start"]) for e in shards)
        sizes = [e["bytes"] for e in shards] if manifest.get("complete") else []
    except (KeyError, TypeError, ValueError):
        return "a shard entry lacks its start, stop or bytes"
    if manifest.get("records") != records:
        return f"records total {manifest.get('records')!r}, its shards hold {records}"
    if any(type(b) is not int or not 0 < b <= MAX_SHARD_BYTES for b in sizes) or \
            (sizes and sum(sizes) < MIN_BYTES_PER_RECORD * records):
        return f"its shards claim {sum(b for b in sizes if type(b) is int)} bytes for {records} records"
    return None


def teacher_members(teacher: dict) -> list[dict]:
    """A store's teacher fingerprint as a list of members {name, checkpoint_sha256, pretrained}."""
    if "members" in teacher:
        return teacher["members"]
    return [{k: teacher.get(k) for k in ("name", "checkpoint_sha256", "pretrained")}]


def describe_teacher(teacher: dict) -> str:
    """'cifar10_resnet20', or 'ensemble of a (w 0.5) + b (w 0.5)'."""
    members = teacher_members(teacher)
    if len(members) == 1:
        return members[0]["name"]
    return "ensemble of " + " + ".join(f"{m['name']} (w {w:.3g})" for m, w in zip(members, teacher["weights"]))


def differences(expected, actual, prefix: str = "") -> list[str]:
    """Dotted paths where two nested settings differ, e.g. ['teacher.name: a != b']."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual)):
            out += differences(expected.get(key), actual.get(key), f"{prefix}{key}.")
        return out
    return [] if expected == actual else [f"{prefix.rstrip('.')}: {expected!r} != {actual!r}"]
