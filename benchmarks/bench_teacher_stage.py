#!/usr/bin/env python
"""Benchmark: what storing costs on top of running the teacher.

Times save_logits (views -> teacher -> top-k -> codec -> shards) against the bare
teacher on the same augmented batches (same views, model, batch size, workers,
threads, device), alternating the two so machine noise hits both. Reports
images/s of each and their ratio (1.0: storage is free).

  python benchmarks/bench_teacher_stage.py --teacher cifar10_resnet56 \\
      --checkpoint ../shared/teachers/cifar10/resnet56_akamaster-4bfd9763.th \\
      --dataset cifar10 --data-root DATA --skip-md5 --limit 2048 --repeats 3 \\
      --json docs/results/bench_teacher_stage.json
  python benchmarks/bench_teacher_stage.py --quick   # digits, random ResNet-20, under a minute
"""
import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from benchmarks.bench_report import command_line, describe, spread, write_json
from distill.device_replay import default_view_params, view_maker
from distill.augment import Mixing
from distill.cli import HelpFormatter, add_data_args, add_teacher_args, run_main
from distill.datasets import build_dataset, labels_of, num_classes_of
from distill.models import create_teacher
from distill.programs.save_logits import label_job, parse_args as save_logits_args
from distill.replay import SeededViews, views_loader
from distill.teacher_stage import run as save_logits


@torch.no_grad()
def bare_teacher(args) -> float:
    """Images/s of a program that only runs the teacher on the views save_logits labels:
    it loads the dataset and the teacher too, as save_logits does, so both pay the same set-up."""
    start = time.perf_counter()
    dataset = build_dataset(args.dataset, args.data_root, train=True, skip_md5=args.skip_md5)
    teacher = create_teacher(args.teacher, checkpoint=args.checkpoint, pretrained=args.pretrained,
                             num_classes=num_classes_of(args.dataset, dataset)).eval()
    n = args.limit
    maker = view_maker(dataset, args.aug, Mixing(), None, n, default_view_params(dataset, args.aug, None))
    views = SeededViews(maker, 0, np.zeros(n, int), np.arange(n), labels_of(dataset)[:n])
    for batch in views_loader(views, args.batch_size, args.workers):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):  # as label_batch
            teacher(batch.view).float().softmax(1)
    return n / (time.perf_counter() - start)


def stored(args, out: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    argv = ["--teacher", args.teacher, "--dataset", args.dataset, "--out", out,
            "--limit", str(args.limit), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
            "--aug", args.aug, "--device", "cpu", "--epochs", "1", "--precision", args.precision]
    argv += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    argv += ["--pretrained"] if args.pretrained else []
    argv += ["--data-root", args.data_root] if args.data_root else []
    argv += ["--skip-md5"] if args.skip_md5 else []
    start = time.perf_counter()
    save_logits(label_job(save_logits_args(argv)))
    return args.limit / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_teacher_args(p, teacher_help="timm teacher name",
                     checkpoint_help="teacher weights (required unless --pretrained or --quick)")
    add_data_args(p, required=False)
    p.set_defaults(teacher="cifar10_resnet20", dataset="cifar10")
    p.add_argument("--aug", default="cifar", help="augmentation recipe")
    p.add_argument("--limit", type=int, default=2048, help="views per timed run")
    p.add_argument("--batch-size", type=int, default=256, help="teacher batch size (both sides)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (both sides)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="teacher inference precision (both sides; bf16 pays on CPUs with AMX)")
    p.add_argument("--repeats", type=int, default=3, help="alternating timed runs of each side")
    p.add_argument("--quick", action="store_true", help="digits, random-init ResNet-20, 256 views, 1 repeat")
    p.add_argument("--json", help="also write the results (and the command) to this JSON file")
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench_teacher_stage_")
    if args.quick:
        args.dataset, args.aug, args.limit, args.repeats, args.batch_size = "digits", "crop", 256, 1, 128
        torch.manual_seed(0)
        args.checkpoint = os.path.join(tmp, "random_teacher.pt")
        torch.save(create_teacher(args.teacher).model.state_dict(), args.checkpoint)
    if not args.checkpoint and not args.pretrained:
        p.error("--checkpoint or --pretrained is required (or --quick)")
    bare_teacher(args)  # warm-up: imports, first-touch allocations, file cache
    bare, store = [], []
    for _ in range(args.repeats):
        bare.append(bare_teacher(args))
        store.append(stored(args, os.path.join(tmp, "store")))
    shutil.rmtree(tmp, ignore_errors=True)
    # each repeat's ratio pairs the two runs made back to back, so the spread shows the noise
    ratios = spread([s / b for s, b in zip(store, bare)])
    result = {"command": command_line("bench_teacher_stage.py", argv), "teacher": args.teacher,
              "views": args.limit, "precision": args.precision, "threads": torch.get_num_threads(),
              "workers": args.workers,
              "bare_img_s": spread(bare), "save_logits_img_s": spread(store), "ratio": ratios["median"],
              "ratio_spread": ratios}
    print(f"{args.teacher}: bare teacher {describe(result['bare_img_s'], 1)} img/s, save_logits "
          f"{describe(result['save_logits_img_s'], 1)} img/s, ratio {describe(ratios)} "
          f"({args.precision}, {result['threads']} threads, {args.workers} workers)")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    run_main(main)
