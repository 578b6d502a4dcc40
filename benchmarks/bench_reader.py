#!/usr/bin/env python
"""Benchmark: reading a store at scale (one reader per shard, sparse targets).

1. read amplification: bytes read by all readers of 2 ranks x 2 DataLoader workers in one
   epoch / the epoch's store bytes (goal 1.0), counted by a LogitStore subclass;
2. reader throughput: records/s on one core from shard bytes to batched sparse targets
   (fetch, sha256, zstd, decode, shuffle, batch) at C=100, k=10 and C=21,841, k=100, on
   synthetic stores; median and spread over repeats;
3. its share of a TinyViT-5M 32 px training step (forward, KL loss on the sparse target
   densified inside it, backward, AdamW) at the same batch size (goal < 2 %);
4. peak RSS of a 2-rank x 2-worker student run (deepspeed launcher) reading an E-epoch vs a
   1-epoch store of the same data (goal <= 1.1).

  python benchmarks/bench_reader.py --json docs/results/bench_reader.json
  python benchmarks/bench_reader.py --quick          # small sizes, a minute or two
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_memory import peak_rss_mb
from distill.cli import HelpFormatter, add_data_args, run_main
from distill.distributed import free_port
from teacher_logits.reader import LogitStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CountingStore(LogitStore):
    """Appends `pid shard bytes` to a file on every shard read (reads in any process count):
    the instrument of the read-amplification figure (the tests keep their own, tests/store_doubles.py)."""

    def __init__(self, path, log):
        super().__init__(path)
        self.log = log

    def read(self, entry):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {entry.name} {entry.bytes}\n")
        return super().read(entry)


def synthetic_store(path: str, num_classes: int, k: int, records: int, shard_records: int) -> str:
    """A one-epoch log8 store of random teacher distributions, written with the real shard writer."""
    from distill.augment import record_seed
    from distill.store_writing import seal
    from teacher_logits.codec import encode_values
    from teacher_logits.schema import StoreSettings, chunk_header, pack_coded
    from teacher_logits.manifest import new_manifest, shard_indices, write_manifest
    from teacher_logits.shards import write_shard

    settings = StoreSettings(k, num_classes, "log8", 1, 0, shard_records, 4096, {"name": "synthetic", "size": records},
                             {}, {"name": "synthetic"})
    os.makedirs(path)
    manifest = new_manifest(settings)
    write_manifest(path, manifest)
    header = chunk_header(manifest)
    rng = np.random.default_rng(0)
    for plan in manifest.shards:
        index = shard_indices(manifest.settings, plan)
        top_idx, top_val = [], []
        for a in range(0, len(index), 256):
            logits = rng.normal(0, 3, (min(256, len(index) - a), num_classes)).astype(np.float32)
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            idx = np.argsort(-probs, axis=1)[:, :k]
            top_idx.append(idx)
            top_val.append(encode_values(probs, idx, "log8"))
        columns = pack_coded(index, record_seed(0, 0, index), np.concatenate(top_idx), np.concatenate(top_val),
                             num_classes)
        write_shard(path, plan, columns, header, 4096)
    seal(Path(path), manifest, {p.name for p in manifest.shards})
    return path


def reader_records_per_s(path: str, batch_size: int, repeats: int) -> list[float]:
    """One epoch, one rank, one core: shard bytes -> batched SparseTargets."""
    from distill.batch import SparseTarget
    from teacher_logits.stream import rank_stream

    store, rates = LogitStore(path), []
    for r in range(repeats):
        started, n = time.perf_counter(), 0
        for b in rank_stream(store, 0, 0, 1, batch_size, [0, r], decode=True):
            target = SparseTarget.of(b)
            n += len(target.tail)
        rates.append(n / (time.perf_counter() - started))
    return rates


def student_step_s(batch_size: int, steps: int, num_classes: int, k: int) -> float:
    """Seconds per TinyViT-5M 32 px training step with a sparse kd target (median)."""
    from distill.batch import SparseTarget
    from distill.loss import DistillationLoss
    from distill.models import create_student

    torch.manual_seed(0)
    model = create_student("tiny_vit_5m", num_classes, 32)
    optim, loss_fn = torch.optim.AdamW(model.parameters(), lr=1e-3), DistillationLoss("kd", 2.0)
    x = torch.rand(batch_size, 3, 32, 32)
    probs = torch.softmax(torch.randn(batch_size, num_classes), 1).topk(k)
    target = SparseTarget(probs.indices, probs.values, 1 - probs.values.sum(1))
    times = []
    for _ in range(steps + 1):  # a warm-up step
        started = time.perf_counter()
        loss = loss_fn(model(x), target)
        optim.zero_grad()
        loss.backward()
        optim.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def read_amplification(store_path: str, tmp: str, data: list[str], batch_size: int) -> dict:
    """All readers of 2 ranks x 2 workers over epoch 0 (ranks run one after the other here)."""
    from distill.datasets import build_dataset, labels_of
    from distill.replay import StoreViews, store_view_maker

    log = os.path.join(tmp, "reads.txt")
    store = CountingStore(store_path, log)
    dataset = build_dataset(data[0], data[1], train=True, skip_md5=data[2])
    size = store.settings.dataset["size"]
    maker = store_view_maker(dataset, store, size)
    open(log, "w").close()
    for rank in range(2):
        views = StoreViews(store, maker, labels_of(dataset)[:size], batch_size, rank, 2)
        views.set_epoch(0)
        for _ in views.batches(num_workers=2):
            pass
    with open(log) as f:
        read = sum(int(line.split()[2]) for line in f)
    epoch_bytes = sum(e.bytes for e in store.shards(0))
    return {"bytes_read": read, "epoch_bytes": epoch_bytes, "read_ratio": read / epoch_bytes}


def save_store(out: str, ckpt: str, data: list[str], limit: int, epochs: int, shard_records: int) -> None:
    cmd = [sys.executable, os.path.join(REPO, "tools/save_logits.py"), "--teacher", "cifar10_resnet20",
           "--checkpoint", ckpt, "--dataset", data[0], "--epochs", str(epochs), "--limit", str(limit),
           "--shard-records", str(shard_records), "--workers", "0", "--aug", "crop", "--out", out]
    cmd += (["--data-root", data[1]] if data[1] else []) + (["--skip-md5"] if data[2] else [])
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"})


def student_run_rss_mb(store: str, out: str, data: list[str], epochs: int, batch_size: int) -> float:
    """Peak RSS of a 2-rank x 2-worker train_student run and all its processes."""
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
           os.path.join(REPO, "distill/train_student.py"), "--config", os.path.join(REPO, "configs/smoke_digits.yaml"),
           f"data.dataset={data[0]}", f"logits.store={store}", f"output.dir={out}", "data.workers=2",
           f"train.epochs={epochs}", f"train.batch_size={batch_size}", "data.test_limit=64", "wandb.enabled=false"]
    cmd += ([f"data.root={data[1]}"] if data[1] else []) + (["data.skip_md5=true"] if data[2] else [])
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return peak_rss_mb(cmd)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--records", type=int, default=100_000, help="records of the synthetic C=100 store")
    p.add_argument("--big-records", type=int, default=20_000, help="records of the synthetic C=21,841 store")
    p.add_argument("--batch-size", type=int, default=128, help="batch size of reader and student step")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each measurement")
    add_data_args(p, required=False)  # the real stores' data (amplification, RSS); digits needs no --data-root
    p.set_defaults(dataset="digits")
    p.add_argument("--limit", type=int, default=1280, help="samples of the real stores")
    p.add_argument("--epochs", type=int, default=8, help="epochs of the large real store (the small one has 1)")
    p.add_argument("--student-epochs", type=int, default=2, help="student epochs of each RSS run")
    p.add_argument("--no-rss", action="store_true", help="skip the 2-rank RSS runs")
    p.add_argument("--quick", action="store_true", help="small sizes for the test suite")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.records, args.big_records, args.batch_size, args.repeats = 4000, 1000, 16, 1
        args.limit, args.epochs, args.student_epochs = 256, 4, 1
    tmp, data = tempfile.mkdtemp(prefix="bench_reader_"), [args.dataset, args.data_root, args.skip_md5]
    result = {"command": "python benchmarks/bench_reader.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for name, classes, k, records in (("c100_k10", 100, 10, args.records), ("c21841_k100", 21841, 100, args.big_records)):
        path = synthetic_store(os.path.join(tmp, name), classes, k, records, max(records // 8, 1))
        rates = reader_records_per_s(path, args.batch_size, args.repeats)
        result[f"reader_{name}_records_per_s"] = statistics.median(rates)
        result[f"reader_{name}_spread"] = [min(rates), max(rates)]
        result[f"store_{name}_bytes_per_record"] = sum(e.bytes for e in LogitStore(path).shards()) / records
    step = student_step_s(args.batch_size, args.repeats, 100, 10)
    result["tinyvit5m_step_s"] = step
    result["reader_share_of_step"] = args.batch_size / result["reader_c100_k10_records_per_s"] / step

    from distill.models import create_teacher

    torch.manual_seed(0)
    ckpt = os.path.join(tmp, "teacher.pt")
    torch.save(create_teacher("cifar10_resnet20").model.state_dict(), ckpt)
    shard = args.limit // 8  # 8 shards per epoch: 2 per (rank, worker) of 2 x 2
    stores = {e: os.path.join(tmp, f"store{e}") for e in ((args.epochs,) if args.no_rss else (1, args.epochs))}
    for epochs, path in stores.items():
        save_store(path, ckpt, data, args.limit, epochs, shard)
    result.update(read_amplification(stores[args.epochs], tmp, data, args.batch_size))
    if not args.no_rss:
        for epochs, path in stores.items():
            result[f"student_rss_{epochs}ep_mb"] = student_run_rss_mb(path, os.path.join(tmp, f"run{epochs}"), data,
                                                                      args.student_epochs, args.batch_size)
        result["student_rss_ratio"] = result[f"student_rss_{args.epochs}ep_mb"] / result["student_rss_1ep_mb"]
    for key, value in result.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    run_main(main)
