"""Train a student on stored teacher logits, with DeepSpeed, on CPU or GPU.

    deepspeed distill/train_student.py --config configs/cifar10_vit.yaml \\
        data.root=DATA logits.store=STORE output.dir=runs/c10_vit
    deepspeed --num_gpus 2 distill/train_student.py --config ... (one process per GPU / CPU rank)
    python distill/train_student.py --config ...                  (one process, no launcher)

What a run does and writes, and how it resumes: distill/student_stage.py.
"""
import argparse

from distill.cli import HelpFormatter, run_main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", required=True, help="YAML experiment config, e.g. configs/smoke_cifar10.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3 (every key and "
                                                 "its default: --print-config, or distill/config.py)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (the file, then the overrides) as YAML, and exit; the output "
                        "is itself a config for --config")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.print_config:
        import yaml

        from distill.config import load_config, resolved_config

        print(yaml.safe_dump(resolved_config(load_config(args.config, args.overrides)), sort_keys=False), end="")
        return
    from distill.student_stage import run  # after --help: importing the stage takes seconds

    run(args.config, args.overrides)


def cli() -> None:
    """The console script's entry point: main() ending on bad input in one line."""
    run_main(main)


if __name__ == "__main__":
    cli()
