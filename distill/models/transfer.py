"""Transfer: start a student from another run's weights (TinyViT's second step).

TinyViT distils on a large dataset, then fine-tunes the student on the target one.
`model.init: RUN/final` does that here: every weight is taken from the export except
a classifier head trained for another number of classes, which keeps its fresh
initialisation (the run prints that it was re-made).
"""
from __future__ import annotations

from pathlib import Path

from .teachers import _read_state_dict, load_checked
from teacher_logits.errors import UserError


def classifier_prefixes(model) -> tuple[str, ...]:
    """The classifier's module names, from timm's pretrained_cfg (e.g. 'head', 'head.fc')."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def init_student(model, spec: str) -> str | None:
    """Load an exported student (its final/ directory or model.pt) into `model`; re-make the
    head when its class count differs. Returns what was re-made, or None."""
    path = Path(spec)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"model.init {spec}: no such file or export directory; pass a run's final/ "
                                "directory (or its model.pt)")
    state = _read_state_dict(path)
    try:
        return _load_with_head(model, state, path)
    except ValueError as e:
        raise UserError(f"{e} (model.init: keep the export's model.name, model.kwargs and data.img_size, "
                        f"as in {path.parent / 'config.yaml'})") from None


def _load_with_head(model, state: dict, path: Path) -> str | None:
    own = model.state_dict()
    heads = [k for k in state if k in own and state[k].shape != own[k].shape
             and any(k.startswith(prefix + ".") for prefix in classifier_prefixes(model))]
    if not heads:
        load_checked(model, state, path)
        return None
    trained_for = state[heads[0]].shape[0]
    state.update({k: own[k] for k in heads})  # the head keeps its fresh initialisation
    load_checked(model, state, path)
    return (f"classifier head re-made for {model.num_classes} classes (the export's has {trained_for}: "
            f"{', '.join(heads)}); every other weight loaded")
