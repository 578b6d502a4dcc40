#!/usr/bin/env python
"""Benchmark: bytes on disk per record and the fidelity cost of the store, per k.

Runs each teacher on augmented training views, then for every k encodes the
records exactly as save_logits does (real shard bytes at the default shard size,
plus the manifest) and compares against TinyViT's record (4 + 4k bytes), dense
fp16 and dense fp32 logits. Fidelity: mean KL(full teacher distribution ||
target rebuilt from the store), the same for exact (unquantised) top-k
truncation, their difference (the cost of our 8-bit values), and top-1 agreement.

  python benchmarks/bench_store.py --data-root DATA --skip-md5 --limit 10000 \\
      --teacher cifar10_resnet56=../shared/teachers/cifar10/resnet56_akamaster-4bfd9763.th \\
      --teacher cifar100_resnet56=../shared/teachers/cifar100/cifar100_resnet56-f2eff4c8.pt
  python benchmarks/bench_store.py --quick      # digits, random-init teachers, under a minute
"""
import argparse
import json

import numpy as np
import torch

from distill.augment import ViewMaker, record_seed
from distill.cli import HelpFormatter, add_data_args, run_main
from distill.datasets import build_dataset
from distill.models import create_teacher
from teacher_logits.codec import ceil_div, dense_distribution, encode_topk, encode_values
from teacher_logits.manifest import ShardEntry
from teacher_logits.schema import chunk_header, pack_coded
from teacher_logits.shards import shard_bytes

KS = (1, 3, 5, 10, 20, "all")
MANIFEST_BYTES_PER_SHARD = 250  # one manifest entry (name, range, size, sha256), measured on real stores


@torch.no_grad()
def teacher_probs(teacher, maker, n, batch=256) -> np.ndarray:
    seeds = record_seed(0, 0, np.arange(n))
    out = []
    for a in range(0, n, batch):
        views = torch.stack([maker(i, int(seeds[i]))[0] for i in range(a, min(a + batch, n))])
        out.append(teacher(views).float().softmax(1).double().numpy())
    return np.concatenate(out)


def mean_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float((p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30)))).sum(1).mean())


def bytes_per_record(idx: np.ndarray, values: np.ndarray, num_classes: int, shard_records: int) -> float:
    """Store bytes per record of these top-k columns: real shards (tar headers, padding, zstd)
    plus their manifest entries."""
    n = len(idx)
    columns = pack_coded(np.arange(n), record_seed(0, 0, np.arange(n)), idx, values, num_classes)
    size = 0
    for a in range(0, n, shard_records):
        plan = ShardEntry(f"e0000-{a:09d}.tar", 0, a, min(a + shard_records, n))
        part = {name: col[a : plan.stop] for name, col in columns.items()}
        size += len(shard_bytes(plan, part, {"store_id": "0" * 16}, 4096)) + MANIFEST_BYTES_PER_SHARD
    return size / n


def synthetic_probs(n: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """(n, C) float32 probabilities of a synthetic confident teacher: Gaussian logits (sd 2)
    with one class per record lifted by 12, so the top-k holds most of the mass, the rest a
    real tail, and the classes in the top-k differ from record to record."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, num_classes)) * 2.0
    logits[np.arange(n), rng.integers(0, num_classes, n)] += 12.0
    logits -= logits.max(1, keepdims=True)
    probs = np.exp(logits)
    return (probs / probs.sum(1, keepdims=True)).astype(np.float32)


def bench_synthetic(num_classes: int, k: int, n: int, shard_records: int, block: int = 500) -> dict:
    """Bytes per record for a synthetic C-class teacher (e.g. ImageNet-21k's 21,841), built
    block by block so only the top-k of n records is ever held; fidelity on the first block."""
    idx, top = [], []
    for a in range(0, n, block):
        probs = synthetic_probs(min(block, n - a), num_classes, seed=a)
        part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(part, np.argsort(-np.take_along_axis(probs, part, 1), axis=1, kind="stable"), 1)
        idx.append(part)
        top.append(np.take_along_axis(probs, part, 1))
        if a == 0:
            fidelity = bench_k(probs.astype(np.float64), k, shard_records)
    idx, top = np.concatenate(idx), np.concatenate(top)
    row = {**fidelity, "bytes_log8": bytes_per_record(idx, encode_topk(top, num_classes, "log8"), num_classes,
                                                      shard_records),
           "bytes_fp16": bytes_per_record(idx, encode_topk(top, num_classes, "fp16"), num_classes, shard_records)}
    return {"teacher": "synthetic", "classes": num_classes, "records": n, **row}


def bench_k(probs: np.ndarray, k: int, shard_records: int) -> dict:
    n, num_classes = probs.shape
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    row = {"k": k}
    for mode in ("log8", "fp16"):
        values = encode_values(probs, idx, mode)
        row[f"bytes_{mode}"] = bytes_per_record(idx, values, num_classes, shard_records)
        rebuilt = dense_distribution(idx, values, mode, num_classes).astype(np.float64)
        row[f"kl_{mode}"] = mean_kl(probs, rebuilt)
        row[f"top1_{mode}"] = 100.0 * float((rebuilt.argmax(1) == probs.argmax(1)).mean())
    top = np.take_along_axis(probs, idx, 1)
    exact = np.repeat(((1 - top.sum(1)) / max(num_classes - k, 1))[:, None], num_classes, 1)
    np.put_along_axis(exact, idx, top, 1)
    row["kl_exact_topk"] = mean_kl(probs, exact)
    row["kl_cost_log8"] = row["kl_log8"] - row["kl_exact_topk"]
    row.update(tinyvit=4 + 4 * k, dense_fp16=2 * num_classes, dense_fp32=4 * num_classes)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    # not add_teacher_args: each --teacher is measured on its own (a row each, not an ensemble), as NAME=CHECKPOINT
    p.add_argument("--teacher", action="append", default=[], help="NAME=CHECKPOINT (repeat); NAME alone: random init")
    add_data_args(p, required=False)  # the dataset whose training views the teachers label
    p.set_defaults(dataset="cifar10")
    p.add_argument("--limit", type=int, default=10000, help="views per teacher")
    p.add_argument("--shard-records", type=int, default=10000,
                   help="records per shard (save_logits makes 10,000 for ImageNet-size data, 4,096 for CIFAR's)")
    p.add_argument("--quick", action="store_true", help="digits, random-init C=10/C=100 teachers, 512 views")
    p.add_argument("--synthetic", action="append", default=[], metavar="C:K",
                   help="also measure a synthetic C-class teacher at top-k K (repeat), e.g. 21841:100 for "
                        "ImageNet-21k against TinyViT's 404 B; --limit records, no dataset needed")
    p.add_argument("--reshard", metavar="STORE", help="instead: bytes/record of STORE's first epoch re-written at "
                                                      "each --sizes shard size (real shard bytes, manifest entries)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 4096, 2000, 1000, 782],
                   help="records a shard for --reshard")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.reshard:
        results = reshard(args.reshard, args.sizes)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        return results
    if args.quick:
        args.dataset, args.limit, args.teacher = "digits", 512, args.teacher or ["cifar10_resnet20", "cifar100_resnet56"]
        args.synthetic = args.synthetic or ["21841:100"]
    if not args.teacher and not args.synthetic:
        p.error("give at least one --teacher NAME=CHECKPOINT or --synthetic C:K (or --quick)")
    results = [bench_synthetic(*map(int, spec.split(":")), args.limit, args.shard_records) for spec in args.synthetic]
    for row in results:
        print_row(row)
    if args.teacher:
        results += bench_teachers(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


def reshard(path: str, sizes: list[int]) -> list[dict]:
    """What the shard size costs: one stored epoch's records re-encoded into shards of each size
    (the store's chunk size, headers and codec), with a manifest entry per shard."""
    from teacher_logits.reader import LogitStore

    store = LogitStore(path)
    parts = [store.read(e) for e in store.shards(0)]
    columns = {k: np.concatenate([c[k] for c in parts]) for k in parts[0]}
    n, settings = len(columns["index"]), store.settings
    header = chunk_header(store.manifest)
    entry = len(json.dumps(store.manifest.shards[0].as_json(), indent=1, sort_keys=True)) + 2
    rows = []
    for size in sizes:
        total = sum(len(shard_bytes(ShardEntry(f"e0000-{a:09d}.tar", 0, a, min(a + size, n)),
                                    {k: v[a:a + size] for k, v in columns.items()}, header,
                                    settings.chunk_records)) + entry for a in range(0, n, size))
        rows.append({"shard_records": size, "shards": ceil_div(n, size), "records": n, "bytes_per_record": total / n})
        print(f"{size:>6} records a shard ({rows[-1]['shards']:>3} shards): {rows[-1]['bytes_per_record']:.2f} B/record")
    return rows


def print_row(row: dict) -> None:
    print(f"{row['teacher']:>20} C={row['classes']:<3} k={row['k']:<3} ours {row['bytes_log8']:6.2f} B "
          f"(fp16 values {row['bytes_fp16']:6.2f}) | TinyViT {row['tinyvit']:4d} | dense fp16 "
          f"{row['dense_fp16']:4d} fp32 {row['dense_fp32']:4d} | KL exact top-k {row['kl_exact_topk']:.4f} "
          f"ours {row['kl_log8']:.4f} (+{row['kl_cost_log8']:.5f}) | top-1 {row['top1_log8']:.2f}%")


def bench_teachers(args) -> list[dict]:
    torch.manual_seed(0)
    dataset = build_dataset(args.dataset, args.data_root, train=True, skip_md5=args.skip_md5)
    maker = ViewMaker(dataset, "cifar")
    n = min(args.limit, len(dataset))
    results = []
    for spec in args.teacher:
        name, _, ckpt = spec.partition("=")
        teacher = create_teacher(name, checkpoint=ckpt or None).eval()
        probs = teacher_probs(teacher, maker, n)
        ks = [k if k != "all" else probs.shape[1] for k in KS if k == "all" or k <= probs.shape[1]]
        for k in dict.fromkeys(ks):
            row = {"teacher": name, "classes": probs.shape[1], "records": n, **bench_k(probs, k, args.shard_records)}
            results.append(row)
            print_row(row)
    return results


if __name__ == "__main__":
    run_main(main)
