"""Student models, registered with timm, and `create_student` to build any student by name.

Our own students (`cifar_vit`, `cct_7_3x1`, `cifar_cnn`) are small CIFAR-sized baselines.
timm's TinyViT models are used as they are, with their attention windows fitted to the
input resolution (see `tiny_vit_window_sizes`).
"""
import math

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, tiny_vit
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn
from teacher_logits.errors import UserError

from .layers import fast_dropout
from .registry import check_model_name

__all__ = ["CCT", "CifarCNN", "cct_checkpoint_filter", "create_student", "is_student", "tiny_vit_window_sizes",
           "STUDENTS"]

# Students train from scratch, so any fixed normalisation works; CIFAR-10's is the usual one.
_CIFAR10 = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


def _cfg(**kwargs):
    return dict(num_classes=10, input_size=(3, 32, 32), crop_pct=1.0, interpolation="bilinear",
                license="mit", **_CIFAR10, **kwargs)


default_cfgs = generate_default_cfgs({
    "cifar_vit": _cfg(first_conv="patch_embed.proj", classifier="head"),
    "cct_7_3x1": _cfg(first_conv="tokenizer.conv", classifier="head"),
    "cifar_cnn": _cfg(first_conv="features.0", classifier="head"),
})


# --------------------------------------------------------------------------------- CCT


class ConvTokenizer(nn.Module):
    """Conv3x3-ReLU-maxpool: one token per pixel of the half-resolution feature map."""

    def __init__(self, in_chans, embed_dim):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, embed_dim, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x):
        return self.pool(F.relu(self.conv(x))).flatten(2).transpose(1, 2)  # (N, L, D)


class PatchTokenizer(nn.Module):
    """ViT's patch embedding (CVT): one token per non-overlapping patch_size x patch_size patch."""

    def __init__(self, in_chans, embed_dim, patch_size=4):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x):
        return self.conv(x).flatten(2).transpose(1, 2)  # (N, L, D)


class SeqPool(nn.Module):
    """Sequence pooling: a learned softmax weight per token replaces the CLS token."""

    def __init__(self, dim):
        super().__init__()
        self.attn = nn.Linear(dim, 1)

    def forward(self, x):
        weights = self.attn(x).softmax(dim=1)  # (N, L, 1)
        return (weights.transpose(1, 2) @ x).squeeze(1)


class CCT(nn.Module):
    """Compact Convolutional Transformer (Hassani et al. 2021): conv tokens, pre-norm
    transformer, sequence pooling. Built for one `img_size`, as its pos-embedding is learned.
    `patch_size` set: ViT patch tokens instead of conv tokens, which is the paper's CVT."""

    def __init__(self, img_size=32, num_classes=10, in_chans=3, embed_dim=256, depth=7, num_heads=4,
                 mlp_ratio=2.0, drop_rate=0.0, attn_drop_rate=0.1, drop_path_rate=0.1, patch_size=None, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = embed_dim
        img_size = to_2tuple(img_size)[0]  # square inputs; timm's exports record sizes as (H, W)
        if patch_size:
            self.tokenizer, side = PatchTokenizer(in_chans, embed_dim, patch_size), img_size // patch_size
        else:  # maxpool k3 s2 p1 maps n pixels to ceil(n / 2)
            self.tokenizer, side = ConvTokenizer(in_chans, embed_dim), math.ceil(img_size / 2)
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        drop_paths = torch.linspace(0, drop_path_rate, depth).tolist()  # deeper blocks drop more
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=dp)
            for dp in drop_paths
        ])
        self.norm = nn.LayerNorm(embed_dim)
        self.pool = SeqPool(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        trunc_normal_(self.pos_embed, std=0.2)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)

    def get_classifier(self):
        return self.head

    def forward_features(self, x):
        x = self.tokenizer(x)
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"CCT has a pos-embedding for {self.pos_embed.shape[1]} tokens but the input "
                             f"gives {x.shape[1]}: create it with the img_size you feed it")
        x = self.pos_drop(x + self.pos_embed)
        return self.norm(self.blocks(x))

    def forward(self, x):
        return self.head(self.pool(self.forward_features(x)))


def cct_checkpoint_filter(state_dict, model):
    """A CCT checkpoint for `model`'s resolution: the position embedding (no prefix token)
    resampled to its token grid, as timm does for ViTs."""
    pos = state_dict.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        side = math.isqrt(model.pos_embed.shape[1])
        state_dict["pos_embed"] = resample_abs_pos_embed(pos, (side, side), num_prefix_tokens=0)
    return state_dict


# --------------------------------------------------------------------------------- CNN


def _conv_relu(in_chs, out_chs):
    return [nn.Conv2d(in_chs, out_chs, 3, padding=1), nn.ReLU(inplace=True)]


class CifarCNN(nn.Module):
    """Plain VGG-like CNN baseline: three conv-conv-pool-BN stages and a three-layer MLP."""

    def __init__(self, num_classes=10, in_chans=3, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = 512
        self.features = nn.Sequential(
            *_conv_relu(in_chans, 32), *_conv_relu(32, 64), nn.MaxPool2d(2), nn.BatchNorm2d(64),
            *_conv_relu(64, 128), *_conv_relu(128, 128), nn.MaxPool2d(2), nn.BatchNorm2d(128),
            *_conv_relu(128, 256), *_conv_relu(256, 256), nn.MaxPool2d(2), nn.BatchNorm2d(256),
            nn.AdaptiveAvgPool2d(4),  # identity at 32 px; keeps the MLP input at 4096 elsewhere
        )
        self.pre_logits = nn.Sequential(
            nn.Flatten(), nn.Linear(256 * 4 * 4, 1024), nn.ReLU(inplace=True),
            nn.Linear(1024, 512), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(512, num_classes)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        return self.head(self.pre_logits(self.features(x)))


# ------------------------------------------------------------------------ entrypoints


# timm's checkpoint filter per architecture: fits resolution-bound weights (position embeddings,
# TinyViT's attention biases) to the model being loaded; used by timm's loader and load_adapted
CHECKPOINT_FILTERS = {VisionTransformer: checkpoint_filter_fn, CCT: cct_checkpoint_filter,
                      tiny_vit.TinyVit: tiny_vit.checkpoint_filter_fn}


def _create(cls, variant, pretrained, side, **kwargs):
    """Built by timm, so `pretrained=True` with a weights file in the cfg (an export's
    config.json, `pretrained_cfg_overlay=dict(file=...)`) loads it, resampled to `side` px."""
    # Record the real input size in the cfg, so Preprocessed(model) resizes to it.
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {}, input_size=(3, *to_2tuple(side)))
    model = build_model_with_cfg(cls, variant, pretrained, pretrained_cfg_overlay=overlay,
                                 pretrained_filter_fn=CHECKPOINT_FILTERS.get(cls), **kwargs)
    return fast_dropout(model)


@register_model
def cifar_vit(pretrained=False, img_size=32, **kwargs):
    """ViT for 32 px: 4x4 patches (64 tokens + CLS), width 128, depth 6, 8 heads, MLP 512."""
    args = dict(img_size=img_size, patch_size=4, embed_dim=128, depth=6, num_heads=8, mlp_ratio=4.0,
                class_token=True, global_pool="token", pos_embed="learn", pos_drop_rate=0.1,
                proj_drop_rate=0.1)
    return _create(VisionTransformer, "cifar_vit", pretrained, img_size, **dict(args, **kwargs))


@register_model
def cct_7_3x1(pretrained=False, img_size=32, **kwargs):
    """CCT-7/3x1: 7 layers, one 3x3 conv in the tokenizer, width 256, 4 heads, MLP ratio 2."""
    args = dict(img_size=img_size, embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0)
    return _create(CCT, "cct_7_3x1", pretrained, img_size, **dict(args, **kwargs))


@register_model
def cifar_cnn(pretrained=False, img_size=32, **kwargs):
    """CNN baseline; works at any resolution, `img_size` only sets its pretrained cfg."""
    return _create(CifarCNN, "cifar_cnn", pretrained, img_size, **kwargs)


# ------------------------------------------------------------------------ create_student

_OURS = ("cifar_vit", "cct_7_3x1", "cifar_cnn", "cifar_vit_mini", "cifar_vit_256", "vit_lite_7_4", "cvt_7_4")
_TINY_VITS = {"tiny_vit_5m": "tiny_vit_5m_224", "tiny_vit_11m": "tiny_vit_11m_224",
              "tiny_vit_21m": "tiny_vit_21m_224"}
STUDENTS = _OURS + tuple(_TINY_VITS) + tuple(_TINY_VITS.values())
ALIASES = _TINY_VITS  # the short student names timm knows by other names


def tiny_vit_window_sizes(img_size, default=(7, 7, 14, 7)):
    """Per-stage attention windows that tile each TinyViT stage exactly, so no block pads.

    timm's TinyViT reads stage sizes from the input at run time; only the windows are fixed
    at build time, and a window that does not divide its stage makes every block pad to a
    multiple of it (at 32 px the default 7 turns a 4x4 map into 7x7, mostly zeros). Stage 0
    sits at stride 4 and each later stage halves again; all these convs are k3 s2 p1, which
    maps n pixels to ceil(n / 2). Stage 0 is convolutional and ignores its window; it gets
    one by the same rule for uniformity. We take the largest divisor not above the default.
    """
    side = math.ceil(math.ceil(img_size / 2) / 2)
    sizes = []
    for stage, limit in enumerate(default):
        if stage > 0:
            side = math.ceil(side / 2)
        sizes.append(max(w for w in range(1, min(limit, side) + 1) if side % w == 0))
    return tuple(sizes)


def is_student(name: str) -> bool:
    """A student name, with or without a timm pretrained tag (tiny_vit_5m_224.dist_in22k)."""
    return name.split(".")[0] in STUDENTS


def create_student(name, num_classes, img_size, pretrained=False, **kwargs):
    """Build student `name` for `num_classes` classes at `img_size` px; extra kwargs go to timm.

    `pretrained=True` loads timm's weights for the name (`.tag` picks a set, e.g.
    `tiny_vit_5m_224.dist_in22k_ft_in1k`; downloads): a head for another class count is
    re-made and TinyViT's attention biases are resampled to the windows of `img_size`."""
    if not is_student(name):
        raise UserError(f"unknown student {name!r}; valid students: {', '.join(STUDENTS)}")
    check_model_name(name, "model.name", pretrained, aliases=ALIASES)  # tags and weights, from the registry
    arch, _, tag = name.partition(".")
    if arch in _OURS:
        args = dict(img_size=img_size)
    else:  # TinyViT takes no img_size; its 224 in the name is only the pretraining resolution.
        arch = _TINY_VITS.get(arch, arch)
        args = dict(window_sizes=tiny_vit_window_sizes(img_size),
                    pretrained_cfg_overlay=dict(input_size=(3, img_size, img_size)))
    timm_name = f"{arch}.{tag}" if tag else arch
    try:
        return timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, **args, **kwargs)
    except OSError as e:  # hub and URL download failures are all OSErrors
        raise UserError(f"model.pretrained: could not download timm's weights for {timm_name} (offline? "
                        f"{type(e).__name__}); start from a local file instead: model.pretrained=false "
                        "model.init=FILE (.safetensors, a state_dict, or an export directory)") from None
