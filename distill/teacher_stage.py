"""The teacher-logit stage: label E augmented passes of a dataset once, into a store
(distill/store_writing.py opens, writes and seals it). `run` takes a `LabelJob`, the typed
request that tools/save_logits.py builds from its flags and checks.

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
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from distill import distributed
from distill.augment import Mixing, ViewMaker
from distill.device_replay import default_view_params, view_maker
from distill.datasets import DatasetError, build_dataset, fingerprint, labels_of, num_classes_of
from distill.models import FlipAveraged, create_teachers
from distill.batch import Batch
from distill.replay import SeededViews, views_loader
from distill.store_writing import ShardWriter, discard_unstarted, open_store, seal
from distill.store_teachers import TeacherSpec, check_pretrained_heads, teacher_settings
from teacher_logits.codec import MAX_CLASSES, ceil_div
from teacher_logits.manifest import MANIFEST, Manifest, describe_teacher, load_manifest, shard_indices
from teacher_logits.location import StoreLocation, locate
from teacher_logits.errors import UserError
from teacher_logits.schema import StoreSettings, pack_records


@dataclass(frozen=True)
class LabelJob:
    """What one run of the teacher stage is asked to do. tools/save_logits.py builds it from its
    flags (a field for each, of the flag's name) and checks it before anything loads; `run`
    takes it as given and derives what a resumed store decides into a copy."""
    teacher: TeacherSpec  # --teacher/--checkpoint pairs, --pretrained, --teacher-weights
    out: str  # store directory or fsspec URL; an existing store is resumed or grown
    dataset: str
    data_root: str | None
    skip_md5: bool
    split: str  # train or test
    limit: int | None  # label the first N samples; None: all
    epochs: int  # augmented passes stored
    seed: int  # the run seed every view's seed derives from
    aug: str  # the views' recipe (distill/recipes.py)
    mixup: float  # Mixup / CutMix alphas (0: off) and the chance a view is mixed
    cutmix: float
    mix_prob: float
    img_size: int | None  # view resolution; None: the recipe's own
    view_params: str | None  # counter or generators; None: a resumed store's own, else the recipe's default
    topk: int  # teacher probabilities kept per view
    values: str  # value codec: log8 or fp16
    shard_records: int | None  # None: a resumed store's own, else default_shard_records
    chunk_records: int
    batch_size: int
    workers: int  # DataLoader processes building views (capped to the CPUs a rank has)
    device: str  # auto, cpu, cuda or cuda:N
    precision: str  # the teacher's inference precision: fp32 or bf16
    flip_average: bool  # store the teacher's probabilities averaged over each view and its mirror image
    compile: bool  # torch.compile the teacher


@dataclass
class Labelled:
    """Teacher outputs for a run of records, column-wise, ready for the codec."""

    columns: dict[str, np.ndarray]
    correct: int


def store_settings(job: LabelJob, data_fp: dict, maker: ViewMaker, num_classes: int) -> StoreSettings:
    return StoreSettings(job.topk, num_classes, job.values, job.epochs, job.seed, job.shard_records,
                         job.chunk_records, data_fp, maker.fingerprint(),
                         teacher_settings(job.teacher, job.precision, job.flip_average))


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


def load_views(job: LabelJob, stored: StoreSettings | None):
    """(dataset, samples to label, view maker): what a store's views are made of. A store being
    resumed or grown (`stored`) keeps its own view parameters unless the job names them."""
    dataset = build_dataset(job.dataset, job.data_root, train=job.split == "train", skip_md5=job.skip_md5)
    if job.limit is not None and job.limit > len(dataset):
        raise UserError(f"--limit {job.limit} exceeds the {len(dataset)} samples of {job.dataset} {job.split}: "
                       "lower it, or leave it out to label them all")
    size = job.limit or len(dataset)
    mixing = Mixing(job.mixup, job.cutmix, job.mix_prob)
    kept = stored.augmentation.get("params", "generators") if stored is not None else None
    params = job.view_params or kept or default_view_params(dataset, job.aug, job.img_size)
    return dataset, size, view_maker(dataset, job.aug, mixing, job.img_size, size, params)


def load_teacher(job: LabelJob, device, dataset):
    """The teacher (or ensemble) on `device`, checked against the data and the job."""
    spec, classes = job.teacher, num_classes_of(job.dataset, dataset)
    check_pretrained_heads(spec, classes, job.dataset)
    teacher = create_teachers(spec.names, spec.checkpoints, spec.pretrained, classes, spec.weights).to(device)
    teacher = FlipAveraged(teacher) if job.flip_average else teacher  # the store records which
    if teacher.num_classes > MAX_CLASSES:
        raise UserError(f"--teacher {' '.join(spec.names)} has {teacher.num_classes} classes; the store holds at "
                       f"most {MAX_CLASSES} (uint16 class indices): use a teacher with fewer classes")
    if job.topk > teacher.num_classes:
        raise UserError(f"--topk {job.topk} exceeds the teacher's {teacher.num_classes} classes: "
                       f"pass --topk {teacher.num_classes} or less")
    return teacher


def complete_already(out: StoreLocation, job: LabelJob, data_fp: dict, maker, rank: int) -> Manifest | None:
    """The manifest of the store at `out` if it is complete, made with these settings and holds
    every shard: a re-run then has nothing to do, and builds no teacher (its settings name the
    same checkpoint, hence the same classes). None otherwise, and nothing is written."""
    if not out.exists(MANIFEST):
        return None
    stored = load_manifest(out)
    if not stored.complete or job.epochs != stored.settings.epochs:
        return None
    manifest = open_store(out, store_settings(job, data_fp, maker, stored.settings.num_classes), rank)
    present = set(out.names() or [])
    return manifest if all(p.name in present for p in manifest.shards) else None


def todo_records(settings: StoreSettings, todo: list) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, sample indices) of the records of shards `todo`, in order."""
    if not todo:
        return np.zeros(0, int), np.zeros(0, int)
    return (np.concatenate([np.full(p.records, p.epoch) for p in todo]),
            np.concatenate([shard_indices(settings, p) for p in todo]))


def run(job: LabelJob) -> dict:
    """Label every missing shard of the store at job.out; return summary numbers."""
    out = locate(job.out)  # a missing back-end or a read-only URL is refused before anything loads
    out.check_writable()
    out_existed, fresh = out.exists(), not out.exists(MANIFEST)
    device = distributed.resolve_device(job.device)
    rank, world = distributed.init_process_group(device)
    distributed.set_rank_threads()
    workers = distributed.capped_workers(job.workers, "--workers", say=rank == 0)
    stored = None if fresh else load_manifest(out).settings  # a store being resumed or grown keeps its own
    dataset, size, maker = load_views(job, stored)
    if job.shard_records is None:
        shard_records = stored.shard_records if stored else default_shard_records(size, job.chunk_records)
        job = replace(job, shard_records=shard_records)  # a copy: the caller's job stays as given
    data_fp = fingerprint(job.dataset, dataset, job.split == "train", size)
    done = complete_already(out, job, data_fp, maker, rank)
    if done is not None:
        return {"labelled": 0, "shards_written": 0, "store": str(out), "epochs": done.settings.epochs,
                "records": done.records}
    teacher = load_teacher(job, device, dataset)
    manifest = open_store(out, store_settings(job, data_fp, maker, teacher.num_classes), rank)
    settings = manifest.settings
    present = set(out.names() or [])  # one listing, not one request per shard
    missing = [p for p in manifest.shards if p.name not in present]
    if rank == 0:
        out.sweep_temp_files()  # half-written files of a killed run
    distributed.barrier()  # every rank has listed `missing` before any rank writes
    todo = missing[rank::world]
    views = SeededViews(maker, job.seed, *todo_records(settings, todo), labels_of(dataset)[:size])
    loader = views_loader(views, job.batch_size, workers, pin_memory=device.type == "cuda")
    writer, correct = ShardWriter(out, todo, manifest), 0
    # not part of the store's settings: a compiled teacher computes the same function, re-fused
    labeller = torch.compile(teacher) if job.compile and todo else teacher
    with tqdm(total=len(views), unit="img", desc=f"labelling {len(todo)} shards", disable=rank != 0,
              file=sys.stderr, dynamic_ncols=True) as bar:
        try:
            for batch in loader:
                labelled = label_batch(labeller, batch, settings, device, job.precision)
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


