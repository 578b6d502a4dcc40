"""Replayable augmentation: a view is a pure function of (image, seed, recipe).

The teacher stage labels view(i, seed(run_seed, epoch, i)); the student stage
rebuilds the same view from the seed stored in the record. Rather than copying
timm/torchvision transforms to route their randomness (as TinyViT does), each
sample runs the ordinary transforms inside `scoped_rng(seed)`, which seeds the
three global generators they draw from (torch: crop, flip, erasing; numpy: timm
RandAugment's op choice; random: its magnitudes and timm's crops) and restores them
afterwards (torch's alone for the recipes that draw from nothing else).

Mixup/CutMix are per pair, not per batch: a record's partner j, lambda and box
come from the record's seed, so replay is independent of batching and topology.
A view is a float32 tensor (3, H, W) in [0, 1] at the recipe's resolution;
normalisation and resizing belong to each model (see distill.models.Preprocessed).

`imagenet` is DeiT's / TinyViT's training recipe at any resolution, built by timm's own
`create_transform` (RandomResizedCrop 0.08-1 bicubic, flip, RandAugment rand-m9-mstd0.5,
RandomErasing 0.25 on the normalised image, as DeiT erases); its normalisation is then
undone, so the view is in pixel space like every other recipe's. `center-crop` is timm's
matching evaluation transform (resize, centre crop 0.875), for test views of photographs.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torchvision import transforms as T

from distill.catalog import EVAL_RECIPES, RECIPES  # noqa: F401  (importers take the names from here too)
from teacher_logits.errors import UserError

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return x ^ (x >> np.uint64(31))


def derive_seed(*parts) -> np.ndarray:
    """A 32-bit seed that is a pure function of integer parts (scalars or arrays)."""
    with np.errstate(over="ignore"):
        h = np.uint64(0x6A09E667F3BCC908)
        for p in parts:
            h = _splitmix64(h ^ np.asarray(p, dtype=np.int64).astype(np.uint64))
    return (h >> np.uint64(32)).astype(np.uint32)


def record_seed(run_seed: int, epoch: int, index) -> np.ndarray:
    """The seed of sample `index` in teacher epoch `epoch` (stored in each record)."""
    return derive_seed(run_seed, epoch, index)


# Recipes whose transforms draw from torch's generator only (torchvision's crops, flips, colour
# jitter): their scope need not save, seed and restore numpy's and random's, which costs more
# than a 32 px view. Recipes with timm's RandAugment (numpy, random) or crops (random) scope all three.
TORCH_ONLY = ("none", "crop", "cifar", "stl10", "center-crop")


@contextmanager
def scoped_rng(seed: int, torch_only: bool = False):
    """Seed torch (CPU), numpy and random from `seed` (torch only: just torch); restore them after."""
    seed = int(seed)
    # the CPU generator only, seeded directly (not torch.manual_seed): CUDA RNG state stays
    # untouched; saved and restored by hand, as fork_rng(devices=[]) does at twice the cost
    cpu = torch.random.default_generator
    torch_state = cpu.get_state()
    if not torch_only:
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
    cpu.manual_seed(seed)
    try:
        yield
    finally:
        cpu.set_state(torch_state)
        if not torch_only:
            random.setstate(py_state)
            np.random.set_state(np_state)


def native_resolution(recipe: str) -> int:
    """The view size of a recipe when none is asked for (photograph recipes: timm's 224)."""
    return {"stl10": 96, "imagenet": 224, "center-crop": 224}.get(recipe, 32)


def timm_transform(recipe: str, size: int):
    """timm's own ImageNet train (`imagenet`) or eval (`center-crop`) transform at `size`,
    followed by the inverse of its normalisation: PIL image -> [0, 1] tensor."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    if recipe == "imagenet":
        steps = create_transform(size, is_training=True, scale=(0.08, 1.0), hflip=0.5,
                                 auto_augment="rand-m9-mstd0.5", interpolation="bicubic", re_prob=0.25,
                                 re_mode="pixel", re_count=1)
    else:
        steps = create_transform(size, is_training=False, crop_pct=0.875, interpolation="bicubic")
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
    return T.Compose([steps, T.Normalize((-mean / std).tolist(), (1 / std).tolist())])


def build_transform(recipe: str, resolution: int | None = None):
    """The ordinary torchvision/timm pipeline for a recipe: PIL image -> [0,1] tensor."""
    if recipe not in RECIPES + EVAL_RECIPES:
        raise UserError(f"unknown augmentation recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if recipe in ("imagenet", "center-crop"):
        return timm_transform(recipe, resolution or native_resolution(recipe))
    size = native_resolution(recipe)
    steps = []
    if recipe in ("crop", "cifar", "cifar-strong"):
        steps.append(T.RandomCrop(size, padding=4))
    if recipe in ("cifar", "cifar-strong"):
        steps.append(T.RandomHorizontalFlip())
    if recipe == "cifar-strong":
        from timm.data.auto_augment import rand_augment_transform

        # '-inc1' variants trip Pillow 13's posterize; this one does not.
        steps.append(rand_augment_transform("rand-m9-mstd0.5", {}))
    if recipe == "stl10":
        steps += [T.RandomCrop(size, padding=12), T.RandomHorizontalFlip(),
                  T.ColorJitter(0.4, 0.4, 0.4), T.RandomGrayscale(0.1)]
    if resolution and resolution != size:
        steps.append(T.Resize((resolution, resolution), antialias=True))
    steps.append(T.ToTensor())
    if recipe == "cifar-strong":
        steps.append(T.RandomErasing(p=0.25, value=0))
    return T.Compose(steps)


@dataclass(frozen=True)
class Mixing:
    """Pairwise Mixup/CutMix settings (timm's defaults: alpha 0.8 / 1.0)."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0  # chance that a record is mixed at all

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


@dataclass(frozen=True)
class MixParams:
    partner: int  # -1: not mixed
    lam: float  # weight of the record's own image (area-corrected for CutMix)
    box: tuple[int, int, int, int] | None  # CutMix (y0, y1, x0, x1) pasted from the partner


def mix_params(seed: int, num_samples: int, mixing: Mixing, size: int) -> MixParams:
    """The pair of record `seed`: drawn from the seed alone, so it replays anywhere."""
    if not mixing.enabled:
        return MixParams(-1, 1.0, None)
    rng = np.random.default_rng(int(derive_seed(seed, 2)))
    if rng.random() >= mixing.prob:
        return MixParams(-1, 1.0, None)
    use_cutmix = mixing.cutmix_alpha > 0 and (mixing.mixup_alpha <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(*(2 * [mixing.cutmix_alpha if use_cutmix else mixing.mixup_alpha])))
    partner = int(rng.integers(num_samples))
    if not use_cutmix:
        return MixParams(partner, lam, None)
    cut = int(size * np.sqrt(1.0 - lam))
    cy, cx = (int(v) for v in rng.integers(size, size=2))
    y0, y1 = max(cy - cut // 2, 0), min(cy + cut // 2, size)
    x0, x1 = max(cx - cut // 2, 0), min(cx + cut // 2, size)
    return MixParams(partner, 1.0 - (y1 - y0) * (x1 - x0) / size**2, (y0, y1, x0, x1))


class ViewMaker:
    """Builds view(i, seed) of a map-style dataset whose items are (PIL image, label)."""

    def __init__(self, dataset, recipe: str, mixing: Mixing = Mixing(), resolution: int | None = None,
                 num_samples: int | None = None):
        self.dataset, self.recipe, self.mixing = dataset, recipe, mixing
        self.transform = build_transform(recipe, resolution)
        self.size = resolution or native_resolution(recipe)
        self.num_samples = num_samples or len(dataset)

    def fingerprint(self) -> dict:
        return {"recipe": self.recipe, "resolution": self.size, "mixing": asdict(self.mixing)}

    def _augment(self, index: int, seed: int) -> torch.Tensor:
        image = self.dataset[index][0]
        with scoped_rng(seed, torch_only=self.recipe in TORCH_ONLY):
            return self.transform(image)

    def __call__(self, index: int, seed: int) -> tuple[torch.Tensor, MixParams]:
        view = self._augment(index, int(derive_seed(seed, 0)))
        mix = mix_params(seed, self.num_samples, self.mixing, self.size)
        if mix.partner < 0:
            return view, mix
        other = self._augment(mix.partner, int(derive_seed(seed, 1)))
        if mix.box is None:
            return view * mix.lam + other * (1.0 - mix.lam), mix
        y0, y1, x0, x1 = mix.box
        view = view.clone()
        view[:, y0:y1, x0:x1] = other[:, y0:y1, x0:x1]
        return view, mix
