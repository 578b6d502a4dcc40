"""Weights files: read them without unpickling, load them strictly, or adapt them to a model.

- `weights_file(path)`: the file a path means: itself, an export directory's model.pt (else its
  model.safetensors), or a run folder's final/ export. Every --checkpoint and model.init takes
  all three.
- `read_state_dict(path)`: a .safetensors file, a torch file read with weights_only=True (the
  common wrappers {'state_dict' | 'model' | 'module': ...} and DDP's `module.` prefix
  removed), or a directory as `weights_file` resolves it.
- `load_weights(model, path)`: a checkpoint of exactly this architecture and class count
  (teachers, exported students): every key and shape must match, else one line names the key.
- `load_adapted(model, path)`: transfer, TinyViT's second step (`model.init`, fine-tuning a
  teacher on other classes). Position embeddings (ViT, CCT) and attention biases (TinyViT) are
  resampled to the model's resolution and windows by timm's own checkpoint filters, and a
  classifier head trained for another class count is re-made: it keeps its fresh
  initialisation. Every other key and shape must still match.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from teacher_logits.errors import UserError

__all__ = ["classifier_prefixes", "load_adapted", "load_weights", "read_state_dict", "resampled", "weights_file"]

# what an export directory is read for, first found: model.pt first, so that a store made from
# `--checkpoint RUN/final` fingerprints the same file (sha256) as one made from RUN/final/model.pt
EXPORT_FILES = ("model.pt", "model.safetensors")


def weights_file(path) -> Path:
    """The weights file that `path` names: a file itself; in an export directory (a run's
    final/) its first EXPORT_FILES; a run folder (holding final/) its export's. Any other
    path comes back as it is, for the caller to refuse."""
    path = Path(path)
    for folder in (path, path / "final"):
        found = next((folder / name for name in EXPORT_FILES if (folder / name).is_file()), None)
        if path.is_dir() and found is not None:
            return found
    return path


def read_state_dict(path) -> dict:
    """The tensors in weights file `path` (or an export or run folder), read without unpickling."""
    path = weights_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file; pass a .safetensors or torch state_dict file, "
                                "an export directory (a run's final/) or the run's folder")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path}: not a readable safetensors file ({e})") from None
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
    """Load checkpoint `path` into timm model `model` (not its Preprocessed wrapper) strictly.

    Only BatchNorm's `num_batches_tracked` may be missing or extra: old checkpoints
    predate it and it does not affect inference. Returns `model`.
    """
    load_checked(model, read_state_dict(path), path)
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


def classifier_prefixes(model) -> tuple[str, ...]:
    """The classifier's module names, from timm's pretrained_cfg (e.g. 'head', 'head.fc')."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def resampled(model, state: dict) -> dict:
    """`state` with its resolution-bound tensors fitted to `model`: timm's checkpoint filter
    for ViTs (position embeddings, patch size) and TinyViTs (attention biases per window), ours
    for CCT; other architectures have none and are returned as they are."""
    from .students import CHECKPOINT_FILTERS

    filter_fn = next((f for cls, f in CHECKPOINT_FILTERS.items() if isinstance(model, cls)), None)
    return filter_fn(dict(state), model) if filter_fn else state


def load_adapted(target, path) -> str | None:
    """Load weights `path` (a file or an export directory) into timm model `target` (not its
    Preprocessed wrapper) for transfer: resampled to its resolution, the head re-made for
    another class count. Returns what was re-made, or None."""
    state = resampled(target, read_state_dict(path))
    own = target.state_dict()
    heads = [k for k in state if k in own and state[k].shape != own[k].shape
             and any(k.startswith(prefix + ".") for prefix in classifier_prefixes(target))]
    trained_for = state[heads[0]].shape[0] if heads else None
    state.update({k: own[k] for k in heads})  # the head keeps its fresh initialisation
    try:
        load_checked(target, state, path)
    except UserError as e:
        raise UserError(f"{e} (keep the source's model.name and model.kwargs; the resolution and the "
                        "class count may differ)") from None
    if not heads:
        return None
    return (f"classifier head re-made for {target.num_classes} classes (the source's has {trained_for}: "
            f"{', '.join(heads)}); every other weight loaded")
