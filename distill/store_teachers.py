"""Which teachers made a store: their fingerprint in the manifest, the checks that given
--teacher/--checkpoint pairs are those teachers, and the re-run of the teacher on replayed
views (verify_logits --check, TinyViT's check-saved-logits).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from distill.augment import ViewMaker
from distill.input_rules import check_file
from distill.models.teachers import ensemble_spec
from distill.models.weights import weights_file
from teacher_logits.errors import UserError
from teacher_logits.files import sha256_file
from teacher_logits.manifest import describe_teacher, differences, teacher_members
from teacher_logits.schema import StoredRecords


CHECKPOINT_FIX = "pass the path of the teacher's weights file"


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher (or ensemble) a store is labelled by, as asked for: its members' names, their
    weights files (None: the pretrained weights alone) and the normalised ensemble weights."""
    names: tuple[str, ...]
    checkpoints: tuple[str | None, ...]
    weights: tuple[float, ...]
    pretrained: bool


def teacher_spec(names, checkpoints, pretrained: bool, weights=None) -> TeacherSpec:
    """The TeacherSpec of --teacher/--checkpoint pairs (and --teacher-weights), counts and weights
    checked (models.teachers.ensemble_spec); a checkpoint that is an export or run folder is its
    weights file (models.weights.weights_file)."""
    names, checkpoints, weights = ensemble_spec(names, checkpoints, pretrained, weights)
    return TeacherSpec(tuple(names), tuple(None if c is None else str(weights_file(c)) for c in checkpoints),
                       tuple(weights), bool(pretrained))


def file_sha256(path: str | None) -> str | None:
    if path is None:
        return None
    check_file(path, "--checkpoint", CHECKPOINT_FIX)
    return sha256_file(path)


def teacher_settings(spec: TeacherSpec, precision: str, flip_average: bool = False) -> dict:
    """The teacher fingerprint of a store. One teacher: {name, checkpoint_sha256, pretrained,
    precision}, as stores have always recorded it. Several: every member's {name,
    checkpoint_sha256, pretrained}, the normalised weights, and the precision. A store of
    flip-averaged targets (`FlipAveraged`) adds flip_average: true; others keep the old keys."""
    members = member_fingerprints(spec.names, spec.checkpoints, spec.pretrained)
    if len(members) == 1:
        found = {**members[0], "precision": precision}
    else:
        found = {"members": members, "weights": list(spec.weights), "precision": precision}
    return found | ({"flip_average": True} if flip_average else {})


def member_fingerprints(names, checkpoints, pretrained: bool) -> list[dict]:
    """Each teacher's {name, checkpoint_sha256, pretrained}: what a store records of a member,
    and what given --teacher/--checkpoint pairs are compared with."""
    return [{"name": n, "checkpoint_sha256": file_sha256(c), "pretrained": bool(pretrained)}
            for n, c in zip(names, checkpoints)]


def flip_averaged(stored: dict) -> bool:
    """Whether a store's targets average the teacher over each view and its mirror image."""
    return bool(stored.get("flip_average", False))


def store_teachers(stored: dict, names, checkpoints, pretrained: bool) -> tuple[list, list, list[float]]:
    """(names, checkpoints, weights) to rebuild a store's teacher or ensemble from the given
    --teacher/--checkpoint pairs, refused (naming the difference) unless they are the teachers
    in the store's manifest, in its order. The weights are the store's."""
    names, checkpoints, _ = ensemble_spec(names, checkpoints, pretrained)
    members = teacher_members(stored)
    given = member_fingerprints(names, checkpoints, pretrained)
    if len(given) != len(members):
        raise UserError(f"--teacher: the store was made by {len(members)} teacher(s) ({describe_teacher(stored)}), "
                       f"{len(given)} given ({' '.join(names)}): pass each of the store's teachers with its "
                       "--checkpoint, in the store's order")

    def keyed(ms):
        return {"teacher": ms[0]} if len(ms) == 1 else {f"teacher.members[{i}]": m for i, m in enumerate(ms)}

    diff = differences(keyed(members), keyed(given))
    if diff:
        raise UserError(f"--teacher/--checkpoint do not match the teachers the store was made with "
                       f"({'; '.join(diff)} [store != given]): pass the store's teachers, each with its "
                       "--checkpoint, in the store's order")
    return names, checkpoints, stored.get("weights", [1.0])


def check_pretrained_heads(spec: TeacherSpec, classes: int, dataset: str) -> None:
    """Refuse a hub teacher whose pretrained head has another class count than the data: timm
    would silently give it a random head, and the store would hold noise."""
    import timm

    for name, checkpoint in zip(spec.names, spec.checkpoints):
        if not spec.pretrained or checkpoint is not None or not timm.is_model(name):
            continue
        cfg = timm.models.get_pretrained_cfg(name)
        head = getattr(cfg, "num_classes", None)
        if head and head != classes:
            raise UserError(f"--teacher {name}: its pretrained head has {head} classes, --dataset {dataset} has "
                           f"{classes}: fine-tune it first (tools/train_teacher.py --teacher {name} --pretrained "
                           f"--dataset {dataset} ...) and pass --checkpoint RUN/final/model.pt")


@torch.no_grad()
def check_teacher(store, teacher, maker: ViewMaker, count: int, device, batch_size: int = 128,
                  seed: int = 0) -> dict:
    """Re-run the teacher on `count` replayed views (TinyViT's check-saved-logits):
    top-1 agreement with the stored top-1, and the mean |p - stored p| over stored entries."""
    entries = store.shards()
    sizes = np.array([e.records for e in entries])
    picks = np.sort(np.random.default_rng(seed).choice(sizes.sum(), size=min(count, sizes.sum()), replace=False))
    shard_of = np.searchsorted(np.cumsum(sizes), picks, side="right")
    records = StoredRecords.concatenate([
        StoredRecords.from_columns(store.read(entries[s]), store.settings).take(
            picks[shard_of == s] - (np.cumsum(sizes)[s] - sizes[s])) for s in np.unique(shard_of)])
    agree, abs_err, n_vals = 0, 0.0, 0
    for a in tqdm(range(0, len(records), batch_size), desc="re-labelling views", unit="batch", leave=False):
        part = records.take(slice(a, a + batch_size))
        views = torch.stack([maker(int(i), int(s))[0] for i, s in zip(part.index, part.seed)]).to(device)
        probs = teacher(views).float().softmax(1)
        idx = torch.from_numpy(part.top_classes).to(device)
        agree += int((probs.argmax(1) == idx[:, 0]).sum())
        abs_err += float(np.abs(probs.gather(1, idx).cpu().numpy() - part.top_probs).sum())  # (N, k) to the host
        n_vals += part.top_probs.size
    return {"checked": len(records), "top1_agreement": 100.0 * agree / max(len(records), 1),
            "mean_abs_value_error": abs_err / max(n_vals, 1)}
