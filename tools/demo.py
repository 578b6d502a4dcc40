#!/usr/bin/env python
"""The whole pipeline in one command, each stage run as you would run it by hand.

  python tools/demo.py                                        # digits: bundled with scikit-learn, no download
  python tools/demo.py --dataset cifar10 --data-root DIR --skip-md5

1. tools/train_teacher.py   fine-tune (or train) the teacher on the dataset
2. tools/save_logits.py     store its top-k probabilities for E augmented epochs
3. deepspeed distill/train_student.py   a student from the store (kd) ...
4. deepspeed distill/train_student.py   ... and the same student from labels only (scratch)
5. tools/evaluate.py        teacher vs distilled student vs scratch student

Re-running resumes: finished stages are skipped (their outputs exist).
"""
import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Per dataset: teacher, its starting weights (None: train from scratch), recipe, student config.
DEFAULTS = {
    "digits": {"teacher": "cifar10_resnet20", "init": None, "aug": "crop", "config": "configs/smoke_digits.yaml"},
    "cifar10": {"teacher": "cifar10_resnet56", "aug": "cifar", "config": "configs/smoke_cifar10.yaml",
                "init": str(REPO.parent / "shared/teachers/cifar10/resnet56_akamaster-4bfd9763.th")},
}


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits", choices=sorted(DEFAULTS), help="dataset (digits needs no download)")
    p.add_argument("--data-root", help="dataset directory (not needed for digits)")
    p.add_argument("--skip-md5", action="store_true", help="accept a local re-created dataset copy")
    p.add_argument("--out", default="runs/demo", help="where every stage writes (default runs/demo)")
    p.add_argument("--teacher-epochs", type=int, default=8, help="teacher training epochs")
    p.add_argument("--logit-epochs", type=int, default=4, help="augmented epochs stored by save_logits")
    p.add_argument("--student-epochs", type=int, default=12, help="epochs of each student")
    p.add_argument("--limit", type=int, help="use the first N training samples (CIFAR-10: e.g. 5000)")
    p.add_argument("--launcher", default="deepspeed", choices=["deepspeed", "python"],
                   help="how to start the student runs (deepspeed: the real launcher)")
    p.add_argument("--fresh", action="store_true", help="delete --out first instead of resuming")
    args = p.parse_args(argv)
    d = DEFAULTS[args.dataset]
    if args.dataset != "digits" and not args.data_root:
        p.error(f"--data-root is required for {args.dataset}")
    out = REPO / args.out if not os.path.isabs(args.out) else Path(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
           "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "PYTHONPATH": str(REPO)}
    data = (["--data-root", args.data_root] if args.data_root else []) + (["--skip-md5"] if args.skip_md5 else [])
    limit = ["--limit", str(args.limit)] if args.limit else []
    py = sys.executable

    teacher_dir = out / "teacher"
    init = ["--checkpoint", d["init"]] if d["init"] and Path(d["init"]).is_file() else []
    stage("1/5 teacher", [py, "tools/train_teacher.py", "--teacher", d["teacher"], *init, "--dataset", args.dataset,
                          *data, *limit, "--epochs", str(args.teacher_epochs), "--aug", d["aug"], "--workers", "0",
                          "--out", str(teacher_dir)], env, teacher_dir / "final/model.pt")
    teacher_ckpt = teacher_dir / "final/model.pt"
    store = out / "store"
    stage("2/5 teacher logits", [py, "tools/save_logits.py", "--teacher", d["teacher"], "--checkpoint",
                                 str(teacher_ckpt), "--dataset", args.dataset, *data, *limit, "--aug", d["aug"],
                                 "--epochs", str(args.logit_epochs), "--topk", "5", "--workers", "1",
                                 "--out", str(store)], env)
    launcher = ["deepspeed", "--num_gpus", "1"] if args.launcher == "deepspeed" else [py]
    common = [f"train.epochs={args.student_epochs}", f"data.recipe={d['aug']}", "wandb.enabled=true"]
    common += [f"data.root={args.data_root}"] if args.data_root else []
    common += [f"data.skip_md5={str(args.skip_md5).lower()}", *([f"data.limit={args.limit}"] if args.limit else [])]
    for n, mode in ((3, "kd"), (4, "scratch")):
        run_dir = out / f"student_{mode}"
        stage(f"{n}/5 student, {mode}", [*launcher, "distill/train_student.py", "--config", d["config"], *common,
                                          f"logits.store={store}", f"loss.mode={mode}", f"output.dir={run_dir}"],
              env, run_dir / "final/model.pt")
    stage("5/5 evaluation", [py, "tools/evaluate.py", "--dataset", args.dataset, *data, "--out", str(out / "eval"),
                             "--compare", f"{d['teacher']}={teacher_ckpt}", str(out / "student_kd/final"),
                             str(out / "student_scratch/final")], env)
    print(f"\nThe table above is in {out / 'eval/metrics.md'}; confusion matrices beside it.")


if __name__ == "__main__":
    main()
