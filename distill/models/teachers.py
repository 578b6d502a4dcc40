"""Teachers: build one by name, load its weights safely, and wrap it with its preprocessing.

Every teacher sees the same input, float images in [0, 1] at the data's resolution;
`Preprocessed` turns that into what the teacher was trained on (its size, mean and std),
so the distillation code never needs to know which teacher it is talking to.
"""
import math
import os
import warnings

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from teacher_logits.errors import UserError

from .registry import check_model_name
from .weights import load_weights

__all__ = ["FlipAveraged", "Preprocessed", "TeacherEnsemble", "create_teacher", "create_teachers", "ensemble_spec", "load_weights"]


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


def create_teacher(name, checkpoint=None, pretrained=False, num_classes=None, weights_later=False):
    """timm model `name`, weights from `checkpoint` and/or timm's pretrained set, as an
    eval-mode `Preprocessed`. `num_classes=None` keeps the model's default; `weights_later`:
    the caller loads weights itself (no random-weights warning)."""
    check_model_name(name, "teacher", pretrained)  # name, tag and weights, from timm's registry
    kwargs = {} if num_classes is None else dict(num_classes=num_classes)
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as e:  # hub and URL download failures are all OSErrors (huggingface_hub's, requests')
        if not pretrained:
            raise
        raise UserError(f"teacher {name}: could not download its pretrained weights (offline? {type(e).__name__}); "
                        "pass --checkpoint FILE (teacher.checkpoint) instead") from None
    if checkpoint is not None:
        load_weights(model, checkpoint)
    elif not pretrained and not weights_later:
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


class FlipAveraged(nn.Module):
    """A teacher's output averaged over the view and its mirror image: the log of the mean of
    its probabilities on both (the flip test-time augmentation of CIFAR classifiers), computed
    as the ensemble's, so that `softmax` of the output is that mean. Costs two teacher passes."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.num_classes = teacher, teacher.num_classes

    def forward(self, x):
        logp = torch.stack([self.teacher(v).float().log_softmax(dim=-1) for v in (x, x.flip(-1))])
        return torch.logsumexp(logp, dim=0) - math.log(2)


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
