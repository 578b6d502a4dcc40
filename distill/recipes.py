"""The augmentation recipes: one `Recipe` entry per name, asked by every caller.

A recipe says how its views are made and everything the two stages need to replay them:

- `build(size)`: the ordinary torchvision/timm transform, PIL image -> [0, 1] tensor of
  `size` x `size` pixels (distill.augment runs it inside `scoped_rng(seed)`);
- `draws_from`: the global generators those transforms draw from (torch, numpy, random).
  Replay seeds exactly these; a generator a recipe draws from but does not name would make
  views that do not replay, which tests/test_recipes.py checks for every registered recipe;
- `native_size`: the view size when none is asked for;
- `any_size`: True if the recipe is made at whatever size is asked (timm's random-resized
  crops: the student's input size becomes the view size); False if its views have the
  native size and the model resizes them;
- `test_recipe`: the recipe of the test views of data trained with it;
- `default_for`: the datasets whose teacher trains on this recipe when none is named;
- `device_steps`: what distill/device_replay.py needs to rebuild the recipe's views on the
  training device, batch-wise and exactly (a `CropFlip`), or None: CPU replay only.

Adding a recipe is one `register_recipe(Recipe(...))` (and one replay test). This module
imports nothing heavy, so `--help` and flag errors list the names at once; the builders
import torchvision and timm when called.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from teacher_logits.errors import UserError

GENERATORS = ("torch", "numpy", "random")
VIEW_PARAMS = ("counter", "generators")  # how a store draws its CropFlip views' parameters (distill/view_draws.py)
DEFAULT_INPUT_SIZE = 32  # a student's input size when neither the config nor the recipe sets one


@dataclass(frozen=True)
class CropFlip:
    """torchvision's RandomCrop(size, padding) (zero fill) then RandomHorizontalFlip(0.5), as
    steps distill/device_replay.py replays on a whole batch from the same generator draws."""
    padding: int = 0
    flip: bool = False


@dataclass(frozen=True)
class Recipe:
    name: str
    build: Callable[[int], Callable]  # size -> transform (PIL image -> float tensor (3, size, size) in [0, 1])
    draws_from: tuple[str, ...] = ("torch",)
    native_size: int = 32
    any_size: bool = False
    training: bool = True  # False: a test-view recipe only
    test_recipe: str = "none"
    default_for: tuple[str, ...] = ()
    device_steps: CropFlip | None = None
    help: str = ""

    def __post_init__(self):
        unknown = set(self.draws_from) - set(GENERATORS)
        if unknown:
            raise ValueError(f"recipe {self.name}: draws_from names {sorted(unknown)}; known: {', '.join(GENERATORS)}")

    @property
    def torch_only(self) -> bool:
        return self.draws_from == ("torch",)


REGISTRY: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in REGISTRY:
        raise ValueError(f"recipe {recipe.name!r} is registered already")
    REGISTRY[recipe.name] = recipe
    return recipe


def recipe_names(training: bool = True) -> tuple[str, ...]:
    """The registered names: of training recipes, or (training=False) of test-view recipes
    (`none`, the image as stored, is both)."""
    return tuple(name for name, r in REGISTRY.items() if r.training == training or name == "none")


def get_recipe(name: str) -> Recipe:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown augmentation recipe {name!r}; choose one of {', '.join(recipe_names())}") from None


def default_recipe(dataset: str) -> Recipe:
    """The recipe a teacher trains `dataset` with when none is named (cifar unless a recipe claims it)."""
    return next((r for r in REGISTRY.values() if dataset in r.default_for), REGISTRY["cifar"])


def view_size(recipe: str, img_size: int | None = None) -> int:
    """The size of `recipe`'s views for a model whose input is `img_size` px (None: not said):
    a recipe made at any size (timm's random-resized crop of photographs) is made at img_size;
    a fixed-size recipe at its native size, and the model resizes. The one place this rule
    lives: the teacher stage, the student (with or without a store), device replay and the
    test views all ask here, so they cannot disagree on a view's size (which would break
    replay silently). An explicit view size a program asks for (save_logits --img-size)
    resizes a fixed-size recipe's views; view_size(recipe) is then only the default."""
    r = get_recipe(recipe)
    return img_size if r.any_size and img_size else r.native_size


def eval_view_spec(dataset: str, model_size: int) -> tuple[str, int]:
    """(recipe, resolution) of a dataset's test views: its training recipe's test recipe, at
    the size the training views have (the model's input size for photographs, else the
    training recipe's own size, which the test recipe is resized to)."""
    train = default_recipe(dataset)
    return train.test_recipe, view_size(train.name, model_size)


def default_input_size(recipe: str) -> int:
    """A student's input size when the config sets none: the view size of recipes made at any size."""
    r = get_recipe(recipe)
    return r.native_size if r.any_size else DEFAULT_INPUT_SIZE


def sizes_help() -> str:
    """'96 for stl10, 224 for imagenet, else 32': the native sizes that are not the default, for --help."""
    special = [f"{r.native_size} for {r.name}" for r in REGISTRY.values()
               if r.training and r.native_size != DEFAULT_INPUT_SIZE]
    return ", ".join(special + [f"else {DEFAULT_INPUT_SIZE}"])


def recipes_help() -> str:
    """Each training recipe and what it does, for --help."""
    return "; ".join(f"{r.name}: {r.help}" for r in REGISTRY.values() if r.training)


def defaults_help() -> str:
    """Which dataset trains on which recipe when none is named, for --help."""
    claimed = [f"{r.name} for {', '.join(r.default_for)}" for r in REGISTRY.values()
               if r.default_for and r.name != "cifar"]
    return ", ".join(claimed + ["else cifar"])


# -- the built-in recipes ----------------------------------------------------------------------

def pil_steps(*steps, native: int, tensor_steps=()):
    """A fixed-size recipe's builder: `steps` on the PIL image at `native` pixels, resized to the
    asked size if it differs, then ToTensor and `tensor_steps` (each a zero-argument factory)."""
    def build(size: int):
        from torchvision import transforms as T

        pil = [step() for step in steps]
        if size != native:
            pil.append(T.Resize((size, size), antialias=True))
        return T.Compose([*pil, T.ToTensor(), *(step() for step in tensor_steps)])
    return build


def _crop(size: int, padding: int):
    def make():
        from torchvision import transforms as T
        return T.RandomCrop(size, padding=padding)
    return make


def _flip():
    from torchvision import transforms as T
    return T.RandomHorizontalFlip()


def _rand_augment():
    from timm.data.auto_augment import rand_augment_transform

    return rand_augment_transform("rand-m9-mstd0.5", {})  # '-inc1' variants trip Pillow 13's posterize


def _erase():
    from torchvision import transforms as T
    return T.RandomErasing(p=0.25, value=0)


def _stl10_colour():
    from torchvision import transforms as T
    return T.ColorJitter(0.4, 0.4, 0.4)


def _grey():
    from torchvision import transforms as T
    return T.RandomGrayscale(0.1)


def timm_transform(train: bool):
    """timm's own ImageNet train (DeiT/TinyViT: RandomResizedCrop 0.08-1 bicubic, flip,
    RandAugment rand-m9-mstd0.5, RandomErasing 0.25 as DeiT erases) or eval (resize, centre crop
    0.875) transform, followed by the inverse of its normalisation, so the view is in pixel space."""
    def build(size: int):
        import torch
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
        from torchvision import transforms as T

        if train:
            steps = create_transform(size, is_training=True, scale=(0.08, 1.0), hflip=0.5,
                                     auto_augment="rand-m9-mstd0.5", interpolation="bicubic", re_prob=0.25,
                                     re_mode="pixel", re_count=1)
        else:
            steps = create_transform(size, is_training=False, crop_pct=0.875, interpolation="bicubic")
        mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
        return T.Compose([steps, T.Normalize((-mean / std).tolist(), (1 / std).tolist())])
    return build


register_recipe(Recipe("none", pil_steps(native=32), device_steps=CropFlip(), help="the image as it is"))
register_recipe(Recipe("crop", pil_steps(_crop(32, 4), native=32), default_for=("digits",),
                       device_steps=CropFlip(padding=4), help="pad-4 random crop"))
register_recipe(Recipe("cifar", pil_steps(_crop(32, 4), _flip, native=32), default_for=("cifar10", "cifar100"),
                       device_steps=CropFlip(padding=4, flip=True), help="pad-4 random crop + horizontal flip"))
register_recipe(Recipe("cifar-strong", pil_steps(_crop(32, 4), _flip, _rand_augment, native=32,
                                                 tensor_steps=(_erase,)),
                       draws_from=GENERATORS, help="cifar + timm RandAugment m9 + random erasing 0.25"))
register_recipe(Recipe("stl10", pil_steps(_crop(96, 12), _flip, _stl10_colour, _grey, native=96),
                       native_size=96, default_for=("stl10",),
                       help="pad-12 crop, flip, colour jitter 0.4, greyscale 0.1 at 96 px"))
register_recipe(Recipe("imagenet", timm_transform(train=True), draws_from=GENERATORS, native_size=224,
                       any_size=True, test_recipe="center-crop", default_for=("folder",),
                       help="DeiT/TinyViT's: timm's create_transform, at any --img-size"))
register_recipe(Recipe("center-crop", timm_transform(train=False), native_size=224, any_size=True,
                       training=False, help="timm's eval transform: resize, centre crop 0.875"))
