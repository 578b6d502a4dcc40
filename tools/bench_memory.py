#!/usr/bin/env python
"""Benchmark: memory stays flat as a store grows.

Peak RSS of save_logits writing a 1-epoch and an E-epoch store of the same data,
and of the reader streaming each whole store (every epoch's records and rebuilt
soft targets), each in a fresh process. Goal: large/small ratio at most 1.1.

  python tools/bench_memory.py --dataset cifar10 --data-root DATA --skip-md5 --limit 5000 --epochs 8
  python tools/bench_memory.py --quick    # digits, 1 vs 4 epochs, under a minute
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import psutil  # noqa: E402

from distill.cli import run_main  # noqa: E402

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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="cifar10_resnet20", help="timm teacher (memory does not depend on weights)")
    p.add_argument("--checkpoint", help="teacher weights (default: a fixed random init)")
    p.add_argument("--dataset", default="cifar10", help="dataset")
    p.add_argument("--data-root", help="dataset directory")
    p.add_argument("--skip-md5", action="store_true", help="accept a local re-created dataset copy")
    p.add_argument("--limit", type=int, default=5000, help="samples per epoch")
    p.add_argument("--epochs", type=int, default=8, help="epochs of the large store (the small one has 1)")
    p.add_argument("--shard-records", type=int, default=2000, help="records per shard")
    p.add_argument("--quick", action="store_true", help="digits, 512 samples, 1 vs 4 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.dataset, args.limit, args.epochs, args.shard_records = "digits", 512, 4, 128
    tmp = tempfile.mkdtemp(prefix="bench_memory_")
    if not args.checkpoint:
        import torch

        from distill.models import create_teacher

        torch.manual_seed(0)
        args.checkpoint = os.path.join(tmp, "teacher.pt")
        torch.save(create_teacher(args.teacher).model.state_dict(), args.checkpoint)
    result = {}
    for epochs in (1, args.epochs):
        out = os.path.join(tmp, f"store{epochs}")
        cmd = [sys.executable, os.path.join(REPO, "tools/save_logits.py"), "--teacher", args.teacher,
               "--checkpoint", args.checkpoint, "--dataset", args.dataset, "--epochs", str(epochs), "--limit",
               str(args.limit), "--shard-records", str(args.shard_records), "--workers", "0", "--out", out,
               "--aug", "crop"] + (["--data-root", args.data_root] if args.data_root else []) \
            + (["--skip-md5"] if args.skip_md5 else [])
        result[f"save_logits_{epochs}ep_mb"] = peak_rss_mb(cmd)
        result[f"reader_{epochs}ep_mb"] = peak_rss_mb([sys.executable, "-c", READ_STORE, out])
    e = args.epochs
    result["save_logits_ratio"] = result[f"save_logits_{e}ep_mb"] / result["save_logits_1ep_mb"]
    result["reader_ratio"] = result[f"reader_{e}ep_mb"] / result["reader_1ep_mb"]
    print(f"save_logits peak RSS: 1 epoch {result['save_logits_1ep_mb']:.0f} MB, {e} epochs "
          f"{result[f'save_logits_{e}ep_mb']:.0f} MB, ratio {result['save_logits_ratio']:.3f}")
    print(f"reader peak RSS:      1 epoch {result['reader_1ep_mb']:.0f} MB, {e} epochs "
          f"{result[f'reader_{e}ep_mb']:.0f} MB, ratio {result['reader_ratio']:.3f}")
    return result


if __name__ == "__main__":
    run_main(main)
