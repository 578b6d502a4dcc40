"""Exports timm loads: model.safetensors and timm's config.json, beside our own export.

    import timm, distill.models  # the second only for this project's own architectures
    model = timm.create_model("local-dir:RUN/final", pretrained=True)

rebuilds the student from the config's `architecture` and `model_args` (TinyViT's window
sizes, model.kwargs, img_size) and loads the weights. Its `pretrained_cfg` says how the student
was trained, so timm's data config reproduces our preprocessing: num_classes (timm drops a
head whose cfg disagrees), the dataset's mean and std, the input size, crop_pct 1.0 and
bilinear resizing (what `Preprocessed` does). The same folder is what the Hugging Face hub
serves for `hf-hub:` names (`timm.models.push_to_hf_hub`).
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["save_for_timm", "timm_data_config"]


def timm_data_config(info: dict) -> dict:
    """timm's data config for an export's `student` section."""
    side = info["img_size"]
    return dict(input_size=(3, side, side), mean=tuple(info["mean"]), std=tuple(info["std"]), crop_pct=1.0,
                interpolation="bilinear")


def save_for_timm(model: torch.nn.Module, state: dict, info: dict, folder: Path) -> None:
    """`state` (the fp32 weights of timm model `model`) as folder/model.safetensors, and
    folder/config.json from `model`'s recorded arguments and `info` (the export's `student`)."""
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf  # save_for_hf's config half: the weights are ours

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    save_config_for_hf(model, str(folder / "config.json"), data_config=timm_data_config(info))
