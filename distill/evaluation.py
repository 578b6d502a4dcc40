"""Score any classifier, student or teacher, on a dataset's unaugmented test split.

A model is named by a spec: a student export (the `final/` directory that
train_student.py writes, or its model.pt) or a teacher `NAME[=CHECKPOINT]`
(any timm name; NAME alone means timm's pretrained weights).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
import yaml
from tqdm import tqdm

from distill.augment import ViewMaker
from distill.datasets import labels_of, num_classes_of
from distill.input_rules import check_file, check_positive
from distill.recipes import eval_view_spec
from distill.metrics import MetricAccumulator
from distill.model_cost import count_flops, count_params, measure_throughput
from distill.models import Preprocessed, create_student, create_teacher, load_weights
from distill.models.weights import weights_file
from distill.replay import SeededViews, views_loader
from teacher_logits.errors import UserError


def student_export_dir(spec: str) -> Path | None:
    """The export that `spec` names: an export folder (a run's final/), a file in one, or a
    run folder (its final/); None if it names none."""
    path = Path(spec)
    folder = path.parent if path.is_file() else path
    for export in (folder, folder / "final"):
        if (export / "config.yaml").is_file() and (export / "model.pt").is_file():
            return export
    return None


def load_student(folder: Path) -> Preprocessed:
    """Rebuild an exported model from its config.yaml and model.pt, without DeepSpeed."""
    try:
        info = yaml.safe_load((folder / "config.yaml").read_text())["student"]
        complete = {"name", "num_classes", "img_size", "mean", "std"} <= set(info)
    except (yaml.YAMLError, KeyError, TypeError):
        complete = False
    if not complete:
        raise UserError(f"{folder / 'config.yaml'}: no complete `student` section (name, num_classes, img_size, "
                        "mean, std); pass the final/ directory that train_student.py wrote")
    check_student_section(info, folder / "config.yaml")
    if info.get("kind") == "teacher":  # a teacher trained by tools/train_teacher.py
        return create_teacher(info["name"], checkpoint=folder / "model.pt", num_classes=info["num_classes"])
    model = create_student(info["name"], info["num_classes"], info["img_size"], **(info.get("kwargs") or {}))
    load_weights(model, folder / "model.pt")
    return Preprocessed(model, info["mean"], info["std"], info["img_size"])


STUDENT_TYPES = {"name": str, "num_classes": int, "img_size": int, "mean": list[float], "std": list[float],
                 "kwargs": dict | None}


def check_student_section(info: dict, path: Path) -> None:
    """The export's `student` section typed as train_student.py writes it (an edited or foreign
    file is refused naming the key, not met as a TypeError inside the model)."""
    from distill.config_tree import coerce

    try:
        for key, kind in STUDENT_TYPES.items():
            coerce(info.get(key), kind, f"student.{key}")
        for key in ("num_classes", "img_size"):
            check_positive(info[key], f"student.{key}")
        if len(info["mean"]) != len(info["std"]):
            raise UserError("student.mean and student.std must be of one length")
    except UserError as e:
        raise UserError(f"{path}: {str(e).removeprefix('config key ')}; pass the final/ directory that "
                        "train_student.py wrote") from None


def load_model(spec: str, num_classes: int) -> tuple[str, Preprocessed]:
    """(display name, model in eval mode) for a student export dir or a teacher NAME[=CHECKPOINT]."""
    folder = student_export_dir(spec)
    if folder is not None:
        model = load_student(folder)
        if model.num_classes != num_classes:
            raise UserError(f"{spec}: the student has {model.num_classes} classes, --dataset has {num_classes}: "
                            "evaluate it on the dataset it was trained for")
        return folder.parent.name if folder.name == "final" else folder.name, model.eval()
    if Path(spec).exists():
        raise UserError(f"{spec}: not a student export (needs config.yaml and model.pt); for a teacher "
                        "checkpoint pass --teacher NAME --checkpoint FILE or NAME=FILE")
    name, _, checkpoint = spec.partition("=")
    if "/" in name and not timm.is_model(name):
        raise UserError(f"{spec}: no such path, and not a timm model name: pass a student export (the final/ "
                        "directory train_student.py wrote) or a teacher NAME=CHECKPOINT")
    checkpoint = str(weights_file(checkpoint)) if checkpoint else None  # an export or run folder: its weights
    check_file(checkpoint, f"teacher {name}'s checkpoint", "pass the teacher's weights file, export folder or run "
                                                           "folder")
    teacher = create_teacher(name, checkpoint=checkpoint, pretrained=not checkpoint, num_classes=num_classes)
    return name, teacher.eval()


def one_per_class(labels: np.ndarray, count: int) -> np.ndarray:
    """`count` sample indices, the first of each class in class order, then each class's
    second, and so on: a few images that show every class (test sets may be sorted by class)."""
    labels = np.asarray(labels)
    rank_in_class = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rank_in_class[labels == c] = np.arange(int((labels == c).sum()))
    return np.lexsort((labels, rank_in_class))[:count]


def eval_views_loader(dataset, resolution: int, batch_size: int, workers: int = 0, limit: int | None = None,
                      rank: int = 0, world: int = 1, recipe: str = "none", indices=None):
    """Unaugmented test views in batches (`recipe` none, or center-crop for photographs). `limit`
    takes a fixed random subset (test sets may be sorted by class, so the first N can be one
    class), `indices` these samples instead; ranks take disjoint slices of it."""
    labels = labels_of(dataset)
    if indices is not None:
        indices = np.asarray(indices)
    elif limit is not None and limit < len(labels):
        indices = np.sort(np.random.default_rng(0).permutation(len(labels))[:limit])
    else:
        indices = np.arange(len(labels))
    indices = indices[rank::world]
    views = SeededViews(ViewMaker(dataset, recipe, resolution=resolution), 0, np.zeros(len(indices), int),
                        indices, labels)
    return views_loader(views, batch_size, workers)


@torch.no_grad()
def score_views(model, loader, acc: MetricAccumulator, device, dtype=None, show: bool = True) -> MetricAccumulator:
    """The one evaluation loop (the trainer's and evaluate.py's): every batch of `loader`
    through `model` (in eval mode), its logits accumulated against the labels."""
    for batch in tqdm(loader, desc="evaluating", unit="batch", leave=False, disable=not show):
        acc.update(model(batch.view.to(device, dtype)), batch.label)
    return acc


@torch.no_grad()
def evaluate_model(model: Preprocessed, dataset, dataset_name: str, device, batch_size: int = 256,
                   workers: int = 0, limit: int | None = None, throughput_iters: int = 3) -> dict:
    """All metrics of one model: accuracy family, per-class, confusion, size, cost, speed."""
    num_classes = num_classes_of(dataset_name, dataset)
    if model.num_classes != num_classes:
        raise UserError(f"model has {model.num_classes} classes, {dataset_name} has {num_classes}: "
                        "evaluate it on the dataset it was trained for")
    recipe, size = eval_view_spec(dataset_name, model.input_size[-1])
    acc = MetricAccumulator(num_classes, list(getattr(dataset, "classes", None) or range(num_classes)))
    model = model.to(device).eval()
    score_views(model, eval_views_loader(dataset, size, batch_size, workers, limit, recipe=recipe), acc, device)
    metrics = acc.compute()
    metrics["params"] = count_params(model)
    metrics["flops"] = count_flops(model, (1, 3, size, size))
    if throughput_iters > 0:
        metrics["images_per_s"] = measure_throughput(model, (3, size, size), batch_size=256, device=device,
                                                     warmup=1, iters=throughput_iters)
    return metrics
