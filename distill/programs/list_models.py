"""List the models this project registers with timm: the students and the teachers, with their
parameters, forward FLOPs at a resolution and the pretrained weights timm has for them.

  python -m distill.models                  (installed: tvd-models)
  python -m distill.models --img-size 64 --num-classes 100

A student name goes in `model.name` (distill/train_student.py), a teacher's in `--teacher`
(tools/save_logits.py); any other timm model name works as a teacher too. FLOPs count a
multiply-add as 2 (distill/model_cost.py) for one image; `timm weights` are the tags
`model.pretrained=true` (students) or `--pretrained` (teachers) can load, "-" where timm has
none (this project's own students train from scratch; the CIFAR teachers' weights are files,
see shared/teachers).
"""
import argparse

from distill.cli import HelpFormatter, check_positive_flags, run_main

COLUMNS = ["model", "role", "params_M", "GFLOPs", "timm weights"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--img-size", type=int, default=32, metavar="N", help="input resolution for the FLOPs")
    p.add_argument("--num-classes", type=int, default=10, metavar="N", help="classifier width for the parameters")
    p.add_argument("--role", choices=["all", "students", "teachers"], default="all", help="which models to list")
    return p.parse_args(argv)


def registered(role: str) -> list[tuple[str, str]]:
    """(name, role) of every model this project registers, students first."""
    import timm

    from distill.models.students import STUDENTS

    students = [n for n in STUDENTS if not n.endswith("_224")]  # tiny_vit_5m_224 is tiny_vit_5m's timm name
    teachers = timm.list_models(module="cifar_teachers")
    return [(n, "student") for n in students if role in ("all", "students")] + \
        [(n, "teacher") for n in teachers if role in ("all", "teachers")]


def describe(name: str, role: str, img_size: int, num_classes: int) -> dict:
    """One row: the model built at `img_size` for `num_classes`, its size and cost."""
    import timm
    import torch

    from distill.model_cost import count_flops, count_params
    from distill.models import create_student

    torch.manual_seed(0)
    model = create_student(name, num_classes, img_size) if role == "student" else \
        timm.create_model(name, num_classes=num_classes)
    tags = timm.list_pretrained(f"{model.pretrained_cfg['architecture']}.*")  # tiny_vit_5m is tiny_vit_5m_224
    return {"model": name, "role": role, "params_M": f"{count_params(model) / 1e6:.2f}",
            "GFLOPs": f"{count_flops(model, (1, 3, img_size, img_size)) / 1e9:.3g}",
            "timm weights": ", ".join(t.split(".", 1)[1] for t in tags) or "-"}


def main(argv=None):
    args = parse_args(argv)
    check_positive_flags(args, ("img_size", "num_classes"))
    import distill.models  # noqa: F401  (registers the models with timm)
    from distill.report import markdown_table

    rows = [describe(name, role, args.img_size, args.num_classes) for name, role in registered(args.role)]
    print(f"models at {args.img_size} px, {args.num_classes} classes\n")
    print(markdown_table(rows, COLUMNS), end="")


def cli() -> None:
    """The console script's entry point: main() ending on bad input in one line."""
    run_main(main)


if __name__ == "__main__":
    cli()
