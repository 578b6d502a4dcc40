"""Teachers: build one by name, load its weights safely, and wrap it with its preprocessing.

Every teacher sees the same input, float images in [0, 1] at the data's resolution;
`Preprocessed` turns that into what the teacher was trained on (its size, mean and std),
so the distillation code never needs to know which teacher it is talking to.
"""
import difflib
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from teacher_logits.errors import UserError

__all__ = ["Preprocessed", "TeacherEnsemble", "create_teacher", "create_teachers", "ensemble_spec", "load_weights"]


class Preprocessed(nn.Module):
    """Wraps a classifier: resize [0, 1] images to its input size, normalise, classify.

    mean, std and input size default to `model.pretrained_cfg` (every timm model has one);
    pass them explicitly for anything else. `img_size` is an int or (H, W). The buffers are
    non-persistent, so `state_dict()` is the inner model's under the prefix `model.`.
    """

    def __init__(self, model, mean=None, std=None, img_size=None):
        super().__init__()
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean = cfg.get("mean") if mean is None else mean
        std = cfg.get("std") if std is None else std
        if img_size is None:
            img_size = cfg.get("input_size", (None, None, None))[-2:]
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if mean is None or std is None or height is None or width is None:
            raise ValueError(f"{type(model).__name__} has no pretrained_cfg: pass mean, std and img_size")
        self.model = model
        self.input_size = (3, height, width)
        self.num_classes = getattr(model, "num_classes", cfg.get("num_classes"))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def forward(self, x):
        if not x.is_floating_point():
            raise TypeError(f"Preprocessed expects float images in [0, 1], got {x.dtype} (divide by 255)")
        if x.shape[-2:] != self.input_size[-2:]:
            # Fixed, deterministic resampling: stored teacher logits must be reproducible.
            x = F.interpolate(x, size=self.input_size[-2:], mode="bilinear", align_corners=False,
                              antialias=False)
        mean = self.mean.to(x.dtype).view(1, -1, 1, 1)
        std = self.std.to(x.dtype).view(1, -1, 1, 1)
        return self.model((x - mean) / std)


def _read_state_dict(path):
    """torch.load with weights_only=True, then dig the state_dict out of common wrappers."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # untrusted file: any failure means "not plain tensors"; details stay chained
        raise UserError(
            f"{path}: not a torch checkpoint of plain tensors ({type(e).__name__} with weights_only=True); "
            f"refusing to unpickle untrusted data - re-save just the state_dict"
        ) from e
    # {'state_dict': ...}: akamaster, DICE, Lightning; {'model': ...}: DeiT / timm train;
    # {'module': ...}: DeepSpeed ZeRO-0. Wrappers may nest, so unwrap until none is left.
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        keys = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise UserError(f"{path}: no state_dict of tensors found (got {keys})")
    # DataParallel / DDP prefix every key with `module.`.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _few(keys, n=4):
    """'a, b, c, d and 7 more': enough keys to diagnose, short enough for one line."""
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_weights(model, path):
    """Load checkpoint `path` into `model` (or a Preprocessed's inner model) strictly.

    Only BatchNorm's `num_batches_tracked` may be missing or extra: old checkpoints
    predate it and it does not affect inference. Returns `model`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    load_checked(model.model if isinstance(model, Preprocessed) else model, _read_state_dict(path), path)
    return model


def load_checked(target, state_dict, path) -> None:
    """`state_dict` (read from `path`) into `target`, refused naming the key unless every key
    and shape matches."""
    expected = target.state_dict()

    def relevant(keys):
        return {k for k in keys if not k.endswith("num_batches_tracked")}

    missing = sorted(relevant(expected) - relevant(state_dict))
    unexpected = sorted(relevant(state_dict) - relevant(expected))
    if missing or unexpected:
        raise UserError(f"{path} does not match {type(target).__name__}: missing keys: {_few(missing)}; "
                        f"unexpected keys: {_few(unexpected)}; is it a checkpoint of this architecture? "
                        "(check --teacher / model.name)")

    classifier = (getattr(target, "pretrained_cfg", None) or {}).get("classifier")
    for key, value in expected.items():
        got, want = tuple(state_dict.get(key, value).shape), tuple(value.shape)
        if got == want:
            continue
        if isinstance(classifier, str) and key.startswith(classifier + ".") \
                and want[0] == getattr(target, "num_classes", None):
            fix = (f"it was trained for {got[0]} classes, the dataset has {want[0]}: use a checkpoint for "
                   f"{want[0]} classes (fine-tune one with tools/train_teacher.py)")
        else:
            fix = "the checkpoint is for another architecture or configuration"
        raise UserError(f"{path}: {key} has shape {got} in the checkpoint but {want} in the model; {fix}")

    target.load_state_dict(state_dict, strict=False)  # keys and shapes were checked above


def create_teacher(name, checkpoint=None, pretrained=False, num_classes=None):
    """timm model `name`, weights from `checkpoint` and/or timm's pretrained set, as an
    eval-mode `Preprocessed`. `num_classes=None` keeps the model's default."""
    if not timm.is_model(name):
        arch = name.split(".")[0]
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown teacher {name!r}: {hint}search with timm.list_models('*pattern*')")
    kwargs = {} if num_classes is None else dict(num_classes=num_classes)
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as e:  # hub and URL download failures are all OSErrors
        if not pretrained:
            raise
        raise RuntimeError(f"could not download pretrained weights for {name} (offline?); "
                           f"pass --checkpoint FILE instead") from e
    if checkpoint is not None:
        load_weights(model, checkpoint)
    elif not pretrained:
        warnings.warn(f"teacher {name} has random weights: pass a checkpoint or pretrained=True", stacklevel=2)
    return Preprocessed(model).eval()


class TeacherEnsemble(nn.Module):
    """Several teachers as one: the log of the weighted mean of their probabilities.

    Every member sees the same [0, 1] view through its own `Preprocessed` (size, mean, std),
    so `ensemble(view).softmax(-1)` is sum_i w_i softmax(teacher_i(view)) for any caller that
    treats it as a single teacher. `weights` (default equal) are normalised to sum 1.
    The output is computed in float32 as logsumexp_i(log w_i + log_softmax(teacher_i)):
    finite wherever the members' logits are.
    """

    def __init__(self, teachers, weights=None, names=None):
        super().__init__()
        teachers = list(teachers)
        if not teachers:
            raise ValueError("TeacherEnsemble needs at least one teacher")
        weights = normalised_weights([1.0] * len(teachers) if weights is None else weights, len(teachers))
        names = list(names) if names is not None else [f"teacher {i}" for i in range(len(teachers))]
        classes = [getattr(t, "num_classes", None) for t in teachers]
        if len(set(classes)) != 1:
            listed = ", ".join(f"{n}: {c}" for n, c in zip(names, classes))
            raise UserError(f"the ensemble's teachers have different class counts ({listed}): "
                            "pass teachers for the same classes")
        self.members = nn.ModuleList(teachers)
        self.names, self.weights, self.num_classes = names, weights, classes[0]
        self.register_buffer("log_weights", torch.tensor(weights, dtype=torch.float64).log().float(),
                             persistent=False)

    def forward(self, x):
        logp = torch.stack([m(x).float().log_softmax(dim=-1) for m in self.members])  # (T, N, C)
        return torch.logsumexp(logp + self.log_weights.view(-1, 1, 1), dim=0)


def normalised_weights(weights, count: int, flag: str = "--teacher-weights", prefix: str = ""):
    """`weights` as floats summing to 1, or a ValueError naming `flag`: one positive finite
    number per teacher."""
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise UserError(f"{prefix}{flag}: {len(weights)} weight(s) for {count} teacher(s): "
                        "give one positive weight per teacher, in the same order")
    for w in weights:
        if not (math.isfinite(w) and w > 0):
            raise UserError(f"{prefix}{flag}: every weight must be a positive number, got {w:g}: "
                            "leave the teacher out instead of weighting it 0")
    total = sum(weights)
    return [w / total for w in weights]


CLI_FLAGS = {"name": "--teacher", "checkpoint": "--checkpoint", "pretrained": "--pretrained",
             "weights": "--teacher-weights", "prefix": ""}


def ensemble_spec(names, checkpoints=None, pretrained=False, weights=None, flags=None, require_weights=True):
    """Check a teacher (or ensemble) request; return (names, checkpoints, weights) as lists of
    equal length: checkpoints (None where pretrained weights alone are used), weights summing
    to 1. `names` and `checkpoints` may each be one string or a list. Errors name `flags`:
    save_logits' flags by default; the trainer passes its config keys (distill.config).
    require_weights=False lets teachers without checkpoint or pretrained weights through
    (random init, as `create_teacher` allows with a warning)."""
    f = {**CLI_FLAGS, **(flags or {})}
    name_flag, ckpt_flag, pre_flag, prefix = f["name"], f["checkpoint"], f["pretrained"], f["prefix"]
    names = [names] if isinstance(names, (str, os.PathLike)) else list(names or [])
    names = [str(n) for n in names]
    if not names:
        raise UserError(f"{prefix}{name_flag}: no teacher given: pass {name_flag} NAME")
    if checkpoints is None:
        checkpoints = []
    elif isinstance(checkpoints, (str, os.PathLike)):
        checkpoints = [checkpoints]
    checkpoints = [str(c) for c in checkpoints]
    if not checkpoints:
        if not pretrained and require_weights:
            if prefix:
                raise UserError(f"{prefix}{ckpt_flag}: teacher(s) {', '.join(names)} have no weights: set "
                                f"{ckpt_flag} (one file per {name_flag}) or {pre_flag}")
            ask = f"{ckpt_flag} FILE" + (f" (one per {name_flag})" if len(names) > 1 else "")
            raise UserError(f"{name_flag} {' '.join(names)} has no weights: pass {ask} or {pre_flag}")
        checkpoints = [None] * len(names)
    elif len(checkpoints) != len(names):
        raise UserError(f"{prefix}{ckpt_flag}: {len(checkpoints)} given for {len(names)} teacher(s) "
                        f"({', '.join(names)}): pass one {ckpt_flag} per {name_flag}, in the same order "
                        f"(or none, with {pre_flag})")
    weights = normalised_weights([1.0] * len(names) if weights is None else weights, len(names), f["weights"],
                                 prefix)
    return names, checkpoints, weights


def create_teachers(names, checkpoints=None, pretrained=False, num_classes=None, weights=None, flags=None,
                    require_weights=True):
    """One teacher (`create_teacher`, unchanged) or, for several names, a `TeacherEnsemble`
    of them with `weights` (default equal). Arguments as `ensemble_spec`."""
    names, checkpoints, weights = ensemble_spec(names, checkpoints, pretrained, weights, flags, require_weights)
    teachers = [create_teacher(n, checkpoint=c, pretrained=pretrained, num_classes=num_classes)
                for n, c in zip(names, checkpoints)]
    if len(teachers) == 1:
        return teachers[0]
    return TeacherEnsemble(teachers, weights, names).eval()
