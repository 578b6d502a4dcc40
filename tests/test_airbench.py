"""The airbench teacher (distill/models/airbench.py) and its recipe (distill/airbench_recipe.py):
the whitening layer whitens, an epoch's views are a function of (seed, epoch), a run cut after
any epoch resumes to the weights of an uninterrupted one, and the export is a teacher the
other stages load."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distill.models  # noqa: F401  (registers cifar10_airbench)
from distill.airbench_recipe import Hyper, epoch_views, normalise, train
from distill.models import create_teacher
from distill.models.airbench import init_whitening
import timm

REPO = Path(__file__).resolve().parents[1]
HYPER = Hyper(epochs=2, batch_size=32, whiten_bias_epochs=1, seed=3)


@pytest.fixture(scope="module")
def tiny_cifar():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (96,), generator=gen)
    return (images[:64], labels[:64]), (images[64:], labels[64:])


def test_whitening_layer_whitens_the_patches_it_was_fitted_on():
    model = timm.create_model("cifar10_airbench")
    gen = torch.Generator().manual_seed(1)
    # correlated channels, so that whitening has something to undo
    base = torch.randn(64, 1, 16, 16, generator=gen)
    images = torch.cat([base, base + 0.1 * torch.randn(64, 2, 16, 16, generator=gen)], 1)
    init_whitening(model, images, eps=0.0)
    responses = torch.nn.functional.conv2d(images, model.whiten.weight[:12])  # one sign of each direction
    flat = responses.permute(1, 0, 2, 3).reshape(12, -1)
    covariance = flat @ flat.T / flat.shape[1]
    assert torch.allclose(covariance, torch.eye(12), atol=1e-3)


def test_epoch_views_are_seeded_shifts_and_alternate_flips(tiny_cifar):
    images = tiny_cifar[0][0].float()
    order, views = epoch_views(images, HYPER, epoch=0)
    again_order, again = epoch_views(images, HYPER, epoch=0)
    assert torch.equal(order, again_order) and torch.equal(views, again)

    def mirrored(views):  # per image: was its view mirrored? (a shift of at most 2 pixels, either way)
        flags = []
        for image, view in zip(images, views):
            padded = torch.nn.functional.pad(image[None], (2, 2, 2, 2), mode="reflect")[0]
            found = {flip for flip in (False, True) for dy in range(5) for dx in range(5)
                     if torch.equal((padded.flip(-1) if flip else padded)[:, dy:dy + 32, dx:dx + 32], view)}
            assert len(found) == 1
            flags.append(found.pop())
        return flags

    first, second = mirrored(views), mirrored(epoch_views(images, HYPER, epoch=1)[1])
    assert all(a != b for a, b in zip(first, second)) and 0 < sum(first) < len(first)


def test_a_run_cut_after_an_epoch_resumes_to_the_uninterrupted_weights(tiny_cifar, tmp_path):
    whole = train(*tiny_cifar, str(tmp_path / "whole"), HYPER, log=lambda line: None)
    assert train(*tiny_cifar, str(tmp_path / "cut"), HYPER, log=lambda line: None, stop_after=1) is None
    assert not (tmp_path / "cut" / "final").exists()
    resumed = train(*tiny_cifar, str(tmp_path / "cut"), HYPER, log=lambda line: None)
    assert resumed["curve"][0][:2] == whole["curve"][0][:2] and resumed["top1"] == whole["top1"]
    a = torch.load(tmp_path / "whole" / "final" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "final" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the export is a teacher: loaded by name, its logits are the trained model's on normalised input
    teacher = create_teacher("cifar10_airbench", checkpoint=str(tmp_path / "whole" / "final" / "model.pt"))
    images = tiny_cifar[1][0][:8]
    model = timm.create_model("cifar10_airbench")
    model.load_state_dict(a)
    with torch.no_grad():
        assert torch.allclose(teacher(images.float() / 255), model.eval()(normalise(images, model)), atol=1e-5)


def test_other_settings_in_the_same_folder_are_refused(tiny_cifar, tmp_path):
    train(*tiny_cifar, str(tmp_path / "run"), HYPER, log=lambda line: None, stop_after=1)
    other = Hyper(**{**HYPER.__dict__, "seed": 4})
    with pytest.raises(Exception, match="other settings"):
        train(*tiny_cifar, str(tmp_path / "run"), other, log=lambda line: None)


def test_program_refuses_a_non_positive_epoch_count_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train_airbench.py"), "--out", str(tmp_path / "o"), "--epochs", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--epochs" in proc.stderr
    assert not (tmp_path / "o").exists()
