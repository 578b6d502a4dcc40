"""Bad input to distill/train_student.py: config errors and stores that do not fit.

Part of the bad-input catalogue (docs/reliability.md): every program refuses bad input with one
line that names the input and what to do, a non-zero exit (2 for user errors), and no partial or
overwritten output. The shared helpers (run_program, user_error, snapshot) are in helpers.py, the
fixtures in conftest.py.
"""
from __future__ import annotations

import pytest
from helpers import REPO, run_program, run_tool, snapshot, tiny_student_args, user_error, write_cifar


# in-process teacher runs on one thread, like the subprocesses; the errors users see
pytestmark = pytest.mark.usefixtures("one_thread", "no_tvd_debug")


# ============================================================ train_student: config (in-process:
# these fail in load_config / check_runnable, before DeepSpeed starts)


def train_args(cifar_root, store, out, *extra):
    return ["--config", REPO / "configs/smoke_cifar10.yaml", f"data.root={cifar_root}", "data.skip_md5=true",
            f"logits.store={store}", f"output.dir={out}", *tiny_student_args(), "train.batch_size=8", "data.workers=0",
            "wandb.enabled=false", *extra]


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key train.epoch (did you mean train.epochs?)"),
    ("trian.epochs=3", "unknown config key trian (did you mean train?)"),
    ("train.epochs=three", "config key train.epochs: expected int, got 'three'"),
    ("optim.lr=fast", "config key optim.lr: expected float, got 'fast'"),
    ("loss.mode=foo", "config key loss.mode: expected one of kd, scratch, online, got 'foo'"),
    ("wandb.mode=banana", "config key wandb.mode: expected one of None, online, offline, disabled, got 'banana'"),
    ("train.epochs=0", "config key train.epochs: must lie in [1, 100000], got 0"),
    ("train.epochs=-1", "config key train.epochs: must lie in [1, 100000], got -1"),
    ("train.batch_size=0", "config key train.batch_size: must lie in [1, 1048576], got 0"),
    ("logits.store=null", "config key logits.store is required for loss.mode kd (or use loss.mode scratch)"),
    ("data.root=null", "config key data.root is required for dataset cifar10"),
])
def test_train_config_errors(cifar_root, store, tmp_path, override, message):
    out = tmp_path / "run"
    r = run_program("train_student", train_args(cifar_root, store, out, override))
    user_error(r, message)
    assert not out.exists()


def test_train_config_file_with_unknown_key(cifar_root, store, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("data:\n  dataset: cifar10\noptim:\n  learning_rate: 0.1\n")
    out = tmp_path / "run"
    args = train_args(cifar_root, store, out)
    args[1] = str(cfg)
    r = run_program("train_student", args)
    user_error(r, "unknown config key optim.learning_rate", "valid: lr, weight_decay")
    assert not out.exists()


def test_train_config_override_not_yaml(cifar_root, store, tmp_path):
    out = tmp_path / "run"
    r = run_program("train_student", train_args(cifar_root, store, out, "optim.betas=[0.9, 0.99"))
    user_error(r, "optim.betas")
    assert not out.exists()


# ============================================================ train_student: stores (in-process
# for the refusals a function makes; real processes for the ones after DeepSpeed starts)


def test_train_empty_store(tmp_path):
    """A directory with no manifest: what logits.store=DIR gets."""
    from teacher_logits.manifest import StoreError
    from teacher_logits.reader import LogitStore

    (tmp_path / "store").mkdir()
    with pytest.raises(StoreError) as e:
        LogitStore(tmp_path / "store")
    assert str(e.value) == (f"{tmp_path / 'store' / 'manifest.json'} not found: is {tmp_path / 'store'} a logit "
                            "store? (create one with tools/save_logits.py)")


def test_train_incomplete_store(incomplete_store):
    from teacher_logits.manifest import StoreError
    from teacher_logits.reader import LogitStore

    with pytest.raises(StoreError, match="is incomplete: re-run its save_logits command to finish it"):
        LogitStore(incomplete_store)


@pytest.mark.parametrize("case, field", [
    ("other data", "dataset.labels_sha256"),
    ("cifar100", "dataset.name: 'cifar10' != 'cifar100'"),
    ("stl10 recipe", "augmentation.resolution: 32 != 96"),
])
def test_train_store_for_other_data(store, cifar_root, tmp_path, case, field):
    from distill.config import load_config
    from distill.datasets import build_dataset
    from distill.student_data import check_store
    from teacher_logits.manifest import StoreError
    from teacher_logits.reader import LogitStore

    root, dataset, overrides = tmp_path, "cifar10", []
    if case == "other data":  # same layout and size, other images and labels
        write_cifar(root, seed=1)
    elif case == "cifar100":
        dataset, overrides = "cifar100", ["data.dataset=cifar100"]
        write_cifar(root, num_classes=100)
    else:  # the store's own data, but a recipe of another resolution
        root, overrides = cifar_root, ["data.recipe=stl10"]
    cfg = load_config(REPO / "configs/smoke_cifar10.yaml", [f"data.root={root}", *overrides])
    train_set = build_dataset(dataset, root, train=True, skip_md5=True)
    with pytest.raises(StoreError) as e:
        check_store(LogitStore(store), cfg, train_set)
    message = str(e.value)
    assert f"logits.store {store} was made for other data than this config" in message and field in message
    assert "use a store made for this config" in message and "\n" not in message


def train(*args, env=None):
    return run_tool("distill/train_student.py", *args, check=False, timeout=240,
                    env={"DS_ACCELERATOR": "cpu", **(env or {})})


def test_train_store_for_another_recipe_subprocess(cifar_root, store, tmp_path):
    out = tmp_path / "run"
    before = snapshot(store)
    proc = train(*train_args(cifar_root, store, out, "data.recipe=crop"))
    user_error(proc, f"logits.store {store} was made for other data",
               "augmentation.recipe: 'cifar' != 'crop' [store != config]", "use a store made for this config")
    assert not out.exists() and snapshot(store) == before


def test_train_unknown_student_subprocess(cifar_root, store, tmp_path):
    out = tmp_path / "run"
    proc = train(*train_args(cifar_root, store, out, "model.name=tiny_vit_6m"))
    user_error(proc, "config key model.name", "'tiny_vit_6m'", "did you mean tiny_vit_5m")  # the key, the name, the fix
    assert not out.exists()


@pytest.fixture(scope="module")
def wandb_banana(cifar_root, store, tmp_path_factory):
    out = tmp_path_factory.mktemp("wandb") / "run"
    proc = train(*train_args(cifar_root, store, out, "wandb.enabled=true", "train.max_steps=1"),
                 env={"WANDB_MODE": "banana"})
    return proc, out


def test_train_wandb_misconfigured_subprocess(wandb_banana):
    proc, _ = wandb_banana
    user_error(proc, "config key wandb.mode ($WANDB_MODE): expected one of online, offline, disabled, got 'banana'")


def test_train_wandb_misconfigured_leaves_no_output(wandb_banana):
    _, out = wandb_banana
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_train_on_a_port_in_use_subprocess(cifar_root, store, tmp_path):
    """The launchers' rendezvous port held by another process (a second run on 29500): one
    line naming the port and the flag, not torch's 40-line traceback, and no run folder."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = tmp_path / "run"
        proc = train(*train_args(cifar_root, store, out), env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    user_error(proc, f"port {port} (MASTER_PORT) is in use", "--master_port N")
    assert not out.exists()
