"""CIFAR teacher architectures, registered with timm.

Written from the layer descriptions in shared/teachers/README.md so that the shared
pretrained checkpoints load with strict key matching (after `load_weights` strips a
`module.` prefix). Module names therefore follow the upstream checkpoints, not timm
conventions: the akamaster ResNets name their head `linear`, chenyaofo's `fc`.

None of these models has downloadable weights: build them with `pretrained=False` and
load the local file, e.g. `create_teacher("cifar10_resnet56", checkpoint=PATH)`.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from teacher_logits.errors import UserError

__all__ = ["CifarResNet", "DenseNetBC"]

# Each cfg carries the normalisation the checkpoint was trained with (README, per model).
_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
_ODIN = dict(mean=(125.3 / 255, 123.0 / 255, 113.9 / 255), std=(63.0 / 255, 62.1 / 255, 66.7 / 255))
_DICE = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
_CHENYAOFO_C100 = dict(mean=(0.507, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2761))


def _cfg(num_classes, classifier, **kwargs):
    # No url / hf_hub_id: the weights live in shared/teachers and load via --checkpoint.
    return dict(
        num_classes=num_classes, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
        interpolation="bilinear", first_conv="conv1", classifier=classifier, **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "cifar10_resnet20.akamaster": _cfg(10, "linear", license="bsd-2-clause", **_IMAGENET,
                                       origin_url="https://github.com/akamaster/pytorch_resnet_cifar10"),
    "cifar10_resnet56.akamaster": _cfg(10, "linear", license="bsd-2-clause", **_IMAGENET,
                                       origin_url="https://github.com/akamaster/pytorch_resnet_cifar10"),
    "cifar100_resnet56.chenyaofo": _cfg(100, "fc", license="bsd-3-clause", **_CHENYAOFO_C100,
                                        origin_url="https://github.com/chenyaofo/pytorch-cifar-models"),
    "cifar10_densenet_bc100.odin": _cfg(10, "fc", license="bsd", **_ODIN,
                                        origin_url="https://github.com/facebookresearch/odin"),
    "cifar100_densenet_bc100.odin": _cfg(100, "fc", license="bsd", **_ODIN,
                                         origin_url="https://github.com/facebookresearch/odin"),
    # Same architecture, another training run with its own normalisation: select the
    # tag to get matching preprocessing, e.g. "cifar100_densenet_bc100.dice".
    "cifar100_densenet_bc100.dice": _cfg(100, "fc", license="mit", **_DICE,
                                         origin_url="https://github.com/deeplearning-wisc/dice"),
})


def conv3x3(in_chs, out_chs, stride=1):
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_chs, out_chs, stride=1):
    return nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)


# ----------------------------------------------------------------------------- ResNet


class PadShortcut(nn.Module):
    """Option A shortcut (He et al. 2016): subsample by 2 and zero-pad channels, no parameters.

    The zeros go on both sides of the channel axis, so the old channels sit in the middle;
    the akamaster weights depend on that placement.
    """

    def __init__(self, out_chs):
        super().__init__()
        self.pad = out_chs // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; `shortcut` is "A" (zero-pad) or "B" (1x1 conv + BN)."""

    def __init__(self, in_chs, out_chs, stride, shortcut):
        super().__init__()
        self.conv1 = conv3x3(in_chs, out_chs, stride)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = conv3x3(out_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        if stride == 1 and in_chs == out_chs:
            self.downsample = nn.Identity()
        elif shortcut == "A":
            # Option A here is specific to stride 2 with out = 2 * in, as in every CIFAR ResNet.
            assert stride == 2 and out_chs == 2 * in_chs
            self.downsample = PadShortcut(out_chs)
        else:
            self.downsample = nn.Sequential(conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.downsample(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with 6n+2 layers: a 16-channel stem and three stages of 16/32/64 channels."""

    def __init__(self, depth, shortcut="A", classifier="linear", num_classes=10, in_chans=3, **kwargs):
        super().__init__()
        assert (depth - 2) % 6 == 0, f"CIFAR ResNet depth must be 6n+2, got {depth}"
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.num_features = 64
        self.classifier = classifier
        self.conv1 = conv3x3(in_chans, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1, shortcut)
        self.layer2 = self._stage(16, 32, n, 2, shortcut)
        self.layer3 = self._stage(32, 64, n, 2, shortcut)
        # The head's attribute name must match the checkpoint's keys ("linear" or "fc").
        setattr(self, classifier, nn.Linear(64, num_classes))
        for m in self.modules():  # He init, for when a teacher is trained from scratch
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_chs, out_chs, n, stride, shortcut):
        blocks = [BasicBlock(in_chs, out_chs, stride, shortcut)]
        blocks += [BasicBlock(out_chs, out_chs, 1, shortcut) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def get_classifier(self):
        return getattr(self, self.classifier)

    def forward_features(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x):
        x = self.forward_features(x).mean((2, 3))
        return self.get_classifier()(x)


# --------------------------------------------------------------------------- DenseNet


class Bottleneck(nn.Module):
    """Pre-activation BN-ReLU-conv1x1 (4k) BN-ReLU-conv3x3 (k); appends k new channels."""

    def __init__(self, in_chs, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = conv1x1(in_chs, 4 * growth)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = conv3x3(4 * growth, growth)

    def forward(self, x):
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        return torch.cat([x, y], dim=1)  # input first, new features last (checkpoint order)


class DenseBlock(nn.Module):
    def __init__(self, in_chs, growth, depth):
        super().__init__()
        # Wrapped in `.layer` to match the checkpoint keys block{1,2,3}.layer.{i}.
        self.layer = nn.Sequential(*[Bottleneck(in_chs + i * growth, growth) for i in range(depth)])

    def forward(self, x):
        return self.layer(x)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 to compress channels, then 2x2 average pooling."""

    def __init__(self, in_chs, out_chs):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = conv1x1(in_chs, out_chs)

    def forward(self, x):
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class DenseNetBC(nn.Module):
    """DenseNet-BC for 32x32 inputs: three dense blocks with compressing transitions between."""

    def __init__(self, depth=100, growth=12, compression=0.5, num_classes=10, in_chans=3, **kwargs):
        super().__init__()
        n = (depth - 4) // 6  # bottleneck layers per block: 16 for depth 100
        self.num_classes = num_classes
        chs = 2 * growth
        self.conv1 = conv3x3(in_chans, chs)
        self.block1 = DenseBlock(chs, growth, n)
        chs += n * growth
        self.trans1 = Transition(chs, int(chs * compression))
        chs = int(chs * compression)
        self.block2 = DenseBlock(chs, growth, n)
        chs += n * growth
        self.trans2 = Transition(chs, int(chs * compression))
        chs = int(chs * compression)
        self.block3 = DenseBlock(chs, growth, n)
        chs += n * growth
        self.bn1 = nn.BatchNorm2d(chs)
        self.num_features = chs
        self.fc = nn.Linear(chs, num_classes)

    def get_classifier(self):
        return self.fc

    def forward_features(self, x):
        x = self.trans1(self.block1(self.conv1(x)))
        x = self.trans2(self.block2(x))
        return F.relu(self.bn1(self.block3(x)))

    def forward(self, x):
        return self.fc(self.forward_features(x).mean((2, 3)))


# ------------------------------------------------------------------------ entrypoints


def _create(cls, variant, pretrained, **kwargs):
    if pretrained:
        raise UserError(
            f"{variant} has no downloadable weights; build it with pretrained=False and pass "
            f"--checkpoint FILE with its file from shared/teachers (see shared/teachers/README.md)"
        )
    return build_model_with_cfg(cls, variant, pretrained, **kwargs)


@register_model
def cifar10_resnet20(pretrained=False, **kwargs):
    return _create(CifarResNet, "cifar10_resnet20", pretrained, depth=20, shortcut="A", classifier="linear", **kwargs)


@register_model
def cifar10_resnet56(pretrained=False, **kwargs):
    return _create(CifarResNet, "cifar10_resnet56", pretrained, depth=56, shortcut="A", classifier="linear", **kwargs)


@register_model
def cifar100_resnet56(pretrained=False, **kwargs):
    return _create(CifarResNet, "cifar100_resnet56", pretrained, depth=56, shortcut="B", classifier="fc", **kwargs)


@register_model
def cifar10_densenet_bc100(pretrained=False, **kwargs):
    return _create(DenseNetBC, "cifar10_densenet_bc100", pretrained, depth=100, growth=12, **kwargs)


@register_model
def cifar100_densenet_bc100(pretrained=False, **kwargs):
    return _create(DenseNetBC, "cifar100_densenet_bc100", pretrained, depth=100, growth=12, **kwargs)
