"""The parameters of a batch of crop/flip views: crop offsets, flips, Mixup/CutMix pairs, drawn two ways.

A view of a recipe with `device_steps` (none, crop, cifar; distill/recipes.py) is fixed by a
few numbers: where the crop starts, whether it is flipped, and for a mixed record its partner,
mixing weight and CutMix box (and the partner view's own crop and flip). A store says in its
manifest (`settings.augmentation.params`) which way they were drawn:

- `generators` (stores made before issue 29; no `params` key): each view seeds torch's
  generator and each pair numpy's `default_rng` from the record's seed, as torchvision's
  RandomCrop/RandomHorizontalFlip and `augment.mix_params` draw them. Exact, but ~60 us of
  generator seeding per view, in Python.
- `counter` (the default for new stores of these recipes): every number is a function of
  (record seed, draw number) through the splitmix64 hash `augment.derive_seed` already uses:
  a whole batch's parameters are a handful of vectorised integer operations on a (B, 12)
  array, well under a microsecond a view, with no generator state. The same distributions:
  uniform offsets, fair flips, Bernoulli(prob) mixing, a fair Mixup/CutMix choice when both
  are on, lambda ~ Beta(alpha, alpha) by its inverse CDF (scipy), a uniform partner and box
  centre.

The counter draws are integer arithmetic but for lambda: scipy's `betaincinv` is deterministic
for a given scipy, and a store is replayed with the scipy it was made with or one whose inverse
Beta CDF rounds alike (the student compares each replayed weight with the stored float16 one).

Both give a `ViewParams`; distill/device_replay.py turns one into pixels. The teacher stage
and every replay path draw through here, so the two sides cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distill.augment import MixParams, Mixing, derive_seed, mix_params_of
from distill.recipes import CropFlip
COUNTER_STREAM = 3  # derive_seed(seed, 0 / 1 / 2) seed the generators path's own view, partner view and pair
TOP, LEFT, FLIP, PARTNER_TOP, PARTNER_LEFT, PARTNER_FLIP, MIXED, CUTMIX, LAM, PARTNER, CENTRE_Y, CENTRE_X = range(12)
DRAWS = 12  # the counter draws of one record, by the names above


@dataclass
class ViewParams:
    """A batch's view parameters, row-aligned (B,) arrays; the partner's crop only where mixed."""
    top: np.ndarray           # int64 crop offsets into the zero-padded image
    left: np.ndarray
    flipped: np.ndarray       # bool
    partner: np.ndarray       # int64, -1 where the view is not mixed
    lam: np.ndarray           # float64 weight of the record's own image (area-corrected for CutMix), 1 unmixed
    box: np.ndarray           # (B, 4) int64 CutMix box (y0, y1, x0, x1) pasted from the partner
    cut: np.ndarray           # bool: the row is CutMix (else Mixup where mixed)
    partner_top: np.ndarray
    partner_left: np.ndarray
    partner_flipped: np.ndarray

    @property
    def mixed(self) -> np.ndarray:
        return np.flatnonzero(self.partner >= 0)

    def mix_params(self, row: int) -> MixParams:
        """One row as augment.MixParams (what SeededViews records)."""
        box = tuple(int(v) for v in self.box[row]) if self.cut[row] else None
        return MixParams(int(self.partner[row]), float(self.lam[row]), box)


def draw_params(kind: str, seeds, steps: CropFlip, mixing: Mixing, num_samples: int, size: int) -> ViewParams:
    """The parameters of the views of records `seeds`, drawn the `kind` way (VIEW_PARAMS)."""
    draw = counter_params if kind == "counter" else generator_params
    return draw(np.asarray(seeds, np.int64), steps, mixing, num_samples, size)


# -- counter: hashes of (seed, draw number) ---------------------------------------------------------

def below(draws: np.ndarray, span) -> np.ndarray:
    """Uniform integers in [0, span) from uint32 draws: the top bits of draw x span."""
    return ((draws.astype(np.uint64) * np.uint64(span)) >> np.uint64(32)).astype(np.int64)


def counter_params(seeds: np.ndarray, steps: CropFlip, mixing: Mixing, num_samples: int, size: int) -> ViewParams:
    u = derive_seed(seeds[:, None], COUNTER_STREAM, np.arange(DRAWS))  # (B, DRAWS) uint32
    span, half = 2 * steps.padding + 1, np.uint32(1 << 31)

    def flip(column):  # RandomHorizontalFlip(0.5), where the recipe flips
        return (u[:, column] < half) & steps.flip

    partner, lam = np.full(len(seeds), -1, np.int64), np.ones(len(seeds))
    box, cut = np.zeros((len(seeds), 4), np.int64), np.zeros(len(seeds), bool)
    if mixing.enabled:
        mixed = u[:, MIXED] / 2.0**32 < mixing.prob
        cut = mixed & (mixing.cutmix_alpha > 0) & ((mixing.mixup_alpha <= 0) | (u[:, CUTMIX] < half))
        alpha = np.where(cut, mixing.cutmix_alpha, mixing.mixup_alpha)
        lam = np.where(mixed, beta_quantile(alpha, (u[:, LAM] + 0.5) / 2.0**32), 1.0)
        partner = np.where(mixed, below(u[:, PARTNER], num_samples), -1)
        centres = below(u[:, CENTRE_Y], size), below(u[:, CENTRE_X], size)
        box = np.where(cut[:, None], cutmix_boxes(lam, *centres, size), 0)  # Mixup and unmixed rows: none
        area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
        lam = np.where(cut, 1.0 - area / size**2, lam)
    return ViewParams(below(u[:, TOP], span), below(u[:, LEFT], span), flip(FLIP), partner, lam, box, cut,
                      below(u[:, PARTNER_TOP], span), below(u[:, PARTNER_LEFT], span), flip(PARTNER_FLIP))


def beta_quantile(alpha: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Beta(alpha, alpha) at probabilities q, elementwise (alpha 0 rows: unmixed, any value)."""
    from scipy.special import betaincinv  # the only scipy use; imported when mixing is on

    return betaincinv(np.maximum(alpha, 1e-3), np.maximum(alpha, 1e-3), q)


def cutmix_boxes(lam: np.ndarray, centre_y: np.ndarray, centre_x: np.ndarray, size: int) -> np.ndarray:
    """(B, 4) boxes (y0, y1, x0, x1): side size * sqrt(1 - lam) about the centre, clipped to the image
    (as augment.mix_params cuts them)."""
    half = (size * np.sqrt(np.clip(1.0 - lam, 0.0, 1.0))).astype(np.int64) // 2
    return np.stack([np.maximum(centre_y - half, 0), np.minimum(centre_y + half, size),
                     np.maximum(centre_x - half, 0), np.minimum(centre_x + half, size)], axis=1)


# -- generators: today's per-view draws, for stores made before counter draws -----------------------

def generator_params(seeds: np.ndarray, steps: CropFlip, mixing: Mixing, num_samples: int, size: int) -> ViewParams:
    mixes = mix_params_of(seeds, num_samples, mixing, size)
    partner = np.array([m.partner for m in mixes], np.int64)
    cut = np.array([m.box is not None for m in mixes], bool)
    box = np.array([m.box or (0, 0, 0, 0) for m in mixes], np.int64).reshape(-1, 4)
    top, left, flipped = torch_crop_flip(derive_seed(seeds, 0), steps)
    partner_crop = [np.zeros(len(seeds), a.dtype) for a in (top, left, flipped)]
    mixed = np.flatnonzero(partner >= 0)
    for whole, drawn in zip(partner_crop, torch_crop_flip(derive_seed(seeds[mixed], 1), steps)):
        whole[mixed] = drawn
    return ViewParams(top, left, flipped, partner, np.array([m.lam for m in mixes], np.float64), box, cut,
                      *partner_crop)


_GENERATOR = torch.Generator()


def torch_crop_flip(view_seeds: np.ndarray, steps: CropFlip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top, left, flipped) of each view: RandomCrop's two randint draws, then the flip's rand,
    from torch's generator seeded with the view's seed."""
    top, left = np.zeros(len(view_seeds), np.int64), np.zeros(len(view_seeds), np.int64)
    flipped, span = np.zeros(len(view_seeds), bool), 2 * steps.padding + 1
    for n, seed in enumerate(view_seeds.tolist()):
        g = _GENERATOR.manual_seed(int(seed))
        if span > 1:  # a crop of the whole image draws nothing (torchvision's get_params)
            top[n] = torch.randint(0, span, (1,), generator=g).item()
            left[n] = torch.randint(0, span, (1,), generator=g).item()
        if steps.flip:
            flipped[n] = torch.rand(1, generator=g).item() < 0.5
    return top, left, flipped
