"""What timm and DeepSpeed users type works (distill/programs/train_student.py, distill/engine.py,
distill/deepspeed_file.py): timm's flags are aliases of config keys, shown in --help; an unknown
flag is answered with the config key it most likely meant; `deepspeed.fp16` is assembled with
dynamic loss scaling and refused on CPU; a `deepspeed.config` file (ZeRO offload) merges under the
keys the trainer owns and is checked with DeepSpeed's own config classes.
"""
import json

import pytest
import torch
from helpers import REPO, program, run_program, snapshot, tiny_scratch, tiny_student_args, user_error

from distill.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread", "no_tvd_debug")

TINY = [*tiny_scratch(), "data.limit=64", "data.test_limit=32"]
OFFLOAD = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
           "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": False},
                                 "contiguous_gradients": True, "reduce_bucket_size": 5e7},
           "wall_clock_breakdown": False}


def test_timm_flags_are_config_keys_between_the_overrides():
    args = program("train_student").parse_args(["--config", "X", "--epochs", "2", "--lr", "1e-3", "data.root=D",
                                              "--model", "cct_7_3x1", "--bf16", "--output", "runs/a b", "a.b=1"])
    assert args.overrides == ["model.name=\"cct_7_3x1\"", "train.epochs=2", "optim.lr=0.001", "output.dir=\"runs/a b\"",
                              "deepspeed.bf16=true", "data.root=D", "a.b=1"]
    cfg = load_config(REPO / "configs/smoke_digits.yaml", args.overrides[:5])
    assert (cfg.model.name, cfg.train.epochs, cfg.optim.lr, cfg.output.dir, cfg.deepspeed.bf16) == \
        ("cct_7_3x1", 2, 1e-3, "runs/a b", True)


def test_help_lists_each_alias_with_its_key(capsys):
    with pytest.raises(SystemExit):
        program("train_student").parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, key in (("--epochs N", "train.epochs=N"), ("--batch-size N", "train.batch_size=N"),
                      ("--amp", "deepspeed.fp16=true"), ("--resume", "output.resume="), ("--seed N", "train.seed")):
        assert flag in text and key in text, (flag, key)


@pytest.mark.parametrize("argv, key", [
    (["--warmup-epochs", "5"], "optim.warmup_epochs=5"),
    (["--weight-decay=0.1"], "optim.weight_decay=0.1"),
    (["--clip-grad", "3"], "deepspeed.grad_clip=3"),  # timm's name for it
    (["--train-epochs", "4"], "train.epochs=4"),
])
def test_an_unknown_flag_names_the_key_it_meant(argv, key, tmp_path):
    """Both training programs (distill/cli.py's unknown_flag_message), before anything is written."""
    r = run_program("train_student", [*TINY, "data.root=D", *argv, f"output.dir={tmp_path / 'run'}"])
    user_error(r, f"unknown flag {argv[0].split('=')[0]}", f"did you mean the config key {key}?")
    # no key=value before the flag here: its value would be taken for one, and is still named
    r = run_program("train_teacher", ["--teacher", "cifar10_resnet20", "--dataset", "digits", *argv,
                                      "--out", tmp_path / "run"])
    user_error(r, f"unknown flag {argv[0].split('=')[0]}", f"did you mean the config key {key}?")
    assert not (tmp_path / "run").exists()


def test_epochs_flag_trains_that_many_epochs_counted_alike_by_bar_and_log(tmp_path):
    run = run_program("train_student", [*TINY, "--epochs", "2", "--batch-size", "32", "--output", tmp_path / "run"],
                      check=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["steps"] == 4
    assert [json.loads(line)["epoch"] for line in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()] == [1, 2]
    assert "epoch 1: test top1" in run.out and "epoch 2: test top1" in run.out and "epoch 0" not in run.out
    assert "epoch=1/2" in run.err and "epoch=2/2" in run.err and "epoch=0" not in run.err  # the bar: the epoch trained


@pytest.mark.parametrize("level", ["warning", "info"])
def test_deepspeeds_own_logging_is_warnings_unless_a_key_says_info(level):
    import logging

    from deepspeed.utils import logger

    from distill.student_stage import join_process_group

    cfg = load_config(None, [f"deepspeed.log_level={level}"])
    try:
        join_process_group(cfg.deepspeed.log_level)
        assert logger.level == getattr(logging, level.upper())
    finally:
        logger.setLevel(logging.WARNING)


def test_fp16_is_refused_on_cpu_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: fp16 is allowed")
    r = run_program("train_student", [*TINY, "--amp", f"output.dir={tmp_path / 'run'}"])
    user_error(r, "deepspeed.fp16", "needs a GPU", "deepspeed.bf16=true")
    assert not (tmp_path / "run").exists()


def test_fp16_scales_the_loss_dynamically_as_deepspeed_reads_it(monkeypatch):
    from deepspeed.runtime.config import DeepSpeedConfig

    from distill.engine import deepspeed_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # this machine has no GPU: the config only
    config = deepspeed_config(load_config(None, ["deepspeed.fp16=true"]))
    parsed = DeepSpeedConfig(config)
    fp16 = parsed.float16_config
    assert fp16.enabled and fp16.loss_scale == 0 and not parsed.bfloat16_config.enabled  # 0: dynamic
    assert config["data_types"]["buffer_dtype"] == "fp16"


def zero_offload_file(tmp_path, **changes) -> str:
    path = tmp_path / "ds_offload.json"
    path.write_text(json.dumps({**OFFLOAD, **changes}))
    return str(path)


def test_a_zero_offload_file_merges_under_the_trainers_keys(tmp_path):
    from distill.engine import build_engine
    from distill.student_stage import build_model, join_process_group

    join_process_group()
    cfg = load_config(REPO / "configs/smoke_digits.yaml", [
        *tiny_student_args(), "deepspeed.zero_stage=2", f"deepspeed.config={zero_offload_file(tmp_path)}",
        "train.batch_size=16", "optim.lr=0.01"])
    engine = build_engine(cfg, build_model(cfg, 10)[0], 10, 10)
    assert engine.zero_cpu_offload() and engine.zero_optimization_stage() == 2  # the file's
    assert engine.train_micro_batch_size_per_gpu() == 16 and set(engine.lr_scheduler.base_lrs) == {0.01}  # ours
    assert engine.zero_reduce_bucket_size() == 5e7


@pytest.mark.parametrize("changes, needles", [
    ({"zero_optimization": {"stage": 3}}, ["sets zero_optimization.stage to 3", "deepspeed.zero_stage (2)"]),
    ({"optimizer": {"type": "Lamb"}}, ["sets optimizer", "optim.*"]),
    ({"zero_optimization": {"stage": 2, "offload_optimiser": {}}}, ["DeepSpeed refuses", "offload_optimiser"]),
])
def test_a_file_that_contradicts_the_run_or_deepspeed_is_refused(changes, needles, tmp_path):
    out = tmp_path / "run"
    r = run_program("train_student", [*TINY, "deepspeed.zero_stage=2", f"output.dir={out}",
                                      f"deepspeed.config={zero_offload_file(tmp_path, **changes)}"])
    user_error(r, "deepspeed.config", "ds_offload.json", *needles)
    assert snapshot(tmp_path).keys() == {"ds_offload.json"}


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_one_rank_steps_as_a_plain_torch_loop(zero_stage):
    """One fp32 rank at ZeRO 0 skips DeepSpeed's gradient all-reduce (nothing to average) and
    steps torch's multi-tensor AdamW (distill/engine.py): after three steps its weights equal a
    plain loop's with the per-tensor AdamW bit for bit. ZeRO 1 keeps the reduce, which fills
    its partitions' gradients."""
    import copy

    from timm.optim import param_groups_weight_decay

    from distill.engine import build_engine
    from distill.student_stage import build_model, join_process_group

    join_process_group()
    cfg = load_config(REPO / "configs/smoke_digits.yaml", [
        *tiny_student_args(), f"deepspeed.zero_stage={zero_stage}", "deepspeed.grad_clip=0", "optim.lr=0.01"])
    torch.manual_seed(0)
    model = build_model(cfg, 10)[0].eval()  # no dropout: the two sides see the same function
    plain = copy.deepcopy(model).to(memory_format=torch.channels_last)  # as the engine lays fp32 weights out
    engine = build_engine(cfg, model, steps_per_epoch=10, schedule_steps=10)
    assert engine.enable_backward_allreduce == (zero_stage > 0)
    if zero_stage:
        return
    groups = param_groups_weight_decay(plain.model, cfg.optim.weight_decay, plain.model.no_weight_decay())
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, foreach=False)
    batches = torch.Generator().manual_seed(1)
    for _ in range(3):
        views, labels = torch.rand(8, 3, 32, 32, generator=batches), torch.randint(0, 10, (8,), generator=batches)
        for group in optimizer.param_groups:
            group["lr"] = engine.get_lr()[0]  # the warm-up's rate of this step
        engine.backward(torch.nn.functional.cross_entropy(engine(views), labels))
        engine.step()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(plain(views), labels).backward()
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(engine.module.parameters(), plain.parameters()))
