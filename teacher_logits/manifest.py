"""The store manifest: what a store holds, how it was made, and its shard checksums.

`manifest.json` is written atomically when a run starts (complete: false, the
planned shards) and again when every shard exists (complete: true, with sizes
and sha256). Its `settings` are the fingerprints a re-run or a student must
agree with: codec, k, classes, epochs, seed, dataset, augmentation, teacher.

A store grows (save_logits with a larger --epochs): the manifest is rewritten,
unsealed, with the new epochs' shards appended and the old entries untouched, then
sealed again. The store id (in every chunk header) stays the one the store was
created with; `id_epochs` records the epochs it was computed with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .codec import CODEC_VERSION
from .errors import StoreError, UserError  # noqa: F401  (StoreError: importers take it from here too)
from .files import sha256_bytes
from .location import locate

MANIFEST = "manifest.json"
FORMAT = "tinyvit-distill logit store"


@dataclass(frozen=True)
class ShardPlan:
    name: str
    epoch: int
    start: int  # first position in the epoch's sample order
    stop: int  # one past the last

    @property
    def records(self) -> int:
        return self.stop - self.start


def epoch_order(run_seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """A seeded permutation of the samples: shards are random subsets, so a student
    reading a few shards at a time sees every class even if the dataset is sorted."""
    return np.random.default_rng([run_seed, epoch, 0x5EED]).permutation(num_samples)


def shard_indices(settings: dict, plan: ShardPlan) -> np.ndarray:
    """The sample indices a shard holds, ascending."""
    order = epoch_order(settings["seed"], plan.epoch, settings["dataset"]["size"])
    return np.sort(order[plan.start : plan.stop])


def plan_shards(epochs: int, num_samples: int, shard_records: int) -> list[ShardPlan]:
    """Shards split each epoch's sample order into slices: resumable, disjoint per rank."""
    return [ShardPlan(f"e{e:04d}-{a:09d}.tar", e, a, min(a + shard_records, num_samples))
            for e in range(epochs) for a in range(0, num_samples, shard_records)]


def store_id(settings: dict) -> str:
    return sha256_bytes(json.dumps(settings, sort_keys=True).encode())[:16]


def new_manifest(settings: dict) -> dict:
    settings = {**settings, "codec_version": CODEC_VERSION}
    plan = plan_shards(settings["epochs"], settings["dataset"]["size"], settings["shard_records"])
    return {"format": FORMAT, "store_id": store_id(settings), "settings": settings, "complete": False,
            "records": sum(s.records for s in plan),
            "shards": [{"name": s.name, "epoch": s.epoch, "start": s.start, "stop": s.stop} for s in plan]}



def grown_manifest(manifest: dict, epochs: int) -> dict:
    """`manifest` extended to `epochs` epochs, unsealed: the new epochs' shards are planned,
    the existing entries (names, sizes, sha256) and the store id are kept as they are, so the
    existing shards stay valid byte for byte. Epoch e's shards depend only on e, the run
    seed, the dataset size and --shard-records, never on the number of epochs.
    `id_epochs` records the epochs the store id was computed with."""
    settings = {**manifest["settings"], "epochs": epochs}
    grown = new_manifest(settings)
    old = {entry["name"]: entry for entry in manifest["shards"]}
    grown["shards"] = [old.get(entry["name"], entry) for entry in grown["shards"]]
    grown["store_id"] = manifest["store_id"]
    grown["id_epochs"] = manifest.get("id_epochs", manifest["settings"]["epochs"])
    return grown

def shard_plans(manifest: dict) -> list[ShardPlan]:
    return [ShardPlan(s["name"], s["epoch"], s["start"], s["stop"]) for s in manifest["shards"]]


def write_manifest(store, manifest: dict) -> None:
    """Write manifest.json of `store` (a path, URL or StoreLocation) whole: atomically on disk, one put remotely."""

    locate(store).write_bytes(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n")


def load_manifest(store) -> dict:
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
    if shard_plans(manifest) != planned:
        raise StoreError(f"{path}: the shard list does not match the store's settings (edited manifest?); "
                         "re-create the store")
    return manifest


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
    if numbers["dataset.size"] > MAX_SAMPLES or settings.get("values") not in ("log8", "fp16"):
        return f"settings claim {numbers['dataset.size']} samples with values {settings.get('values')!r}"
    per_epoch = -(-numbers["dataset.size"] // numbers["shard_records"])
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
