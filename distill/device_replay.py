"""Replay on the training device: a batch's views rebuilt from their seeds by whole-batch tensor ops.

The CPU path (distill.augment.ViewMaker) builds each view in a DataLoader worker: a PIL
image through torchvision's transforms inside `scoped_rng(seed)`. For recipes whose
registry entry names `device_steps` (a `CropFlip`: none, crop, cifar) the same view is
two cheap steps apart:

- per-sample parameters, on the host: the crop offsets and the flip are the very draws
  torchvision's RandomCrop and RandomHorizontalFlip make from torch's generator seeded
  with the view's seed (a few microseconds a sample); Mixup/CutMix partner, weight and box
  come from `augment.mix_params`, as on the CPU path;
- the pixel work, on the device, for the whole batch: the dataset's uint8 images are
  resident there; padding, cropping and flipping are one gather, ToTensor's /255 and
  Mixup's weighted sum are element-wise in float32 with the weights rounded as the CPU
  path rounds them, and CutMix pastes the partner's box through a mask.

The views equal the CPU path's bit for bit (tests/test_device_replay.py, on CPU tensors).
Recipes with RandAugment, colour jitter or timm's random-resized crops (cifar-strong,
stl10, imagenet) have no device steps: they stay on the CPU path, and asking for device
replay of them says so.
"""
from __future__ import annotations

import numpy as np
import torch

from distill.augment import Mixing, derive_seed, mix_params_of
from distill.recipes import get_recipe
from teacher_logits.errors import UserError

REPLAY_DEVICES = ("cpu", "cuda", "auto")


def resident_images(dataset) -> np.ndarray:
    """(N, H, W, 3) uint8: a fixed-size dataset's images as the CPU path sees them (RGB)."""
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4 and data.shape[-1] == 3:
        return data  # torchvision's CIFAR: the array its PIL images are made from
    return np.stack([np.asarray(dataset[i][0].convert("RGB")) for i in range(len(dataset))])


def device_replay_problem(recipe: str, resolution: int) -> str | None:
    """Why views of `recipe` at `resolution` cannot be replayed on the device, or None."""
    made = get_recipe(recipe)
    if made.device_steps is None:
        return f"recipe {recipe} has no device steps (RandAugment, colour or resized crops replay on the CPU only)"
    if resolution != made.native_size:
        return f"recipe {recipe} at {resolution} px resizes its views, which replays on the CPU only"
    return None


def replay_device(choice: str, recipe: str, resolution: int) -> torch.device | None:
    """The device a store's views are rebuilt on for data.replay_device = `choice` (None: the CPU
    path, in DataLoader workers): auto takes this rank's GPU where the recipe allows it."""
    problem = device_replay_problem(recipe, resolution)
    if choice == "cpu" or (choice == "auto" and (problem or not torch.cuda.is_available())):
        return None
    if not torch.cuda.is_available():
        raise UserError("data.replay_device=cuda: no CUDA device is visible; use data.replay_device=cpu or auto")
    if problem:
        raise UserError(f"data.replay_device=cuda: {problem}; use data.replay_device=cpu or auto")
    from distill.distributed import resolve_device

    return resolve_device("cuda")


class DeviceReplay:
    """views(indices, seeds) of a map-style dataset, built on `device`, equal to ViewMaker's."""

    def __init__(self, dataset, recipe: str, mixing: Mixing, num_samples: int, device, resolution: int | None = None):
        made = get_recipe(recipe)
        problem = device_replay_problem(recipe, resolution or made.native_size)
        if problem:
            raise UserError(f"data.replay_device: {problem}; use data.replay_device=cpu")
        images = resident_images(dataset)
        if images.shape[1:3] != (made.native_size, made.native_size):
            raise UserError(f"data.replay_device: the images are {images.shape[1]}x{images.shape[2]} px, recipe "
                            f"{recipe} makes {made.native_size} px views; use data.replay_device=cpu")
        self.steps, self.mixing, self.num_samples = made.device_steps, mixing, num_samples
        self.size, self.device = made.native_size, torch.device(device)
        pad = self.steps.padding
        # padded once, channels first: a crop is then a plain gather
        chw = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.images = torch.nn.functional.pad(chw, (pad, pad, pad, pad)).contiguous().to(self.device)
        self.generator = torch.Generator()

    def crop_flip_params(self, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(top, left, flipped) of each view: RandomCrop's two randint draws, then the flip's rand."""
        top, left, flipped = (np.zeros(len(seeds), np.int64) for _ in range(3))
        span = 2 * self.steps.padding + 1
        for n, seed in enumerate(seeds.tolist()):
            g = self.generator.manual_seed(int(seed))
            if span > 1:  # a crop of the whole image draws nothing (torchvision's get_params)
                top[n] = torch.randint(0, span, (1,), generator=g).item()
                left[n] = torch.randint(0, span, (1,), generator=g).item()
            if self.steps.flip:
                flipped[n] = torch.rand(1, generator=g).item() < 0.5
        return top, left, flipped

    def render(self, indices: np.ndarray, seeds: np.ndarray) -> torch.Tensor:
        """(B, 3, S, S) float32 views of `indices`, each cropped and flipped as its seed says: the
        crop's rows of each padded image plane picked whole, then its columns (reversed if flipped)."""
        top, left, flipped = (torch.from_numpy(a).to(self.device) for a in self.crop_flip_params(seeds))
        batch, side, size = len(indices), self.images.shape[-1], self.size
        steps = torch.arange(size, device=self.device)
        planes = torch.from_numpy(indices).to(self.device)[:, None] * 3 + torch.arange(3, device=self.device)
        rows = (planes[:, :, None] * side + top[:, None, None] + steps).reshape(-1)  # (B * 3 * S,) row numbers
        cols = left[:, None] + torch.where(flipped[:, None].bool(), steps.flip(0), steps)  # (B, S)
        picked = self.images.view(-1, side).index_select(0, rows)  # (B * 3 * S, side) uint8
        crops = picked.gather(1, cols[:, None, :].expand(batch, 3 * size, size).reshape(-1, size))
        return crops.view(batch, 3, size, size).to(torch.float32).div(255)  # ToTensor's conversion

    def views(self, indices: np.ndarray, seeds: np.ndarray):
        """(views on the device, partners, weights) of the records (index, seed): what ViewMaker
        returns for each, for the whole batch. Partners are -1 and weights 1 where unmixed."""
        indices, seeds = np.asarray(indices, np.int64), np.asarray(seeds, np.int64)
        mixes = mix_params_of(seeds, self.num_samples, self.mixing, self.size)
        partner = np.array([m.partner for m in mixes], np.int64)
        lam = np.array([m.lam for m in mixes], np.float64)
        views = self.render(indices, derive_seed(seeds, 0).astype(np.int64))
        mixed = np.flatnonzero(partner >= 0)
        if len(mixed):
            others = self.render(partner[mixed], derive_seed(seeds[mixed], 1).astype(np.int64))
            views = views.clone()
            blend = np.array([mixes[n].box is None for n in mixed])
            if blend.any():  # Mixup: view * lam + other * (1 - lam), the weights rounded to float32 as torch does
                rows = torch.from_numpy(mixed[blend]).to(self.device)
                own = torch.from_numpy(lam[mixed[blend]].astype(np.float32)).to(self.device).view(-1, 1, 1, 1)
                rest = torch.from_numpy((1.0 - lam[mixed[blend]]).astype(np.float32)).to(self.device).view(-1, 1, 1, 1)
                views[rows] = views[rows] * own + others[torch.from_numpy(np.flatnonzero(blend)).to(self.device)] * rest
            if not blend.all():  # CutMix: the partner's box pasted in
                cut = np.flatnonzero(~blend)
                boxes = torch.tensor([mixes[mixed[n]].box for n in cut], device=self.device)  # (y0, y1, x0, x1)
                steps = torch.arange(self.size, device=self.device)
                inside = ((steps[None, :, None] >= boxes[:, 0, None, None]) & (steps[None, :, None] < boxes[:, 1, None, None])
                          & (steps[None, None, :] >= boxes[:, 2, None, None]) & (steps[None, None, :] < boxes[:, 3, None, None]))
                rows = torch.from_numpy(mixed[cut]).to(self.device)
                pasted = others[torch.from_numpy(cut).to(self.device)]
                views[rows] = torch.where(inside[:, None], pasted, views[rows])
        return views, partner, lam
