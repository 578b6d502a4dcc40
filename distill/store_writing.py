"""The teacher stage's side of a store: open it (create, check against the settings, grow),
write whole shards as their records come in, and seal it; a store a failed run started and
wrote nothing useful into is removed.

Rank 0 creates, grows and seals the manifest; every rank writes its own shards (one atomic
file or object put each), so a killed run resumes by labelling only the missing shards.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from distill import distributed
from teacher_logits.errors import UserError
from teacher_logits.location import StoreLocation, locate
from teacher_logits.manifest import (MANIFEST, Manifest, ShardEntry, StoreError, differences, grown_manifest,
                                     load_manifest, new_manifest, write_manifest)
from teacher_logits.schema import StoreSettings, chunk_header
from teacher_logits.shards import write_shard


def open_store(out: StoreLocation, settings: StoreSettings, rank: int) -> Manifest:
    """The store's manifest: created on first run, checked against `settings` on re-runs,
    and grown when the only change is a larger number of epochs."""
    if rank == 0 and not out.exists(MANIFEST):
        if out.is_file():
            raise UserError(f"--out {out} is a file, not a directory: choose a new directory")
        if any(not name.startswith(".") for name in out.names() or []):
            raise UserError(f"--out {out} exists, is not empty and is not a logit store: choose a new directory")
        existed = out.exists()
        try:
            out.makedirs()
            write_manifest(out, new_manifest(settings))
        except OSError as e:
            if not existed and out.exists():
                discard_unstarted(out, remove_dir=True)
            raise UserError(f"--out {out}: cannot write there ({e.strerror}); choose a writable directory") from None
    distributed.barrier()
    manifest = load_manifest(out)
    stored = manifest.settings
    diff = differences(stored.as_dict(), {**settings.as_dict(), "codec_version": stored.codec_version})
    others = [d for d in diff if not d.startswith("epochs:")]
    if others:
        raise UserError(f"--out {out} holds a store made with other settings ({'; '.join(others)} [store != now]): "
                       "use a new --out, or the original settings to resume")
    if settings.epochs < stored.epochs:
        unfinished = "" if manifest.complete else \
            f" (it is unfinished: re-run with --epochs {stored.epochs} to finish it)"
        raise UserError(f"--out {out} holds a store of {stored.epochs} epochs{unfinished}; stores only grow, "
                       f"so --epochs {settings.epochs} is refused: use the existing store (students cycle "
                       "through its stored epochs)")
    if settings.epochs > stored.epochs:
        distributed.barrier()  # every rank has read the old manifest before rank 0 replaces it
        if rank == 0:
            try:
                write_manifest(out, grown_manifest(manifest, settings.epochs))
            except OSError as e:
                raise UserError(f"--out {out}: cannot write manifest.json ({e.strerror}): free space or fix the "
                               "directory, then re-run the same command") from None
        distributed.barrier()
        manifest = load_manifest(out)
    return manifest


class ShardWriter:
    """Labelled columns in, whole shards out: each planned shard is written (one atomic file or
    object put) as soon as its records are in."""

    def __init__(self, out: StoreLocation, todo: list[ShardEntry], manifest: Manifest):
        self.out, self.todo, self.settings = out, todo, manifest.settings
        self.header = chunk_header(manifest)
        self.pending, self.buffered, self.written = [], 0, []
        self.digests: dict[str, tuple[int, str]] = {}  # (size, sha256) of the shards written here

    def add(self, columns: dict[str, np.ndarray]) -> None:
        self.pending.append(columns)
        self.buffered += len(next(iter(columns.values())))
        while len(self.written) < len(self.todo) and self.buffered >= self.todo[len(self.written)].records:
            plan = self.todo[len(self.written)]
            cols = {name: np.concatenate([p[name] for p in self.pending]) for name in self.pending[0]}
            try:
                self.digests[plan.name] = write_shard(self.out, plan, {k: v[:plan.records] for k, v in cols.items()},
                                                      self.header, self.settings.chunk_records)
            except OSError as e:
                raise UserError(f"--out {self.out}: cannot write shard {plan.name} ({e.strerror}): free space "
                               "or fix the directory, then re-run the same command to resume") from e
            self.written.append(plan.name)
            self.pending = [{k: v[plan.records:] for k, v in cols.items()}]
            self.buffered -= plan.records


def discard_unstarted(out: StoreLocation, remove_dir: bool, shards: list[str] = ()) -> None:
    """Remove the manifest, temp files and the given shards of a store this run started."""
    for name in [MANIFEST, *shards]:
        out.remove(name)
    out.sweep_temp_files()
    if remove_dir:
        out.remove_dir()


def seal(out, manifest: Manifest, written: set[str], digests: dict[str, tuple[int, str]] | None = None) -> None:
    """Record the size and sha256 of the shards written now and mark the store complete; the
    manifest is the last file written. `digests` holds what this process wrote; other shards
    (other ranks', a killed run's) are read back. Checksums recorded by an earlier run are
    kept, so a shard damaged since is not blessed."""
    out, digests = locate(out), digests or {}
    present = set(out.names())  # a writable location can list
    sealed = []
    for entry in manifest.shards:
        if entry.sha256 is None or entry.name in written:
            try:
                size, sha256 = digests[entry.name] if entry.name in digests and entry.name in present else \
                    out.size_and_sha256(entry.name)
            except FileNotFoundError:
                raise StoreError(f"{out / entry.name} is missing after all ranks finished: re-run the same "
                                 "command") from None
            entry = replace(entry, bytes=size, sha256=sha256)
        sealed.append(entry)
    manifest.shards, manifest.complete = sealed, True
    write_manifest(out, manifest)
