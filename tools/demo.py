#!/usr/bin/env python
"""The whole pipeline in one command, each stage run as you would run it by hand.

  python tools/demo.py                                        # digits: bundled with scikit-learn, no download
  python tools/demo.py --dataset cifar10 --data-root DIR --skip-md5 --labelled 5000

The regime it shows is TinyViT's: the teacher labels what it is shown. You have
--labelled N labelled training images and the rest of the training split without labels.
1. tools/train_teacher.py   train --teachers K teachers (seeds 0..K-1) on the N labelled images
2. tools/save_logits.py     store the ensemble's top-k probabilities (the mean of the K
                            teachers') on *every* training image, labelled or not, for E
                            augmented epochs
3. deepspeed distill/train_student.py   a student from the store alone (kd, no labels) ...
4. deepspeed distill/train_student.py   ... and the same student from the N labels (scratch),
                            its own best recipe, the same number of optimizer steps
5. tools/evaluate.py        teachers vs distilled student vs scratch student

The teachers (1) and the two students (3, 4) run side by side, a core each: two small
single-threaded runs use 2 cores better than one after the other. Re-running resumes:
finished stages are skipped (their outputs exist). About 5 1/2 minutes on 2 idle cores.
"""
import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Per dataset: teacher, its starting weights (None: train from scratch), recipe, student config,
# labelled images, teacher steps and batch, scratch-student overrides (its best recipe, see
# docs/benchmarks.md "The demo's regime").
DEFAULTS = {
    "digits": {"teacher": "cifar10_resnet20", "init": None, "aug": "crop", "config": "configs/smoke_digits.yaml",
               "labelled": 50, "teachers": 2, "train_size": 1347, "teacher_steps": 600, "teacher_batch": 50,
               "teacher_lr": 3e-3, "scratch": ["loss.label_smoothing=0.1"]},
    "cifar10": {"teacher": "cifar10_resnet56", "aug": "cifar", "config": "configs/smoke_cifar10.yaml",
                "init": str(REPO.parent / "shared/teachers/cifar10/resnet56_akamaster-4bfd9763.th"),
                "labelled": 5000, "teachers": 1, "train_size": 50000, "teacher_steps": 400, "teacher_batch": 128,
                "teacher_lr": 5e-4, "scratch": ["loss.label_smoothing=0.1"]},
}
STUDENT_BATCH = 64  # configs/smoke_*.yaml


def stage(title: str, cmd: list[str], env: dict, done: Path | None = None) -> None:
    """Run one stage; skip it when `done` exists (save_logits resumes by itself)."""
    if done is not None and done.exists():
        print(f"== {title}: done already ({done})", flush=True)
        return
    print(f"== {title}\n   $ {' '.join(cmd)}", flush=True)
    start = time.time()
    result = subprocess.run(cmd, cwd=REPO, env=env)
    if result.returncode != 0:
        sys.exit(f"demo: stage '{title}' failed (exit {result.returncode}); fix the error above and re-run")
    print(f"   ({time.time() - start:.0f} s)", flush=True)


def parallel_stages(title: str, jobs: dict[str, tuple[list[str], Path]], env: dict, logs: Path) -> None:
    """Run independent stages at once, the cores shared between them (small models use
    two single-threaded processes better than one two-threaded one); each one's output goes
    to logs/NAME.log, its last line is printed. Stages whose `done` file exists are skipped."""
    todo = {name: cmd for name, (cmd, done) in jobs.items() if not done.exists()}
    for name in sorted(set(jobs) - set(todo)):
        print(f"== {title}, {name}: done already ({jobs[name][1]})", flush=True)
    if not todo:
        return
    logs.mkdir(parents=True, exist_ok=True)
    threads = str(max(1, int(env["OMP_NUM_THREADS"]) // len(todo)))
    start, running = time.time(), {}
    for name, cmd in todo.items():
        print(f"== {title}, {name} (log: {logs / name}.log)\n   $ {' '.join(cmd)}", flush=True)
        with open(logs / f"{name}.log", "w") as log:  # the child keeps its own copy of the handle
            running[name] = subprocess.Popen(cmd, cwd=REPO, env={**env, "OMP_NUM_THREADS": threads},
                                             stdout=log, stderr=subprocess.STDOUT)
    for name, proc in running.items():
        if proc.wait() != 0:
            sys.exit(f"demo: stage '{title}, {name}' failed (exit {proc.returncode}); see {logs / name}.log, "
                     "fix the error and re-run")
        lines = (logs / f"{name}.log").read_text().replace("\r", "\n").splitlines()
        print(f"   {name}: {next((ln for ln in reversed(lines) if ln.startswith('final:')), lines[-1])}", flush=True)
    print(f"   ({time.time() - start:.0f} s)", flush=True)


def parse_args(argv=None):
    from distill.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", default="digits", choices=sorted(DEFAULTS), help="dataset (digits needs no download)")
    p.add_argument("--data-root", help="dataset directory (not needed for digits)")
    p.add_argument("--skip-md5", action="store_true", help="accept a local re-created dataset copy")
    p.add_argument("--out", default="runs/demo", help="where every stage writes (default runs/demo)")
    p.add_argument("--labelled", type=int,
                   help="labelled training images (the first N; default 50 for digits, 5000 for cifar10): the "
                        "teachers and the scratch student learn from these, the store covers every training image")
    p.add_argument("--teachers", type=int, help="teachers in the ensemble (default 2 for digits, 1 for cifar10)")
    p.add_argument("--teacher-steps", type=int, help="teacher optimizer steps (default 600 digits, 400 cifar10)")
    p.add_argument("--logit-epochs", type=int, default=16, help="augmented epochs stored by save_logits")
    p.add_argument("--student-steps", type=int, default=1050,
                   help="optimizer steps of each student, rounded up to whole epochs (equal budget)")
    p.add_argument("--launcher", default="deepspeed", choices=["deepspeed", "python"],
                   help="how to start the student runs (deepspeed: the real launcher)")
    p.add_argument("--fresh", action="store_true", help="delete --out first instead of resuming")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    d = DEFAULTS[args.dataset]
    if args.dataset != "digits" and not args.data_root:
        sys.exit(f"demo: --data-root is required for {args.dataset}")
    labelled = args.labelled or d["labelled"]
    if not 0 < labelled < d["train_size"]:
        sys.exit(f"demo: --labelled {labelled} must lie between 1 and {d['train_size'] - 1} (the training split)")
    out = REPO / args.out if not os.path.isabs(args.out) else Path(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    launcher_vars = ("MASTER_PORT", "MASTER_ADDR", "RANK", "LOCAL_RANK", "WORLD_SIZE")  # each stage picks its own
    env = {**{k: v for k, v in os.environ.items() if k not in launcher_vars}, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
           "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "PYTHONPATH": str(REPO)}
    data = (["--data-root", args.data_root] if args.data_root else []) + (["--skip-md5"] if args.skip_md5 else [])
    py = sys.executable

    init = ["--checkpoint", d["init"]] if d["init"] and Path(d["init"]).is_file() else []
    teacher_steps = args.teacher_steps or d["teacher_steps"]
    teacher_epochs = math.ceil(teacher_steps / math.ceil(labelled / d["teacher_batch"]))
    teachers = [out / f"teacher{k}/final" for k in range(args.teachers or d["teachers"])]
    parallel_stages("1/5 teachers, on the labelled images", {
        final.parent.name: ([py, "tools/train_teacher.py", "--teacher", d["teacher"], *init, "--dataset", args.dataset,
                             *data, "--limit", str(labelled), "--epochs", str(teacher_epochs), "--batch-size",
                             str(d["teacher_batch"]), "--lr", str(d["teacher_lr"]), "--aug", d["aug"], "--workers",
                             "0", "--out", str(final.parent), "train.eval_every=1000", "train.checkpoint_every=0",
                             f"train.seed={k}"], final / "model.pt")
        for k, final in enumerate(teachers)}, env, out / "logs")
    store = out / "store"
    pairs = [a for final in teachers for a in ("--teacher", d["teacher"], "--checkpoint", str(final / "model.pt"))]
    stage("2/5 teacher logits, on every training image", [
        py, "tools/save_logits.py", *pairs, "--dataset", args.dataset, *data, "--aug", d["aug"],
        "--epochs", str(args.logit_epochs), "--topk", "5", "--workers", "0", "--out", str(store)], env)
    common = [f"data.recipe={d['aug']}", "wandb.enabled=true", "train.eval_every=1000",
              f"data.skip_md5={str(args.skip_md5).lower()}", *([f"data.root={args.data_root}"] if args.data_root else [])]
    students = {  # mode -> (images per epoch, its overrides)
        "kd": (d["train_size"], [f"logits.store={store}", "loss.mode=kd", "loss.alpha=0"]),
        "scratch": (labelled, [f"data.limit={labelled}", "loss.mode=scratch", *d["scratch"]]),
    }
    jobs = {}
    launchers = student_launchers(args.launcher, py, len(students))
    for launcher, (mode, (images, overrides)) in zip(launchers, students.items()):
        run_dir = out / f"student_{mode}"
        epochs = math.ceil(args.student_steps / math.ceil(images / STUDENT_BATCH))
        jobs[f"student_{mode}"] = ([*launcher, "distill/train_student.py", "--config", d["config"], *common,
                                    *overrides, f"train.epochs={epochs}", f"output.dir={run_dir}"],
                                   run_dir / "final/model.pt")
    parallel_stages("3-4/5 students: kd from the store, scratch from the labels", jobs, env, out / "logs")
    stage("5/5 evaluation", [py, "tools/evaluate.py", "--dataset", args.dataset, *data, "--out", str(out / "eval"),
                             "--compare", *map(str, teachers), str(out / "student_kd/final"),
                             str(out / "student_scratch/final")], env)
    summarise(out, labelled, len(teachers), d["train_size"], args.student_steps)


def student_launchers(kind: str, py: str, count: int) -> list[list[str]]:
    """How each of `count` side-by-side student runs starts: the deepspeed launcher, each on a
    free rendezvous port of its own (fixed ones, 29500 and 29501, broke the demo whenever another
    run on the machine held them), or plain python, which picks a free port itself."""
    if kind == "python":
        return [[py]] * count
    held = [socket.socket() for _ in range(count)]  # all bound at once: distinct ports
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()
    return [["deepspeed", "--num_gpus", "1", "--master_port", str(port)] for port in ports]


def summarise(out: Path, labelled: int, teachers: int, train_size: int, steps: int) -> None:
    """The closing lines: where the table is, the gap, and what the table means."""
    print(f"\nThe table above is in {out / 'eval/metrics.md'}; confusion matrices beside it.\n")
    top1 = {name: m["top1"] for name, m in json.loads((out / "eval/metrics.json").read_text())["models"].items()}
    print(f"student_kd {top1['student_kd']:.2f} % vs student_scratch {top1['student_scratch']:.2f} % top-1: "
          f"{top1['student_kd'] - top1['student_scratch']:+.2f} points from distillation.")
    print(f"What it shows: {labelled} of the {train_size} training images have labels. "
          f"{teachers} teacher(s) learned from those {labelled}; their ensemble then labelled all "
          f"{train_size} images once, into the store. student_kd learned from the store alone (no label), "
          f"student_scratch from the {labelled} labels with its best recipe; both took about "
          f"{steps} optimizer steps. The gap between them is what the teachers' labels on "
          "unlabelled images are worth: TinyViT's regime, where the teacher labels what it is shown. On the same "
          "labelled images alone the two students come out even (docs/benchmarks.md, 'The demo's regime').")

if __name__ == "__main__":
    main()
