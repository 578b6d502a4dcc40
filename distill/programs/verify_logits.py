"""Verify a logit store: checksums, chunks, and every (epoch, sample) exactly once.

  python tools/verify_logits.py STORE
  python tools/verify_logits.py STORE --teacher cifar10_resnet56 --checkpoint FILE \\
      --data-root DATA --skip-md5 --check 256

With --teacher and --check N it re-runs the teacher on N replayed views and
reports top-1 agreement and the mean absolute error of the stored values.
An ensemble store is checked with the same repeated `--teacher NAME --checkpoint FILE`
pairs it was made with (weights come from the store); teachers that differ from the
store's manifest are refused, naming the difference.
Exits non-zero on any problem (or agreement below --min-agreement).
"""
import argparse
import sys


from distill.cli import HelpFormatter, add_data_args, add_teacher_args, check_flag_bounds, run_main
from distill.input_rules import Bounds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("store", help="store directory or fsspec URL (file://, s3://, gs://, az://, memory://, "
                                 "http(s)://) holding manifest.json")
    add_teacher_args(p, ensemble=True, teacher_help="teacher to re-run on replayed views (timm name): the "
                                                    "teacher(s) the store was made with, in the same order")
    add_data_args(p, dataset=False)  # the dataset is the store's; an image folder must be unchanged
    p.add_argument("--check", type=int, default=0, help="number of replayed views to re-label (0: none)")
    p.add_argument("--min-agreement", type=float, default=99.0, help="fail below this top-1 agreement, percent")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)  # before the heavy imports: --help and flag errors answer at once
    check_flag_bounds(args, {"check": Bounds(0, 2**31 - 1), "min_agreement": Bounds(0, 100)})
    from teacher_logits.verify import verify_store

    problems, warnings, stats = verify_store(args.store)
    for w in warnings:
        print(f"warning: {w}")
    for problem in problems:
        print(f"FAIL: {problem}")
    if problems:
        sys.exit(1)
    print(f"ok: {stats['records']} records in {stats['shards']} shards, checksums good, every (epoch, sample) "
          f"exactly once; {stats['bytes_per_record']:.2f} bytes/record")
    if args.check and args.teacher:
        result = check_with_teacher(args)
        print(f"teacher check: {result['checked']} views, top-1 agreement {result['top1_agreement']:.2f}%, "
              f"mean |p - stored p| {result['mean_abs_value_error']:.5f}")
        if result["top1_agreement"] < args.min_agreement:
            print(f"FAIL: top-1 agreement below {args.min_agreement}%")
            sys.exit(1)


def check_with_teacher(args) -> dict:
    from distill.replay import store_view_maker
    from distill.datasets import build_dataset, fingerprint
    from distill.distributed import resolve_device
    from distill.models import FlipAveraged, create_teachers
    from distill.store_teachers import check_teacher, flip_averaged, store_teachers
    from teacher_logits.manifest import StoreError, differences
    from teacher_logits.reader import LogitStore

    store = LogitStore(args.store)
    names, checkpoints, weights = store_teachers(store.settings.teacher, args.teacher, args.checkpoint,
                                                 args.pretrained)  # refuses teachers the store was not made with
    data = store.settings.dataset
    device = resolve_device(args.device)
    train = data["split"] == "train"
    dataset = build_dataset(data["name"], args.data_root, train=train, skip_md5=args.skip_md5)
    diff = differences({"dataset": data}, {"dataset": fingerprint(data["name"], dataset, train, data["size"])})
    if diff:
        raise StoreError(f"{args.store} was made from other data than --data-root {args.data_root} "
                         f"({'; '.join(diff)} [store != data]): pass the data the store was made from")
    maker = store_view_maker(dataset, store, data["size"])
    teacher = create_teachers(names, checkpoints, args.pretrained, store.num_classes, weights).to(device)
    teacher = FlipAveraged(teacher) if flip_averaged(store.settings.teacher) else teacher
    return check_teacher(store, teacher, maker, args.check, device)


def cli() -> None:
    """The console script's entry point: main() ending on bad input in one line."""
    run_main(main)


if __name__ == "__main__":
    cli()
