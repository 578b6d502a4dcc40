"""The published CIFAR-10 rows (configs/seed_rows/): every row's model builds from its config
with the parameter count its architecture implies, and that count matches the figure the
source publishes where it states one; benchmarks/bench_seeds.py --quick runs one row end to end."""
import json
import re
import shutil

import pytest
import torch
from helpers import REPO, write_cifar

from distill.config import load_config
from distill.models import create_student
from teacher_logits.manifest import teacher_members
from teacher_logits.reader import LogitStore

ROWS = sorted(p.stem for p in (REPO / "configs" / "seed_rows").glob("*.yaml"))


def vit_params(dim, depth, mlp, tokens, cls_token=True, patch=4, classes=10, seq_pool=False):
    """A pre-norm ViT counted layer by layer: patch conv, CLS token, positions, blocks of
    (LayerNorm, qkv, projection, LayerNorm, MLP), final LayerNorm, pooling, head. The
    Compact Transformers (sequence pooling) have no qkv bias, timm's ViT has one."""
    block = 2 * 2 * dim + (3 * dim * dim + 3 * dim * (not seq_pool)) + (dim * dim + dim) + (dim * mlp + mlp) + (mlp * dim + dim)
    return (3 * patch * patch * dim + dim) + dim * cls_token + (tokens + cls_token) * dim + depth * block \
        + 2 * dim + (dim + 1) * seq_pool + dim * classes + classes


def cct_params():
    """CCT-7/3x1: one 3x3 conv (no bias) tokenizer and 16x16 tokens, CVT's blocks."""
    conv = 3 * 3 * 3 * 256
    return vit_params(256, 7, 512, 256, cls_token=False, seq_pool=True) - (3 * 16 * 256 + 256) + conv


def cnn_params():
    convs = [(3, 32), (32, 64), (64, 128), (128, 128), (128, 256), (256, 256)]
    return sum(9 * i * o + o for i, o in convs) + 2 * (64 + 128 + 256) + (4096 * 1024 + 1024) + \
        (1024 * 512 + 512) + (512 * 10 + 10)


# row -> (parameters from the architecture, published parameters or None, published precision)
ARCHITECTURE = {
    "s0_vit": (vit_params(128, 6, 512, 64), None, None),
    "s0_cnn": (cnn_params(), None, None),
    "s1_vit": (vit_params(64, 6, 128, 64), None, None),
    "s2_vit": (vit_params(256, 6, 512, 64), 3.2e6, 0.1e6),
    "s2_cnn": (cnn_params(), 5.9e6, 0.1e6),
    "s4_vit_lite": (vit_params(256, 7, 512, 64), 3.72e6, 0.01e6),
    "s4_cvt": (vit_params(256, 7, 512, 64, cls_token=False, seq_pool=True), 3.72e6, 0.01e6),
    "s4_cct": (cct_params(), 3.76e6, 0.01e6),
}


def test_every_row_is_checked():
    assert set(ROWS) == set(ARCHITECTURE)


@pytest.mark.parametrize("row", ROWS)
def test_row_model_has_its_published_size(row):
    cfg = load_config(REPO / "configs" / "seed_rows" / f"{row}.yaml", [])
    model = create_student(cfg.model.name, 10, cfg.data.img_size, **cfg.model.kwargs)
    count = sum(p.numel() for p in model.parameters())
    expected, published, precision = ARCHITECTURE[row]
    assert count == expected, f"{row}: {count:,} parameters, the architecture has {expected:,}"
    if published:  # the source rounds: 3.2M is anything that rounds to it
        assert abs(count - published) <= precision / 2, f"{row}: {count:,} vs published {published:,.0f}"
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_bench_seeds_quick(tmp_path):
    """One row (S1) on 256 images for one epoch: scratch, kd, scratch-mixed and kd from one
    stored epoch, with the table's fields filled from the runs."""
    from benchmarks import bench_seeds

    cifar_root = write_cifar(tmp_path / "data", per_batch=60)  # 300 training images

    out = tmp_path / "seeds"
    result = bench_seeds.main(["--quick", "--data-root", str(cifar_root), "--skip-md5", "--out", str(out),
                               "--json", str(tmp_path / "seeds.json")])
    row = result["rows"]["s1_vit"]
    assert set(row["runs"]) == {"scratch", "kd", "scratch-mixed", "kd-e1"}
    assert row["published_top1"] == 60.4 and row["epochs"] == 1 and row["published_epochs"] == 10
    for mode, r in row["runs"].items():
        assert 0 <= r["test_top1"] <= 100 and r["curve"][-1][0] == 1, mode
        config = (out / "runs" / f"s1_vit_{mode}" / "config.yaml").read_text()
        assert ("mode: kd" in config) == mode.startswith("kd"), mode
    assert row["kd_minus_scratch"] == pytest.approx(row["kd_top1"] - row["scratch_top1"], abs=0.01)
    assert [s["stored_epochs"] for s in row["storage_vs_accuracy"]] == [1]
    assert row["storage_vs_accuracy"][0]["bytes"] == sum(result["store"]["bytes_per_epoch"]) > 0
    assert json.loads((tmp_path / "seeds.json").read_text())["rows"]["s1_vit"]["kd_top1"] == row["kd_top1"]
    again = bench_seeds.main(["--quick", "--data-root", str(cifar_root), "--skip-md5", "--out", str(out)])
    assert again["rows"]["s1_vit"]["runs"] == row["runs"], "a re-run keeps the finished runs"


def test_bench_tinyvit_quick(tmp_path):
    """TinyViT-5M on 256 images for one epoch: scratch (no store), kd and one ablation from one
    stored epoch of a two-teacher ensemble labelled in bf16, and kd-single from a store of the
    second teacher alone; a second call with --report trains nothing and reports the same runs,
    and a report after a run folder is lost keeps the run its --json recorded (carried_runs)."""
    from benchmarks import bench_tinyvit

    cifar_root = write_cifar(tmp_path / "data", per_batch=60)
    out, report = tmp_path / "tinyvit", tmp_path / "tinyvit.json"
    result = bench_tinyvit.main(["--quick", "--data-root", str(cifar_root), "--skip-md5", "--out", str(out),
                                 "--precision", "bf16", "--json", str(report)])
    assert set(result["runs"]) == {"scratch", "kd", "kd-T2", "kd-single"}
    for name, r in result["runs"].items():
        assert r["finished"] and r["epochs"] == 1 and r["curve"][-1][0] == 1 and 0 <= r["test_top1"] <= 100, name
        assert "output.dir=" in r["command"] and ("logits.store=null" in r["command"]) == (name == "scratch")
    assert "loss.temperature=2.0" in result["runs"]["kd-T2"]["command"]
    assert result["runs"]["kd-single"]["command"].endswith(f"logits.store={out / 'store_single'} "
                                                           f"output.dir={out / 'runs' / 'kd-single_1'}")
    single = teacher_members(LogitStore(str(out / "store_single")).settings.teacher)
    assert [m["name"] for m in single] == ["cifar10_resnet56"] and result["store_single"]["teacher"].startswith(
        "cifar10_resnet56=")
    assert len(teacher_members(LogitStore(str(out / "store")).settings.teacher)) == 2
    for store in ("store", "store_single"):  # --precision reaches save_logits for both stores
        assert LogitStore(str(out / store)).settings.teacher["precision"] == "bf16" == result["precision"], store
    budget = result["by_budget"]["1"]
    assert budget["best_scratch"] == "scratch" and budget["ablations_minus_kd"].keys() == {"kd-T2", "kd-single"}
    assert budget["kd_minus_best_scratch"] == round(result["runs"]["kd"]["test_top1"] - result["runs"]["scratch"]["test_top1"], 2)
    alone = {"cifar10_resnet20", "cifar10_resnet56", "cifar10_resnet20 + cifar10_resnet56"}
    assert set(result["teacher_scores"]) == alone | {f"{t}, flip-averaged" for t in alone}
    assert result["teacher_top1"] == result["teacher_scores"]["cifar10_resnet20 + cifar10_resnet56"]
    assert json.loads(report.read_text())["runs"] == json.loads(json.dumps(result["runs"]))
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    again = bench_tinyvit.main(["--quick", "--data-root", str(cifar_root), "--skip-md5", "--out", str(out), "--report"])
    assert again["runs"] == result["runs"]
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    assert result["runs"]["kd"]["teacher_stage_s"] == round(result["store"]["wall_s"], 1) > 0
    assert result["runs"]["scratch"]["teacher_stage_s"] == 0
    # a wiped machine: a run folder gone, the JSON kept, the store remade (its data elsewhere)
    shutil.rmtree(out / "runs" / "kd-T2_1")
    earlier = json.loads(report.read_text())
    earlier["store"]["command"] = earlier["store"]["command"].replace(str(cifar_root), "/data/on/another/machine")
    report.write_text(json.dumps(earlier))
    from_json = ["--quick", "--data-root", str(cifar_root), "--skip-md5", "--out", str(out), "--report",
                 "--json", str(report)]
    carried, as_json = bench_tinyvit.main(from_json), lambda x: json.loads(json.dumps(x))
    assert as_json(carried["runs"]) == as_json(result["runs"]) and carried["by_budget"] == result["by_budget"]
    other = json.loads(report.read_text())  # a store of other targets: its runs are not these
    other["store"]["command"] = re.sub(r"--topk \d+", "--topk 3", other["store"]["command"])
    report.write_text(json.dumps(other))
    assert "kd-T2" not in bench_tinyvit.main(from_json)["runs"]
