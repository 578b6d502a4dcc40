"""Run a teacher once over E augmented passes of a dataset and store its sparse logits.

  python tools/save_logits.py --teacher cifar10_resnet56 \\
      --checkpoint ../shared/teachers/cifar10/resnet56_akamaster-4bfd9763.th \\
      --dataset cifar10 --data-root DATA --skip-md5 --epochs 2 --topk 10 --out stores/c10_r56

Re-running the same command resumes a killed run; other settings are refused.
--out may be an fsspec URL (s3://bucket/stores/c10_r56, gs://, az://, memory://): each shard
is then one object put, the manifest is sealed last, and a re-run skips the shards that exist.
Under `deepspeed` or `torchrun`, each rank labels its own shards.

Ensembles: repeat `--teacher NAME --checkpoint FILE` (one checkpoint per teacher, in the
same order; or no checkpoint and --pretrained). Every teacher labels the same view, each
with its own normalisation, and the stored target is the weighted mean of their
probabilities (--teacher-weights, default equal, normalised to sum 1).

Your own images: --dataset folder --data-root DIR (DIR/train/<class>/<image>, DIR/val/...)
with --aug imagenet --img-size 224 (DeiT/TinyViT's recipe, at any resolution).

Growing: the same command with a larger --epochs on an existing store labels only the
new epochs; the existing shards stay byte-identical. A kill while growing resumes like
any other (run the same command again). A smaller --epochs is refused: stores only grow,
and students cycle through the stored epochs.
"""
import argparse
import os
from dataclasses import fields

from distill.recipes import VIEW_PARAMS, recipe_names, recipes_help
from distill.cli import (
    HelpFormatter,
    VIEW_SIZE_HELP,
    add_data_args,
    add_teacher_args,
    check_flag_bounds,
    check_positive_flags,
    run_main,
)
from distill.input_rules import Bounds, check_file


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_teacher_args(p, ensemble=True, required=True,
                     teacher_help="timm model name, e.g. cifar10_resnet56 or a hub name; an ensemble's stored "
                                  "target is the weighted mean of the teachers' probabilities")
    add_data_args(p, img_size=VIEW_SIZE_HELP)
    p.add_argument("--split", default="train", choices=["train", "test"], help="dataset split (default train)")
    p.add_argument("--epochs", type=int, default=1,
                   help="augmented passes to store (students reuse them cyclically); a larger value on an existing "
                        "store grows it, labelling only the new epochs (stores never shrink)")
    p.add_argument("--topk", type=int, default=10, help="teacher probabilities kept per view")
    p.add_argument("--values", default="log8", choices=["log8", "fp16"],
                   help="value codec: 8-bit log-ratios (default, smallest) or raw fp16")
    p.add_argument("--out", required=True,
                   help="store directory or fsspec URL (file://, s3://, gs://, az://, memory://); created, and an "
                        "existing store is resumed. Cloud URLs need their extra: pip install "
                        "\"tinyvit-distill[s3]\" (or [gcs], [azure])")
    p.add_argument("--batch-size", type=int, default=256, help="teacher batch size")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes building views")
    p.add_argument("--seed", type=int, default=0, help="run seed: every view's seed derives from it")
    p.add_argument("--aug", default="cifar", choices=recipe_names(),
                   help=f"augmentation recipe of the stored views ({recipes_help()})")
    p.add_argument("--mixup", type=float, default=0.0, help="pairwise Mixup alpha (0: off; timm default 0.8)")
    p.add_argument("--cutmix", type=float, default=0.0, help="pairwise CutMix alpha (0: off; timm default 1.0)")
    p.add_argument("--mix-prob", type=float, default=1.0, help="chance that a view is mixed when mixing is on")
    p.add_argument("--view-params", choices=VIEW_PARAMS,
                   help="how the views' crop, flip and Mixup/CutMix parameters are drawn from their seeds: counter "
                        "(hashes, vectorised: recipes none, crop, cifar on images of their native size; the default "
                        "there) or generators (torch/numpy generators seeded per view: every recipe, and stores made "
                        "before counter draws); a store being resumed or grown keeps its own")
    p.add_argument("--limit", type=int, help="label only the first N samples (smoke runs)")
    p.add_argument("--shard-records", type=int,
                   help="records per shard, the unit of resume and of reading (default: an epoch in about 64 "
                        "shards of at least one --chunk-records chunk and at most 10000 records; a store being "
                        "resumed or grown keeps its own)")
    p.add_argument("--chunk-records", type=int, default=4096, help="records per compressed chunk in a shard")
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="teacher inference precision")
    p.add_argument("--flip-average", action="store_true",
                   help="store the teacher's probabilities averaged over each view and its mirror image (flip "
                        "test-time augmentation; two teacher passes a view; recorded in the store, re-checked by "
                        "verify_logits --check)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the teacher (inductor): minutes of compilation on the first batches, "
                        "repaid on a long store on a GPU; stored values may differ from eager's in the last bits")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def label_job(args):
    """The teacher stage's job (distill.teacher_stage.LabelJob) of the parsed flags, checked."""
    from distill.store_teachers import teacher_spec
    from distill.teacher_stage import LabelJob

    teacher = teacher_spec(args.teacher, args.checkpoint, args.pretrained, args.teacher_weights)  # counts, weights
    job = LabelJob(teacher, **{f.name: getattr(args, f.name) for f in fields(LabelJob) if f.name != "teacher"})
    check_job(job)
    return job


def check_job(job) -> None:
    """Numbers, names and files that are wrong whatever the data: refused before anything loads.
    The job's fields are named as the flags (distill/input_rules.py holds the rules)."""
    from distill.models.registry import check_model_name
    from distill.store_teachers import CHECKPOINT_FIX

    for name in job.teacher.names:  # the registry's names and tags
        check_model_name(name, "--teacher", job.teacher.pretrained)
    check_positive_flags(job, ("epochs", "topk", "batch_size", "chunk_records", "limit", "img_size", "shard_records"))
    check_flag_bounds(job, {"workers": "data.workers", "seed": "train.seed", "img_size": "data.img_size",
                            "mixup": Bounds(0, 100), "cutmix": Bounds(0, 100), "mix_prob": Bounds(0, 1)})
    for checkpoint in job.teacher.checkpoints:
        check_file(checkpoint, "--checkpoint", CHECKPOINT_FIX)


def main(argv=None):
    args = parse_args(argv)  # before the heavy imports: --help and flag errors answer at once
    from distill.teacher_stage import run

    summary = run(label_job(args))
    if int(os.environ.get("RANK", 0)) != 0:
        return
    if "records" in summary:  # found complete: nothing was loaded or written
        print(f"store {summary['store']}: complete already ({summary['epochs']} epochs, {summary['records']} "
              "records), nothing to label; a larger --epochs grows it")
        return
    if summary["labelled"] == 0:
        print(f"store {summary['store']}: every shard was written already; sealed it, nothing to label")
        return
    print(f"store {summary['store']}: labelled {summary['labelled']} views in {summary['shards_written']} "
          f"new shards; teacher top-1 on them {summary['teacher_top1']:.2f}% "
          "(mixed views: the dominant image's label)")


def cli() -> None:
    """The console script's entry point: main() ending on bad input in one line."""
    run_main(main)


if __name__ == "__main__":
    cli()
