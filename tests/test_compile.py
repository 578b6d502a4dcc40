"""train.compile=true (DeepSpeed's engine.compile, torch.compile with inductor) trains the
same steps as eager: equal losses within float tolerance, and an export that loads eagerly.

Slow (run with --slow): compiling even a one-block ViT takes 60-90 s on these CPUs."""
import json

import pytest
import torch
from conftest import run_tool

TINY = ["--config", "configs/smoke_digits.yaml", "loss.mode=scratch", "model.name=cifar_vit", "wandb.enabled=false",
        "model.kwargs={embed_dim: 32, depth: 1, num_heads: 2, pos_drop_rate: 0, proj_drop_rate: 0}",
        "train.max_steps=3", "train.log_every=1", "data.workers=0", "data.test_limit=64"]


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_compiled_student_trains_the_eager_steps(tmp_path):
    for mode in ("false", "true"):
        run_tool("distill/train_student.py", *TINY, f"train.compile={mode}", f"output.dir={tmp_path / mode}",
                 timeout=600, env={"DS_ACCELERATOR": "cpu"})
    eager, compiled = losses(tmp_path / "false"), losses(tmp_path / "true")
    assert len(eager) == len(compiled) == 3
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)  # dropout off: the same arithmetic, re-fused
    state = torch.load(tmp_path / "true" / "final" / "model.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in state)  # the export is the eager module's
