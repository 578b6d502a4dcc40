"""Train a student on stored teacher logits, with DeepSpeed, on CPU or GPU.

    deepspeed distill/train_student.py --config configs/cifar10_vit.yaml \\
        data.root=DATA logits.store=STORE output.dir=runs/c10_vit
    deepspeed --num_gpus 2 distill/train_student.py --config ... (one process per GPU / CPU rank)
    python distill/train_student.py --config ...                  (one process, no launcher)

The common timm flags (--model, --epochs, --lr, ...) are aliases of config keys: each becomes
its `key=value` override, applied before the dotted ones (a dotted override of the same key wins).
Any other flag is refused naming the config key it most likely meant.

What a run does and writes, and how it resumes: distill/student_stage.py.
"""
import argparse
import sys
import json

from distill.cli import HelpFormatter, run_main, unknown_flag_message
from teacher_logits.errors import UserError

# flag -> (config key, argparse options): timm's and DeepSpeed users' habits, each one config key
FLAG_KEYS = {
    "--model": ("model.name", dict(metavar="NAME")),
    "--epochs": ("train.epochs", dict(type=int, metavar="N")),
    "--lr": ("optim.lr", dict(type=float, metavar="LR")),
    "--batch-size": ("train.batch_size", dict(type=int, metavar="N", help_extra=" (per rank)")),
    "--seed": ("train.seed", dict(type=int, metavar="N")),
    "--output": ("output.dir", dict(metavar="DIR")),
    "--resume": ("output.resume", dict(choices=("auto", "none", "continue"))),
    "--amp": ("deepspeed.fp16", dict(action="store_const", const=True, help_extra=": fp16 with dynamic loss "
                                                                                  "scaling (GPU)")),
    "--bf16": ("deepspeed.bf16", dict(action="store_const", const=True)),
}



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", required=True, help="YAML experiment config, e.g. configs/smoke_cifar10.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3 (every key and "
                                                 "its default: --print-config, or distill/config.py)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (the file, then the overrides) as YAML, and exit; the output "
                        "is itself a config for --config")
    p.add_argument("--reevaluate", action="store_true",
                   help="a finished run of this config (output.dir) is only reported; this evaluates it and "
                        "exports it again")
    aliases = p.add_argument_group("aliases of config keys (timm's flags)")
    for flag, (key, options) in FLAG_KEYS.items():
        options = dict(options)
        extra = options.pop("help_extra", "")
        value = "true" if options.get("action") == "store_const" else options.get("metavar", "VALUE")
        aliases.add_argument(flag, dest=key, help=f"{key}={value}{extra}", **options)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, unknown = p.parse_known_intermixed_args(argv)  # key=value overrides may sit between the flags
    if unknown:
        raise UserError(unknown_flag_message(unknown, sys.argv[1:] if argv is None else argv))
    args.overrides = [f"{key}={json.dumps(getattr(args, key))}" for key, _ in FLAG_KEYS.values()
                      if getattr(args, key) is not None] + args.overrides  # JSON values are YAML
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.print_config:
        import yaml

        from distill.config import load_config, resolved_config

        print(yaml.safe_dump(resolved_config(load_config(args.config, args.overrides)), sort_keys=False), end="")
        return
    from distill.student_stage import run  # after --help: importing the stage takes seconds

    run(args.config, args.overrides, reevaluate=args.reevaluate)


def cli() -> None:
    """The console script's entry point: main() ending on bad input in one line."""
    run_main(main)


if __name__ == "__main__":
    cli()
