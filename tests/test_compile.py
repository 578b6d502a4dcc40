"""torch.compile (inductor) on both stages computes what eager does: train.compile=true trains
the same steps (equal losses within float tolerance, an export that loads eagerly), and
save_logits --compile stores the same records (equal seeds and classes, values within float16).

Slow (run with --slow): compiling even a one-block ViT takes 60-90 s on these CPUs."""
import json

import numpy as np
import pytest
import torch
from helpers import run_tool, save_logits_args, tiny_scratch

from teacher_logits.reader import LogitStore

TINY = [*tiny_scratch(pos_drop_rate=0, proj_drop_rate=0), "train.max_steps=3", "train.log_every=1",
        "data.test_limit=64"]


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


@pytest.mark.slow
def test_compiled_teacher_stores_the_eager_records(cifar_root, teacher_ckpt, tmp_path):
    stores = {}
    for mode in ("eager", "compiled"):
        out = tmp_path / mode
        run_tool("tools/save_logits.py", *save_logits_args(cifar_root, teacher_ckpt, out, "--limit", "64",
                 "--values", "fp16", "--topk", "3", "--device", "cpu", *(["--compile"] * (mode == "compiled"))),
                 timeout=600, env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor_{mode}")})
        chunks = list(LogitStore(out).iter_shards(0))
        stores[mode] = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
    eager, compiled = stores["eager"], stores["compiled"]
    assert any((tmp_path / "inductor_compiled").rglob("*.py")) and not any((tmp_path / "inductor_eager").rglob("*.py"))
    assert np.array_equal(eager["index"], compiled["index"]) and np.array_equal(eager["seed"], compiled["seed"])
    assert np.array_equal(eager["topk_idx"][:, 0], compiled["topk_idx"][:, 0])
    np.testing.assert_allclose(compiled["topk_val"].astype(np.float32), eager["topk_val"].astype(np.float32),
                               rtol=2e-3, atol=1e-4)  # a float16 step, at most
