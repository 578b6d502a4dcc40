"""The recipe registry (distill/recipes.py): a recipe is one entry, every caller asks it.

- a recipe registered here, in the test alone, replays exactly through both stages: the
  teacher stage stores its views, the student side rebuilds them bit for bit (0 and 2
  workers), and a student trains from the store;
- every registered recipe names the generators it draws from: its views do not depend on
  the state of the ones it leaves out (a wrong entry would make views that do not replay);
- the strong built-in recipes (cifar-strong, stl10) replay bit-exactly for any worker count.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from helpers import REPO, check_student_side, run_program, save_logits_args, teacher_side, tiny_student_args
from PIL import Image
from test_datasets import write_stl10

from distill import recipes
from distill.augment import Mixing, ViewMaker, build_transform, scoped_rng
from distill.datasets import build_dataset, labels_of
from distill.recipes import Recipe
from teacher_logits.reader import LogitStore

pytestmark = pytest.mark.usefixtures("one_thread")


def shifted(size: int):
    """A toy recipe: a random cyclic shift whose offsets numpy draws (not a torchvision step)."""
    def transform(image):
        view = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        dy, dx = np.random.randint(-3, 4, size=2)
        return torch.roll(view, (int(dy), int(dx)), dims=(1, 2))
    return transform


@pytest.fixture
def shift_recipe(monkeypatch):
    recipe = Recipe("test-shift", shifted, draws_from=("torch", "numpy"), help="cyclic shift by up to 3 px")
    monkeypatch.setitem(recipes.REGISTRY, recipe.name, recipe)
    return recipe


def test_a_recipe_registered_here_replays_through_both_stages(shift_recipe, cifar_root, teacher_ckpt, tmp_path):
    store_path = tmp_path / "store"
    argv = save_logits_args(cifar_root, teacher_ckpt, store_path, "--aug", "test-shift", "--epochs", "2",
                            "--limit", "24", "--shard-records", "10", "--mixup", "0.8", "--cutmix", "1.0")
    run_program("save_logits", argv, check=True)
    store = LogitStore(str(store_path))
    assert store.settings.augmentation["recipe"] == "test-shift"
    dataset = build_dataset("cifar10", cifar_root, train=True, skip_md5=True)
    maker = ViewMaker(dataset, "test-shift", Mixing(**store.settings.augmentation["mixing"]), num_samples=24)
    labels = labels_of(dataset)[:24]
    reference = teacher_side(store, maker, labels, 0)
    assert sum(not torch.equal(reference[(0, i)], reference[(1, i)]) for i in range(24)) > 20  # it augments
    for workers in (0, 2):
        for epoch in range(2):
            seen, _ = check_student_side(store, maker, labels, reference, epoch, workers)
            assert sorted(seen) == list(range(24))

    from distill.student_stage import run

    out = tmp_path / "student"
    run(REPO / "configs/smoke_cifar10.yaml",
        [f"data.root={cifar_root}", "data.skip_md5=true", "data.recipe=test-shift", f"logits.store={store_path}",
         f"output.dir={out}", *tiny_student_args(), "train.epochs=1",
         "train.batch_size=8", "data.workers=0", "data.test_limit=16", "wandb.enabled=false"])
    assert (out / "final" / "model.pt").is_file()


def views(recipe: Recipe, images, scrambled: bool) -> list[torch.Tensor]:
    transform = build_transform(recipe.name, recipe.native_size)
    made = []
    for n, image in enumerate(images):
        if scrambled:  # the generators the recipe leaves out hold other states
            np.random.seed(1000 + n)
            random.seed(2000 + n)
        with scoped_rng(n, torch_only=recipe.torch_only):
            made.append(transform(image))
    return made


def images_for(recipe: Recipe, count: int = 6):
    rng = np.random.default_rng(0)
    side = recipe.native_size if not recipe.any_size else 48  # any-size recipes: a photograph-like input
    return [Image.fromarray(rng.integers(0, 256, (side, side + 8, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.mark.parametrize("name", sorted(recipes.REGISTRY))
def test_every_recipe_names_the_generators_it_draws_from(name):
    recipe = recipes.REGISTRY[name]
    images = images_for(recipe)
    calm, scrambled = views(recipe, images, False), views(recipe, images, True)
    assert all(torch.equal(a, b) for a, b in zip(calm, scrambled)), f"{name}: views depend on unscoped generators"


def test_a_recipe_that_hides_a_generator_is_caught(shift_recipe):
    """The check above can fail: the toy recipe draws from numpy; declared torch-only, its views
    follow numpy's state instead of the seed."""
    hiding = Recipe("test-shift", shifted, draws_from=("torch",))
    images = images_for(hiding)
    calm, scrambled = views(hiding, images, False), views(hiding, images, True)
    assert not all(torch.equal(a, b) for a, b in zip(calm, scrambled))
    assert all(torch.equal(a, b) for a, b in zip(views(shift_recipe, images, False), views(shift_recipe, images, True)))


def test_recipe_facts_have_one_home():
    """The sizes and defaults the programs used to spell out come from the entries."""
    from distill.config import load_config

    assert load_config(None, ["data.recipe=imagenet"]).data.img_size == recipes.REGISTRY["imagenet"].native_size
    assert load_config(None, ["data.recipe=stl10"]).data.img_size == recipes.DEFAULT_INPUT_SIZE
    assert recipes.view_size("imagenet", 64) == 64 and recipes.view_size("imagenet") == 224  # any size
    assert recipes.view_size("cifar", 64) == recipes.view_size("cifar") == 32  # fixed: the model resizes
    assert recipes.eval_view_spec("folder", 64) == ("center-crop", 64)
    assert recipes.eval_view_spec("stl10", 32) == ("none", recipes.REGISTRY["stl10"].native_size)
    assert recipes.default_recipe("digits").name == "crop" and recipes.default_recipe("cifar100").name == "cifar"
    with pytest.raises(ValueError, match="draws_from"):
        Recipe("bad", shifted, draws_from=("torch", "cuda"))


def save(root, ckpt, out, *extra):
    run_program("save_logits", save_logits_args(root, ckpt, out, *extra), check=True)
    return out


@pytest.mark.parametrize("recipe", ["cifar-strong", "stl10"])
def test_strong_recipes_replay_exactly_across_workers(recipe, cifar_root, teacher_ckpt, tmp_path):
    if recipe == "stl10":
        root, _ = write_stl10(tmp_path / "stl", n_train=16, n_test=4)
        store_path = save(root, teacher_ckpt, tmp_path / "store", "--aug", "stl10", "--epochs", "2",
                          "--shard-records", "6", "--dataset", "stl10")
        dataset = build_dataset("stl10", root, train=True, skip_md5=True)
    else:
        store_path = save(cifar_root, teacher_ckpt, tmp_path / "store", "--aug", "cifar-strong", "--epochs", "2",
                          "--limit", "40", "--shard-records", "16", "--mixup", "0.8", "--cutmix", "1.0",
                          "--mix-prob", "0.7")
        dataset = build_dataset("cifar10", cifar_root, train=True, skip_md5=True)
    store = LogitStore(store_path)
    assert store.settings.augmentation["recipe"] == recipe
    size = store.settings.dataset["size"]
    maker = ViewMaker(dataset, recipe, Mixing(**store.settings.augmentation["mixing"]), num_samples=size)
    labels = labels_of(dataset)[:size]
    side0, side2 = teacher_side(store, maker, labels, 0), teacher_side(store, maker, labels, 2)
    assert side0.keys() == side2.keys() and len(side0) == 2 * size
    assert all(torch.equal(side0[k], side2[k]) for k in side0)
    res = 96 if recipe == "stl10" else 32
    assert next(iter(side0.values())).shape == (3, res, res)
    # the augmentation is real: the two epochs' views of a sample differ, and so do the recipe's
    # own effects (grayscale views for stl10; erased zero blocks for cifar-strong)
    assert sum(not torch.equal(side0[(0, i)], side0[(1, i)]) for i in range(size)) == size
    if recipe == "stl10":
        grey = sum(torch.equal(v[0], v[1]) and torch.equal(v[1], v[2]) for v in side0.values())
        assert 0 < grey < len(side0)
    for workers in (0, 2):
        for epoch in range(2):
            seen, _ = check_student_side(store, maker, labels, side0, epoch, workers)
            assert sorted(seen) == list(range(size))
