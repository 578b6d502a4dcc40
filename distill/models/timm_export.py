"""Exports timm loads: model.safetensors and timm's config.json, beside our own export.

    import timm, distill.models  # the second only for this project's own architectures
    model = timm.create_model("local-dir:RUN/final", pretrained=True)

rebuilds the student from the config's `architecture` and `model_args` (TinyViT's window
sizes, model.kwargs, img_size) and loads the weights. Its `pretrained_cfg` describes this run
and nothing else, so timm's data config reproduces our preprocessing: num_classes (timm drops a
head whose cfg disagrees), the dataset's mean and std, the input size, crop_pct 1.0 and
bilinear resizing (what `Preprocessed` does), a `tag` naming the mode and dataset
(`kd_cifar10`) and a `license` only where the run names one (`output.license`). What timm's
default config of the architecture says about its ImageNet weights (their tag, licence, hub
id, pooling at 224 px) is left out. The same folder, with its model card (distill/model_card.py),
is what the Hugging Face hub serves for `hf-hub:` names.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["save_for_timm", "timm_data_config"]

# the pretrained_cfg keys that describe the exported weights themselves; the rest of timm's default
# config (tag, license, hf_hub_id, url, pool_size, test sizes, paper links) describes other weights
RUN_KEYS = ("custom_load", "input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std",
            "num_classes", "first_conv", "classifier")


def timm_data_config(info: dict) -> dict:
    """timm's data config for an export's `student` section."""
    side = info["img_size"]
    return dict(input_size=(3, side, side), mean=tuple(info["mean"]), std=tuple(info["std"]), crop_pct=1.0,
                interpolation="bilinear")


def save_for_timm(model: torch.nn.Module, state: dict, info: dict, folder: Path, tag: str,
                  license: str | None = None, label_names: list[str] | None = None) -> None:
    """`state` (the fp32 weights of timm model `model`) as folder/model.safetensors, and
    folder/config.json from `model`'s recorded arguments and `info` (the export's `student`),
    its pretrained_cfg this run's (see the module docstring)."""
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf  # save_for_hf's config half: the weights are ours

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    path = folder / "config.json"
    extra = {"label_names": list(label_names)} if label_names else {}
    save_config_for_hf(model, str(path), model_config=extra, data_config=timm_data_config(info))
    config = json.loads(path.read_text())
    inherited = config["pretrained_cfg"]
    config["pretrained_cfg"] = {"tag": tag, **({"license": license} if license else {}),
                                **{k: inherited[k] for k in RUN_KEYS if k in inherited}}
    path.write_text(json.dumps(config, indent=2) + "\n")
