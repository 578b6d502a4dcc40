"""Shared fixtures: tiny datasets written in torchvision's exact on-disk formats,
a fixed random teacher checkpoint, and helpers to run the programs."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def needs_shared(path: Path) -> Path:
    """`path` under ../shared. A clone without ../shared skips the test; where ../shared exists
    (CI always has it) a missing file fails it, so a skip never hides lost coverage."""
    if not path.exists():
        if SHARED.is_dir():
            pytest.fail(f"{path} is missing although {SHARED} exists: restore the shared copy")
        pytest.skip(f"{SHARED} not found beside the checkout: the test needs {path}")
    return path


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


def write_cifar(root: Path, per_batch: int = 40, num_classes: int = 10, seed: int = 0) -> Path:
    """A small CIFAR-10 (or -100 with num_classes=100) in torchvision's pickle layout.
    Images are class-coloured noise, so a model can learn them quickly."""
    rng = np.random.default_rng(seed)
    hundred = num_classes == 100
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    palette = rng.integers(0, 256, size=(num_classes, 3))

    def batch(n):
        labels = rng.integers(0, num_classes, size=n)
        base = palette[labels][:, :, None, None] * np.ones((1, 1, 32, 32))
        img = np.clip(base + rng.normal(0, 40, size=(n, 3, 32, 32)), 0, 255).astype(np.uint8)
        key = "fine_labels" if hundred else "labels"
        return {"data": img.reshape(n, 3072), key: labels.tolist(), "filenames": [f"{i}.png" for i in range(n)]}

    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = per_batch * (5 if hundred and name == "train" else 1)
        with open(folder / name, "wb") as f:
            pickle.dump(batch(n), f)
    meta_name, meta = (("meta", {"fine_label_names": [f"c{i}" for i in range(100)]}) if hundred else
                       ("batches.meta", {"label_names": [f"c{i}" for i in range(10)]}))
    with open(folder / meta_name, "wb") as f:
        pickle.dump(meta, f)
    return root


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


def run_tool(script: str, *args, check: bool = True, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    """Run tools/<script> (or a module path) as a user would, in a fresh process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def tool(name: str):
    """tools/<name>.py as a module (tools/ is a package), for in-process runs."""
    return importlib.import_module(f"tools.{name}")


def call_tool(name: str, argv, capsys) -> tuple[int, str, str]:
    """tools/<name>.py's main(argv) as its script runs it: (exit code, stdout, stderr)."""
    from distill.cli import run_main

    capsys.readouterr()
    code = 0
    try:
        run_main(lambda: tool(name).main([str(a) for a in argv]))
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def save_logits_args(root, ckpt, out, *extra):
    return ["--teacher", "cifar10_resnet20", "--checkpoint", ckpt, "--dataset", "cifar10", "--data-root", root,
            "--skip-md5", "--out", out, "--workers", "0", "--batch-size", "32", *extra]


TINY_STUDENT = {"embed_dim": 32, "depth": 1, "num_heads": 2}


# ------------------------------------------------------------------ bad-input catalogue: helpers

_TOOLS: dict[str, object] = {}


def train_student_module():
    if "train_student" not in _TOOLS:
        spec = importlib.util.spec_from_file_location("tvd_train_student", REPO / "distill" / "train_student.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _TOOLS["train_student"] = module
    return _TOOLS["train_student"]


@dataclass
class Result:
    code: int | None
    out: str
    err: str


def call(main, argv, capsys) -> Result:
    """main(argv) as its script runs it, expected to exit: the exit code and what it printed."""
    from distill.cli import run_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_main(lambda: main([str(a) for a in argv]))
    captured = capsys.readouterr()
    return Result(exc.value.code, captured.out, captured.err)


def save_logits(argv, capsys) -> Result:
    return call(tool("save_logits").main, argv, capsys)


def user_error(result, *needles: str, code: int = 2) -> str:
    """The one `error: ...` line (stderr's last), no traceback, exit `code`; returns the line."""
    err = result.err if hasattr(result, "err") else result.stderr
    got = result.code if hasattr(result, "code") else result.returncode
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert got == code, f"exit {got}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(errors) == 1 and lines[-1] == errors[0], f"not one error line at the end:\n{err}"
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` (hidden ones too), by relative name, with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@contextmanager
def small_disk(mnt: Path, size: str, options: str = ""):
    """A tmpfs of `size` (e.g. '64k') at `mnt`, mounted with extra `options` (e.g. 'ro'): a real
    full or read-only disk. Skips, saying why, where mounting is not permitted (needs root)."""
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(filter(None, [f"size={size}", options])), "tmpfs",
                           str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()}): needs root / CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)])


def remount(mnt: Path, options: str) -> None:
    """Change a small_disk's options in place: 'size=2m' frees space, 'ro' makes it read-only."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


# ------------------------------------------------------------------ bad-input catalogue: fixtures


@pytest.fixture
def no_tvd_debug(monkeypatch):
    """Bad-input cases see the one-line errors users see, whatever the caller's TVD_DEBUG."""
    monkeypatch.delenv("TVD_DEBUG", raising=False)


@pytest.fixture(scope="module")
def base(cifar_root, teacher_ckpt):
    """save_logits arguments without --out: 40 samples, batches of 16, no workers."""
    return save_logits_args(cifar_root, teacher_ckpt, "OUT", "--limit", "40", "--batch-size", "16")


def with_out(base, out, *extra):
    args = list(base)
    args[args.index("--out") + 1] = out
    return args + [str(e) for e in extra]


def replace(args, flag, value):
    """args with every `flag X` set to `flag value`."""
    return [value if i and args[i - 1] == flag else a for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def store(base, tmp_path_factory):
    """A good 40-sample store (one shard)."""
    out = tmp_path_factory.mktemp("good") / "store"
    tool("save_logits").main([str(a) for a in with_out(base, out)])
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


def teacher_side(store, maker, labels, workers):
    """{(epoch, index): view} of every stored record as the teacher stage builds it, with `workers`
    DataLoader processes: the reference the replay-exactness tests compare the student side to."""
    from distill.replay import SeededViews, views_loader

    epochs = np.repeat(np.arange(store.epochs), maker.num_samples)
    indices = np.tile(np.arange(maker.num_samples), store.epochs)
    views = SeededViews(maker, store.settings.seed, epochs, indices, labels)
    out, n = {}, 0
    for batch in views_loader(views, 5, workers):
        for r in range(len(batch)):
            out[(int(epochs[n]), int(batch.index[r]))] = batch.view[r]
            n += 1
    return out


def check_student_side(store, maker, labels, reference, epoch, workers) -> tuple[list[int], int]:
    """Every view StoreViews builds for `epoch` with `workers` DataLoader processes equals the
    teacher side's (`reference`, from teacher_side); returns (sample indices seen, mixed views)."""
    from torch.utils.data import DataLoader

    from distill.replay import StoreViews

    stream = StoreViews(store, maker, labels, 7)
    stream.set_epoch(epoch)
    seen, mixed = [], 0
    for batch in DataLoader(stream, batch_size=None, num_workers=workers):
        for n, index in enumerate(batch.index.tolist()):
            assert torch.equal(batch.view[n], reference[(epoch, index)]), (workers, epoch, index)
        seen += batch.index.tolist()
        mixed += int((batch.lam < 1).sum())
    return seen, mixed
