#!/usr/bin/env python
"""Train a student on stored teacher logits, with DeepSpeed, on CPU or GPU.

    deepspeed distill/train_student.py --config configs/cifar10_vit.yaml \\
        data.root=DATA logits.store=STORE output.dir=runs/c10_vit
    deepspeed --num_gpus 2 distill/train_student.py --config ... (one process per GPU / CPU rank)
    python distill/train_student.py --config ...                  (one process, no launcher)

What a run does and writes, and how it resumes: distill/student_stage.py.
"""
import argparse

from distill.cli import run_main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML experiment config, e.g. configs/smoke_cifar10.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from distill.student_stage import run  # after --help: importing the stage takes seconds

    run(args.config, args.overrides)


if __name__ == "__main__":
    run_main(main)
