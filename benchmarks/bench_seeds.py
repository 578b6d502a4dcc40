#!/usr/bin/env python
"""Benchmark: the published CIFAR-10 tables this project grew from, reproduced on all 50,000
training images, from scratch and distilled, beside the published figures.

Each row (configs/seed_rows/ROW.yaml: the model and recipe as published, our choices named
in its header) is trained twice at the same epochs, batch and views:
  scratch        the published recipe (hard labels, the config's own views)
  kd             the same student from the stored soft targets of one shared store
and for --mixed-rows also
  scratch-mixed  hard (mixed) labels of the store's own Mixup/CutMix views, so that kd's
                 gain can be told apart from the augmentation's
and for --partial-rows the kd run once more from the store's first N stored epochs only
(`logits.epochs`, --partial-epochs), beside the bytes those epochs take.

The store is made once (tools/save_logits.py, resumable) with as many stored epochs as the
longest schedule run; its wall time is the teacher stage's one-off cost. The JSON holds per
row: the published figure, scratch and kd top-1 on the whole test split, epochs, images per
epoch, wall times, the epoch and wall time at which kd first reaches scratch's final top-1
(with and without the teacher stage's cost), and every command. A re-run with the same --out
keeps what finished (a row's runs, the store); delete OUT/runs/ROW_MODE to redo one.

  python benchmarks/bench_seeds.py --teacher cifar10_resnet56=runs/t_r56/final/model.pt \\
      --data-root DATA --skip-md5 --rows s1_vit s0_cnn --epochs s0_cnn=15 --jobs 2 \\
      --out runs/seeds --json docs/results/seed_rows.json --plot docs/results/seed_rows.png
  python benchmarks/bench_seeds.py --quick --data-root TINY_CIFAR --skip-md5
"""
import argparse
import json
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor

from benchmarks.bench_distill import batch_size, run
from benchmarks.bench_report import save_curves
from distill.cli import HelpFormatter, add_data_args, run_main
from teacher_logits.manifest import load_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# row -> (published CIFAR-10 test top-1, what it is); epochs, batch and recipe are in its config
ROWS = {
    "s0_vit": (82.59, "small-ViT study: ViT patch 4, width 128, 6 layers (cifar_vit)"),
    "s0_cnn": (80.67, "small-ViT study: its CNN baseline (cifar_cnn stands in)"),
    "s1_vit": (60.4, "minimal ViT, width 64, 10 epochs (cifar_vit_mini); validation top-1"),
    "s2_vit": (77.0, "ViT vs CNN: ViT width 256, 6 layers, 3.2M parameters (cifar_vit_256)"),
    "s2_cnn": (88.5, "ViT vs CNN: 6-conv CNN, 5.9M parameters (cifar_cnn); published 88-89"),
    "s4_vit_lite": (69.82, "Compact Transformers: ViT-Lite-7/4 (vit_lite_7_4)"),
    "s4_cvt": (92.58, "Compact Transformers: CVT-7/4 (cvt_7_4)"),
    "s4_cct": (94.81, "Compact Transformers: CCT-7/3x1 (cct_7_3x1)"),
}
KD = ["loss.mode=kd", "loss.label_smoothing=0.0", "loss.alpha=0.0", "loss.temperature=1.0"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--rows", nargs="+", default=["s1_vit", "s0_cnn", "s0_vit"], choices=list(ROWS),
                   help="rows to run (default: %(default)s)")
    p.add_argument("--epochs", nargs="*", default=[], metavar="ROW=N",
                   help="a stated reduced budget for a row (default: the published epochs of its config)")
    # not add_teacher_args: one flag NAME=CHECKPOINT per teacher (the store's and the table's spec), so that
    # `--teacher A=a.pt --teacher B=b.pt` names an ensemble without a separate --checkpoint list
    p.add_argument("--teacher", action="append", default=[],
                   help="NAME=CHECKPOINT of the (fine-tuned) teacher; repeat it for an ensemble store")
    add_data_args(p, dataset=False)  # the data is CIFAR-10 (the published rows'), in torchvision's layout
    p.add_argument("--limit", type=int, help="train on the first N images only (default: all 50,000)")
    p.add_argument("--mixup", type=float, default=0.8, help="pairwise Mixup alpha of the stored views (default: 0.8)")
    p.add_argument("--cutmix", type=float, default=1.0, help="pairwise CutMix alpha of the stored views (default: 1.0)")
    p.add_argument("--topk", type=int, default=10, help="stored teacher classes per record (default: 10)")
    p.add_argument("--store-epochs", type=int, help="stored epochs (default: the longest schedule run)")
    p.add_argument("--mixed-rows", nargs="*", default=["s1_vit"], help="rows also trained scratch-mixed")
    p.add_argument("--partial-rows", nargs="*", default=["s1_vit"], help="rows also distilled from part of the store")
    p.add_argument("--partial-epochs", nargs="*", type=int, default=[1, 2, 5],
                   help="stored epochs for --partial-rows (default: 1 2 5; all is the kd run)")
    p.add_argument("--only", nargs="*", default=[], metavar="MODE",
                   help="train only these modes now (e.g. scratch, kd, kd-e1); finished runs of the others are "
                        "still reported (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each on cores/jobs threads (default: 1)")
    p.add_argument("--out", default="runs/seeds", help="work directory; what finished is kept (default: runs/seeds)")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--plot", help="learning-curve PNG (default: OUT/curves.png)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 256 images, 1 epoch, row s1_vit, a random ResNet-20 teacher")
    return p.parse_args(argv)


def random_teacher(out: str, name: str, seed: int = 0) -> str:
    """NAME=CHECKPOINT of a randomly initialised (seeded) teacher, for --quick runs."""
    import torch

    from distill.models import create_teacher

    torch.manual_seed(seed)
    checkpoint = os.path.join(out, f"{name}.pt")
    torch.save(create_teacher(name).model.state_dict(), checkpoint)
    return f"{name}={checkpoint}"


def quick_setup(args) -> None:
    args.teacher, args.rows, args.limit, args.partial_epochs = [random_teacher(args.out, "cifar10_resnet20")], \
        ["s1_vit"], 256, [1]
    args.epochs, args.store_epochs = ["s1_vit=1"], 1


def row_plan(args) -> dict:
    """row -> (config path, epochs, published epochs)."""
    from distill.config import load_config

    budget = dict(spec.split("=") for spec in args.epochs)
    plan = {}
    for row in args.rows:
        config = os.path.join(REPO, "configs", "seed_rows", f"{row}.yaml")
        published = load_config(config, []).train.epochs
        plan[row] = (config, int(budget.get(row, published)), published)
    return plan


def data_flags(args) -> list[str]:
    return (["--data-root", args.data_root] if args.data_root else []) + (["--skip-md5"] if args.skip_md5 else [])


def make_store(args, epochs: int, teachers: list[str] | None = None, name: str = "store") -> dict:
    """The shared store OUT/NAME of `teachers` (default: every --teacher), resumed if a run was
    cut short; its wall time is kept in OUT/NAME.json."""
    path, record = os.path.join(args.out, name), os.path.join(args.out, f"{name}.json")
    pairs = [a for teacher, ckpt in (t.split("=", 1) for t in teachers or args.teacher)
             for a in ("--teacher", teacher, "--checkpoint", ckpt)]
    cmd = [sys.executable, f"{REPO}/tools/save_logits.py", *pairs, "--dataset", "cifar10", *data_flags(args),
           "--aug", "cifar", "--mixup", str(args.mixup), "--cutmix", str(args.cutmix), "--topk", str(args.topk),
           "--epochs", str(epochs), "--workers", "1", "--out", path, *(["--limit", str(args.limit)] * bool(args.limit)),
           *(["--flip-average"] * getattr(args, "flip_average", False)),
           *(["--precision", args.precision] if getattr(args, "precision", "fp32") != "fp32" else [])]
    done = json.load(open(record)) if os.path.isfile(record) else {}
    if done.get("epochs", 0) < epochs:  # none yet, or grown: only the new epochs are labelled
        wall = run(cmd, os.path.join(args.out, f"{name}.log"))
        done = {"path": path, "epochs": epochs, "wall_s": done.get("wall_s", 0.0) + wall,
                "command": as_typed(cmd)}
        with open(record, "w") as f:
            json.dump(done, f, indent=1)
    manifest = load_manifest(path)
    done["bytes_per_epoch"] = [sum(s.bytes for s in manifest.shards if s.epoch == e)
                               for e in range(done["epochs"])]
    return done


def as_typed(cmd: list[str]) -> str:
    """A subprocess command as a user types it in the repository's root."""
    return shlex.join(["python", *(a.replace(REPO + os.sep, "") for a in cmd[1:])])


def student_runs(args, plan, store) -> dict:
    """(row, mode) -> train_student overrides."""
    data = ["data.skip_md5=true"] * args.skip_md5 + [f"data.root={args.data_root}"] * bool(args.data_root)
    data += [f"data.limit={args.limit}", "data.test_limit=200"] if args.quick else []
    data += [f"data.limit={args.limit}"] if args.limit and not args.quick else []
    runs = {}
    for row, (config, epochs, _) in plan.items():
        common = ["--config", config, *data, f"train.epochs={epochs}", "wandb.enabled=false", "data.workers=1"]
        runs[row, "scratch"] = common
        runs[row, "kd"] = [*common, f"logits.store={store}", *KD]
        if row in args.mixed_rows:
            runs[row, "scratch-mixed"] = [*common, f"logits.store={store}"]
        for n in args.partial_epochs if row in args.partial_rows else []:
            runs[row, f"kd-e{n}"] = [*runs[row, "kd"], f"logits.epochs={n}"]
    return runs


def train(args, row, mode, overrides, threads) -> dict | None:
    """The run's results, training it first unless it finished or --only leaves it out (None)."""
    out = os.path.join(args.out, "runs", f"{row}_{mode}")
    cmd = [sys.executable, f"{REPO}/distill/train_student.py", *overrides, f"output.dir={out}"]
    if not os.path.isfile(os.path.join(out, "metrics.json")):
        if args.only and mode not in args.only:
            return None
        run(cmd, f"{out}.log", threads)
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    curve = [json.loads(line) for line in open(os.path.join(out, "evals.jsonl"))]
    print(f"{row:>12} {mode:>14}: top-1 {curve[-1]['top1']:.2f}% in {metrics['train_wall_s']:.0f} s", flush=True)
    return {"test_top1": curve[-1]["top1"], "train_wall_s": metrics["train_wall_s"],
            "images_per_s": metrics["steps"] * batch_size(out) / metrics["train_wall_s"],
            "curve": [(c["epoch"], c["top1"], c["wall_s"]) for c in curve],
            "command": as_typed(cmd)}


def time_to_accuracy(kd: dict, target: float, teacher_s: float) -> dict | None:
    """The first evaluated epoch at which kd reaches `target` (scratch's final top-1), and the
    wall time to it, without and with the teacher stage's cost `teacher_s`."""
    for epoch, top1, wall in kd["curve"]:
        if top1 >= target:
            return {"epoch": epoch, "wall_s": wall, "wall_s_with_teacher_stage": round(wall + teacher_s, 1)}
    return None


def teacher_top1(args) -> dict:
    out = os.path.join(args.out, "teacher_eval")
    if not os.path.isfile(os.path.join(out, "metrics.json")):
        run([sys.executable, f"{REPO}/tools/evaluate.py", "--dataset", "cifar10", *data_flags(args), "--out", out,
             "--throughput-iters", "0", *(["--limit", "200"] * args.quick), "--compare", *args.teacher],
            os.path.join(args.out, "teacher_eval.log"))
    models = json.load(open(os.path.join(out, "metrics.json")))["models"]
    return {name: m["top1"] for name, m in models.items()}


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    if args.quick:
        quick_setup(args)
    if not args.teacher:
        sys.exit("bench_seeds: --teacher NAME=CHECKPOINT is required (or --quick)")
    plan = row_plan(args)
    store = make_store(args, args.store_epochs or max(epochs for _, epochs, _ in plan.values()))
    runs = student_runs(args, plan, store["path"])
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        done = {key: r for key, r in zip(runs, pool.map(lambda key: train(args, *key, runs[key], threads), runs)) if r}
    results = {"command": "python benchmarks/bench_seeds.py " + shlex.join(sys.argv[1:] if argv is None else argv),
               "train_images": args.limit or 50000, "test_images": 200 if args.quick else 10000,
               "teacher": args.teacher, "teacher_top1": teacher_top1(args), "store": store, "rows": {}}
    for row, (config, epochs, published_epochs) in plan.items():
        modes = {mode: r for (r_row, mode), r in done.items() if r_row == row}
        results["rows"][row] = row_summary(row, config, epochs, published_epochs, modes, store)
    plot(results, args.plot or os.path.join(args.out, "curves.png"))
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
    return results


def row_summary(row, config, epochs, published_epochs, modes, store) -> dict:
    """A row's entry: its runs, and the comparisons those that finished allow."""
    top1 = {mode: r["test_top1"] for mode, r in modes.items()}
    entry = {"published_top1": ROWS[row][0], "what": ROWS[row][1], "config": os.path.relpath(config, REPO),
             "epochs": epochs, "published_epochs": published_epochs, "runs": modes,
             "scratch_top1": top1.get("scratch"), "kd_top1": top1.get("kd")}
    if "kd" in top1 and "scratch" in top1:
        entry["kd_minus_scratch"] = round(top1["kd"] - top1["scratch"], 2)
        # the teacher stage's cost of the stored epochs this row read (what a run of this row alone pays)
        teacher_s = store["wall_s"] * min(epochs, store["epochs"]) / store["epochs"]
        entry["kd_reaches_scratch_final"] = time_to_accuracy(modes["kd"], top1["scratch"], teacher_s)
    if "kd" in top1 and "scratch-mixed" in top1:
        entry["kd_minus_scratch_mixed"] = round(top1["kd"] - top1["scratch-mixed"], 2)
    partial = {int(m[4:]): t for m, t in top1.items() if m.startswith("kd-e")}
    if partial:
        stored = store["bytes_per_epoch"]
        whole = {min(epochs, len(stored)): top1["kd"]} if "kd" in top1 else {}  # the epochs kd read
        entry["storage_vs_accuracy"] = [{"stored_epochs": n, "bytes": sum(stored[:n]), "kd_top1": t}
                                        for n, t in sorted({**partial, **whole}.items())]
    return entry


def markdown(results) -> str:
    """The rows as README and docs/benchmarks.md show them."""
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["| row | published top-1 | epochs here (published) | scratch here | kd here | kd - scratch | "
             "kd reaches scratch's final at |", "|---|---|---|---|---|---|---|"]
    for row, e in results["rows"].items():
        reach = e.get("kd_reaches_scratch_final")
        reach = "-" if not reach else f"epoch {reach['epoch']} ({reach['wall_s'] / 60:.0f} min)"
        lines.append(f"| {row} | {e['published_top1']} | {e['epochs']} ({e['published_epochs']}) | "
                     f"{fmt(e['scratch_top1'])} | {fmt(e['kd_top1'])} | {fmt(e.get('kd_minus_scratch'))} | {reach} |")
    return "\n".join(lines)


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), dpi=100, squeeze=False)
    for ax, (row, entry) in zip(axes[0], rows.items()):
        for mode, r in entry["runs"].items():
            epochs, top1, _ = zip(*r["curve"])
            ax.plot(epochs, top1, marker="o", ms=2, label=f"{mode} ({r['test_top1']:.1f}%)")
        ax.axhline(entry["published_top1"], color="gray", ls="--", label=f"published ({entry['published_top1']}%)")
        ax.set(xlabel="epoch", ylabel="test top-1 (%)", title=f"{row}: {entry['epochs']} epochs")
    save_curves(fig, axes[0], path)


if __name__ == "__main__":
    run_main(main)
