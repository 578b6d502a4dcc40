"""What the programs share: the data flags, and how they end on bad input.

`add_data_args` is the one definition of --dataset / --data-root / --skip-md5 / --img-size,
`add_teacher_args` of --teacher / --checkpoint / --pretrained / --teacher-weights;
`check_flag_bounds` and `check_positive_flags` apply distill/input_rules.py's rules to flags;
`unknown_flag_message` answers a flag the training programs do not have with the config key
it most likely meant (timm's flag names included).
On bad input a program prints one line naming the input and the fix and exits 2.
A UserError (a bad flag, file, store or config; DatasetError and StoreError are ones) or an
OSError (a path that cannot be read or written) is the user's to fix; anything else is our
bug and keeps its traceback. TVD_DEBUG=1 shows the traceback for every error.
"""
from __future__ import annotations

import argparse
import os
import sys

from distill.catalog import DATASETS
from distill.recipes import sizes_help
from teacher_logits.errors import UserError

USER_ERRORS = (UserError, OSError)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every program's --help: the module docstring as written, and each flag's default shown
    (timm's and HF's scripts do the same), unless its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        said = any(mark in text for mark in ("%(default)", "(default:", "(default "))
        if said or not action.option_strings or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


VIEW_SIZE_HELP = (f"view resolution in pixels (default: the recipe's own: {sizes_help()}); "
                  "the store records it and students read views at it")


def add_data_args(parser: argparse.ArgumentParser, dataset: bool = True, required: bool = True,
                  img_size: str | None = None) -> None:
    """--dataset (unless the data is named elsewhere, e.g. by a store), --data-root, --skip-md5
    and, given its help text (e.g. VIEW_SIZE_HELP), --img-size."""
    if dataset:
        parser.add_argument("--dataset", required=required, choices=DATASETS,
                            help="cifar10, cifar100, stl10 (torchvision), digits (built in, no download) or "
                                 "folder: your images in DATA_ROOT/train/<class>/<image> and "
                                 "DATA_ROOT/val/<class>/<image> (any format Pillow opens, classes sorted by name)")
    parser.add_argument("--data-root", metavar="DIR",
                        help="dataset directory: torchvision's layout, or the image folder for --dataset folder")
    parser.add_argument("--skip-md5", action="store_true",
                        help="accept a local re-created copy of a torchvision dataset that fails its md5 check")
    if img_size:
        parser.add_argument("--img-size", type=int, metavar="N", help=img_size)


def add_teacher_args(parser: argparse.ArgumentParser, ensemble: bool = False, required: bool = False,
                     teacher_help: str = "timm model name, e.g. cifar10_resnet56 or a hub name",
                     checkpoint_help: str = "the teacher's weights file (loaded with weights_only=True)") -> None:
    """--teacher, --checkpoint and --pretrained; with `ensemble`, --teacher/--checkpoint repeat (one
    checkpoint per teacher, in the same order) and --teacher-weights weighs the members."""
    repeat = {"action": "append"} if ensemble else {}
    parser.add_argument("--teacher", required=required, metavar="NAME", **repeat,
                        help=teacher_help + ("; repeat it, each with its --checkpoint, for an ensemble" if ensemble
                                             else ""))
    parser.add_argument("--checkpoint", metavar="FILE", **repeat,
                        help=checkpoint_help + ("; one per --teacher, in the same order" if ensemble else ""))
    parser.add_argument("--pretrained", action="store_true",
                        help="timm/HF-hub pretrained weights for every teacher (downloads: needs network)")
    if ensemble:
        parser.add_argument("--teacher-weights", type=float, nargs="+", metavar="W",
                            help="ensemble weights, one positive number per --teacher, normalised to sum 1 "
                                 "(default: equal)")


def flag_name(dest: str) -> str:
    """How a user spells the flag of an argparse dest: 'batch_size' -> '--batch-size'."""
    return "--" + dest.replace("_", "-")


def check_flag_bounds(args, flags: dict) -> None:
    """Each flag's number in its range, before anything loads: `flags` maps an argparse dest
    to a Bounds, or to the config key whose bounds it shares (distill/config.py BOUNDS, the
    one home of the ranges). `args`: the parsed flags, or a job whose fields are named as them."""
    from distill.config import BOUNDS
    from distill.input_rules import check_bounds

    for dest, bounds in flags.items():
        bounds = BOUNDS[bounds] if isinstance(bounds, str) else bounds
        check_bounds(getattr(args, dest, None), bounds, flag_name(dest))


def check_positive_flags(args, dests) -> None:
    """Each of these count flags positive where given; `args` as in check_flag_bounds."""
    from distill.input_rules import check_positive

    for dest in dests:
        check_positive(getattr(args, dest, None), flag_name(dest))


# timm train.py's flags (beside a program's own), by the config key that does their work here
TIMM_FLAGS = {"clip_grad": "deepspeed.grad_clip", "wd": "optim.weight_decay", "smoothing": "loss.label_smoothing",
              "j": "data.workers", "experiment": "wandb.name", "log_wandb": "wandb.enabled",
              "initial_checkpoint": "model.init", "grad_accum_steps": "train.grad_accum",
              "log_interval": "train.log_every", "input_size": "data.img_size", "data_dir": "data.root"}


def unknown_flag_message(unknown: list[str], argv: list[str]) -> str:
    """The first unknown flag, and the config key it most likely meant (with its value, where
    the flag had one in `argv`, the command line): `--warmup-epochs 5` -> optim.warmup_epochs=5."""
    from distill.config import closest_key  # the schema: only on this error path

    flag, _, value = next((a for a in unknown if a.startswith("-")), unknown[0]).partition("=")
    argv = [str(a) for a in argv]
    position = argv.index(flag) if flag in argv else len(argv)
    following = argv[position + 1] if position + 1 < len(argv) else ""
    if not value and following and not following.startswith("-") and "=" not in following:
        value = following
    name = flag.lstrip("-").replace("-", "_")
    key = TIMM_FLAGS.get(name) or closest_key(name)
    hint = (f"did you mean the config key {key}={value or 'VALUE'}?" if key else
            "config keys are set as dotted key=value (every key and its default: distill/config.py)")
    return f"unknown flag {flag}: {hint} (flags: --help)"


def run_main(main) -> None:
    try:
        main()
    except USER_ERRORS as e:
        if os.environ.get("TVD_DEBUG"):
            raise
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(2)


def user_message(error: BaseException) -> str:
    """The error's message on one line. A DataLoader worker's error arrives re-raised with the
    worker's traceback as its message; its last line is the original message."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split()) or type(error).__name__
