#!/usr/bin/env python
"""Benchmark: TinyViT-5M on all of CIFAR-10 at 32 px, trained from scratch and distilled from one
store of the strongest teacher made here, and where the gain comes from.

One config for every run (configs/cifar10_tinyvit5m_kd.yaml: AdamW, lr 1e-3, 5 warm-up epochs,
cosine, batch 128, evaluated every 2 epochs), the same epochs and schedule, only the loss and
the views differing:
  scratch        crop + flip views, hard labels, label smoothing 0.1
  scratch-mixed  the store's Mixup/CutMix views and their mixed hard labels, label smoothing 0.1
  kd             the store's views and soft targets (KL, T = 1, no label term)
The best scratch (the higher final top-1 of the two) is what kd is measured against. At
--ablation-epochs, the few runs that say where the gain comes from (ABLATIONS: temperature,
label weight, DeiT's hard target, logit standardisation, stored epochs cycled, and kd-single:
one teacher of the ensemble alone, --single-teacher, from a second store of the same views),
each beside a scratch and a kd run of the same budget. kd-compiled is kd with train.compile=true:
run beside kd (`--only kd@30 kd-compiled`, one core each) it times compile against eager over a
whole run, start-up included (compile_speedup: kd's wall time over kd-compiled's).

The store (Mixup/CutMix views, --store-epochs) is made once and grown when asked for more;
every run resumes (output.resume=auto) and a finished one is kept, so killing this program and
running the same command again loses at most the epoch in flight. `--report` only collects
what is there (runs still going included, with the epochs they reached) into the JSON and
the plot: run it at any time. A machine wiped between working days keeps only that JSON: the
finished runs it records are reported again (carried_runs) once OUT's store is the same store
remade, so a queue goes on across machines.

  python benchmarks/bench_tinyvit.py --teacher cifar10_airbench=runs/t_airbench/final/model.pt \\
      --data-root DATA --skip-md5 --epochs 100 --store-epochs 20 --jobs 2 --out runs/tinyvit \\
      --json docs/results/tinyvit_cifar10.json --plot docs/results/tinyvit_cifar10.png
  python benchmarks/bench_tinyvit.py --quick --data-root TINY_CIFAR --skip-md5
"""
import argparse
import json
import os
import shlex
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from benchmarks.bench_distill import run
from benchmarks.bench_report import resumed_clock, save_curves
from benchmarks.bench_seeds import as_typed, make_store, quick_setup, random_teacher, time_to_accuracy
from distill.cli import HelpFormatter, add_data_args, run_main
from teacher_logits.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "cifar10_tinyvit5m_kd.yaml")

SCRATCH = ["loss.mode=scratch", "loss.label_smoothing=0.1"]
KD = ["loss.mode=kd"]  # the config's: T = 1, alpha = 0
MAIN = {"scratch": [*SCRATCH, "logits.store=null"], "kd": KD, "scratch-mixed": SCRATCH}
ABLATIONS = {  # name -> overrides of kd at the ablation budget; what each asks in the module docstring
    "kd-T2": [*KD, "loss.temperature=2.0"],
    "kd-T4": [*KD, "loss.temperature=4.0"],
    "kd-alpha0.5": [*KD, "loss.alpha=0.5"],
    "kd-hard": [*KD, "loss.teacher_target=hard", "loss.alpha=0.5", "loss.label_smoothing=0.1"],
    "kd-std": [*KD, "loss.standardize=true", "loss.temperature=2.0"],
    "kd-e5": [*KD, "logits.epochs=5"],
    "kd-e10": [*KD, "logits.epochs=10"],
    "kd-single": KD,  # from OUT/store_single: the --single-teacher alone, the same views
    "kd-compiled": [*KD, "train.compile=true"],  # kd's steps compiled: its wall time against kd's, side by side
}
SINGLE = "kd-single"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    # not add_teacher_args: NAME=CHECKPOINT specs, as bench_seeds (whose store and teacher helpers this shares)
    p.add_argument("--teacher", action="append", default=[],
                   help="NAME=CHECKPOINT of the teacher; repeat it for an ensemble store")
    add_data_args(p, dataset=False)  # CIFAR-10 in torchvision's layout
    p.add_argument("--limit", type=int, help="train on the first N images only (default: all 50,000)")
    p.add_argument("--epochs", type=int, default=100, help="epochs of the main runs (default: 100)")
    p.add_argument("--ablation-epochs", type=int, default=30, help="epochs of the ablation runs (default: 30)")
    p.add_argument("--store-epochs", type=int, default=20, help="stored epochs, cycled by longer runs (default: 20)")
    p.add_argument("--mixup", type=float, default=0.8, help="pairwise Mixup alpha of the stored views (default: 0.8)")
    p.add_argument("--cutmix", type=float, default=1.0, help="pairwise CutMix alpha of the stored views (default: 1.0)")
    p.add_argument("--single-teacher", metavar="NAME",
                   help="the --teacher that kd-single distils from alone (default: the last one)")
    p.add_argument("--flip-average", action="store_true",
                   help="store the teacher's probabilities averaged over each view and its mirror image")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="the teachers' inference precision in the stores; bf16 pays on GPUs and on CPUs with AMX "
                        "(default: fp32)")
    p.add_argument("--topk", type=int, default=10, help="stored teacher classes per record (default: 10)")
    p.add_argument("--only", nargs="*", metavar="RUN",
                   help="train only these runs now: main ones (scratch, scratch-mixed, kd) and ablations by name, "
                        "or NAME@EPOCHS; the others finished or in progress are still reported (default: the main "
                        f"runs; ablations: {', '.join(ABLATIONS)})")
    p.add_argument("--report", action="store_true", help="train nothing: collect what is there into --json/--plot")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, each on cores/jobs threads (default: 2)")
    p.add_argument("--out", default="runs/tinyvit", help="work directory; what finished is kept (default: runs/tinyvit)")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--plot", help="learning-curve PNG (default: OUT/curves.png)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 256 images, 1 epoch, a random ResNet-20 teacher, one ablation")
    return p.parse_args(argv)


def planned_runs(args) -> dict:
    """'NAME@EPOCHS' -> train_student overrides, for every run this benchmark knows."""
    data = ["data.skip_md5=true"] * args.skip_md5 + [f"data.root={args.data_root}"] * bool(args.data_root)
    data += [f"data.limit={args.limit}"] * bool(args.limit) + ["data.test_limit=200"] * args.quick
    store = os.path.join(args.out, "store")
    runs = {}
    for epochs, modes in ((args.epochs, MAIN), (args.ablation_epochs, {**MAIN, **ABLATIONS})):
        common = ["--config", CONFIG, *data, f"train.epochs={epochs}", "train.eval_every=2", "wandb.enabled=false",
                  "data.workers=1", f"logits.store={store}"]
        runs |= {f"{name}@{epochs}": [*common, *overrides] for name, overrides in modes.items()}
    runs[f"{SINGLE}@{args.ablation_epochs}"] += [f"logits.store={os.path.join(args.out, 'store_single')}"]
    return runs


def single_teacher(args) -> str:
    """The --teacher spec kd-single distils from alone."""
    if len(args.teacher) < 2:
        raise UserError(f"--only {SINGLE}: it compares one teacher with the ensemble, so give two or more --teacher")
    name = args.single_teacher or args.teacher[-1].split("=")[0]
    specs = [spec for spec in args.teacher if spec.split("=")[0] == name]
    if not specs:
        raise UserError(f"--single-teacher {name}: not one of the --teacher names "
                        f"({', '.join(spec.split('=')[0] for spec in args.teacher)})")
    return specs[0]


def selected(args, runs) -> list[str]:
    """The runs --only names: a bare name is a main run at --epochs, an ablation at --ablation-epochs."""
    wanted = list(MAIN) if args.only is None else args.only
    keys = [w if "@" in w else f"{w}@{args.ablation_epochs if w in ABLATIONS else args.epochs}" for w in wanted]
    unknown = [k for k in keys if k not in runs]
    if unknown:
        raise UserError(f"--only {' '.join(unknown)}: no such run; choose from {', '.join(runs)}")
    return list(dict.fromkeys(keys))


def run_folder(args, key: str) -> str:
    return os.path.join(args.out, "runs", key.replace("@", "_"))


def train(args, key: str, overrides: list[str], threads: int, store_ready: threading.Event) -> None:
    """Train (or resume) one run to the end; runs that read the store wait for it."""
    if os.path.isfile(os.path.join(run_folder(args, key), "metrics.json")):
        return
    if "logits.store=null" not in overrides:
        store_ready.wait()
    cmd = [sys.executable, f"{REPO}/distill/train_student.py", *overrides, f"output.dir={run_folder(args, key)}"]
    run(cmd, run_folder(args, key) + ".log", threads)


def collect(args, key: str, overrides: list[str]) -> dict | None:
    """A run's results so far: finished, or in progress with the epochs evaluated; None if not started.
    A distilled run carries its teacher stage's cost: the wall time of the store it read."""
    out = run_folder(args, key)
    evals = os.path.join(out, "evals.jsonl")
    if not os.path.isfile(evals):
        return None
    curve = [json.loads(line) for line in open(evals)]
    if not curve:
        return None
    finished = os.path.isfile(os.path.join(out, "metrics.json"))
    cmd = [sys.executable, f"{REPO}/distill/train_student.py", *overrides, f"output.dir={out}"]
    store = "store_single" if key.startswith(f"{SINGLE}@") else "store"
    record = os.path.join(args.out, f"{store}.json")
    teacher_s = json.load(open(record))["wall_s"] if "loss.mode=kd" in overrides and os.path.isfile(record) else 0.0
    return {"epochs": int(key.split("@")[1]), "finished": finished, "epochs_done": curve[-1]["epoch"],
            "test_top1": curve[-1]["top1"], "best_top1": max(c["top1"] for c in curve),
            "curve": resumed_clock([(c["epoch"], c["top1"], c["wall_s"]) for c in curve]), "command": as_typed(cmd),
            "teacher_stage_s": round(teacher_s, 1)}


def carried_runs(args, store: dict) -> dict:
    """'NAME@EPOCHS' -> the finished runs the --json of an earlier report holds: the record of a
    queue whose run folders a wiped machine lost. Carried only when OUT's store is the one those
    runs read, remade (its command the same but for where the data and the store are)."""
    if not (args.json and os.path.isfile(args.json) and store):
        return {}
    earlier = json.load(open(args.json))
    if store_recipe(earlier.get("store", {})) != store_recipe(store):
        return {}
    stage_s = round(earlier["store"]["wall_s"], 1)  # reports before runs carried their own
    return {name if "@" in name else f"{name}@{r['epochs']}":
            {**r, "teacher_stage_s": r.get("teacher_stage_s", stage_s if "loss.mode=kd" in r["command"] else 0.0)}
            for name, r in earlier["runs"].items() if r["finished"]}


def store_recipe(record: dict) -> list[str] | None:
    """A store's save_logits command without its paths: what decides its views and targets."""
    if "command" not in record:
        return None
    words = shlex.split(record["command"])
    return [w for i, w in enumerate(words) if not {w, words[i - 1]} & {"--data-root", "--out"}]


def teacher_scores(args) -> dict:
    """Test top-1 of each --teacher alone and of their ensemble, each plain and flip-averaged,
    scored as a store applies them (evaluate.py scores single models). Kept in
    OUT/teacher_scores.json, so a report costs nothing once they are there."""
    record = os.path.join(args.out, "teacher_scores.json")
    scores = json.load(open(record)) if os.path.isfile(record) else {}
    candidates = [[spec] for spec in args.teacher] + ([args.teacher] if len(args.teacher) > 1 else [])
    for specs in candidates:
        for flip in (False, True):
            label = teacher_label(specs, flip)
            if label not in scores:
                scores[label] = score_teacher(args, specs, flip)
                with open(record, "w") as f:
                    json.dump(scores, f, indent=1)
    return scores


def teacher_label(specs: list[str], flip: bool) -> str:
    return " + ".join(spec.split("=")[0] for spec in specs) + (", flip-averaged" if flip else "")


def score_teacher(args, specs: list[str], flip: bool) -> float:
    import torch

    from distill.datasets import build_dataset
    from distill.evaluation import eval_views_loader
    from distill.models import FlipAveraged, create_teachers

    names, checkpoints = zip(*(spec.split("=", 1) for spec in specs))
    teacher = create_teachers(list(names), list(checkpoints), num_classes=10)
    teacher = FlipAveraged(teacher) if flip else teacher
    dataset = build_dataset("cifar10", args.data_root, train=False, skip_md5=args.skip_md5)
    correct = seen = 0
    with torch.no_grad():
        for batch in eval_views_loader(dataset, 32, 500, limit=200 if args.quick else None):
            correct += int((teacher(batch.view).argmax(1) == batch.label).sum())
            seen += len(batch)
    return round(100 * correct / seen, 2)


def comparisons(runs: dict, epochs: int) -> dict:
    """At one budget: the best scratch, kd's margin over it, and when kd first reached it."""
    done = {k.split("@")[0]: r for k, r in runs.items() if k.endswith(f"@{epochs}") and r and r["finished"]}
    scratch = {m: done[m]["test_top1"] for m in ("scratch", "scratch-mixed") if m in done}
    if not scratch or "kd" not in done:
        return {}
    best = max(scratch, key=scratch.get)
    return {"best_scratch": best, "best_scratch_top1": scratch[best],
            "kd_minus_best_scratch": round(done["kd"]["test_top1"] - scratch[best], 2),
            "kd_reaches_best_scratch_final": time_to_accuracy(done["kd"], scratch[best], done["kd"]["teacher_stage_s"]),
            "ablations_minus_kd": {m: round(r["test_top1"] - done["kd"]["test_top1"], 2)
                                   for m, r in done.items() if m in ABLATIONS},
            **({"compile_speedup": round(done["kd"]["curve"][-1][2] / done["kd-compiled"]["curve"][-1][2], 3)}
               if "kd-compiled" in done else {})}


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    if args.quick:
        quick_setup(args)  # bench_seeds': a random ResNet-20 teacher, 256 images, 1 stored epoch
        args.teacher.append(random_teacher(args.out, "cifar10_resnet56", seed=1))  # an ensemble, for kd-single
        args.epochs = args.ablation_epochs = args.store_epochs = 1
        args.only = ["scratch", "kd", "kd-T2", SINGLE] if args.only is None else args.only
    if not args.teacher:
        sys.exit("bench_tinyvit: --teacher NAME=CHECKPOINT is required (or --quick)")
    runs = planned_runs(args)
    if not args.report:
        todo, store_ready = selected(args, runs), threading.Event()
        single = [single_teacher(args)] if any(key.startswith(f"{SINGLE}@") for key in todo) else []
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ThreadPoolExecutor(args.jobs) as pool:
            pending = [pool.submit(train, args, key, runs[key], threads, store_ready) for key in todo]
            try:  # while the scratch run trains, if it is one of them
                if any("logits.store=null" not in runs[key] for key in todo):
                    make_store(args, args.store_epochs)
                if single:
                    make_store(args, args.store_epochs, single, "store_single")
            finally:
                store_ready.set()  # a failed store fails the runs that wait for it, not the scratch run
            for job in pending:
                job.result()
    results = report(args, runs, argv)
    print(markdown(results))
    return results


def report(args, runs, argv) -> dict:
    store_record = os.path.join(args.out, "store.json")
    store = json.load(open(store_record)) if os.path.isfile(store_record) else {}
    collected = carried_runs(args, store) | {key: r for key in runs if (r := collect(args, key, runs[key]))}
    scores = teacher_scores(args)
    results = {"command": "python benchmarks/bench_tinyvit.py " + shlex.join(sys.argv[1:] if argv is None else argv),
               "train_images": args.limit or 50000, "test_images": 200 if args.quick else 10000,
               "student": "tiny_vit_5m (32 px)", "config": os.path.relpath(CONFIG, REPO),
               "teacher": args.teacher, "flip_average": args.flip_average, "precision": args.precision,
               "teacher_top1": scores[teacher_label(args.teacher, args.flip_average)], "teacher_scores": scores,
               "store": store, "runs": {}, "by_budget": {}}
    single_record = os.path.join(args.out, "store_single.json")
    if os.path.isfile(single_record):  # kd-single's store
        results["store_single"] = json.load(open(single_record)) | {"teacher": single_teacher(args)}
    for key, r in collected.items():
        name, epochs = key.split("@")
        results["runs"][name if int(epochs) == args.epochs else key] = r
    for epochs in sorted({args.epochs, args.ablation_epochs}):
        results["by_budget"][str(epochs)] = comparisons(collected, epochs)
    if collected:
        plot(results, args.plot or os.path.join(args.out, "curves.png"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
    return results


def markdown(results) -> str:
    lines = ["| run | epochs | test top-1 | best | done |", "|---|---:|---:|---:|---|"]
    for name, r in results["runs"].items():
        lines.append(f"| {name} | {r['epochs']} | {r['test_top1']:.2f} | {r['best_top1']:.2f} | "
                     f"{'yes' if r['finished'] else 'epoch ' + str(r['epochs_done'])} |")
    return "\n".join(lines)


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["epochs"] for r in results["runs"].values()}, reverse=True)
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 3.8), dpi=100, squeeze=False)
    for ax, epochs in zip(axes[0], budgets):
        for name, r in results["runs"].items():
            if r["epochs"] == epochs:
                x, top1, _ = zip(*r["curve"])
                ax.plot(x, top1, marker="o", ms=2, label=f"{name.split('@')[0]} ({r['test_top1']:.1f}%)")
        if results["teacher_top1"] is not None:
            ax.axhline(results["teacher_top1"], color="gray", ls="--", label=f"teacher ({results['teacher_top1']:.1f}%)")
        ax.set(xlabel="epoch", ylabel="test top-1 (%)", title=f"TinyViT-5M, CIFAR-10, {epochs} epochs")
    save_curves(fig, axes[0], path)


if __name__ == "__main__":
    run_main(main)
