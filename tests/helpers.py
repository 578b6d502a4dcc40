"""What many tests share, each defined once (fixtures live in conftest.py):

- running a program: `run_program` in this process (its exit code and what it printed, as its
  script ends), `run_tool` in a fresh process where a real one is needed;
- `user_error`, the one check of the bad-input contract: one `error: ...` line, exit 2;
- their inputs: `save_logits_args`, `TINY_STUDENT` / `tiny_student_args` (the one small student
  every training test uses), `write_cifar` (a tiny CIFAR in torchvision's format), and
  `snapshot`, to compare what a run left;
- `teacher_side` / `check_student_side`: the reference views replay-exactness tests compare to.

Imported as `from helpers import ...` (pytest puts tests/ on sys.path, as for conftest)."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def needs_shared(path: Path) -> Path:
    """`path` under ../shared. A clone without ../shared skips the test; where ../shared exists
    (CI always has it) a missing file fails it, so a skip never hides lost coverage."""
    if not path.exists():
        if SHARED.is_dir():
            pytest.fail(f"{path} is missing although {SHARED} exists: restore the shared copy")
        pytest.skip(f"{SHARED} not found beside the checkout: the test needs {path}")
    return path


# ------------------------------------------------------------------ running the programs


def run_tool(script: str, *args, check: bool = True, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    """Run tools/<script> (or a module path) as a user would, in a fresh process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def program(name: str):
    """The program `name` (save_logits, train_student, evaluate, ...) as a module: its main and
    parse_args (distill/programs/<name>.py, which tools/<name>.py and distill/train_student.py run)."""
    return importlib.import_module(f"distill.programs.{name}")


class Result(NamedTuple):
    """How an in-process run ended: its exit code (0 when main returned) and what it printed."""
    code: int | None
    out: str
    err: str


def run_program(name: str, argv, check: bool = False) -> Result:
    """The program `name`'s main(argv) in this process as its script runs it (run_main: a user's
    error becomes one `error:` line and exit 2). No capsys needed, so module fixtures use it too;
    with `check`, a run that does not end in 0 fails with what it printed."""
    from distill.cli import run_main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_main(lambda: program(name).main([str(a) for a in argv]))
        except SystemExit as e:
            code = e.code or 0
    result = Result(code, out.getvalue(), err.getvalue())
    if check and code:
        raise AssertionError(f"{name} failed ({code}):\n{result.out}\n{result.err}")
    return result


def user_error(result, *needles: str, code: int = 2) -> str:
    """The one `error: ...` line (stderr's last), no traceback, exit `code`, naming each of
    `needles`; `result` is a run_program Result or a run_tool process. Returns the line."""
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


# ------------------------------------------------------------------ their inputs


def save_logits_args(root, ckpt, out, *extra) -> list:
    """save_logits flags for the fixed random cifar10_resnet20 over a tiny CIFAR-10."""
    return ["--teacher", "cifar10_resnet20", "--checkpoint", ckpt, "--dataset", "cifar10", "--data-root", root,
            "--skip-md5", "--out", out, "--workers", "0", "--batch-size", "32", *extra]


def with_out(args, out, *extra) -> list:
    """args with `--out out`, then `extra`."""
    args = list(args)
    args[args.index("--out") + 1] = out
    return args + [str(e) for e in extra]


def replace(args, flag, value) -> list:
    """args with every `flag X` set to `flag value`."""
    return [value if i and args[i - 1] == flag else a for i, a in enumerate(args)]


TINY_STUDENT = {"embed_dim": 32, "depth": 1, "num_heads": 2}


def tiny_student_args(**kwargs) -> list[str]:
    """The config overrides of the tiny student training tests use: a one-block cifar_vit whose
    model.kwargs are TINY_STUDENT and `kwargs` (e.g. pos_drop_rate=0.0)."""
    merged = {**TINY_STUDENT, **kwargs}
    return ["model.name=cifar_vit", "model.kwargs={" + ", ".join(f"{k}: {v}" for k, v in merged.items()) + "}"]


def tiny_scratch(**model_kwargs) -> list[str]:
    """train_student's arguments for the tiny student trained from labels on the embedded digits
    (no store, no W&B, views in this process); tests add their own sizes and steps."""
    return ["--config", "configs/smoke_digits.yaml", "logits.store=null", "loss.mode=scratch", "wandb.enabled=false",
            "data.workers=0", *tiny_student_args(**model_kwargs)]


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


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` (hidden ones too), by relative name, with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ replay exactness: the two sides


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
