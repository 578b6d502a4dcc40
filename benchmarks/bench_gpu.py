#!/usr/bin/env python
"""Benchmark: the whole pipeline on one GPU in bf16, ready for whenever a GPU is lent (issue 29).

One run, in this order:

1. the teacher stage: tools/save_logits.py on the GPU in bf16 (`--precision bf16`) labels
   --limit images x --store-epochs of Mixup/CutMix views into a store (counter view
   parameters, the default); images/s over its whole wall time, start-up included;
2. replay alone: one stored epoch streamed as the trainer streams it (StoreViews), views/s
   of the CPU path with --workers DataLoader workers, and of device replay on the GPU (and
   whether their first batches are equal bit for bit, which the CPU-only tests cannot check);
3. the student step at each --sizes pixel size (the config's student, TinyViT-5M by default,
   DeepSpeed bf16; the model resizes the store's 32 px views): the real trainer with the
   CPU path (--workers workers) and with device replay, and a bare loop of the same module
   and batch (bf16 autocast, AdamW, one fixed random batch, no data, no DeepSpeed); images/s
   after the first steps, as benchmarks/bench_student_step.py times them.

It writes the device's name and the figures to --json and, between the markers of section 11,
to --markdown (docs/benchmarks.md). Without a GPU it runs on the CPU (bf16 there too), which is
what `--quick` does for the test suite: digits, a random ResNet-20, a tiny student at 32 px.

  python benchmarks/bench_gpu.py --data-root DATA --skip-md5 \\
      --teacher cifar10_resnet56=../shared/teachers/cifar10/resnet56_akamaster-4bfd9763.th \\
      --json docs/results/bench_gpu.json --markdown docs/benchmarks.md
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import bench_student_step
from benchmarks.bench_report import command_line, write_json
from distill.cli import HelpFormatter, add_data_args, run_main

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench_gpu:begin -->", "<!-- bench_gpu:end -->"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores; no GPU)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def teacher_stage(args, store: str) -> dict:
    """Images/s of save_logits on the device in bf16, start-up included; it makes the store."""
    name, _, checkpoint = args.teacher.partition("=")
    cmd = [sys.executable, str(REPO / "tools/save_logits.py"), "--teacher", name, "--dataset", args.dataset,
           "--aug", args.aug, "--limit", str(args.limit), "--epochs", str(args.store_epochs), "--topk", "10",
           "--mixup", "0.8", "--cutmix", "1.0", "--device", args.device.type, "--precision", "bf16",
           "--workers", str(args.workers), "--batch-size", str(args.teacher_batch), "--out", store]
    cmd += ["--checkpoint", checkpoint] if checkpoint else []
    cmd += ["--data-root", args.data_root] if args.data_root else []
    cmd += ["--skip-md5"] if args.skip_md5 else []
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"save_logits failed: {proc.stderr[-800:]}")
    records = args.limit * args.store_epochs
    return {"teacher": name, "records": records, "wall_s": wall, "images_per_s": records / wall}


def replay_rates(args, store_path: str) -> dict:
    """Views/s of one stored epoch streamed by the CPU path (--workers workers) and by device replay,
    the views moved to the device as the trainer moves them."""
    from distill.datasets import build_dataset, labels_of
    from distill.device_replay import DeviceReplay
    from distill.replay import StoreViews, store_view_maker
    from teacher_logits.reader import LogitStore

    store = LogitStore(store_path)
    size = store.settings.dataset["size"]
    dataset = build_dataset(args.dataset, args.data_root, train=True, skip_md5=args.skip_md5)
    maker, labels = store_view_maker(dataset, store), labels_of(dataset)[:size]
    replay = DeviceReplay(dataset, maker.recipe, maker.mixing, size, args.device, params=maker.params)
    replay.views(np.arange(2), np.arange(2))  # first-call costs (scipy's import, CUDA kernels) are not replay's
    rates, first = {}, {}
    for name, device_replay, workers in (("cpu_workers", None, args.workers), ("device", replay, 0)):
        stream = StoreViews(store, maker, labels, args.batch_size, replay=device_replay)
        stream.set_epoch(0)
        start, views = time.perf_counter(), 0
        for batch in stream.batches(workers):
            views += len(batch.view.to(args.device, non_blocking=True))
            first.setdefault(name, batch.view)
        sync(args.device)
        rates[name] = views / (time.perf_counter() - start)
    return {"workers": args.workers, "cpu_workers_views_per_s": rates["cpu_workers"],
            "device_views_per_s": rates["device"], "params": maker.params,
            "device_views_equal_cpu_views": torch.equal(first["cpu_workers"].cpu(), first["device"].cpu())}


def bare_loop(args, store_path: str, size: int) -> float:
    """Images/s of the config's student at `size` px, bf16 autocast, AdamW, one fixed random batch
    of the store's view size (the model resizes it as in training)."""
    from distill.config import load_config
    from distill.student_stage import build_model
    from teacher_logits.manifest import load_manifest

    settings = load_manifest(store_path).settings
    cfg = load_config(args.config, [f"data.img_size={size}", *args.overrides])
    torch.manual_seed(0)
    model = build_model(cfg, settings.num_classes)[0].to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    view = settings.augmentation["resolution"]
    views = torch.rand(args.batch_size, 3, view, view, device=args.device)
    labels = torch.randint(0, settings.num_classes, (args.batch_size,), device=args.device)
    stamps = []
    for _ in range(args.steps):
        with torch.autocast(args.device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(views).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(args.device)
        stamps.append(time.perf_counter())
    timed = stamps[bench_student_step.WARMUP_STEPS - 1:]
    return (len(timed) - 1) * args.batch_size / (timed[-1] - timed[0])


def student_steps(args, store: str, size: int, tmp: str) -> dict:
    """Images/s of the trainer (CPU path, device replay) and of the bare loop at `size` px."""
    run = argparse.Namespace(store=store, config=args.config, steps=args.steps, batch_size=args.batch_size,
                             workers=args.workers, data_root=args.data_root, skip_md5=args.skip_md5,
                             accelerator=args.device.type,
                             overrides=[f"data.img_size={size}", "deepspeed.bf16=true", *args.overrides])
    out = {}  # device replay: the GPU's, or without one auto's batch-wise replay in the training process
    for name, replay in (("cpu_replay", "cpu"), ("device_replay", "cuda" if args.device.type == "cuda" else "auto")):
        out[name] = bench_student_step.train(run, "kd", os.path.join(tmp, f"{name}-{size}"), 1, None, replay)
    out["bare"] = bare_loop(args, store, size)
    out.update({f"{name}_over_bare": out[name] / out["bare"] for name in ("cpu_replay", "device_replay")})
    return out


def markdown_table(result: dict) -> str:
    """The figures as section 11's table."""
    teacher, replay = result["teacher_stage"], result["replay"]
    rows = [f"Device: **{result['device']}**, {result['date']}, `{result['command']}`", "",
            "| what | figure |", "|---|---:|",
            f"| teacher stage, {teacher['teacher']}, bf16, start-up included | {teacher['images_per_s']:,.0f} img/s |",
            f"| replay, CPU path with {replay['workers']} workers | {replay['cpu_workers_views_per_s']:,.0f} views/s |",
            f"| replay, device ({replay['params']} parameters) | {replay['device_views_per_s']:,.0f} views/s |",
            f"| device replay's first batch equals the CPU path's bit for bit | {replay['device_views_equal_cpu_views']} |"]
    for size, step in result["student_steps"].items():
        rows += [f"| {result['student']} at {size} px, trainer with CPU replay | {step['cpu_replay']:,.1f} img/s "
                 f"({step['cpu_replay_over_bare']:.2f} of bare) |",
                 f"| {result['student']} at {size} px, trainer with device replay | {step['device_replay']:,.1f} "
                 f"img/s ({step['device_replay_over_bare']:.2f} of bare) |",
                 f"| {result['student']} at {size} px, bare bf16 loop | {step['bare']:,.1f} img/s |"]
    return "\n".join(rows)


def write_markdown(path: str, result: dict) -> None:
    """Replace what stands between the markers (section 11 is added if the file has none)."""
    file = Path(path)
    text = file.read_text() if file.exists() else ""
    block = f"{BEGIN}\n{markdown_table(result)}\n{END}"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text += f"\n## 11. One GPU, bf16 (`benchmarks/bench_gpu.py`)\n\n{block}\n"
    file.write_text(text)


def quick_teacher(tmp: str) -> str:
    """NAME=CHECKPOINT of a fixed random ResNet-20 (speed does not depend on its weights)."""
    from distill.models import create_teacher

    torch.manual_seed(0)
    checkpoint = os.path.join(tmp, "teacher.pt")
    torch.save(create_teacher("cifar10_resnet20").model.state_dict(), checkpoint)
    return f"cifar10_resnet20={checkpoint}"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--teacher", help="NAME=CHECKPOINT of the teacher stage (e.g. cifar10_resnet56=...)")
    add_data_args(p, required=False)
    p.add_argument("--aug", default="cifar", help="recipe of the store (device replay covers none, crop, cifar)")
    p.add_argument("--limit", type=int, default=10_000, help="training images labelled")
    p.add_argument("--store-epochs", type=int, default=2, help="stored epochs")
    p.add_argument("--teacher-batch", type=int, default=512, help="teacher stage batch size")
    p.add_argument("--config", default=str(REPO / "configs/cifar10_tinyvit5m_kd.yaml"), help="student config")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224], help="student input sizes (px)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per trainer run and bare loop")
    p.add_argument("--batch-size", type=int, default=128, help="student batch")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the CPU path (the config's 4)")
    p.add_argument("--quick", action="store_true", help="CPU-sized: digits, random ResNet-20, tiny student, 32 px")
    p.add_argument("--json", help="write the results here (docs/results/bench_gpu.json)")
    p.add_argument("--markdown", help="write the table into this file's section 11 (docs/benchmarks.md)")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every student run")
    args = p.parse_args(argv)
    if args.quick:
        args.dataset, args.aug, args.limit, args.store_epochs, args.teacher_batch = "digits", "crop", 128, 1, 64
        args.config, args.sizes, args.steps, args.batch_size = str(REPO / "configs/smoke_digits.yaml"), [32], 5, 16
        args.workers = 1
    elif not (args.teacher and args.dataset):
        p.error("--teacher and --dataset are required (or --quick)")
    args.dataset = args.dataset or "cifar10"
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return args


def main(argv=None):
    args = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench_gpu_")
    args.teacher = args.teacher or quick_teacher(tmp)
    store = os.path.join(tmp, "store")
    result = {"command": command_line("bench_gpu.py", argv), "device": device_name(args.device),
              "date": time.strftime("%Y-%m-%d"), "student": Path(args.config).stem,
              "teacher_stage": teacher_stage(args, store)}
    result["replay"] = replay_rates(args, store)
    result["student_steps"] = {str(size): student_steps(args, store, size, tmp) for size in args.sizes}
    print(markdown_table(result))
    write_json(args.json, result)
    if args.markdown:
        write_markdown(args.markdown, result)
    return result


if __name__ == "__main__":
    run_main(main)
