"""Dropout that costs little on the CPU, for the students that use it.

`torch.nn.Dropout` on a CPU tensor draws one Bernoulli sample per element (`bernoulli_`)
and multiplies by a bool mask; at 32 px that took a third of `cifar_vit`'s training step
here. `Dropout` below draws 16 random bits per element from torch's CPU generator in bulk
(`randint` over int64, viewed as int16) and keeps the elements above a threshold: the same
layer (drop probability p, survivors scaled by 1 / (1 - p)), with p rounded to a multiple
of 1/65536 (0.1 -> 0.1000061). On any other device it is `F.dropout`, which is fused there.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_STEPS = 1 << 16  # int16 values: p is a multiple of 1 / 65536


def _cpu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    dropped = round(p * _STEPS)
    n = x.numel()
    bits = torch.randint(-(1 << 63), (1 << 63) - 1, (-(-n // 4),), dtype=torch.int64)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= dropped - (1 << 15)
    # a float mask: multiplying by a bool tensor takes a slow type-promotion path on the CPU
    return x * keep.to(x.dtype).mul_(_STEPS / (_STEPS - dropped))


class Dropout(nn.Dropout):
    """nn.Dropout with a fast CPU path (see the module docstring); a drop-in replacement."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.p >= 1:
            return F.dropout(x, self.p, self.training, self.inplace)
        return _cpu_dropout(x, self.p)


def fast_dropout(model: nn.Module) -> nn.Module:
    """Replace every nn.Dropout of `model` by `Dropout` (same p), in place; returns the model."""
    for name, child in model.named_children():
        if type(child) is nn.Dropout:
            setattr(model, name, Dropout(child.p, child.inplace))
        else:
            fast_dropout(child)
    return model
