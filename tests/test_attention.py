"""Attention rollout (distill/attention.py) and evaluate.py --attention on exported students."""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import TINY_STUDENT, run_tool
from distill.attention import (DPI, attention_figure_size, captured_attention, class_token_maps, rollout,
                               rollout_unsupported)
from distill.datasets import STATS
from distill.models import Preprocessed, create_student, create_teacher

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2)


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return Preprocessed(create_student("cifar_vit", 10, 32, **TINY_VIT), *STATS["digits"], 32).eval()


def test_rollout_matches_a_hand_computed_two_layer_example():
    # layer 1: heads I and the swap average to all-0.5; + I, rows / 2 -> [[.75, .25], [.25, .75]]
    # layer 2: both heads attend to token 1; + I -> [[1, 1], [0, 2]], rows / 2 -> [[.5, .5], [0, 1]]
    layer1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])[None]
    layer2 = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])[None]
    # layer 2 @ layer 1 (the reverse order would give [[.375, .625], [.125, .875]])
    expected = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    torch.testing.assert_close(rollout([layer1, layer2])[0], expected)


def test_maps_of_a_tiny_vit_are_non_negative_on_the_patch_grid_and_keep_the_model_unchanged():
    model, images = tiny_vit(), torch.rand(3, 3, 32, 32)
    for i, block in enumerate(model.model.blocks):  # one of each, so a swapped or lost flag shows
        block.attn.fused_attn = bool(i % 2)
    maps, logits = class_token_maps(model, images)
    assert maps.shape == (3, 8, 8)  # 32 px, 4 px patches
    assert (maps >= 0).all() and maps.sum() > 0
    assert [b.attn.fused_attn for b in model.model.blocks] == [False, True]  # restored
    torch.testing.assert_close(logits, model(images))  # same predictions as the (partly) fused path
    with captured_attention(model.model) as probs:
        model(images)
    assert len(probs) == 2 and probs[0].shape == (3, 2, 65, 65)
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(3, 2, 65))  # softmaxed rows


def test_uniform_attention_rolls_out_to_a_uniform_map_of_the_exact_value():
    model = tiny_vit()
    for block in model.model.blocks:  # q = k = 0: every token attends equally to all T tokens
        torch.nn.init.zeros_(block.attn.qkv.weight)
        torch.nn.init.zeros_(block.attn.qkv.bias)
    maps, _ = class_token_maps(model, torch.rand(2, 3, 32, 32))
    # per layer M = (J/T + I) / 2, J/T a projection, so M^L = (I + (2^L - 1) J/T) / 2^L: off the diagonal
    # (class token -> patch) every entry is (2^L - 1) / (T 2^L); without the identity it would be 1 / T
    tokens, layers = 65, 2
    value = (2 ** layers - 1) / (tokens * 2 ** layers)
    torch.testing.assert_close(maps, torch.full((2, 8, 8), value))


@pytest.mark.parametrize("name, why", [("tiny_vit_5m", "local windows"), ("cct_7_3x1", "sequence pooling"),
                                       ("cifar_cnn", "no attention layers")])
def test_models_without_class_token_or_global_attention_are_refused_with_the_reason(name, why):
    kwargs = TINY_STUDENT if name == "cct_7_3x1" else {}
    assert why in rollout_unsupported(create_student(name, 10, 32, **kwargs))
    with pytest.raises(ValueError, match=why):
        class_token_maps(create_student(name, 10, 32, **kwargs), torch.rand(1, 3, 32, 32))


def test_a_cifar_teacher_is_refused(teacher_ckpt):
    assert "no attention layers" in rollout_unsupported(create_teacher("cifar10_resnet20", checkpoint=teacher_ckpt))


# ------------------------------------------------------------------------------ evaluate.py --attention


def export(folder, name, **kwargs):
    """A student export dir as train_student.py writes it (random weights: no training needed)."""
    torch.manual_seed(0)
    folder.mkdir(parents=True)
    torch.save(create_student(name, 10, 32, **kwargs).state_dict(), folder / "model.pt")
    mean, std = STATS["digits"]
    info = dict(kind="student", name=name, num_classes=10, img_size=32, mean=list(mean), std=list(std),
                kwargs=kwargs)
    (folder / "config.yaml").write_text(yaml.safe_dump({"student": info}))
    return folder


def test_attention_images_show_one_of_each_class_first():
    from distill.evaluation import one_per_class

    labels = np.repeat(np.arange(10), 5)  # a test set sorted by class: its first 12 are two classes
    picked = one_per_class(labels, 12)
    assert labels[picked].tolist() == [*range(10), 0, 1] and len(set(picked.tolist())) == 12


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("attn_runs")
    return {"vit": export(root / "vit_kd" / "final", "cifar_vit", **TINY_VIT),
            "vit2": export(root / "vit_scratch" / "final", "cifar_vit", **TINY_VIT),
            "cnn": export(root / "cnn" / "final", "cifar_cnn")}


def evaluate(out, n, *specs):
    return run_tool("tools/evaluate.py", "--dataset", "digits", "--limit", "16", "--throughput-iters", "0",
                    "--out", out, "--attention", n, "--compare", *specs)


@pytest.mark.parametrize("n", [2, 3])
def test_evaluate_writes_one_png_with_a_row_per_image_and_a_column_per_vit(runs, tmp_path, n):
    proc = evaluate(tmp_path, n, runs["vit"], runs["cnn"], runs["vit2"])
    png = tmp_path / "attention.png"
    assert f"in {png}" in proc.stdout
    assert "attention: skipping cnn: CifarCNN has no attention layers" in proc.stdout
    width, height = attention_figure_size(n, 2)  # image column + vit_kd + vit_scratch; cnn skipped
    with Image.open(png) as image:
        assert image.size == (round(width * DPI), round(height * DPI)) == (600, n * 200)


def test_evaluate_without_any_vit_writes_no_png_and_says_why(runs, tmp_path):
    proc = evaluate(tmp_path, 2, runs["cnn"])
    assert "skipping cnn: CifarCNN has no attention layers" in proc.stdout
    assert "no model has a class token" in proc.stdout and "attention.png not written" in proc.stdout
    assert not (tmp_path / "attention.png").exists() and (tmp_path / "metrics.json").exists()
