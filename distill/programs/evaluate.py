"""Evaluate students and teachers on a dataset's test split.

  python tools/evaluate.py --checkpoint runs/c10/final --dataset cifar10 --data-root DATA --skip-md5
  python tools/evaluate.py --teacher cifar10_resnet56 --checkpoint FILE --dataset cifar10 --data-root DATA
  python tools/evaluate.py --compare runs/kd/final runs/scratch/final cifar10_resnet56=FILE --dataset cifar10 ...
  python tools/evaluate.py --compare before=cifar10_resnet56=A.pt after=cifar10_resnet56=B.pt ...  (labels)

Reports top-1, top-5, macro precision/recall/F1, Matthews correlation, per-class
scores, parameters, FLOPs and images/s (batch 256, this device); writes
metrics.json, metrics.md and a confusion-matrix PNG per model into --out, after every model
is evaluated: a failed run writes no metrics (and leaves no half-written file). Every model
given is kept: two of the same name become NAME and NAME-2, unless labelled LABEL=SPEC.
--attention N adds attention.png: N test images with each ViT student's class-token
attention rollout over them (models without a class token are skipped, with the reason).
"""
import argparse
import json
import re
from pathlib import Path


from distill.cli import (
    HelpFormatter,
    add_data_args,
    add_teacher_args,
    check_flag_bounds,
    check_positive_flags,
    run_main,
)
from teacher_logits.errors import UserError

COLUMNS = ["model", "top1", "top5", "precision_macro", "recall_macro", "f1_macro", "mcc", "params", "flops",
           "images_per_s"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_teacher_args(p, teacher_help="evaluate this timm teacher (with --checkpoint FILE, or --pretrained)",
                     checkpoint_help="a student export (train_student's final/ dir), or with --teacher its weights")
    p.add_argument("--compare", nargs="+", default=[], metavar="SPEC",
                   help="several models in one table: student export dirs and/or teacher NAME=CHECKPOINT, each "
                        "optionally labelled LABEL=SPEC (the same name twice becomes NAME, NAME-2)")
    add_data_args(p)  # the test split (val/ of an image folder, seen through timm's eval crop)
    p.add_argument("--limit", type=int, help="evaluate on a fixed random subset of N test images")
    p.add_argument("--out", default="eval", help="directory for metrics.json, metrics.md and confusion PNGs")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--throughput-iters", type=int, default=3, help="timed batches of 256 for images/s (0: skip)")
    p.add_argument("--attention", type=int, metavar="N",
                   help="also write OUT/attention.png: N test images, one per class in class order (then a second "
                        "of each), as the views evaluated, with each "
                        "ViT-family model's class-token attention rollout as a heat map and its prediction; "
                        "models without a class token or global attention are skipped with the reason")
    p.add_argument("--wandb", action="store_true", help="log the table and confusion matrices to W&B "
                   "(offline without an API key; WANDB_MODE wins)")
    return p.parse_args(argv)


def model_specs(args) -> list[str]:
    if args.teacher:
        if not (args.checkpoint or args.pretrained):
            raise UserError("--teacher needs --checkpoint FILE or --pretrained")
        return [f"{args.teacher}={args.checkpoint}" if args.checkpoint else args.teacher] + args.compare
    specs = ([args.checkpoint] if args.checkpoint else []) + args.compare
    if not specs:
        raise UserError("nothing to evaluate: pass --checkpoint, --teacher or --compare")
    return specs


def main(argv=None):
    args = parse_args(argv)  # before the heavy imports: --help and flag errors answer at once
    from distill.datasets import build_dataset, num_classes_of
    from distill.distributed import capped_workers, resolve_device
    from distill.evaluation import evaluate_model, load_model
    from distill.report import markdown_table

    specs = model_specs(args)
    check_positive_flags(args, ("batch_size", "limit", "attention"))
    if args.throughput_iters < 0:
        raise UserError(f"--throughput-iters must be 0 (skip) or positive, got {args.throughput_iters}")
    check_flag_bounds(args, {"workers": "data.workers"})
    args.workers = capped_workers(args.workers, "--workers", say=True)  # as the trainer caps data.workers
    if args.wandb:  # a bad W&B mode fails now, not after the evaluation
        from distill.tracking import resolve_mode

        resolve_mode(None)
    device = resolve_device(args.device)
    dataset = build_dataset(args.dataset, args.data_root, train=False, skip_md5=args.skip_md5)
    labels, specs = zip(*map(labelled, specs))
    loaded = [load_model(spec, num_classes_of(args.dataset, dataset)) for spec in specs]  # fail early on a bad spec
    names = unique_names([label or name for label, (name, _) in zip(labels, loaded)])
    models = [(name, model) for name, (_, model) in zip(names, loaded)]
    out = Path(args.out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)  # now: an unwritable --out fails before the evaluation
    except OSError as e:
        raise UserError(f"--out {out}: cannot create it ({e.strerror}); choose a writable directory") from None
    try:
        results = {name: evaluate_model(model, dataset, args.dataset, device, args.batch_size, args.workers,
                                        args.limit, args.throughput_iters) for name, model in models}
        rows = [{"model": name, **{k: metrics.get(k) for k in COLUMNS[1:]}} for name, metrics in results.items()]
        table = markdown_table(rows, COLUMNS)
        write_results(out, args.dataset, results, table)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # a failed evaluation leaves no trace, not even the folder it made
        raise
    print(table)
    print(f"metrics.json, metrics.md and confusion PNGs in {out.resolve()}")
    if args.attention:
        write_attention(args, models, dataset, device, out)
    if args.wandb:
        log_to_wandb(args, results, rows, out)


def labelled(spec: str) -> tuple[str | None, str]:
    """(label, spec) of `LABEL=SPEC`; (None, spec) where the text before '=' is a model name (a
    teacher NAME=CHECKPOINT) or there is none."""
    import timm

    import distill.models  # noqa: F401  registers ours

    label, sep, rest = spec.partition("=")
    if not sep or timm.is_model(label) or Path(spec).exists():
        return None, spec
    return label, rest


def unique_names(names: list[str]) -> list[str]:
    """`names` with repeats made unique (NAME, NAME-2, NAME-3), so no result overwrites another."""
    result = []
    for name in names:
        unique, n = name, 1
        while unique in result or (unique != name and unique in names):  # nor a name given later
            n += 1
            unique = f"{name}-{n}"
        result.append(unique)
    return result


def write_results(out: Path, dataset: str, results: dict, table: str) -> None:
    """The confusion PNGs, metrics.json and metrics.md into `out`, each written whole; on an
    OS error (no space, permission, read-only) the files of this run are removed and one line
    names --out."""
    from distill.report import plot_confusion
    from teacher_logits.files import atomic_write

    slugs = unique_names([re.sub(r"[^A-Za-z0-9_.-]+", "_", name) for name in results])
    written = []  # files this run creates: removed again if one cannot be written
    try:
        for (name, metrics), slug in zip(results.items(), slugs):
            class_names = [c["name"] for c in metrics["per_class"]]
            written.append(out / f"confusion_{slug}.png")
            metrics["confusion_png"] = str(plot_confusion(metrics["confusion"], class_names, written[-1],
                                                          title=f"{name} on {dataset}"))
        for file, text in (("metrics.json", json.dumps({"dataset": dataset, "models": results}, indent=1) + "\n"),
                           ("metrics.md", f"# {dataset} test\n\n{table}\n")):
            written.append(out / file)
            atomic_write(written[-1], text.encode())
    except OSError as e:
        for path in written:
            path.unlink(missing_ok=True)
        raise UserError(f"--out {out}: cannot write {written[-1].name} ({e.strerror or type(e).__name__}): free "
                        "space, fix the folder's permissions or choose another --out; nothing was written") from None


def write_attention(args, models, dataset, device, out):
    """OUT/attention.png for the models rollout applies to; a line for each one it does not."""
    import torch

    from distill.attention import class_token_maps, plot_attention, rollout_unsupported
    from distill.datasets import num_classes_of
    from distill.recipes import eval_view_spec
    from distill.datasets import labels_of
    from distill.evaluation import eval_views_loader, one_per_class

    usable = []
    for name, model in models:
        reason = rollout_unsupported(model)
        if reason:
            print(f"attention: skipping {name}: {reason}")
        else:
            usable.append((name, model))
    if not usable:
        print("attention: no model has a class token and global attention (a ViT): attention.png not written")
        return
    recipe, size = eval_view_spec(args.dataset, usable[0][1].input_size[-1])  # as evaluate_model's views
    shown = one_per_class(labels_of(dataset), args.attention)
    batch = next(iter(eval_views_loader(dataset, size, args.attention, args.workers, recipe=recipe, indices=shown)))
    images = batch.view.to(device)
    columns = []
    for name, model in usable:
        maps, logits = class_token_maps(model.to(device).eval(), images)
        columns.append((name, maps.cpu(), torch.argmax(logits, dim=1).cpu()))
    class_names = [str(c) for c in (getattr(dataset, "classes", None) or range(num_classes_of(args.dataset, dataset)))]
    path = plot_attention(images.cpu(), batch.label, columns, class_names, out / "attention.png")
    print(f"attention: {len(images)} images x {len(columns)} models in {path}")


def log_to_wandb(args, results, rows, out):
    import wandb

    from distill.config import Wandb
    from distill.tracking import start_tracking

    tracker = start_tracking(Wandb(enabled=True, name=f"eval-{args.dataset}"), {"dataset": args.dataset,
                             "models": list(results)}, out, rank=0)
    logged = {"eval/table": wandb.Table(columns=COLUMNS, data=[[r[c] for c in COLUMNS] for r in rows])}
    for name, m in results.items():
        logged[f"eval/{name}/confusion"] = wandb.Image(m["confusion_png"])
        columns = list(m["per_class"][0])
        logged[f"eval/{name}/per_class"] = wandb.Table(columns=columns,
                                                       data=[[c[k] for k in columns] for c in m["per_class"]])
    if (out / "attention.png").is_file():
        logged["eval/attention"] = wandb.Image(str(out / "attention.png"))
    tracker.log(logged, step=0)
    tracker.summary({f"eval/{name}/{k}": m[k] for name, m in results.items() for k in COLUMNS[1:] if k in m})
    tracker.finish()


def cli() -> None:
    """The console script's entry point: main() ending on bad input in one line."""
    run_main(main)


if __name__ == "__main__":
    cli()
