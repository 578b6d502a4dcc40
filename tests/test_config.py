"""Config loading: defaults, dotted overrides, and errors that name the key."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from distill.config import Config, check_runnable, load_config, resolved_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("**/*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_file_values(tmp_path):
    cfg = load_config(write(tmp_path, "optim:\n  lr: 3e-4\ntrain:\n  epochs: 7\n"))
    assert cfg.optim.lr == 3e-4  # YAML 1.1 reads 3e-4 as a string; it still becomes a float
    assert cfg.train.epochs == 7
    assert cfg.train.batch_size == 64  # a key the file leaves out keeps the schema's default


def test_overrides_apply_in_order_and_parse_yaml(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  root: /a\n"), [
        "data.root=/d", "data.skip_md5=true", "logits.store=/s", "output.dir=/o", "optim.betas=[0.9, 0.95]",
        "train.max_steps=5", "train.max_steps=null", "model.kwargs={depth: 2}", "optim.lr=1"])
    assert (cfg.data.root, cfg.data.skip_md5, cfg.logits.store, cfg.output.dir) == ("/d", True, "/s", "/o")
    assert cfg.optim.betas == [0.9, 0.95] and cfg.train.max_steps is None
    assert cfg.model.kwargs == {"depth": 2}
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize("overrides,message", [
    ("model.nam=x", "unknown config key model.nam (did you mean model.name?)"),
    ("optimizer.lr=1", "unknown config key optimizer (did you mean optim?)"),
    ("optim.lr=abc", "config key optim.lr: expected float, got 'abc'"),
    ("train.epochs=1.5", "config key train.epochs: expected int, got 1.5"),
    ("data.skip_md5=1", "config key data.skip_md5: expected bool, got 1"),
    ("optim.betas=[0.9, x]", "config key optim.betas[1]: expected float"),
    ("loss.mode=distill", "config key loss.mode: expected one of kd, scratch, online"),
    ("wandb.mode=online2", "config key wandb.mode: expected one of"),
    ("data=3", "config key data: expected a section"),
    ("train.epochs=1 train.epochs.x=1", "config key train.epochs is a value, not a section"),
    ("epochs", "expected dotted key=value"),
])
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError) as e:
        load_config(None, overrides.split(" ") if "betas" not in overrides else [overrides])
    assert message in str(e.value)


def test_errors_in_files_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key deepspeed.zero \(did you mean deepspeed.zero_stage\?\)"):
        load_config(write(tmp_path, "deepspeed:\n  zero: 2\n"))
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [\n"))
    with pytest.raises(ValueError, match="expected a mapping"):
        load_config(write(tmp_path, "- 1\n"))


def test_check_runnable_names_missing_keys():
    with pytest.raises(ValueError, match="output.dir is required"):
        check_runnable(load_config(None, ["data.root=/d", "logits.store=/s"]))
    with pytest.raises(ValueError, match="logits.store is required"):
        check_runnable(load_config(None, ["data.root=/d", "output.dir=/o"]))
    with pytest.raises(ValueError, match="teacher.name is required"):
        check_runnable(load_config(None, ["data.root=/d", "output.dir=/o", "loss.mode=online"]))
    with pytest.raises(ValueError, match="model.kwargs: 'depth:2' is not an argument name"):
        check_runnable(load_config(None, ["data.root=/d", "output.dir=/o", "loss.mode=scratch",
                                          "model.kwargs={depth:2}"]))
    check_runnable(load_config(None, ["data.dataset=digits", "output.dir=/o", "loss.mode=scratch"]))


def test_online_teacher_may_be_an_ensemble():
    base = ["data.dataset=digits", "output.dir=/o", "loss.mode=online"]
    one = load_config(None, [*base, "teacher.name=cifar10_resnet20", "teacher.checkpoint=a.pt"])
    assert (one.teacher.name, one.teacher.checkpoint, one.teacher.weights) == ("cifar10_resnet20", "a.pt", None)
    two = load_config(None, [*base, "teacher.name=[cifar10_resnet20, cifar10_resnet56]", "teacher.checkpoint=[a.pt, b.pt]",
                             "teacher.weights=[1, 3]"])
    assert (two.teacher.name, two.teacher.checkpoint, two.teacher.weights) == (["cifar10_resnet20", "cifar10_resnet56"], ["a.pt", "b.pt"],
                                                                               [1.0, 3.0])
    check_runnable(one)
    check_runnable(two)
    with pytest.raises(ValueError, match=r"config key teacher.name: expected str or list\[str\], got \{'a': 1\}"):
        load_config(None, ["teacher.name={a: 1}"])
    for overrides, message in [
        (["teacher.name=[cifar10_resnet20, cifar10_resnet56]", "teacher.checkpoint=a.pt"],
         r"config key teacher.checkpoint: 1 given for 2 teacher\(s\) \(cifar10_resnet20, cifar10_resnet56\): pass one teacher.checkpoint"),
        (["teacher.name=[cifar10_resnet20, cifar10_resnet56]", "teacher.checkpoint=[a, b]", "teacher.weights=[1]"],
         r"config key teacher.weights: 1 weight\(s\) for 2 teacher\(s\)"),
        (["teacher.name=[cifar10_resnet20, cifar10_resnet56]", "teacher.checkpoint=[a, b]", "teacher.weights=[1, 0]"],
         r"config key teacher.weights\[1\]: must lie in \(0, 1e\+06\], got 0.0"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_runnable(load_config(None, [*base, *overrides]))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path, tmp_path):
    cfg = load_config(path, ["data.root=/d", "logits.store=/s", "output.dir=/o"])
    check_runnable(cfg)
    # the resolved config (what W&B and final/config.yaml record) rebuilds the same config
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(yaml.safe_dump(resolved_config(cfg)))
    assert load_config(dumped) == cfg


@pytest.mark.parametrize("row", ["s0_vit", "s0_cnn"])
def test_published_scratch_recipe(row):
    """The small-ViT study's stated recipe, for its ViT and its CNN (configs/seed_rows)."""
    cfg = load_config(CONFIG_DIR / "seed_rows" / f"{row}.yaml")
    recipe = (cfg.loss.mode, cfg.optim.lr, cfg.optim.weight_decay, cfg.loss.label_smoothing, cfg.data.recipe)
    assert recipe == ("scratch", 3e-4, 0.05, 0.1, "cifar")
    assert (cfg.train.epochs, cfg.train.batch_size * cfg.train.grad_accum) == (100, 64)


def test_print_config_round_trips_through_config(tmp_path):
    """`--print-config` prints every key of the resolved config (file, then overrides); fed back
    with --config it resolves to the same config."""
    from helpers import run_program

    printed = run_program("train_student", ["--config", "configs/smoke_cifar10.yaml", "optim.lr=0.123",
                                            "train.epochs=7", "--print-config"], check=True).out
    resolved = yaml.safe_load(printed)
    assert resolved["optim"]["lr"] == 0.123 and resolved["train"]["epochs"] == 7
    assert set(resolved) == {f.name for f in dataclasses.fields(Config)}
    (tmp_path / "printed.yaml").write_text(printed)
    again = run_program("train_student", ["--config", tmp_path / "printed.yaml", "--print-config"], check=True)
    assert again.out == printed
