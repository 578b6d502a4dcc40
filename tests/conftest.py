"""Fixtures and hooks only (the helpers they and the tests share are in helpers.py): tiny
datasets in torchvision's exact on-disk formats, a fixed random teacher checkpoint, good and
broken stores and checkpoints for the bad-input catalogue, and the session's environment."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout before any installed copy
from helpers import TINY_STUDENT, run_program, save_logits_args, with_out, write_cifar  # noqa: E402

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


LAUNCHER_ENV = {name: os.environ.get(name) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                          "MASTER_PORT")}


@pytest.fixture(autouse=True)
def _launcher_env():
    """An in-process training run (a test's or a fixture's) sets a launcher's variables
    (distill.distributed); the subprocesses of later tests must not inherit its port, which
    this process still holds. Each test ends with the variables the session started with."""
    yield
    for name, value in LAUNCHER_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's in-process runs, like the subprocesses
    (OMP_NUM_THREADS=1); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_xdist_auto_num_workers(config):
    """-n auto (pyproject's addopts): a worker per core, at most 4 (each holds torch, and many
    tests start programs of their own)."""
    return max(1, min(4, os.cpu_count() or 1))


if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # the workers share the cores: torch's threads too
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="run tests marked slow (full kill-harness trials)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A fixed random-init cifar10_resnet20: a deterministic teacher for store tests."""
    import timm

    import distill.models  # noqa: F401  (registers the CIFAR teachers)

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet20_random.pt"
    torch.save(timm.create_model("cifar10_resnet20").state_dict(), path)
    return path


@pytest.fixture
def no_tvd_debug(monkeypatch):
    """Bad-input cases see the one-line errors users see, whatever the caller's TVD_DEBUG."""
    monkeypatch.delenv("TVD_DEBUG", raising=False)


@pytest.fixture(scope="module")
def base(cifar_root, teacher_ckpt):
    """save_logits arguments without --out: 40 samples, batches of 16, no workers."""
    return save_logits_args(cifar_root, teacher_ckpt, "OUT", "--limit", "40", "--batch-size", "16")


@pytest.fixture(scope="module")
def store(base, tmp_path_factory):
    """A good 40-sample store (one shard)."""
    out = tmp_path_factory.mktemp("good") / "store"
    run_program("save_logits", with_out(base, out), check=True)
    return out


@pytest.fixture(scope="module")
def incomplete_store(store, tmp_path_factory):
    """The good store with its manifest marked unsealed, as a killed run leaves it."""
    out = tmp_path_factory.mktemp("incomplete") / "store"
    shutil.copytree(store, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def ckpts(teacher_ckpt, tmp_path_factory):
    """Checkpoints that do not fit: other class count, other architecture, NaN/inf weights,
    random bytes."""
    import timm

    import distill.models  # noqa: F401

    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    torch.save(timm.create_model("cifar100_resnet56").state_dict(), d / "r56_c100.pt")
    torch.save(timm.create_model("cifar10_resnet56").state_dict(), d / "r56_c10.pt")
    for bad in ("nan", "inf"):
        state = torch.load(teacher_ckpt, weights_only=True)
        state["linear.bias"][:] = float(bad)
        torch.save(state, d / f"r20_{bad}.pt")
    (d / "random.pt").write_bytes(os.urandom(4096))
    return d


@pytest.fixture(scope="module")
def student_c100(tmp_path_factory):
    """A student export (final/: config.yaml + model.pt) for 100 classes."""
    from distill.models import create_student

    final = tmp_path_factory.mktemp("student") / "run" / "final"
    final.mkdir(parents=True)
    model = create_student("cifar_vit", 100, 32, **TINY_STUDENT)
    torch.save(model.state_dict(), final / "model.pt")
    info = {"name": "cifar_vit", "num_classes": 100, "img_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
            "kwargs": TINY_STUDENT}
    (final / "config.yaml").write_text(yaml.safe_dump({"student": info}))
    return final


@pytest.fixture(scope="module")
def mixed_store(request, cifar_root, teacher_ckpt, tmp_path_factory) -> Path:
    """A real Mixup/CutMix store (Mixup 0.8, CutMix 1.0) of the module's size and layout: its
    `MIXED_STORE` save_logits flags, and the flags an indirect parametrisation gives (e.g. each
    `--view-params`), so each module's store is made once per module and parameter."""
    flags = [*request.module.MIXED_STORE, *getattr(request, "param", [])]
    out = tmp_path_factory.mktemp("mixed") / "store"
    run_program("save_logits", save_logits_args(cifar_root, teacher_ckpt, out, "--mixup", "0.8", "--cutmix", "1.0",
                                                *flags), check=True)
    return out
