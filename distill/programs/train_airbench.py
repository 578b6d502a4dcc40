"""Train the `cifar10_airbench` teacher from scratch on CIFAR-10 (airbench94's recipe).

  python tools/train_airbench.py --data-root DATA --skip-md5 --out runs/t_airbench
  python tools/save_logits.py --teacher cifar10_airbench --checkpoint runs/t_airbench/final/model.pt \\
      --dataset cifar10 --data-root DATA --skip-md5 --aug cifar --mixup 0.8 --cutmix 1.0 --epochs 20 --out STORE

About an hour on 2 CPU cores for 10 epochs (seconds on a GPU); 94 % on the original CIFAR-10
pixels in airbench94's runs. Kill it at any moment and run the same command again: it resumes
from the last finished epoch (OUT/checkpoint.pt) and ends with the same weights. The export,
OUT/final/model.pt, is a plain state_dict; OUT/final/metrics.json holds the test top-1 (plain
and flip-averaged) and the curve. The recipe and why it is its own loop: distill/airbench_recipe.py.
"""
import argparse
import os
import sys

from distill.cli import HelpFormatter, add_data_args, check_positive_flags, run_main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_data_args(p, dataset=False)
    p.add_argument("--out", required=True, help="run folder; the weights land in OUT/final/model.pt")
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order, views and initialisation")
    p.add_argument("--batch-size", type=int, default=1024, help="images per step")
    p.add_argument("--limit", type=int, help="train on the first N images only (tests)")
    args = p.parse_args(argv)
    check_positive_flags(args, ("epochs", "batch_size", "limit"))
    final = os.path.join(args.out, "final", "metrics.json")
    if os.path.exists(final):
        print(f"{args.out} is finished: {final}; use another --out to train again")
        return

    import torch

    import distill.models  # noqa: F401  (registers cifar10_airbench)
    from distill.airbench_recipe import Hyper, train
    from distill.datasets import build_dataset, labels_of

    def arrays(train_split):
        data = build_dataset("cifar10", args.data_root, train_split, skip_md5=args.skip_md5)
        images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.from_numpy(labels_of(data))
        return (images[:args.limit], labels[:args.limit]) if train_split else (images, labels)

    hyper = Hyper(epochs=args.epochs, seed=args.seed, batch_size=args.batch_size)
    metrics = train(arrays(True), arrays(False), args.out, hyper, log=lambda line: print(line, flush=True))
    print(f"{args.out}/final/model.pt: test top-1 {metrics['top1']:.2f} % ({metrics['top1_flip_tta']:.2f} % "
          f"with flips) on {metrics['test_images']} images", file=sys.stdout)


def cli() -> None:
    """The console script's entry point: main() ending on bad input in one line."""
    run_main(main)


if __name__ == "__main__":
    cli()
