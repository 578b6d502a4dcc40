"""Teachers: build one by name, load its weights safely, and wrap it with its preprocessing.

Every teacher sees the same input, float images in [0, 1] at the data's resolution;
`Preprocessed` turns that into what the teacher was trained on (its size, mean and std),
so the distillation code never needs to know which teacher it is talking to.
"""
import difflib
import warnings
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Preprocessed", "create_teacher", "load_weights"]


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
        raise ValueError(
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
        raise ValueError(f"{path}: no state_dict of tensors found (got {keys})")
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
    target = model.model if isinstance(model, Preprocessed) else model
    state_dict = _read_state_dict(path)
    expected = target.state_dict()

    def relevant(keys):
        return {k for k in keys if not k.endswith("num_batches_tracked")}

    missing = sorted(relevant(expected) - relevant(state_dict))
    unexpected = sorted(relevant(state_dict) - relevant(expected))
    if missing or unexpected:
        raise ValueError(f"{path} does not match {type(target).__name__}: missing keys: {_few(missing)}; "
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
        raise ValueError(f"{path}: {key} has shape {got} in the checkpoint but {want} in the model; {fix}")

    target.load_state_dict(state_dict, strict=False)  # keys and shapes were checked above
    return model


def create_teacher(name, checkpoint=None, pretrained=False, num_classes=None):
    """timm model `name`, weights from `checkpoint` and/or timm's pretrained set, as an
    eval-mode `Preprocessed`. `num_classes=None` keeps the model's default."""
    if not timm.is_model(name):
        arch = name.split(".")[0]
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown teacher {name!r}: {hint}search with timm.list_models('*pattern*')")
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
