"""Replay on the training device: a batch's views rebuilt from their seeds by whole-batch tensor ops.

The CPU path (distill.augment.ViewMaker) builds each view in a DataLoader worker: a PIL
image through torchvision's transforms inside `scoped_rng(seed)`. For recipes whose
registry entry names `device_steps` (a `CropFlip`: none, crop, cifar) the same view is
two cheap steps apart:

- per-sample parameters, on the host (distill/view_draws.py): for a store made with
  `generators` draws, the very draws torchvision's RandomCrop and RandomHorizontalFlip make
  from torch's generator seeded with the view's seed, and the pair of `augment.mix_params`
  (~60 us a view); for a `counter` store, hashes of the seeds, vectorised over the batch;
- the pixel work, on the device, for the whole batch: the dataset's uint8 images are
  resident there; padding, cropping and flipping are one gather, ToTensor's /255 and
  Mixup's weighted sum are element-wise in float32 with the weights rounded as the CPU
  path rounds them, and CutMix pastes the partner's box through a mask.

The views equal the CPU path's bit for bit (tests/test_device_replay.py, on CPU tensors).
A `counter` store's views are defined by these steps: its teacher stage and DataLoader
workers build them with `CounterViewMaker`, the same steps on the few images of a batch.
`data.replay_device=auto`, the default, builds a counter store's views here: on the GPU, or
without one batch-wise on the CPU in the training process, where no worker competes with the
step's threads.
Recipes with RandAugment, colour jitter or timm's random-resized crops (cifar-strong,
stl10, imagenet) have no device steps: they stay on the CPU path, and asking for device
replay of them says so.
"""
from __future__ import annotations

import numpy as np
import torch

from distill.augment import Mixing, ViewMaker
from distill.recipes import get_recipe, view_size
from distill.view_draws import ViewParams, draw_params
from teacher_logits.errors import UserError

REPLAY_DEVICES = ("cpu", "cuda", "auto")


def image_array(dataset, index: int) -> np.ndarray:
    """(H, W, 3) uint8: one image as the CPU path sees it (RGB)."""
    return np.asarray(dataset[index][0].convert("RGB"))


def resident_images(dataset) -> np.ndarray:
    """(N, H, W, 3) uint8: a fixed-size dataset's images as the CPU path sees them (RGB)."""
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4 and data.shape[-1] == 3:
        return data  # torchvision's CIFAR: the array its PIL images are made from
    return np.stack([image_array(dataset, i) for i in range(len(dataset))])


def device_replay_problem(recipe: str, resolution: int) -> str | None:
    """Why views of `recipe` at `resolution` cannot be replayed on the device, or None."""
    if get_recipe(recipe).device_steps is None:
        return f"recipe {recipe} has no device steps (RandAugment, colour or resized crops replay on the CPU only)"
    if resolution != view_size(recipe):
        return f"recipe {recipe} at {resolution} px resizes its views, which replays on the CPU only"
    return None


def counter_problem(dataset, recipe: str, resolution: int) -> str | None:
    """Why a store of `recipe` views of `dataset` cannot draw counter parameters, or None: the
    recipe needs device steps, and the images its native size (the first one is looked at)."""
    size = view_size(recipe)
    problem = device_replay_problem(recipe, resolution)
    if problem is None and len(dataset) and image_array(dataset, 0).shape[:2] != (size, size):
        problem = f"the images are not {size}x{size} px"
    return problem


def default_view_params(dataset, recipe: str, resolution: int | None) -> str:
    """How a new store draws its view parameters: by counter wherever it can."""
    return "generators" if counter_problem(dataset, recipe, resolution or view_size(recipe)) else "counter"


def replay_device(choice: str, recipe: str, resolution: int, params: str = "generators",
                  dataset=None) -> torch.device | None:
    """The device a store's views are rebuilt on for data.replay_device = `choice` (None: the CPU
    path, in DataLoader workers). cuda: this rank's GPU, for any store of a recipe with device
    steps. auto (the default): a store of counter parameters batch-wise, on this rank's GPU or
    else the CPU in the training process (~5 ms a batch of 128 against ~50 ms of per-view work
    in workers that share the step's cores: docs/benchmarks.md section 3), where `dataset`'s
    images fit in memory; a store of generator draws stays in the workers, whose per-view
    draws (~60 us a view) they spread over the cores."""
    problem = device_replay_problem(recipe, resolution)
    if choice == "cpu" or (choice == "auto" and (problem or params != "counter" or not images_fit(dataset))):
        return None
    if choice == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("data.replay_device=cuda: no CUDA device is visible; use data.replay_device=cpu or auto")
    if problem:
        raise UserError(f"data.replay_device=cuda: {problem}; use data.replay_device=cpu or auto")
    from distill.distributed import resolve_device

    return resolve_device("cuda")


RESIDENT_LIMIT = 2 << 30  # bytes of images `auto` gathers into one array; beyond it views stay in workers


def images_fit(dataset) -> bool:
    """Whether batch-wise replay may keep `dataset`'s images in one array: they are one already
    (torchvision's CIFAR), or stacking them takes at most RESIDENT_LIMIT (judged by the first)."""
    if dataset is None or isinstance(getattr(dataset, "data", None), np.ndarray) or not len(dataset):
        return True
    return len(dataset) * image_array(dataset, 0).nbytes <= RESIDENT_LIMIT


def padded_planes(images: np.ndarray, padding: int, device) -> torch.Tensor:
    """(N, H, W, 3) uint8 images -> (N, 3, H + 2p, W + 2p) uint8 on `device`, zero-padded as RandomCrop
    pads: a crop is then a plain gather."""
    chw = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return torch.nn.functional.pad(chw, (padding,) * 4).contiguous().to(device)


def render(padded: torch.Tensor, rows: np.ndarray, top, left, flipped, size: int) -> torch.Tensor:
    """(B, 3, S, S) float32 views of images `rows` of `padded`, each cropped at (top, left) and
    flipped where asked: the crop's rows of each image plane picked whole, then its columns
    (reversed if flipped)."""
    device, side = padded.device, padded.shape[-1]
    top, left, flipped = (torch.from_numpy(np.asarray(a)).to(device) for a in (top, left, flipped))
    steps = torch.arange(size, device=device)
    planes = torch.from_numpy(np.asarray(rows, np.int64)).to(device)[:, None] * 3 + torch.arange(3, device=device)
    picked_rows = (planes[:, :, None] * side + top[:, None, None] + steps).reshape(-1)  # (B * 3 * S,)
    cols = left[:, None] + torch.where(flipped[:, None].bool(), steps.flip(0), steps)  # (B, S)
    picked = padded.view(-1, side).index_select(0, picked_rows).view(len(rows), 3 * size, side)  # uint8
    crops = picked.gather(2, cols[:, None, :].expand(len(rows), 3 * size, size))  # the index broadcast, not copied
    # ToTensor's conversion. The divisor is a tensor: CUDA turns division by a Python number into
    # multiplication by its reciprocal, one bit off ToTensor's quotient for 126 of the 256 byte values
    return crops.view(len(rows), 3, size, size).to(torch.float32).div(torch.full((), 255.0, device=device))


def mix(views: torch.Tensor, others: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """`views` with their partner views (`others`, one per row; any view where unmixed) mixed in as
    ViewMaker mixes them: Mixup's weighted sum with the weights rounded to float32 as torch rounds
    a Python float, CutMix's box pasted through a mask. Whole-batch ops, no row gathers: an
    unmixed row is view * 1 + other * 0, which is the view exactly (views are finite, >= 0)."""
    device, size = views.device, views.shape[-1]
    blend = (params.partner >= 0) & ~params.cut  # Mixup rows
    own = torch.from_numpy(np.where(blend, params.lam, 1.0).astype(np.float32)).to(device).view(-1, 1, 1, 1)
    rest = torch.from_numpy(np.where(blend, 1.0 - params.lam, 0.0).astype(np.float32)).to(device).view(-1, 1, 1, 1)
    mixed = views * own + others * rest
    if params.cut.any():  # CutMix: the partner's box (y0, y1, x0, x1) pasted in; other rows' boxes are empty
        boxes = torch.from_numpy(np.where(params.cut[:, None], params.box, 0)).to(device)
        steps = torch.arange(size, device=device)
        rows_in = (steps[None, :] >= boxes[:, 0, None]) & (steps[None, :] < boxes[:, 1, None])  # (B, S)
        cols_in = (steps[None, :] >= boxes[:, 2, None]) & (steps[None, :] < boxes[:, 3, None])
        mixed = torch.where((rows_in[:, :, None] & cols_in[:, None, :])[:, None], others, mixed)
    return mixed


def build_views(padded: torch.Tensor, rows: np.ndarray, partner_rows: np.ndarray, params: ViewParams,
                size: int) -> torch.Tensor:
    """The views of a batch whose images are `rows` of `padded` (and whose mixed records' partners
    are `partner_rows` of it, -1 elsewhere), as `params` says: own and partner views in one render."""
    if not len(params.mixed):
        return render(padded, rows, params.top, params.left, params.flipped, size)
    unmixed = params.partner < 0  # their own image stands in for the partner, weighted 0
    both = render(padded, np.concatenate([rows, np.where(unmixed, rows, partner_rows)]),
                  np.concatenate([params.top, params.partner_top]), np.concatenate([params.left, params.partner_left]),
                  np.concatenate([params.flipped, params.partner_flipped]), size)
    return mix(both[:len(rows)], both[len(rows):], params)


class DeviceReplay:
    """views(indices, seeds) of a map-style dataset, built on `device`, equal to ViewMaker's
    (`params`: how the store drew its view parameters, distill/view_draws.py)."""

    def __init__(self, dataset, recipe: str, mixing: Mixing, num_samples: int, device, resolution: int | None = None,
                 params: str = "generators"):
        size = view_size(recipe)
        problem = device_replay_problem(recipe, resolution or size)
        if problem:
            raise UserError(f"data.replay_device: {problem}; use data.replay_device=cpu")
        images = resident_images(dataset)
        if images.shape[1:3] != (size, size):
            raise UserError(f"data.replay_device: the images are {images.shape[1]}x{images.shape[2]} px, recipe "
                            f"{recipe} makes {size} px views; use data.replay_device=cpu")
        self.steps, self.mixing = get_recipe(recipe).device_steps, mixing
        self.num_samples, self.params = num_samples, params
        self.size, self.device = size, torch.device(device)
        self.images = padded_planes(images, self.steps.padding, self.device)

    def draw(self, seeds: np.ndarray) -> ViewParams:
        return draw_params(self.params, seeds, self.steps, self.mixing, self.num_samples, self.size)

    def views(self, indices: np.ndarray, seeds: np.ndarray):
        """(views on the device, partners, weights) of the records (index, seed): what ViewMaker
        returns for each, for the whole batch. Partners are -1 and weights 1 where unmixed."""
        params = self.draw(seeds)
        views = build_views(self.images, np.asarray(indices, np.int64), params.partner, params, self.size)
        return views, params.partner, params.lam


class CounterViewMaker(ViewMaker):
    """The ViewMaker of a store with counter parameters: each view by the device steps above,
    on its own (and its partner's) image, whatever process builds it: the teacher stage's
    workers, a student's workers, a whole batch at a time (`views`) or one view (`__call__`)."""
    params = "counter"

    def __init__(self, dataset, recipe: str, mixing: Mixing = Mixing(), resolution: int | None = None,
                 num_samples: int | None = None):
        super().__init__(dataset, recipe, mixing, resolution, num_samples)
        problem = counter_problem(dataset, recipe, self.size)
        if problem:
            raise UserError(f"--view-params counter: {problem}; use --view-params generators")
        self.steps = get_recipe(recipe).device_steps

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "params": self.params}

    def draw(self, seeds: np.ndarray) -> ViewParams:
        return draw_params(self.params, seeds, self.steps, self.mixing, self.num_samples, self.size)

    def views(self, indices: np.ndarray, seeds: np.ndarray):
        """(views, partners, weights) of the records (index, seed), from just their images."""
        views, params = self.views_and_params(np.asarray(indices, np.int64), seeds)
        return views, params.partner, params.lam

    def __call__(self, index: int, seed: int):
        views, params = self.views_and_params(np.array([index]), np.array([seed]))
        return views[0], params.mix_params(0)

    def views_and_params(self, indices: np.ndarray, seeds) -> tuple[torch.Tensor, ViewParams]:
        params = self.draw(seeds)
        mixed = params.mixed
        needed, rows = np.unique(np.concatenate([indices, params.partner[mixed]]), return_inverse=True)
        images = [image_array(self.dataset, int(i)) for i in needed]
        odd = next((n for n, a in enumerate(images) if a.shape[:2] != (self.size, self.size)), None)
        if odd is not None:
            raise UserError(f"sample {needed[odd]} is {images[odd].shape[1]}x{images[odd].shape[0]} px: a store of "
                            f"counter view parameters needs {self.size} px images; use --view-params generators")
        partner_rows = np.full(len(indices), -1, np.int64)
        partner_rows[mixed] = rows[len(indices):]
        padded = padded_planes(np.stack(images), self.steps.padding, "cpu")
        return build_views(padded, rows[:len(indices)], partner_rows, params, self.size), params


def view_maker(dataset, recipe: str, mixing: Mixing, resolution: int | None, num_samples: int | None,
               params: str = "generators") -> ViewMaker:
    """The ViewMaker of views whose parameters are drawn the `params` way (distill/view_draws.py)."""
    maker = CounterViewMaker if params == "counter" else ViewMaker
    return maker(dataset, recipe, mixing, resolution=resolution, num_samples=num_samples)
