"""`cifar10_airbench`: the airbench94 network (Keller Jordan's cifar10-airbench), a teacher
trained here from scratch in minutes of GPU time or about an hour of two CPU cores.

Eight convolutions: a frozen 2x2 patch-whitening layer (its weights set from the training
images' patch covariance by `init_whitening`, its bias trained for the first epochs), then
three groups of conv-pool-BN-GELU-conv-BN-GELU at widths 64, 256, 256, a 3x3 max-pool and a
bias-free linear head whose logits are scaled by 1/9. BatchNorm layers learn only their bias
(scale fixed at 1). `init_identity` starts every other convolution at the identity (dirac),
which with the whitening layer is what lets it train in ~10 epochs
(distill/airbench_recipe.py trains it; shared/teachers has no weights for it).

Like the other CIFAR teachers it takes images normalised with its `pretrained_cfg` mean/std;
`Preprocessed` (teachers.py) applies them.
"""
import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from teacher_logits.errors import UserError

__all__ = ["Airbench", "init_identity", "init_whitening"]

WIDTHS = (64, 256, 256)
LOGIT_SCALE = 1 / 9

default_cfgs = generate_default_cfgs({
    "cifar10_airbench.tvd": dict(
        num_classes=10, input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0, interpolation="bilinear",
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), first_conv="whiten", classifier="head",
        origin_url="https://github.com/KellerJordan/cifar10-airbench"),
})


class BiasOnlyNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1: only the shift is learned (airbench's choice)."""

    def __init__(self, channels, momentum=0.4, eps=1e-12):
        super().__init__(channels, momentum=momentum, eps=eps)
        self.weight.requires_grad = False


class ConvGroup(nn.Sequential):
    def __init__(self, in_chs, out_chs):
        super().__init__(
            nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False), nn.MaxPool2d(2), BiasOnlyNorm(out_chs), nn.GELU(),
            nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False), BiasOnlyNorm(out_chs), nn.GELU(),
        )


class Airbench(nn.Module):
    def __init__(self, num_classes=10, in_chans=3, widths=WIDTHS, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        whiten_chs = 2 * in_chans * 2 * 2  # each 2x2 patch direction, with both signs
        self.whiten = nn.Conv2d(in_chans, whiten_chs, 2, bias=True)
        self.whiten.weight.requires_grad = False
        self.act = nn.GELU()
        chs = (whiten_chs, *widths)
        self.stages = nn.Sequential(*(ConvGroup(a, b) for a, b in zip(chs[:-1], chs[1:])))
        self.pool = nn.MaxPool2d(3)
        self.num_features = widths[-1]
        self.head = nn.Linear(widths[-1], num_classes, bias=False)

    def get_classifier(self):
        return self.head

    def forward_features(self, x):
        return self.pool(self.stages(self.act(self.whiten(x)))).flatten(1)

    def forward(self, x):
        return self.head(self.forward_features(x)) * LOGIT_SCALE


@torch.no_grad()
def init_whitening(model: Airbench, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set the whitening layer to the eigenbasis of the 2x2 patches of `images` (normalised,
    N x 3 x H x W), each direction scaled by 1/sqrt(its variance), with both signs."""
    kh, kw = model.whiten.weight.shape[2:]
    patches = images.float().unfold(2, kh, 1).unfold(3, kw, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * kh * kw)
    covariance = patches.T @ patches / len(patches)
    variances, directions = torch.linalg.eigh(covariance)
    filters = (directions.T / torch.sqrt(variances + eps)[:, None]).flip(0).reshape(-1, 3, kh, kw)
    model.whiten.weight.copy_(torch.cat((filters, -filters)))


@torch.no_grad()
def init_identity(model: Airbench) -> None:
    """Start each 3x3 convolution as the identity on its first `in_channels` outputs."""
    for conv in model.stages.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.dirac_(conv.weight[:conv.in_channels])


@register_model
def cifar10_airbench(pretrained=False, **kwargs):
    if pretrained:
        raise UserError("cifar10_airbench has no downloadable weights: train it with tools/train_airbench.py and "
                        "pass --checkpoint RUN/final/model.pt")
    return build_model_with_cfg(Airbench, "cifar10_airbench", pretrained, **kwargs)
