#!/usr/bin/env python
"""Benchmark: what distillation buys at an equal budget (same student, epochs, steps).

Makes one store (the teacher run once over E augmented, optionally Mixup/CutMix'd
epochs of a training subset), then trains the same student from it in several modes:
  kd            stored soft targets of the stored (mixed) views
  online        the teacher run in the loop on the same views
  scratch-mixed hard (mixed) labels of the same views
  scratch       hard labels with crop + flip and label smoothing, no mixing (the best
                scratch recipe we found at this budget)
and reports test top-1 per evaluated epoch (a learning-curve PNG), final top-1 on the
whole test split, wall time and images/s of each, and the teacher's top-1.

  python tools/bench_distill.py --teacher cifar10_resnet56=runs/teacher_r56/final/model.pt \\
      --data-root DATA --skip-md5 --limit 2000 --epochs 40 --out runs/bench_distill
  python tools/bench_distill.py --quick
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from distill.cli import run_main  # noqa: E402

MODES = {  # mode -> train_student overrides (besides the common ones)
    "kd": ["loss.mode=kd"],
    "online": ["loss.mode=online"],
    "scratch-mixed": ["loss.mode=scratch", "loss.label_smoothing=0.1"],
    "scratch": ["loss.mode=scratch", "loss.label_smoothing=0.1", "logits.store=null"],
}


def run(cmd: list[str], log_path: str) -> float:
    env = {**os.environ, "PYTHONPATH": REPO, "WANDB_MODE": "disabled", "DS_ACCELERATOR": "cpu"}
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed; see {log_path}")
    return time.time() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help="NAME=CHECKPOINT of the (fine-tuned) teacher")
    p.add_argument("--dataset", default="cifar10", help="dataset")
    p.add_argument("--data-root", help="dataset directory")
    p.add_argument("--skip-md5", action="store_true", help="accept a local re-created dataset copy")
    p.add_argument("--config", default=os.path.join(REPO, "configs/cifar10_tinyvit5m.yaml"), help="student config")
    p.add_argument("--limit", type=int, default=2000, help="training subset (first N samples)")
    p.add_argument("--store-epochs", type=int, default=8, help="augmented epochs in the store")
    p.add_argument("--epochs", type=int, default=40, help="student epochs (every mode)")
    p.add_argument("--mixup", type=float, default=0.8, help="pairwise Mixup alpha of the stored views")
    p.add_argument("--cutmix", type=float, default=1.0, help="pairwise CutMix alpha of the stored views")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="modes to train")
    p.add_argument("--out", default="runs/bench_distill", help="work directory")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--plot", help="learning-curve PNG path (default OUT/curves.png)")
    p.add_argument("--quick", action="store_true", help="digits, tiny student, 2 epochs, random teacher")
    p.add_argument("overrides", nargs="*", help="extra train_student overrides for every mode")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    py = sys.executable
    data = (["--data-root", args.data_root] if args.data_root else []) + (["--skip-md5"] if args.skip_md5 else [])
    aug = "cifar"
    if args.quick:
        import torch

        from distill.models import create_teacher

        torch.manual_seed(0)
        ckpt = os.path.join(args.out, "teacher.pt")
        torch.save(create_teacher("cifar10_resnet20").model.state_dict(), ckpt)
        args.teacher, args.dataset, args.limit, args.store_epochs, args.epochs = f"cifar10_resnet20={ckpt}", "digits", 256, 2, 2
        args.config, aug = os.path.join(REPO, "configs/smoke_digits.yaml"), "crop"
        args.overrides = [*args.overrides, "train.batch_size=64", "data.test_limit=128"]
    if not args.teacher:
        p.error("--teacher NAME=CHECKPOINT is required (or --quick)")
    name, _, ckpt = args.teacher.partition("=")
    store = os.path.join(args.out, "store")
    results = {"budget": {"limit": args.limit, "store_epochs": args.store_epochs, "epochs": args.epochs,
                          "mixup": args.mixup, "cutmix": args.cutmix, "config": os.path.relpath(args.config, REPO),
                          "overrides": args.overrides, "teacher": name}}
    results["store_wall_s"] = run([py, f"{REPO}/tools/save_logits.py", "--teacher", name, "--checkpoint", ckpt,
                                   "--dataset", args.dataset, *data, "--limit", str(args.limit), "--aug", aug,
                                   "--epochs", str(args.store_epochs), "--mixup", str(args.mixup), "--cutmix",
                                   str(args.cutmix), "--workers", "1", "--out", store], f"{args.out}/store.log")
    common = [f"data.dataset={args.dataset}", f"data.recipe={aug}", f"data.limit={args.limit}",
              f"train.epochs={args.epochs}", f"logits.store={store}", f"teacher.name={name}",
              f"teacher.checkpoint={ckpt}", "wandb.enabled=false", "output.resume=none", "train.checkpoint_every=0"]
    common += [f"data.root={args.data_root}"] if args.data_root else []
    common += ["data.skip_md5=true"] if args.skip_md5 else []
    for mode in args.modes:
        out = os.path.join(args.out, mode)
        wall = run([py, f"{REPO}/distill/train_student.py", "--config", args.config, *common, *args.overrides,
                    *MODES[mode], f"output.dir={out}"], f"{args.out}/{mode}.log")
        metrics = json.load(open(os.path.join(out, "metrics.json")))
        curve = [json.loads(line) for line in open(os.path.join(out, "evals.jsonl"))]
        results[mode] = {"process_wall_s": wall, "train_wall_s": metrics["train_wall_s"],
                         "images_per_s": metrics["steps"] * batch_size(out) / metrics["train_wall_s"],
                         "curve": [(c["epoch"], c["top1"]) for c in curve]}
        print(f"{mode:>14}: last eval top-1 {curve[-1]['top1']:.2f}% train {metrics['train_wall_s']:.0f} s", flush=True)
    final_eval(args, results, name, ckpt, data)
    plot(results, args.plot or os.path.join(args.out, "curves.png"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


def batch_size(run_dir: str) -> int:
    import yaml

    return yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["train"]["batch_size"]


def final_eval(args, results, name, ckpt, data) -> None:
    """Every student and the teacher on the whole test split, with tools/evaluate.py."""
    out = os.path.join(args.out, "eval")
    specs = [os.path.join(args.out, m, "final") for m in args.modes] + [f"{name}={ckpt}"]
    run([sys.executable, f"{REPO}/tools/evaluate.py", "--dataset", args.dataset, *data, "--out", out,
         "--throughput-iters", "0", "--compare", *specs], f"{args.out}/eval.log")
    models = json.load(open(os.path.join(out, "metrics.json")))["models"]
    for mode in args.modes:
        results[mode]["test_top1"] = models[mode]["top1"]
    results["teacher_top1"] = models[name]["top1"]


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for mode, r in results.items():
        if isinstance(r, dict) and "curve" in r:
            ax.plot(*zip(*r["curve"]), marker="o", label=f"{mode} ({r['test_top1']:.1f}%)")
    ax.axhline(results["teacher_top1"], color="gray", ls="--", label=f"teacher ({results['teacher_top1']:.1f}%)")
    ax.set(xlabel="epoch", ylabel="test top-1 (%)", title="Equal-budget students")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    run_main(main)
