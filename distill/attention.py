"""Where a ViT student looks: class-token attention maps by attention rollout.

A heat map of the class token's attention over the image lets a distilled and a
from-scratch student be compared on the same pictures. One layer's attention says little
(the residual stream carries most of the signal past it), so we use attention rollout
(Abnar & Zuidema 2020): per layer, average the heads, add the identity for the residual,
renormalise the rows, and multiply the layers' matrices; the class token's row over the
patch tokens, on the patch grid, is the map.

Probabilities are captured with forward hooks on timm's `Attention.attn_drop`, which
receives the softmaxed matrix only on the unfused path, so `fused_attn` is switched off
for the capture and restored afterwards. Only timm VisionTransformers with a class token
qualify; `rollout_unsupported` says why any other model does not.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.tiny_vit import TinyVit
from timm.models.vision_transformer import Attention, VisionTransformer

from distill.models import Preprocessed
from distill.models.students import CCT

ROW_INCHES = 2.0  # figure size per image row and per column, at DPI: the PNG is exactly this big
COL_INCHES = 2.0
DPI = 100


def _inner(model):
    return model.model if isinstance(model, Preprocessed) else model


def rollout_unsupported(model) -> str | None:
    """None if attention rollout applies to `model`, else why not (one line)."""
    net = _inner(model)
    kind = type(net).__name__
    if isinstance(net, VisionTransformer):
        if net.cls_token is None:
            return f"{kind} has no class token (it pools with {net.global_pool!r})"
        if not any(isinstance(m, Attention) for m in net.modules()):
            return f"{kind} has no timm Attention module whose probabilities could be captured"
        return None
    if isinstance(net, TinyVit):
        return f"{kind} attends within local windows and average-pools: no class token, no global attention"
    if isinstance(net, CCT):
        return f"{kind} pools its tokens by sequence pooling: no class token"
    if not any("attention" in type(m).__name__.lower() for m in net.modules()):
        return f"{kind} has no attention layers (a convolutional network)"
    return f"{kind} is not a timm VisionTransformer with a class token"


@contextmanager
def captured_attention(net):
    """Yields a list that fills with each Attention layer's (B, heads, T, T) probabilities."""
    layers = [m for m in net.modules() if isinstance(m, Attention)]
    fused = [m.fused_attn for m in layers]
    probs: list[torch.Tensor] = []
    hooks = [m.attn_drop.register_forward_hook(lambda mod, inputs, out: probs.append(inputs[0].detach()))
             for m in layers]
    for m in layers:
        m.fused_attn = False
    try:
        yield probs
    finally:
        for hook in hooks:
            hook.remove()
        for m, flag in zip(layers, fused):
            m.fused_attn = flag


def rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """(B, T, T) rollout of per-layer (B, heads, T, T) attention, first layer first."""
    result = None
    for attn in attentions:
        a = attn.float().mean(dim=1)
        a = a + torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


@torch.no_grad()
def class_token_maps(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps (B, grid_h, grid_w), logits (B, C)) of a qualifying model on [0, 1] images."""
    reason = rollout_unsupported(model)
    if reason is not None:
        raise ValueError(f"attention rollout does not apply: {reason}")
    net = _inner(model)
    with captured_attention(net) as probs:
        logits = model(images)
    cls_row = rollout(probs)[:, 0, net.num_prefix_tokens:]
    grid_h, grid_w = net.patch_embed.grid_size
    if cls_row.shape[-1] != grid_h * grid_w:
        raise ValueError(f"{cls_row.shape[-1]} patch tokens do not fill the {grid_h}x{grid_w} patch grid")
    return cls_row.reshape(-1, grid_h, grid_w), logits


def attention_figure_size(n_images: int, n_models: int) -> tuple[float, float]:
    """(width, height) in inches: a row per image, a column for the image and one per model."""
    return (1 + n_models) * COL_INCHES, n_images * ROW_INCHES


def plot_attention(images, labels, columns, class_names, path) -> Path:
    """Save the grid: `columns` is [(model name, maps (B, h, w), predictions (B,))]. Each map
    is upsampled to the image and min-max scaled on its own (a uniform map shows as all blue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 1 + len(columns), figsize=attention_figure_size(n, len(columns)), squeeze=False,
                             layout="constrained")
    pictures = images.permute(0, 2, 3, 1).clamp(0, 1).cpu().numpy()
    for i in range(n):
        axes[i, 0].imshow(pictures[i])
        axes[i, 0].set_title(f"label {class_names[int(labels[i])]}", fontsize=8)
        for j, (name, maps, preds) in enumerate(columns, start=1):
            heat = F.interpolate(maps[i][None, None].float().cpu(), size=pictures.shape[1:3], mode="bilinear",
                                 align_corners=False)[0, 0]
            axes[i, j].imshow(pictures[i])
            heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
            axes[i, j].imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[i, j].set_title(f"{name}: {class_names[int(preds[i])]}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
