#!/usr/bin/env python
"""Benchmark: what distillation buys at an equal budget (same student, epochs, optimizer steps).

Makes one store (the teacher, or an ensemble, run once over E augmented, Mixup/CutMix'd
epochs of a training subset; E defaults to the student's epochs, so no stored view is
reused), then trains the same student from it in several modes:
  kd             the stored soft targets of the stored (mixed) views
  online         the teacher run in the loop on the same views, same loss
  scratch-mixed  the hard (mixed, label-smoothed) labels of the same views
  scratch        crop + flip views, label smoothing 0.1, no mixing
and any `--variant NAME key=value,...` runs (other kd losses or scratch recipes). The
kd loss settings (`--kd-loss`) apply to kd and online alike. It reports test top-1 per
evaluated epoch (a learning-curve PNG), final top-1 on the whole test split (the same
tools/evaluate.py for every model), wall time and images/s of each, and the teacher's top-1.
A re-run with the same --out keeps the finished modes (delete OUT/MODE to redo one).

  python benchmarks/bench_distill.py --teacher cifar10_resnet56=runs/t_r56/final/model.pt \\
      --data-root DATA --skip-md5 --limit 2000 --epochs 80 --out runs/bench_distill \\
      --json docs/results/bench_distill.json --plot docs/results/distill_curves.png
  python benchmarks/bench_distill.py --quick
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.bench_report import save_curves
from distill.cli import HelpFormatter, add_data_args, run_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODES = {  # mode -> train_student overrides (besides the common ones)
    "kd": ["loss.mode=kd"],
    "online": ["loss.mode=online"],
    "scratch-mixed": ["loss.mode=scratch", "loss.label_smoothing=0.1"],
    "scratch": ["loss.mode=scratch", "loss.label_smoothing=0.1", "logits.store=null"],
}
SCRATCH_RECIPES = {"scratch": "crop+flip, label smoothing 0.1",
                   "scratch-mixed": "the stored Mixup/CutMix views, label smoothing 0.1"}


def run(cmd: list[str], log_path: str, threads: int | None = None) -> float:
    """Run a program of the repository to its end, its output in `log_path`; its wall time.
    DeepSpeed runs on this machine's GPU if it has one (a DS_ACCELERATOR of the caller's wins)."""
    import torch

    env = {"DS_ACCELERATOR": "cuda" if torch.cuda.is_available() else "cpu",
           **os.environ, "PYTHONPATH": REPO, "WANDB_MODE": "disabled"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed; see {log_path}")
    return time.time() - start


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    # not add_teacher_args: one flag NAME=CHECKPOINT per teacher, kept as one spec per mode and table row
    p.add_argument("--teacher", action="append", default=[],
                   help="NAME=CHECKPOINT of a (fine-tuned) teacher; repeat it for an ensemble store")
    add_data_args(p, required=False)
    p.set_defaults(dataset="cifar10")
    p.add_argument("--config", default=os.path.join(REPO, "configs/cifar10_tinyvit5m.yaml"), help="student config")
    p.add_argument("--limit", type=int, default=2000, help="training subset (first N samples)")
    p.add_argument("--epochs", type=int, default=80, help="student epochs (every mode)")
    p.add_argument("--store-epochs", type=int, help="augmented epochs in the store (default: --epochs)")
    p.add_argument("--mixup", type=float, default=0.8, help="pairwise Mixup alpha of the stored views")
    p.add_argument("--cutmix", type=float, default=1.0, help="pairwise CutMix alpha of the stored views")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="modes to train")
    p.add_argument("--kd-loss", nargs="*", default=[], metavar="KEY=VALUE",
                   help="loss overrides shared by kd and online, e.g. loss.temperature=2 loss.standardize=true")
    p.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME", "KEY=VALUE,..."),
                   help="one more run with these overrides (e.g. kd-T4 loss.mode=kd,loss.temperature=4)")
    p.add_argument("--jobs", type=int, default=1,
                   help="modes trained at once, each with cores/jobs threads (accuracy is unaffected)")
    p.add_argument("--out", default="runs/bench_distill", help="work directory (finished modes are kept)")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--plot", help="learning-curve PNG path (default OUT/curves.png)")
    p.add_argument("--quick", action="store_true", help="digits, tiny student, 1 epoch, random teacher")
    p.add_argument("overrides", nargs="*", help="extra train_student overrides for every mode")
    return p.parse_args(argv)


def quick_setup(args) -> str:
    """--quick: a random ResNet-20 on 128 digits, the tiny demo student, 1 epoch."""
    import torch

    from distill.models import create_teacher

    torch.manual_seed(0)
    ckpt = os.path.join(args.out, "teacher.pt")
    torch.save(create_teacher("cifar10_resnet20").model.state_dict(), ckpt)
    args.teacher, args.dataset, args.limit, args.store_epochs, args.epochs = [f"cifar10_resnet20={ckpt}"], \
        "digits", 128, 1, 1
    args.config = os.path.join(REPO, "configs/smoke_digits.yaml")
    args.overrides = [*args.overrides, "train.batch_size=32", "data.test_limit=64"]
    return "crop"


def main(argv=None):
    args = parse_args(argv)
    command = "python benchmarks/bench_distill.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    os.makedirs(args.out, exist_ok=True)
    aug = quick_setup(args) if args.quick else "cifar"
    if not args.teacher:
        sys.exit("bench_distill: --teacher NAME=CHECKPOINT is required (or --quick)")
    teachers = [t.partition("=")[::2] for t in args.teacher]
    store_epochs = args.store_epochs or args.epochs
    data = (["--data-root", args.data_root] if args.data_root else []) + (["--skip-md5"] if args.skip_md5 else [])
    store = os.path.join(args.out, "store")
    pairs = [a for name, ckpt in teachers for a in ("--teacher", name, "--checkpoint", ckpt)]
    results = {"command": command, "epochs": args.epochs, "store_epochs": store_epochs, "train_images": args.limit,
               "student": student_name(args), "teachers": [name for name, _ in teachers],
               "budget": {"mixup": args.mixup, "cutmix": args.cutmix, "kd_loss": args.kd_loss,
                          "config": os.path.relpath(args.config, REPO), "overrides": args.overrides}}
    results["store_wall_s"] = run([sys.executable, f"{REPO}/tools/save_logits.py", *pairs, "--dataset", args.dataset,
                                   *data, "--limit", str(args.limit), "--aug", aug, "--epochs", str(store_epochs),
                                   "--mixup", str(args.mixup), "--cutmix", str(args.cutmix), "--workers", "1",
                                   "--out", store], f"{args.out}/store.log")
    names, ckpts = (",".join(column) for column in zip(*teachers))
    teacher_keys = [f"teacher.name=[{names}]", f"teacher.checkpoint=[{ckpts}]"]
    common = [f"data.dataset={args.dataset}", f"data.recipe={aug}", f"data.limit={args.limit}",
              f"train.epochs={args.epochs}", f"logits.store={store}", *teacher_keys, "wandb.enabled=false",
              "output.resume=none", "train.checkpoint_every=0"]
    common += [f"data.root={args.data_root}"] if args.data_root else []
    common += ["data.skip_md5=true"] if args.skip_md5 else []
    runs = {m: MODES[m] + (args.kd_loss if m in ("kd", "online") else []) for m in args.modes}
    runs.update({name: spec.split(",") for name, spec in args.variant})
    threads = max(1, (os.cpu_count() or 1) // args.jobs)

    def train(mode):
        out = os.path.join(args.out, mode)
        if not os.path.isfile(os.path.join(out, "metrics.json")):
            run([sys.executable, f"{REPO}/distill/train_student.py", "--config", args.config, *common, *args.overrides,
                 *runs[mode], f"output.dir={out}"], f"{args.out}/{mode}.log", threads if args.jobs > 1 else None)
        metrics = json.load(open(os.path.join(out, "metrics.json")))
        curve = [json.loads(line) for line in open(os.path.join(out, "evals.jsonl"))]
        print(f"{mode:>14}: last eval top-1 {curve[-1]['top1']:.2f}% train {metrics['train_wall_s']:.0f} s", flush=True)
        return mode, {"overrides": runs[mode], "train_wall_s": metrics["train_wall_s"],
                      "images_per_s": metrics["steps"] * batch_size(out) / metrics["train_wall_s"],
                      "curve": [(c["epoch"], c["top1"]) for c in curve]}

    with ThreadPoolExecutor(args.jobs) as pool:
        results["runs"] = dict(pool.map(train, runs))
    final_eval(args, results, teachers, data)
    summarise(results)
    plot(results, args.plot or os.path.join(args.out, "curves.png"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


def student_name(args) -> str:
    from distill.config import load_config

    return load_config(args.config, [o for o in args.overrides if o.startswith("model.")]).model.name


def batch_size(run_dir: str) -> int:
    import yaml

    return yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["train"]["batch_size"]


def final_eval(args, results, teachers, data) -> None:
    """Every student and teacher on the whole test split, with tools/evaluate.py."""
    out = os.path.join(args.out, "eval")
    specs = [os.path.join(args.out, m, "final") for m in results["runs"]] + [f"{n}={c}" for n, c in teachers]
    run([sys.executable, f"{REPO}/tools/evaluate.py", "--dataset", args.dataset, *data, "--out", out,
         "--throughput-iters", "0", "--compare", *specs], f"{args.out}/eval.log")
    models = json.load(open(os.path.join(out, "metrics.json")))["models"]
    for mode, r in results["runs"].items():
        r["test_top1"] = models[mode]["top1"]
    results["teacher_top1"] = {name: models[name]["top1"] for name, _ in teachers}


def summarise(results) -> None:
    """The headline keys: kd, online, every scratch recipe and the best of them."""
    runs = results["runs"]
    scratch = {SCRATCH_RECIPES.get(m, m): r["test_top1"] for m, r in runs.items()
               if m in SCRATCH_RECIPES or "loss.mode=scratch" in r["overrides"]}
    results["scratch_top1"] = scratch
    if scratch:
        results["best_scratch_recipe"] = max(scratch, key=scratch.get)
        results["best_scratch_top1"] = scratch[results["best_scratch_recipe"]]
    for mode in ("kd", "online"):
        if mode in runs:
            results[f"{mode}_top1"] = runs[mode]["test_top1"]
    if "kd_top1" in results and scratch:
        results["kd_minus_best_scratch"] = round(results["kd_top1"] - results["best_scratch_top1"], 2)
    if "kd_top1" in results and "online_top1" in results:
        results["kd_minus_online"] = round(results["kd_top1"] - results["online_top1"], 2)


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    for mode, r in results["runs"].items():
        ax.plot(*zip(*r["curve"]), marker="o", ms=3, label=f"{mode} ({r['test_top1']:.1f}%)")
    for name, top1 in results["teacher_top1"].items():
        ax.axhline(top1, color="gray", ls="--", label=f"teacher {name} ({top1:.1f}%)")
    ax.set(xlabel="epoch", ylabel="test top-1 (%)",
           title=f"{results['student']}, {results['train_images']} images, equal steps")
    save_curves(fig, [ax], path)


if __name__ == "__main__":
    run_main(main)
