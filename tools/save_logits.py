#!/usr/bin/env python
"""Run a teacher once over E augmented passes of a dataset and store its sparse logits.

  python tools/save_logits.py --teacher cifar10_resnet56 \\
      --checkpoint ../shared/teachers/cifar10/resnet56_akamaster-4bfd9763.th \\
      --dataset cifar10 --data-root DATA --skip-md5 --epochs 2 --topk 10 --out stores/c10_r56

Re-running the same command resumes a killed run; other settings are refused.
Under `deepspeed` or `torchrun`, each rank labels its own shards.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill.augment import RECIPES  # noqa: E402
from distill.cli import run_main  # noqa: E402
from distill.datasets import NUM_CLASSES  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="timm model name, e.g. cifar10_resnet56 or a hub name")
    p.add_argument("--checkpoint", help="local weights file for the teacher (loaded with weights_only=True)")
    p.add_argument("--pretrained", action="store_true", help="download timm/HF-hub pretrained weights (needs network)")
    p.add_argument("--dataset", required=True, choices=sorted(NUM_CLASSES), help="dataset to label")
    p.add_argument("--data-root", help="directory holding the dataset in torchvision's layout")
    p.add_argument("--skip-md5", action="store_true",
                   help="accept a local re-created dataset copy that fails torchvision's md5 check")
    p.add_argument("--split", default="train", choices=["train", "test"], help="dataset split (default train)")
    p.add_argument("--epochs", type=int, default=1, help="augmented passes to store (students reuse them cyclically)")
    p.add_argument("--topk", type=int, default=10, help="teacher probabilities kept per view")
    p.add_argument("--values", default="log8", choices=["log8", "fp16"],
                   help="value codec: 8-bit log-ratios (default, smallest) or raw fp16")
    p.add_argument("--out", required=True, help="store directory (created; an existing store is resumed)")
    p.add_argument("--batch-size", type=int, default=256, help="teacher batch size")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes building views")
    p.add_argument("--seed", type=int, default=0, help="run seed: every view's seed derives from it")
    p.add_argument("--aug", default="cifar", choices=RECIPES, help="augmentation recipe of the stored views")
    p.add_argument("--mixup", type=float, default=0.0, help="pairwise Mixup alpha (0: off; timm default 0.8)")
    p.add_argument("--cutmix", type=float, default=0.0, help="pairwise CutMix alpha (0: off; timm default 1.0)")
    p.add_argument("--mix-prob", type=float, default=1.0, help="chance that a view is mixed when mixing is on")
    p.add_argument("--limit", type=int, help="label only the first N samples (smoke runs)")
    p.add_argument("--shard-records", type=int, default=10000,
                   help="records per shard: the unit of resume and of work per rank")
    p.add_argument("--chunk-records", type=int, default=4096, help="records per compressed chunk in a shard")
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="teacher inference precision")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    from distill.teacher_stage import run

    args = parse_args(argv)
    summary = run(args)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"store {summary['store']}: labelled {summary['labelled']} views in {summary['shards_written']} "
              f"new shards; teacher top-1 on them {summary['teacher_top1']:.2f}% "
              "(mixed views: the dominant image's label)")


if __name__ == "__main__":
    run_main(main)
