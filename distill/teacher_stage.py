"""The teacher-logit stage: label E augmented passes of a dataset once, into a store.

Work is cut into shards (one epoch's slice of a seeded sample order). Each rank
labels the shards `rank::world` that do not exist yet, so a re-run after a crash
resumes where it stopped; rank 0 seals the manifest when every shard exists.

The teacher may be an ensemble (several --teacher/--checkpoint pairs): a
`TeacherEnsemble` whose output is the log of the weighted mean probability, so the
rest of the stage treats it as one teacher. A re-run with a larger --epochs grows
the store: the manifest is rewritten unsealed with the new epochs' shards (old
entries and the store id kept), the missing shards are labelled as on any resume,
and the manifest is sealed again.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from distill import distributed
from distill.augment import Mixing, ViewMaker
from distill.datasets import DatasetError, build_dataset, fingerprint, labels_of, num_classes_of
from distill.models import create_teachers
from distill.models.teachers import ensemble_spec
from distill.replay import TeacherViews
from teacher_logits.codec import MAX_CLASSES, encode_topk, index_dtype
from teacher_logits.manifest import (MANIFEST, StoreError, describe_teacher, differences, grown_manifest,
                                     load_manifest, new_manifest, sha256_file, shard_indices, shard_plans, teacher_members,
                                     write_manifest)
from teacher_logits.location import StoreLocation, locate
from teacher_logits.shards import write_shard


class BadInput(ValueError):
    """A flag or file the user must change; the message names it and the fix."""


@dataclass
class Labelled:
    """Teacher outputs for a run of records, column-wise, ready for the codec."""

    columns: dict[str, np.ndarray]
    correct: int


def file_sha256(path: str | None) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise BadInput(f"--checkpoint {path}: no such file; pass the path of the teacher's weights file")
    return sha256_file(path)


def teacher_settings(names: list[str], checkpoints: list[str | None], pretrained: bool, weights: list[float],
                     precision: str) -> dict:
    """The teacher fingerprint of a store. One teacher: {name, checkpoint_sha256, pretrained,
    precision}, as stores have always recorded it. Several: every member's {name,
    checkpoint_sha256, pretrained}, the normalised weights, and the precision."""
    if len(names) == 1:
        return {"name": names[0], "checkpoint_sha256": file_sha256(checkpoints[0]), "pretrained": bool(pretrained),
                "precision": precision}
    return {"members": [{"name": n, "checkpoint_sha256": file_sha256(c), "pretrained": bool(pretrained)}
                        for n, c in zip(names, checkpoints)],
            "weights": list(weights), "precision": precision}


def store_teachers(stored: dict, names, checkpoints, pretrained: bool) -> tuple[list, list, list[float]]:
    """(names, checkpoints, weights) to rebuild a store's teacher or ensemble from the given
    --teacher/--checkpoint pairs, refused (naming the difference) unless they are the teachers
    in the store's manifest, in its order. The weights are the store's."""
    names, checkpoints, _ = ensemble_spec(names, checkpoints, pretrained)
    members = teacher_members(stored)
    given = [{"name": n, "checkpoint_sha256": file_sha256(c), "pretrained": bool(pretrained)}
             for n, c in zip(names, checkpoints)]
    if len(given) != len(members):
        raise BadInput(f"--teacher: the store was made by {len(members)} teacher(s) ({describe_teacher(stored)}), "
                       f"{len(given)} given ({' '.join(names)}): pass each of the store's teachers with its "
                       "--checkpoint, in the store's order")

    def keyed(ms):
        return {"teacher": ms[0]} if len(ms) == 1 else {f"teacher.members[{i}]": m for i, m in enumerate(ms)}

    diff = differences(keyed(members), keyed(given))
    if diff:
        raise BadInput(f"--teacher/--checkpoint do not match the teachers the store was made with "
                       f"({'; '.join(diff)} [store != given]): pass the store's teachers, each with its "
                       "--checkpoint, in the store's order")
    return names, checkpoints, stored.get("weights", [1.0])


def store_settings(args, data_fp: dict, maker: ViewMaker, num_classes: int) -> dict:
    names, checkpoints, weights = teacher_spec(args)
    return {"k": args.topk, "num_classes": num_classes, "values": args.values, "epochs": args.epochs,
            "seed": args.seed, "shard_records": args.shard_records, "chunk_records": args.chunk_records,
            "dataset": data_fp, "augmentation": maker.fingerprint(),
            "teacher": teacher_settings(names, checkpoints, args.pretrained, weights, args.precision)}


def teacher_spec(args) -> tuple[list[str], list[str | None], list[float]]:
    """(names, checkpoints, normalised weights) of save_logits' --teacher/--checkpoint pairs."""
    return ensemble_spec(args.teacher, args.checkpoint, args.pretrained, getattr(args, "teacher_weights", None))


def open_store(out: StoreLocation, settings: dict, rank: int) -> dict:
    """The store's manifest: created on first run, checked against `settings` on re-runs,
    and grown when the only change is a larger number of epochs."""
    if rank == 0 and not out.exists(MANIFEST):
        if out.is_file():
            raise BadInput(f"--out {out} is a file, not a directory: choose a new directory")
        if any(not name.startswith(".") for name in out.names() or []):
            raise BadInput(f"--out {out} exists, is not empty and is not a logit store: choose a new directory")
        existed = out.exists()
        try:
            out.makedirs()
            write_manifest(out, new_manifest(settings))
        except OSError as e:
            if not existed and out.exists():
                _discard_unstarted(out, remove_dir=True)
            raise BadInput(f"--out {out}: cannot write there ({e.strerror}); choose a writable directory") from None
    distributed.barrier()
    manifest = load_manifest(out)
    stored = manifest["settings"]
    diff = differences(stored, {**settings, "codec_version": stored["codec_version"]})
    others = [d for d in diff if not d.startswith("epochs:")]
    if others:
        raise BadInput(f"--out {out} holds a store made with other settings ({'; '.join(others)} [store != now]): "
                       "use a new --out, or the original settings to resume")
    if settings["epochs"] < stored["epochs"]:
        unfinished = "" if manifest["complete"] else \
            f" (it is unfinished: re-run with --epochs {stored['epochs']} to finish it)"
        raise BadInput(f"--out {out} holds a store of {stored['epochs']} epochs{unfinished}; stores only grow, "
                       f"so --epochs {settings['epochs']} is refused: use the existing store (students cycle "
                       "through its stored epochs)")
    if settings["epochs"] > stored["epochs"]:
        distributed.barrier()  # every rank has read the old manifest before rank 0 replaces it
        if rank == 0:
            try:
                write_manifest(out, grown_manifest(manifest, settings["epochs"]))
            except OSError as e:
                raise BadInput(f"--out {out}: cannot write manifest.json ({e.strerror}): free space or fix the "
                               "directory, then re-run the same command") from None
        distributed.barrier()
        manifest = load_manifest(out)
    return manifest


def check_pretrained_heads(names, checkpoints, pretrained: bool, classes: int, dataset: str) -> None:
    """Refuse a hub teacher whose pretrained head has another class count than the data: timm
    would silently give it a random head, and the store would hold noise."""
    import timm

    for name, checkpoint in zip(names, checkpoints):
        if not pretrained or checkpoint is not None or not timm.is_model(name):
            continue
        cfg = timm.models.get_pretrained_cfg(name)
        head = getattr(cfg, "num_classes", None)
        if head and head != classes:
            raise BadInput(f"--teacher {name}: its pretrained head has {head} classes, --dataset {dataset} has "
                           f"{classes}: fine-tune it first (tools/train_teacher.py --teacher {name} --pretrained "
                           f"--dataset {dataset} ...) and pass --checkpoint RUN/final/model.pt")


@torch.no_grad()
def label_batch(teacher, batch: dict, settings: dict, device, precision: str) -> Labelled:
    view = batch["view"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = teacher(view)
    logits = logits.float()
    if not torch.isfinite(logits).all():
        bad = batch["index"][~torch.isfinite(logits).all(1).cpu()][:3].tolist()
        raise BadInput(f"teacher {describe_teacher(settings['teacher'])} gave NaN/inf logits for samples {bad}: "
                       "check the checkpoint (or use --precision fp32)")
    # top-k on the device: only (N, k) values and indices cross to the host, not (N, C) probabilities
    top = logits.softmax(dim=1).topk(settings["k"], dim=1)
    top_val, top_idx = top.values.cpu().numpy(), top.indices.cpu().numpy()
    columns = {"index": batch["index"].numpy().astype(np.int64), "seed": batch["seed"].numpy().astype("<u4"),
               "topk_idx": top_idx.astype(index_dtype(settings["num_classes"])),
               "topk_val": encode_topk(top_val, settings["num_classes"], settings["values"])}
    if Mixing(**settings["augmentation"]["mixing"]).enabled:
        columns["partner"] = batch["partner"].numpy().astype("<i4")
        columns["lam"] = batch["lam"].numpy().astype("<f2")
    dominant = torch.where(batch["lam"] >= 0.5, batch["label"], batch["partner_label"]).numpy()
    return Labelled(columns, int((top_idx[:, 0] == dominant).sum()))


def run(args) -> dict:
    """Label every missing shard of the store at args.out; return summary numbers."""
    for flag in ("epochs", "topk", "batch_size", "shard_records", "chunk_records"):
        if getattr(args, flag) <= 0:
            raise BadInput(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.limit is not None and args.limit <= 0:
        raise BadInput(f"--limit must be positive, got {args.limit}")
    names, checkpoints, weights = teacher_spec(args)  # counts and weights, before anything loads
    out = locate(args.out)  # a missing back-end or a read-only URL is refused before anything loads
    out.check_writable()
    out_existed, fresh = out.exists(), not out.exists(MANIFEST)
    for checkpoint in checkpoints:
        if checkpoint is not None and not Path(checkpoint).is_file():  # before the dataset and teacher load
            raise BadInput(f"--checkpoint {checkpoint}: no such file; pass the path of the teacher's weights file")
    device = distributed.resolve_device(args.device)
    rank, world = distributed.init_process_group(device)
    dataset = build_dataset(args.dataset, args.data_root, train=args.split == "train", skip_md5=args.skip_md5)
    if args.limit is not None and args.limit > len(dataset):
        raise BadInput(f"--limit {args.limit} exceeds the {len(dataset)} samples of {args.dataset} {args.split}: "
                       "lower it, or leave it out to label them all")
    size = args.limit or len(dataset)
    classes = num_classes_of(args.dataset, dataset)
    check_pretrained_heads(names, checkpoints, args.pretrained, classes, args.dataset)
    teacher = create_teachers(names, checkpoints, args.pretrained, classes, weights).to(device)
    if teacher.num_classes > MAX_CLASSES:
        raise BadInput(f"--teacher {' '.join(names)} has {teacher.num_classes} classes; the store holds at most "
                       f"{MAX_CLASSES} (uint16 class indices): use a teacher with fewer classes")
    if args.topk > teacher.num_classes:
        raise BadInput(f"--topk {args.topk} exceeds the teacher's {teacher.num_classes} classes: "
                       f"pass --topk {teacher.num_classes} or less")
    mixing = Mixing(args.mixup, args.cutmix, args.mix_prob)
    if getattr(args, "img_size", None) is not None and args.img_size <= 0:
        raise BadInput(f"--img-size must be positive, got {args.img_size}")
    maker = ViewMaker(dataset, args.aug, mixing, resolution=getattr(args, "img_size", None), num_samples=size)
    settings = store_settings(args, fingerprint(args.dataset, dataset, args.split == "train", size), maker,
                              teacher.num_classes)
    manifest = open_store(out, settings, rank)
    settings = manifest["settings"]
    present = set(out.names() or [])  # one listing, not one request per shard
    missing = [p for p in shard_plans(manifest) if p.name not in present]
    if rank == 0:
        out.sweep_temp_files()  # half-written files of a killed run
    distributed.barrier()  # every rank has listed `missing` before any rank writes
    todo = missing[rank::world]
    plan_indices = [shard_indices(settings, p) for p in todo]
    epochs = np.concatenate([np.full(p.records, p.epoch) for p in todo]) if todo else np.zeros(0, int)
    indices = np.concatenate(plan_indices) if todo else np.zeros(0, int)
    views = TeacherViews(maker, args.seed, epochs, indices, labels_of(dataset)[:size])
    loader = DataLoader(views, batch_size=args.batch_size, num_workers=args.workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    header = {"store_id": manifest["store_id"], "values": settings["values"], "k": settings["k"],
              "num_classes": settings["num_classes"]}
    bar = tqdm(total=len(views), unit="img", desc=f"labelling {len(todo)} shards", disable=rank != 0,
               file=sys.stderr, dynamic_ncols=True)
    pending: list[dict[str, np.ndarray]] = []
    digests: dict[str, tuple[int, str]] = {}  # (size, sha256) of the shards this rank wrote
    buffered, shard, correct = 0, 0, 0
    try:
        for batch in loader:
            labelled = label_batch(teacher, batch, settings, device, args.precision)
            pending.append(labelled.columns)
            buffered += len(batch["index"])
            correct += labelled.correct
            bar.update(len(batch["index"]))
            while shard < len(todo) and buffered >= todo[shard].records:
                cols = {name: np.concatenate([p[name] for p in pending]) for name in pending[0]}
                n = todo[shard].records
                try:
                    digests[todo[shard].name] = write_shard(out, todo[shard], {k: v[:n] for k, v in cols.items()},
                                                            header, settings["chunk_records"])
                except OSError as e:
                    raise BadInput(f"--out {out}: cannot write shard {todo[shard].name} ({e.strerror}): free space "
                                   "or fix the directory, then re-run the same command to resume") from e
                pending, buffered, shard = [{k: v[n:] for k, v in cols.items()}], buffered - n, shard + 1
    except (ValueError, OSError, DatasetError) as e:
        bar.close()
        # A store this run created and wrote nothing into would only block the corrected re-run
        # (its settings, e.g. the checkpoint's sha256, differ): remove it. An image that cannot be
        # decoded voids the shards written before it too: fixing the folder changes its fingerprint.
        if fresh and world == 1 and (shard == 0 or isinstance(e, DatasetError)):
            _discard_unstarted(out, remove_dir=not out_existed, shards=[p.name for p in todo[:shard]])
        raise
    bar.close()
    labelled_count, correct = distributed.all_reduce_sum([len(views), correct], device)
    distributed.barrier()
    if rank == 0:
        seal(out, manifest, {p.name for p in missing}, digests)
    distributed.barrier()
    return {"labelled": int(labelled_count), "teacher_top1": 100.0 * correct / max(labelled_count, 1),
            "shards_written": len(todo), "store": str(out)}


def _discard_unstarted(out: StoreLocation, remove_dir: bool, shards: list[str] = ()) -> None:
    """Remove the manifest, temp files and the given shards of a store this run started."""
    for name in [MANIFEST, *shards]:
        out.remove(name)
    out.sweep_temp_files()
    if remove_dir:
        out.remove_dir()


def seal(out: StoreLocation, manifest: dict, written: set[str], digests: dict[str, tuple[int, str]]) -> None:
    """Record the size and sha256 of the shards written now and mark the store complete; the
    manifest is the last file written. `digests` holds what this process wrote; other shards
    (other ranks', a killed run's) are read back. Checksums recorded by an earlier run are
    kept, so a shard damaged since is not blessed."""
    present = set(out.names())  # a writable location can list
    for entry in manifest["shards"]:
        name = entry["name"]
        if "sha256" in entry and name not in written:
            continue
        if name in digests and name in present:
            entry["bytes"], entry["sha256"] = digests[name]
            continue
        try:
            entry["bytes"], entry["sha256"] = out.size_and_sha256(name)
        except FileNotFoundError:
            raise StoreError(f"{out / name} is missing after all ranks finished: re-run the same command") from None
    manifest["complete"] = True
    write_manifest(out, manifest)


@torch.no_grad()
def check_teacher(store, teacher, maker: ViewMaker, count: int, device, batch_size: int = 128,
                  seed: int = 0) -> dict:
    """Re-run the teacher on `count` replayed views (TinyViT's check-saved-logits):
    top-1 agreement with the stored top-1, and the mean |p - stored p| over stored entries."""
    from teacher_logits.codec import decode_values

    entries = store.shards()
    sizes = np.array([e["stop"] - e["start"] for e in entries])
    picks = np.sort(np.random.default_rng(seed).choice(sizes.sum(), size=min(count, sizes.sum()), replace=False))
    shard_of = np.searchsorted(np.cumsum(sizes), picks, side="right")
    rows = []
    for s in np.unique(shard_of):
        cols = store.read(entries[s])
        for r in picks[shard_of == s] - (np.cumsum(sizes)[s] - sizes[s]):
            rows.append({name: col[r] for name, col in cols.items()})
    agree, abs_err, n_vals = 0, 0.0, 0
    for a in range(0, len(rows), batch_size):
        part = rows[a : a + batch_size]
        views = torch.stack([maker(int(r["index"]), int(r["seed"]))[0] for r in part]).to(device)
        probs = teacher(views).float().softmax(1)
        idx = torch.from_numpy(np.stack([r["topk_idx"] for r in part]).astype(np.int64)).to(device)
        stored, _ = decode_values(np.stack([r["topk_val"] for r in part]), store.settings["values"],
                                  store.num_classes)
        agree += int((probs.argmax(1) == idx[:, 0]).sum())
        abs_err += float(np.abs(probs.gather(1, idx).cpu().numpy() - stored).sum())  # (N, k) to the host, not (N, C)
        n_vals += stored.size
    return {"checked": len(rows), "top1_agreement": 100.0 * agree / max(len(rows), 1),
            "mean_abs_value_error": abs_err / max(n_vals, 1)}
