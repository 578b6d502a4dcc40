"""Train `cifar10_airbench` from scratch the airbench94 way: a strong CIFAR teacher made here.

Why a recipe of its own rather than the student engine (`tools/train_teacher.py`): the ~10-epoch
result depends on choices that engine does not make, all of them airbench94's (Keller Jordan,
cifar10-airbench): the patch-whitening and identity initialisation (models/airbench.py),
Nesterov SGD with a 64x learning rate on BatchNorm biases, a triangular schedule, label
smoothing 0.2, a Lookahead weight average every 5 steps, ±2-pixel reflect-padded translations,
flips that alternate per image from epoch to epoch, batches of 1,024, and flip test-time
averaging. The loop is small and whole-batch: the images live in one uint8 tensor.

Guarantees (tests/test_airbench.py): an epoch's batches and views depend only on (seed, epoch),
so a run stopped after any epoch and resumed from `OUT/checkpoint.pt` ends with the weights of
an uninterrupted run; the export loads with `create_teacher("cifar10_airbench", checkpoint=...)`.
"""
import json
import os
import time
from dataclasses import asdict, dataclass

import timm
import torch
import torch.nn.functional as F
from teacher_logits.errors import UserError

from .models.airbench import Airbench, init_identity, init_whitening

__all__ = ["Hyper", "evaluate", "train"]


@dataclass(frozen=True)
class Hyper:
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 11.5                # per 1,024 examples, with the loss summed over the batch
    momentum: float = 0.85
    weight_decay: float = 0.0153    # per 1,024 examples, decoupled from the learning rate
    bias_lr_scale: float = 64.0     # BatchNorm biases learn this much faster (no extra decay)
    label_smoothing: float = 0.2
    whiten_bias_epochs: int = 3     # the whitening layer's bias is frozen after these
    translate: int = 2
    lookahead_every: int = 5
    seed: int = 0


def normalise(images: torch.Tensor, model) -> torch.Tensor:
    """uint8 N x 3 x H x W -> float, with the model's pretrained_cfg mean and std."""
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def epoch_views(images: torch.Tensor, hyper: Hyper, epoch: int):
    """(order, views) of one epoch: a seeded permutation and each image shifted by up to
    `translate` pixels (reflect padding); image i is mirrored in epochs where its seeded coin
    and the epoch's parity agree, so every image is seen both ways in any two epochs."""
    gen = torch.Generator().manual_seed(hyper.seed * 1_000_003 + epoch)
    n, _, h, w = images.shape
    order = torch.randperm(n, generator=gen)
    t = hyper.translate
    padded = F.pad(images, (t, t, t, t), mode="reflect")
    dy, dx = torch.randint(0, 2 * t + 1, (2, n), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    views = padded[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    coin = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(hyper.seed)).bool()
    mirror = coin ^ bool(epoch % 2)
    views[mirror] = views[mirror].flip(-1)
    return order, views


def optimizer_for(model: Airbench, hyper: Hyper) -> torch.optim.SGD:
    # PyTorch's SGD couples decay to the learning rate and the loss is a sum: rescale so that
    # `lr` and `weight_decay` mean what they mean per 1,024 examples (airbench94's convention).
    kilostep = 1024 * (1 + 1 / (1 - hyper.momentum))
    lr = hyper.lr / kilostep
    decay = hyper.weight_decay * hyper.batch_size / kilostep
    biases = [p for name, p in model.named_parameters() if p.requires_grad and isinstance(
        model.get_submodule(name.rsplit(".", 1)[0]), torch.nn.BatchNorm2d)]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not b for b in biases)]
    bias_lr = lr * hyper.bias_lr_scale
    return torch.optim.SGD([dict(params=biases, lr=bias_lr, weight_decay=decay / bias_lr, initial_lr=bias_lr),
                            dict(params=others, lr=lr, weight_decay=decay / lr, initial_lr=lr)],
                           momentum=hyper.momentum, nesterov=True)


def lr_factor(step: int, total: int) -> float:
    """Triangular: 0.2 -> 1 over the first 23 % of steps, then down to 0.07."""
    peak = int(0.23 * total)
    if step < peak:
        return 0.2 + 0.8 * step / peak
    return 1.0 - 0.93 * (step - peak) / max(1, total - peak)


@torch.no_grad()
def lookahead(model: Airbench, average: dict, decay: float) -> None:
    """Pull the running average toward the weights and the weights back onto it."""
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            average[name].lerp_(value, 1 - decay)
            value.copy_(average[name])


@torch.no_grad()
def evaluate(model: Airbench, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> dict:
    """Top-1 in % on normalised `images`, plain and averaged with the mirrored view."""
    model.eval()
    plain = mirrored = 0
    for start in range(0, len(images), batch):
        x, y = images[start:start + batch], labels[start:start + batch]
        logits = model(x)
        plain += (logits.argmax(1) == y).sum().item()
        mirrored += ((logits + model(x.flip(-1))).argmax(1) == y).sum().item()
    return {"top1": 100 * plain / len(images), "top1_flip_tta": 100 * mirrored / len(images)}


def _start(model: Airbench, images: torch.Tensor, hyper: Hyper):
    init_whitening(model, images[:5000])
    init_identity(model)
    return optimizer_for(model, hyper), {k: v.clone() for k, v in model.state_dict().items()}


def train(train_set, test_set, out: str, hyper: Hyper, log=print, stop_after: int | None = None) -> dict | None:
    """Train to `out`/final/model.pt, resuming from `out`/checkpoint.pt; returns the metrics.

    `train_set` and `test_set` are (uint8 images N x 3 x 32 x 32, int64 labels). With
    `stop_after`, return None after that epoch's checkpoint: the same call without it resumes."""
    torch.manual_seed(hyper.seed)
    model = timm.create_model("cifar10_airbench")
    images, labels = normalise(train_set[0], model), train_set[1]
    test_images, test_labels = normalise(test_set[0], model), test_set[1]
    optimizer, average = _start(model, images, hyper)
    checkpoint = os.path.join(out, "checkpoint.pt")
    curve, first_epoch, average = _resume(checkpoint, model, optimizer, average, hyper, log)
    started = time.time() - (curve[-1][2] if curve else 0.0)
    for epoch in range(first_epoch, hyper.epochs):
        loss = train_epoch(model, optimizer, average, images, labels, hyper, epoch)
        scores = evaluate(model, test_images, test_labels)
        curve.append([epoch + 1, scores["top1"], round(time.time() - started, 1)])
        log(f"epoch {epoch + 1}/{hyper.epochs}: loss {loss:.4f}, test top-1 {scores['top1']:.2f} % "
            f"({scores['top1_flip_tta']:.2f} % with flips), {curve[-1][2]:.0f} s")
        os.makedirs(out, exist_ok=True)
        _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "average": average,
               "curve": curve, "epoch": epoch + 1, "hyper": asdict(hyper)}, checkpoint)
        if stop_after == epoch + 1 < hyper.epochs:
            return None
    metrics = {**evaluate(model, test_images, test_labels), "epochs": hyper.epochs, "curve": curve,
               "hyper": asdict(hyper), "train_images": len(images), "test_images": len(test_images)}
    _export(model, metrics, os.path.join(out, "final"))
    return metrics


def train_epoch(model, optimizer, average: dict, images, labels, hyper: Hyper, epoch: int) -> float:
    """One epoch of seeded views; the last one ends on the Lookahead average. Returns the last
    batch's mean loss."""
    model.whiten.bias.requires_grad = epoch < hyper.whiten_bias_epochs
    model.train()
    order, views = epoch_views(images, hyper, epoch)
    steps_per_epoch = len(images) // hyper.batch_size
    total = hyper.epochs * steps_per_epoch
    for i in range(steps_per_epoch):
        step = epoch * steps_per_epoch + i
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_factor(step, total)
        batch = order[i * hyper.batch_size:(i + 1) * hyper.batch_size]
        loss = F.cross_entropy(model(views[batch]), labels[batch], label_smoothing=hyper.label_smoothing,
                               reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % hyper.lookahead_every == 0:
            lookahead(model, average, 0.95 ** hyper.lookahead_every * (step / total) ** 3)
    if epoch == hyper.epochs - 1:
        lookahead(model, average, 1.0)
    return loss.item() / len(batch)


def _resume(checkpoint: str, model, optimizer, average: dict, hyper: Hyper, log) -> tuple[list, int, dict]:
    """(curve, first epoch to train, Lookahead average) from `checkpoint`, loaded into `model`
    and `optimizer`; a fresh start where there is none."""
    if not os.path.exists(checkpoint):
        return [], 0, average
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if state["hyper"] != asdict(hyper):
        raise UserError(f"{checkpoint} was made with other settings ({state['hyper']}): run them again with "
                        "those, or use another --out")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log(f"resumed after epoch {state['epoch']} from {checkpoint}")
    return state["curve"], state["epoch"], state["average"]


def _export(model, metrics: dict, final: str) -> None:
    """final/model.pt (a plain state_dict: save_logits --checkpoint takes it) and metrics.json."""
    os.makedirs(final, exist_ok=True)
    _save(model.state_dict(), os.path.join(final, "model.pt"))
    with open(os.path.join(final, "metrics.json.tmp"), "w") as f:
        json.dump(metrics, f, indent=1)
    os.replace(os.path.join(final, "metrics.json.tmp"), os.path.join(final, "metrics.json"))


def _save(obj, path: str) -> None:
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)

