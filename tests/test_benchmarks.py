"""Every benchmark's --quick mode runs, so the benchmarks cannot rot. These tests
check the structure of what is measured (all modes present, ratios finite and
positive), never the speed: speed targets live in docs/benchmarks.md."""
import json
import math

import pytest
import torch

from benchmarks import bench_memory, bench_store, bench_student_step, bench_teacher_stage


def finite_positive(*values):
    return all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values)


def test_bench_store_quick():
    rows = bench_store.main(["--quick"])
    assert {(r["classes"], r["k"]) for r in rows} >= {(10, 1), (10, 10), (100, 10), (100, 100)}
    for r in rows:
        assert finite_positive(r["bytes_log8"], r["bytes_fp16"])
        assert r["bytes_log8"] <= r["bytes_fp16"]  # measured: 8-bit values never cost more than fp16
        assert r["kl_cost_log8"] >= -1e-9 and 0 <= r["top1_log8"] <= 100
    many = [r for r in rows if r["classes"] == 21841]  # uint16 class indices, synthetic teacher
    assert [r["k"] for r in many] == [100] and many[0]["bytes_log8"] < many[0]["tinyvit"]


def test_bench_teacher_stage_quick(tmp_path):
    result = bench_teacher_stage.main(["--quick", "--json", str(tmp_path / "r.json")])
    assert finite_positive(result["bare_img_s"]["median"], result["save_logits_img_s"]["median"], result["ratio"])
    assert json.loads((tmp_path / "r.json").read_text()) == result
    assert result["command"] == f"python benchmarks/bench_teacher_stage.py --quick --json {tmp_path / 'r.json'}"


def test_bench_reader_quick():
    from benchmarks import bench_reader

    result = bench_reader.main(["--quick", "--no-rss"])  # the 2-rank RSS runs take minutes: docs/benchmarks.md
    assert finite_positive(result["reader_c100_k10_records_per_s"], result["reader_c21841_k100_records_per_s"],
                           result["tinyvit5m_step_s"], result["reader_share_of_step"])
    assert result["read_ratio"] == 1.0 and result["bytes_read"] == result["epoch_bytes"]  # one reader per shard


def test_bench_memory_quick(tmp_path):
    result = bench_memory.main(["--quick", "--json", str(tmp_path / "r.json")])
    assert finite_positive(result["save_logits_ratio"], result["reader_ratio"])
    assert result["save_logits_ratio_spread"]["n"] == result["reader_ratio_spread"]["n"] == 1
    assert json.loads((tmp_path / "r.json").read_text()) == result


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bench_student_step_quick():
    result = bench_student_step.main(["--quick", "--no-ranks", "--bare", "--kd-replay", "auto"])
    assert {"kd", "scratch", "online:cifar10_resnet20", "bare"} <= set(result)
    assert finite_positive(result["kd"], result["scratch"], result["online:cifar10_resnet20"], result["bare"],
                           result["kd_over_scratch"], result["kd_speedup_over_online:cifar10_resnet20"],
                           result["kd_over_bare_loop"], result["kd_replay_auto_over_kd"])


def test_bench_distill_quick(tmp_path):
    from benchmarks import bench_distill

    result = bench_distill.main(["--quick", "--out", str(tmp_path / "bench")])
    for mode in bench_distill.MODES:
        run = result["runs"][mode]
        assert len(run["curve"]) >= 1 and 0 <= run["test_top1"] <= 100
        assert finite_positive(run["images_per_s"], run["train_wall_s"])
    assert (tmp_path / "bench" / "curves.png").is_file()
    # the headline keys, and the best scratch recipe is the best of the scratch runs
    assert set(result["scratch_top1"]) == set(bench_distill.SCRATCH_RECIPES.values())
    assert result["best_scratch_top1"] == max(result["scratch_top1"].values())
    assert result["kd_top1"] == result["runs"]["kd"]["test_top1"]
    assert result["command"].startswith("python benchmarks/bench_distill.py") and "--quick" in result["command"]


def test_benchmark_runs_train_on_the_machines_device(tmp_path, monkeypatch):
    """bench_distill.run, which runs every training benchmark's programs, leaves DeepSpeed the
    caller's DS_ACCELERATOR, else this machine's device: on a GPU host the queues train there."""
    import sys

    from benchmarks import bench_distill

    probe = [sys.executable, "-c", "import os; print(os.environ['DS_ACCELERATOR'], os.environ['OMP_NUM_THREADS'])"]
    monkeypatch.setenv("DS_ACCELERATOR", "xpu")
    bench_distill.run(probe, str(tmp_path / "given.log"), threads=3)
    assert (tmp_path / "given.log").read_text().split() == ["xpu", "3"]
    monkeypatch.delenv("DS_ACCELERATOR")
    bench_distill.run(probe, str(tmp_path / "found.log"), threads=1)
    assert (tmp_path / "found.log").read_text().split() == ["cuda" if torch.cuda.is_available() else "cpu", "1"]


def test_bench_replay_quick():
    from helpers import needs_shared
    from benchmarks import bench_replay

    needs_shared(bench_replay.CIFAR_TEST)  # real JPEGs
    result = bench_replay.main(["--quick"])
    for recipe, size in (("imagenet", 224), ("cifar", 32)):
        r = result[recipe]
        assert r["recipe"] == recipe and r["resolution"] == size and r["images"] == 16
        assert finite_positive(r["scoped_views_per_s"], r["unscoped_views_per_s"], r["ratio"])
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
    device = result["device_replay"]
    sides = ("device_cpu", "device_cpu_counter", "counter_per_view", "counter_worker")
    assert finite_positive(device["per_sample_views_per_s"], *(device[f"{side}_ratio"] for side in sides))
    assert result["command"].startswith("python benchmarks/bench_replay.py") and "--quick" in result["command"]


def test_bench_view_params(cifar_root, teacher_ckpt, tmp_path):
    from helpers import run_program, save_logits_args

    from benchmarks import bench_view_params

    store = tmp_path / "store"
    run_program("save_logits", save_logits_args(cifar_root, teacher_ckpt, store, "--limit", "60", "--mixup", "0.8",
                                                "--cutmix", "1", "--view-params", "generators"), check=True)
    result = bench_view_params.main(["--store", str(store), "--batches", "2", "--repeats", "1"])
    stored, recovery = result["stored"], result["recovery"]
    assert stored["records"] == 60 and stored["bytes_per_record_today"] < stored["bytes_per_record_packed"] \
        < stored["bytes_per_record_exact"]  # extra columns cost bytes; float64 weights more than uint8 codes
    assert finite_positive(recovery["counter_us_per_view"]["median"], recovery["generators_us_per_view"]["median"])


def test_bench_student_fixes_quick():
    from benchmarks import bench_student_fixes

    result = bench_student_fixes.main(["--quick"])
    assert set(result["images_per_s"]) == {"cifar_vit:as_shipped", "cifar_vit:nn_dropout", "cifar_cnn:channels_last",
                                           "cifar_cnn:contiguous"}
    assert finite_positive(result["cifar_vit_speedup"]["median"], result["cifar_cnn_speedup"]["median"])


def test_bench_gpu_quick(tmp_path):
    """The GPU script end to end on this CPU at tiny sizes: every figure, and its table written
    between section 11's markers without touching the rest of the file."""
    from benchmarks import bench_gpu

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# before\n{bench_gpu.BEGIN}\nold figures\n{bench_gpu.END}\n# after\n")
    result = bench_gpu.main(["--quick", "--json", str(tmp_path / "r.json"), "--markdown", str(doc)])
    step = result["student_steps"]["32"]
    assert finite_positive(result["teacher_stage"]["images_per_s"], result["replay"]["cpu_workers_views_per_s"],
                           result["replay"]["device_views_per_s"], step["cpu_replay"], step["device_replay"],
                           step["bare"], step["device_replay_over_bare"])
    assert result["replay"]["params"] == "counter" and ("no GPU" in result["device"]) != torch.cuda.is_available()
    assert result["replay"]["device_views_equal_cpu_views"] is True
    text = doc.read_text()
    assert text.startswith("# before\n") and text.endswith("# after\n") and "old figures" not in text
    assert result["device"] in text and "at 32 px, bare bf16 loop" in text
    assert json.loads((tmp_path / "r.json").read_text()) == result


def test_bench_compile_compares_two_runs_of_one_config(tmp_path):
    """A run against itself: speedup 1, the same curves; a run of another config is refused
    naming the key (bench_compile compares train.compile alone)."""
    import shutil

    from helpers import run_program, tiny_scratch

    from benchmarks import bench_compile
    from teacher_logits.errors import UserError

    run = tmp_path / "eager"
    run_program("train_student", [*tiny_scratch(), "data.limit=128", "data.test_limit=32", "train.batch_size=32",
                                  "train.max_steps=null", "train.epochs=2", "train.eval_every=1", "train.log_every=1",
                                  f"output.dir={run}"], check=True)
    out = tmp_path / "compare.json"
    result = bench_compile.main(["--eager", str(run), "--compiled", str(run), "--json", str(out)])
    assert result["epochs"] == 2 and result["speedup"] == 1.0 and result["largest_loss_difference"] == 0
    assert set(result["top1"]) == {1, 2} and finite_positive(*result["steady_steps_per_s"].values())
    assert json.loads(out.read_text())["loss_curves"] == {"1": result["loss_curves"][1], "2": result["loss_curves"][2]}
    other = tmp_path / "other"
    shutil.copytree(run, other)
    record = json.loads((other / "run.json").read_text())
    record["config"]["optim"]["lr"] *= 2
    (other / "run.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="differ in more than train.compile.*optim.lr"):
        bench_compile.main(["--eager", str(run), "--compiled", str(other)])
