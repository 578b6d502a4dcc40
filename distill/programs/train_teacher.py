"""Fine-tune (or train) a teacher on the target dataset, for save_logits.py.

  python tools/train_teacher.py --teacher cifar10_resnet56 \\
      --checkpoint ../shared/teachers/cifar10/resnet56_akamaster-4bfd9763.th \\
      --dataset cifar10 --data-root DATA --skip-md5 --epochs 2 --out runs/teacher_r56
  python tools/save_logits.py --teacher cifar10_resnet56 --checkpoint runs/teacher_r56/final/model.pt ...

Needed when the data differs from what the teacher was trained on (our JPEG CIFAR-10
copy costs the shared teachers ~10 points), and to adapt an ImageNet timm teacher to
CIFAR/STL classes (`--pretrained`: its head is re-initialised for the dataset's classes).
This is the student stage (distill/student_stage.py, loss.mode=scratch) run on a
teacher architecture: the same engine, checkpoints, resume, W&B and export. Extra
`key=value` arguments override its config (configs/teacher_finetune.yaml), and
`deepspeed tools/train_teacher.py ...` runs it on several GPUs.
"""
import argparse
import sys


from distill.cli import (HelpFormatter, add_data_args, add_teacher_args, check_flag_bounds, run_main,
                         unknown_flag_message)
from distill.recipes import default_recipe, defaults_help, recipe_names
from teacher_logits.errors import UserError

CONFIG = "configs/teacher_finetune.yaml"  # the shipped copy where no such file is here (distill/config.py)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_teacher_args(p, required=True, checkpoint_help="weights to start from (omit, with no --pretrained, to "
                                                       "train from scratch)")
    add_data_args(p, img_size="the model's training resolution, data.img_size (default: the config's; 224 for "
                               "the imagenet recipe, whose views are made at it)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the config's)")
    p.add_argument("--batch-size", type=int, help="batch size per rank (default: the config's)")
    p.add_argument("--aug", choices=recipe_names(),
                   help=f"augmentation recipe (default: the dataset's: {defaults_help()})")
    p.add_argument("--limit", type=int, help="train on the first N samples only")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--out", required=True, help="output directory; the weights land in OUT/final/model.pt")
    p.add_argument("--config", default=CONFIG, help="base config")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides, e.g. optim.weight_decay=0")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, unknown = p.parse_known_intermixed_args(argv)  # key=value overrides may sit between the flags
    if unknown:
        raise UserError(unknown_flag_message(unknown, sys.argv[1:] if argv is None else argv))
    check_flag_bounds(args, {"epochs": "train.epochs", "lr": "optim.lr", "batch_size": "train.batch_size",
                             "limit": "data.limit", "workers": "data.workers", "img_size": "data.img_size"})
    if args.checkpoint:
        from distill.input_rules import check_file
        from distill.models.weights import weights_file  # an export or run folder: its weights file

        args.checkpoint = str(weights_file(args.checkpoint))
        check_file(args.checkpoint, "--checkpoint", "pass a weights file, an export folder (a run's final/) or a "
                                                    "run folder")
    aug = args.aug or default_recipe(args.dataset).name
    overrides = [f"model.name={args.teacher}", f"model.pretrained={str(args.pretrained).lower()}",
                 f"data.dataset={args.dataset}", f"data.skip_md5={str(args.skip_md5).lower()}", f"data.recipe={aug}",
                 f"data.workers={args.workers}", f"train.epochs={args.epochs}", f"output.dir={args.out}",
                 "loss.mode=scratch", "logits.store=null"]
    overrides += [f"model.init={args.checkpoint}"] if args.checkpoint else []
    overrides += [f"data.root={args.data_root}"] if args.data_root else []
    overrides += [f"data.limit={args.limit}"] if args.limit is not None else []
    overrides += [f"data.img_size={args.img_size}"] if args.img_size is not None else []
    overrides += [f"optim.lr={args.lr}"] if args.lr is not None else []
    overrides += [f"train.batch_size={args.batch_size}"] if args.batch_size is not None else []
    from distill.student_stage import run

    run(args.config, [*overrides, *args.overrides])


def cli() -> None:
    """The console script's entry point: main() ending on bad input in one line."""
    run_main(main)


if __name__ == "__main__":
    cli()
