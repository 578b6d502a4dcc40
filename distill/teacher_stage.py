"""The teacher-logit stage: label E augmented passes of a dataset once, into a store
(distill/store_writing.py opens, writes and seals it).

Work is cut into shards (one epoch's slice of a seeded sample order). Each rank
labels the shards `rank::world` that do not exist yet, so a re-run after a crash
resumes where it stopped; rank 0 seals the manifest when every shard exists.

The teacher may be an ensemble (several --teacher/--checkpoint pairs), flip-averaged or not:
one module whose output is the log of the mean probability, treated as one teacher. A re-run
with a larger --epochs grows the store: the manifest is rewritten unsealed with the new
epochs' shards (old entries and the store id kept), the missing shards are labelled as on any
resume, and the manifest is sealed again.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from distill import distributed
from distill.augment import Mixing, ViewMaker
from distill.cli import check_flag_bounds
from distill.config_tree import Bounds
from distill.device_replay import default_view_params, view_maker
from distill.datasets import DatasetError, build_dataset, fingerprint, labels_of, num_classes_of
from distill.models import FlipAveraged, create_teachers
from distill.models.registry import check_model_name
from distill.batch import Batch
from distill.replay import SeededViews, views_loader
from distill.store_writing import ShardWriter, discard_unstarted, open_store, seal
from distill.store_teachers import check_pretrained_heads, teacher_settings, teacher_spec
from teacher_logits.codec import MAX_CLASSES, ceil_div
from teacher_logits.manifest import MANIFEST, Manifest, describe_teacher, load_manifest, shard_indices
from teacher_logits.location import StoreLocation, locate
from teacher_logits.errors import UserError
from teacher_logits.schema import StoreSettings, pack_records


@dataclass
class Labelled:
    """Teacher outputs for a run of records, column-wise, ready for the codec."""

    columns: dict[str, np.ndarray]
    correct: int


def store_settings(args, data_fp: dict, maker: ViewMaker, num_classes: int) -> StoreSettings:
    names, checkpoints, weights = teacher_spec(args)
    return StoreSettings(args.topk, num_classes, args.values, args.epochs, args.seed, args.shard_records,
                         args.chunk_records, data_fp, maker.fingerprint(),
                         teacher_settings(names, checkpoints, args.pretrained, weights, args.precision,
                                          args.flip_average))


@torch.no_grad()
def label_batch(teacher, batch: Batch, settings: StoreSettings, device, precision: str) -> Labelled:
    view = batch.view.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = teacher(view)
    logits = logits.float()
    if not torch.isfinite(logits).all():
        bad = batch.index[~torch.isfinite(logits).all(1).cpu()][:3].tolist()
        raise UserError(f"teacher {describe_teacher(settings.teacher)} gave NaN/inf logits for samples {bad}: "
                       "check the checkpoint (or use --precision fp32)")
    # top-k on the device: only (N, k) values and indices cross to the host, not (N, C) probabilities
    top = logits.softmax(dim=1).topk(settings.k, dim=1)
    top_val, top_idx = top.values.cpu().numpy(), top.indices.cpu().numpy()
    mixed = Mixing(**settings.augmentation["mixing"]).enabled
    columns = pack_records(batch.index.numpy(), batch.seed.numpy(), top_idx, top_val, settings,
                           batch.mix_partner.numpy() if mixed else None, batch.lam.numpy() if mixed else None)
    dominant = torch.where(batch.lam >= 0.5, batch.label, batch.partner_label).numpy()
    return Labelled(columns, int((top_idx[:, 0] == dominant).sum()))


def default_shard_records(size: int, chunk_records: int) -> int:
    """Records per shard without --shard-records: an epoch in about 64 shards, so that many
    ranks read whole shards of their own, but never smaller than one compressed chunk (a
    smaller shard compresses worse: CIFAR-10 at k=10 stores 17.1 B/record in 4,096-record
    shards, 21.2 in 782-record ones) nor larger than 10,000 records (cheap to resume)."""
    return max(min(10_000, ceil_div(size, 64)), min(chunk_records, 10_000))


def check_flags(args, names, checkpoints) -> None:
    """Numbers, names and files that are wrong whatever the data: refused before anything loads."""
    for name in names:  # the registry's names and tags
        check_model_name(name, "--teacher", args.pretrained)
    for flag in ("epochs", "topk", "batch_size", "chunk_records", "limit", "img_size", "shard_records"):
        if getattr(args, flag, None) is not None and getattr(args, flag) <= 0:  # the last three may be unset
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    check_flag_bounds(args, {"workers": "data.workers", "seed": "train.seed", "img_size": "data.img_size",
                             "mixup": Bounds(0, 100), "cutmix": Bounds(0, 100), "mix_prob": Bounds(0, 1)})
    for checkpoint in checkpoints:
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise UserError(f"--checkpoint {checkpoint}: no such file; pass the path of the teacher's weights file")


def load_views(args, stored: StoreSettings | None):
    """(dataset, samples to label, view maker): what a store's views are made of. A store being
    resumed or grown (`stored`) keeps its own view parameters unless --view-params names them."""
    dataset = build_dataset(args.dataset, args.data_root, train=args.split == "train", skip_md5=args.skip_md5)
    if args.limit is not None and args.limit > len(dataset):
        raise UserError(f"--limit {args.limit} exceeds the {len(dataset)} samples of {args.dataset} {args.split}: "
                       "lower it, or leave it out to label them all")
    size = args.limit or len(dataset)
    mixing, resolution = Mixing(args.mixup, args.cutmix, args.mix_prob), getattr(args, "img_size", None)
    kept = stored.augmentation.get("params", "generators") if stored is not None else None
    params = getattr(args, "view_params", None) or kept or default_view_params(dataset, args.aug, resolution)
    return dataset, size, view_maker(dataset, args.aug, mixing, resolution, size, params)


def load_teacher(args, names, checkpoints, weights, device, dataset):
    """The teacher (or ensemble) on `device`, checked against the data and the flags."""
    classes = num_classes_of(args.dataset, dataset)
    check_pretrained_heads(names, checkpoints, args.pretrained, classes, args.dataset)
    teacher = create_teachers(names, checkpoints, args.pretrained, classes, weights).to(device)
    teacher = FlipAveraged(teacher) if args.flip_average else teacher  # the store records which
    if teacher.num_classes > MAX_CLASSES:
        raise UserError(f"--teacher {' '.join(names)} has {teacher.num_classes} classes; the store holds at most "
                       f"{MAX_CLASSES} (uint16 class indices): use a teacher with fewer classes")
    if args.topk > teacher.num_classes:
        raise UserError(f"--topk {args.topk} exceeds the teacher's {teacher.num_classes} classes: "
                       f"pass --topk {teacher.num_classes} or less")
    return teacher


def complete_already(out: StoreLocation, args, data_fp: dict, maker, rank: int) -> Manifest | None:
    """The manifest of the store at `out` if it is complete, made with these settings and holds
    every shard: a re-run then has nothing to do, and builds no teacher (its settings name the
    same checkpoint, hence the same classes). None otherwise, and nothing is written."""
    if not out.exists(MANIFEST):
        return None
    stored = load_manifest(out)
    if not stored.complete or args.epochs != stored.settings.epochs:
        return None
    manifest = open_store(out, store_settings(args, data_fp, maker, stored.settings.num_classes), rank)
    present = set(out.names() or [])
    return manifest if all(p.name in present for p in manifest.shards) else None


def run(args) -> dict:
    """Label every missing shard of the store at args.out; return summary numbers."""
    names, checkpoints, weights = teacher_spec(args)  # counts and weights, before anything loads
    check_flags(args, names, checkpoints)
    out = locate(args.out)  # a missing back-end or a read-only URL is refused before anything loads
    out.check_writable()
    out_existed, fresh = out.exists(), not out.exists(MANIFEST)
    device = distributed.resolve_device(args.device)
    rank, world = distributed.init_process_group(device)
    distributed.set_rank_threads()
    args.workers = distributed.capped_workers(args.workers, "--workers", say=rank == 0)
    stored = None if fresh else load_manifest(out).settings  # a store being resumed or grown keeps its own
    dataset, size, maker = load_views(args, stored)
    if args.shard_records is None:
        args.shard_records = stored.shard_records if stored else default_shard_records(size, args.chunk_records)
    data_fp = fingerprint(args.dataset, dataset, args.split == "train", size)
    done = complete_already(out, args, data_fp, maker, rank)
    if done is not None:
        return {"labelled": 0, "shards_written": 0, "store": str(out), "epochs": done.settings.epochs,
                "records": done.records}
    teacher = load_teacher(args, names, checkpoints, weights, device, dataset)
    manifest = open_store(out, store_settings(args, data_fp, maker, teacher.num_classes), rank)
    settings = manifest.settings
    present = set(out.names() or [])  # one listing, not one request per shard
    missing = [p for p in manifest.shards if p.name not in present]
    if rank == 0:
        out.sweep_temp_files()  # half-written files of a killed run
    distributed.barrier()  # every rank has listed `missing` before any rank writes
    todo = missing[rank::world]
    epochs = np.concatenate([np.full(p.records, p.epoch) for p in todo]) if todo else np.zeros(0, int)
    indices = np.concatenate([shard_indices(settings, p) for p in todo]) if todo else np.zeros(0, int)
    views = SeededViews(maker, args.seed, epochs, indices, labels_of(dataset)[:size])
    loader = views_loader(views, args.batch_size, args.workers, pin_memory=device.type == "cuda")
    writer, correct = ShardWriter(out, todo, manifest), 0
    # not part of the store's settings: a compiled teacher computes the same function, re-fused
    labeller = torch.compile(teacher) if args.compile and todo else teacher
    with tqdm(total=len(views), unit="img", desc=f"labelling {len(todo)} shards", disable=rank != 0,
              file=sys.stderr, dynamic_ncols=True) as bar:
        try:
            for batch in loader:
                labelled = label_batch(labeller, batch, settings, device, args.precision)
                writer.add(labelled.columns)
                correct += labelled.correct
                bar.update(len(batch))
        except BaseException as e:  # bad input, a full disk, Ctrl-C, a bug: whatever stops the run
            # A store this run created and wrote nothing into would only block the corrected re-run
            # (its settings, e.g. the checkpoint's sha256, differ): remove it. An image that cannot be
            # decoded voids the shards written before it too: fixing the folder changes its fingerprint.
            if fresh and world == 1 and (not writer.written or isinstance(e, DatasetError)):
                discard_unstarted(out, remove_dir=not out_existed, shards=writer.written)
            raise
    labelled_count, correct = distributed.all_reduce_sum([len(views), correct], device)
    distributed.barrier()
    if rank == 0:
        seal(out, manifest, {p.name for p in missing}, writer.digests)
    distributed.barrier()
    return {"labelled": int(labelled_count), "teacher_top1": 100.0 * correct / max(labelled_count, 1),
            "shards_written": len(missing), "store": str(out)}  # every rank's: all were written by now


