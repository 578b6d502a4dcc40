"""Replayable augmentation: a view is a pure function of (image, seed, recipe).

The teacher stage labels view(i, seed(run_seed, epoch, i)); the student stage
rebuilds the same view from the seed stored in the record. Rather than copying
timm/torchvision transforms to route their randomness (as TinyViT does), each
sample runs the ordinary transforms of its recipe (distill/recipes.py) inside
`scoped_rng(seed)`, which seeds the global generators the recipe draws from (torch:
crops, flips, erasing; numpy: timm RandAugment's op choice; random: its magnitudes
and timm's crops) and restores them afterwards.

Mixup/CutMix are per pair, not per batch: a record's partner j, lambda and box
come from the record's seed, so replay is independent of batching and topology.
A view is a float32 tensor (3, H, W) in [0, 1] at the recipe's resolution;
normalisation and resizing belong to each model (see distill.models.Preprocessed).
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch

from distill.recipes import get_recipe, view_size

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


def build_transform(recipe: str, resolution: int | None = None):
    """The ordinary torchvision/timm pipeline of a registered recipe at `resolution` (None: its
    native size): PIL image -> [0, 1] tensor."""
    return get_recipe(recipe).build(resolution or view_size(recipe))


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
    return _draw_pair(int(derive_seed(seed, 2)), num_samples, mixing, size)


def mix_params_of(seeds: np.ndarray, num_samples: int, mixing: Mixing, size: int) -> list[MixParams]:
    """mix_params of many records, their generator seeds derived in one vectorised call."""
    if not mixing.enabled:
        return [MixParams(-1, 1.0, None)] * len(seeds)
    return [_draw_pair(s, num_samples, mixing, size) for s in derive_seed(np.asarray(seeds), 2).tolist()]


def _draw_pair(pair_seed: int, num_samples: int, mixing: Mixing, size: int) -> MixParams:
    rng = np.random.default_rng(pair_seed)
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
    """Builds view(i, seed) of a map-style dataset whose items are (PIL image, label), its
    parameters drawn from the global generators (distill/device_replay.CounterViewMaker draws
    them by counter instead: distill/view_draws.py)."""
    params = "generators"

    def __init__(self, dataset, recipe: str, mixing: Mixing = Mixing(), resolution: int | None = None,
                 num_samples: int | None = None):
        self.dataset, self.recipe, self.mixing = dataset, recipe, mixing
        self.draws_torch_only = get_recipe(recipe).torch_only
        self.transform = build_transform(recipe, resolution)
        self.size = resolution or view_size(recipe)
        self.num_samples = num_samples or len(dataset)

    def fingerprint(self) -> dict:
        return {"recipe": self.recipe, "resolution": self.size, "mixing": asdict(self.mixing)}

    def _augment(self, index: int, seed: int) -> torch.Tensor:
        image = self.dataset[index][0]
        with scoped_rng(seed, torch_only=self.draws_torch_only):
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

    def views(self, indices: np.ndarray, seeds: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(views (B, 3, H, W), partners, weights) of the records (index, seed), view by view."""
        pairs = [self(index, seed) for index, seed in zip(np.asarray(indices).tolist(), np.asarray(seeds).tolist())]
        return (torch.stack([view for view, _ in pairs]), np.array([mix.partner for _, mix in pairs], np.int64),
                np.array([mix.lam for _, mix in pairs], np.float64))
