#!/usr/bin/env python
"""Benchmark: memory stays flat as a store grows.

Peak RSS of save_logits writing a 1-epoch and an E-epoch store of the same data,
and of the reader streaming each whole store (every epoch's records and rebuilt
soft targets), each in a fresh process. Goal: large/small ratio at most 1.1.

  python benchmarks/bench_memory.py --dataset cifar10 --data-root DATA --skip-md5 --limit 3000 --epochs 8 \\
      --repeats 3 --json docs/results/bench_memory.json
  python benchmarks/bench_memory.py --quick    # digits, 1 vs 4 epochs, under a minute
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

from benchmarks.bench_report import command_line, describe, spread, write_json
from distill.cli import HelpFormatter, add_data_args, add_teacher_args, run_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

READ_STORE = """
import sys
from teacher_logits.reader import LogitStore
store = LogitStore(sys.argv[1])
records = 0
for epoch in range(store.epochs):
    for columns in store.iter_shards(epoch, order_seed=epoch):
        records += len(store.soft_targets(columns))
print(records)
"""


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak resident memory of a command and its children, polled every 20 ms."""
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.02)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {proc.stderr.read().decode()[-500:]}")
    return peak / 2**20


def measure_round(args, tmp: str) -> dict:
    """Peak RSS of writing and of reading a 1-epoch and an E-epoch store, each in a fresh process."""
    result = {}
    for epochs in (1, args.epochs):
        out = os.path.join(tmp, f"store{epochs}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, os.path.join(REPO, "tools/save_logits.py"), "--teacher", args.teacher,
               "--dataset", args.dataset, "--epochs", str(epochs), "--limit",
               str(args.limit), "--shard-records", str(args.shard_records), "--workers", "0", "--out", out,
               "--aug", "crop"] + (["--checkpoint", args.checkpoint] if args.checkpoint else []) \
            + (["--pretrained"] if args.pretrained else []) \
            + (["--data-root", args.data_root] if args.data_root else []) + (["--skip-md5"] if args.skip_md5 else [])
        result[f"save_logits_{epochs}ep_mb"] = peak_rss_mb(cmd)
        result[f"reader_{epochs}ep_mb"] = peak_rss_mb([sys.executable, "-c", READ_STORE, out])
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_teacher_args(p, teacher_help="timm teacher (memory does not depend on weights)",
                     checkpoint_help="teacher weights (default, without --pretrained: a fixed random init)")
    add_data_args(p, required=False)
    p.set_defaults(teacher="cifar10_resnet20", dataset="cifar10")
    p.add_argument("--limit", type=int, default=5000, help="samples per epoch")
    p.add_argument("--epochs", type=int, default=8, help="epochs of the large store (the small one has 1)")
    p.add_argument("--shard-records", type=int, default=2000, help="records per shard")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the four measurements")
    p.add_argument("--quick", action="store_true", help="digits, 512 samples, 1 vs 4 epochs, 1 round")
    p.add_argument("--json", help="also write the results (and the command) to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.dataset, args.limit, args.epochs, args.shard_records, args.repeats = "digits", 512, 4, 128, 1
    tmp = tempfile.mkdtemp(prefix="bench_memory_")
    if not args.checkpoint and not args.pretrained:
        import torch

        from distill.models import create_teacher

        torch.manual_seed(0)
        args.checkpoint = os.path.join(tmp, "teacher.pt")
        torch.save(create_teacher(args.teacher).model.state_dict(), args.checkpoint)
    rounds = [measure_round(args, tmp) for _ in range(args.repeats)]
    shutil.rmtree(tmp, ignore_errors=True)
    e = args.epochs
    result = {"command": command_line("bench_memory.py", argv), "epochs": e, "samples": args.limit}
    for program in ("save_logits", "reader"):
        for epochs in (1, e):
            result[f"{program}_{epochs}ep_mb"] = spread([r[f"{program}_{epochs}ep_mb"] for r in rounds])
        ratios = spread([r[f"{program}_{e}ep_mb"] / r[f"{program}_1ep_mb"] for r in rounds])
        result[f"{program}_ratio"], result[f"{program}_ratio_spread"] = ratios["median"], ratios
        print(f"{program} peak RSS: 1 epoch {describe(result[f'{program}_1ep_mb'], 0)} MB, {e} epochs "
              f"{describe(result[f'{program}_{e}ep_mb'], 0)} MB, ratio {describe(ratios)}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    run_main(main)
