#!/usr/bin/env python
"""Benchmark: what a student step costs in kd-from-store, scratch and online modes,
and how the student stage scales from 1 to 2 DeepSpeed ranks.

Every mode runs the real trainer (distill/train_student.py) on the same store's
views, student, batch size and steps; only the target differs: stored soft
targets (kd), hard labels (scratch), or a teacher run in the loop (online, once
per teacher). Runs alternate mode by mode; images/s = steps x batch / training
wall time (from train_log.jsonl timestamps, after WARMUP_STEPS steps).

  python benchmarks/bench_student_step.py --store STORE --data-root DATA --skip-md5 --steps 40 \\
      --teacher cifar10_resnet20=../shared/teachers/cifar10/resnet20_akamaster-12fca82f.th \\
      --teacher cifar10_densenet_bc100=../shared/teachers/cifar10/densenet_bc100_k12_odin_cifar10_statedict.pt \\
      --repeats 3 --json docs/results/bench_student_step.json
  python benchmarks/bench_student_step.py --quick     # digits, tiny student, random teacher
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchmarks.bench_report import command_line, describe, spread, write_json
from distill.cli import HelpFormatter, add_data_args, run_main
from distill.distributed import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WARMUP_STEPS = 3


def run_env(ranks: int = 1, accelerator: str = "cpu") -> dict:
    """The trainer's environment: DeepSpeed on `accelerator`; on the CPU, the cores shared by the ranks."""
    env = {**os.environ, "PYTHONPATH": REPO, "DS_ACCELERATOR": accelerator, "WANDB_MODE": "disabled"}
    return {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))} if accelerator == "cpu" else env


def bare_run(args) -> float:
    """bare_loop(args) in a fresh process, as the trainer runs are."""
    cmd = [sys.executable, "-m", "benchmarks.bench_student_step", "--bare-loop-run", "--store", args.store,
           "--config", args.config, "--steps", str(args.steps), "--batch-size", str(args.batch_size), *args.overrides]
    proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"bare loop failed: {proc.stderr[-800:]}")
    return float(proc.stdout.split()[-1])


def train(args, mode: str, out: str, ranks: int = 1, teacher: str | None = None, replay: str | None = None) -> float:
    """Images/s of one training run of `args.steps` optimizer steps."""
    overrides = [f"loss.mode={mode}", f"logits.store={args.store}", f"output.dir={out}", "output.resume=none",
                 f"train.max_steps={args.steps}", "train.epochs=1000", "train.eval_every=1000",
                 "train.checkpoint_every=0", "wandb.enabled=false", f"data.test_limit={args.batch_size}",
                 f"train.batch_size={args.batch_size}", f"data.workers={args.workers}", *args.overrides]
    overrides += [f"data.replay_device={replay}"] if replay else []
    overrides += [f"data.root={args.data_root}"] if args.data_root else []
    overrides += ["data.skip_md5=true"] if args.skip_md5 else []
    if teacher:
        name, _, ckpt = teacher.partition("=")
        overrides += [f"teacher.name={name}"] + ([f"teacher.checkpoint={ckpt}"] if ckpt else [])
    script = os.path.join(REPO, "distill/train_student.py")
    cmd = ([sys.executable, script] if ranks == 1 else
           ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port()), script])
    proc = subprocess.run([*cmd, "--config", args.config, *overrides], env=run_env(ranks, args.accelerator),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"train_student ({mode}) failed: {proc.stderr[-800:]}")
    log = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]
    timed = log[WARMUP_STEPS - 1 :]  # steady state: after start-up, first-touch and worker spin-up
    return (len(timed) - 1) * args.batch_size * ranks / (timed[-1]["time"] - timed[0]["time"])


def bare_loop(args) -> float:
    """Images/s of a bare fp32 loop of the config's student at the same batch: the module the
    trainer builds (channels-last, as the trainer makes it at fp32), one fixed random batch,
    cross-entropy, torch's AdamW; no data, no DeepSpeed. The trainer is measured against it.
    Run in a process of its own with the trainer runs' environment (`--bare-loop-run`)."""
    import time

    import torch

    from distill.config import load_config
    from distill.student_stage import build_model
    from teacher_logits.manifest import load_manifest

    cfg = load_config(args.config, [f"train.batch_size={args.batch_size}", *args.overrides])
    torch.manual_seed(0)
    classes = load_manifest(args.store).settings.num_classes
    model = build_model(cfg, classes)[0].to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    size = cfg.data.img_size or 32
    views, labels = torch.rand(args.batch_size, 3, size, size), torch.randint(0, classes, (args.batch_size,))
    stamps = []
    for _ in range(args.steps):
        loss = torch.nn.functional.cross_entropy(model(views), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    timed = stamps[WARMUP_STEPS - 1:]  # the trainer's own warm-up rule
    return (len(timed) - 1) * args.batch_size / (timed[-1] - timed[0])


def ratio_pairs(results: dict) -> dict:
    """name -> (numerator run, denominator run) of every ratio the runs allow. Each round's
    ratio pairs runs made back to back; the headline is their median over the rounds."""
    ratios = {"kd_over_scratch": ("kd", "scratch")}
    ratios.update({f"kd_speedup_over_{key}": ("kd", key) for key in results if key.startswith("online")})
    ratios.update({"kd_over_bare_loop": ("kd", "bare")} if "bare" in results else {})
    for key in (k for k in results if k.startswith("kd:replay_device=")):
        device = key.partition("=")[2]
        ratios[f"kd_replay_{device}_over_kd"] = (key, "kd")
        ratios.update({f"kd_replay_{device}_over_bare_loop": (key, "bare")} if "bare" in results else {})
    return ratios


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--store", help="logit store the kd runs read (all modes train on its views)")
    p.add_argument("--config", default=os.path.join(REPO, "configs/smoke_cifar10.yaml"), help="student config")
    add_data_args(p, dataset=False)  # the dataset is the config's (and the store's)
    # not add_teacher_args: each --teacher NAME=CHECKPOINT is a separate online run, not an ensemble
    p.add_argument("--teacher", action="append", default=[], help="online teacher NAME=CHECKPOINT (repeat)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=64, help="micro-batch per rank")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds of all modes")
    p.add_argument("--no-ranks", action="store_true", help="skip the 1-vs-2-rank scaling run")
    p.add_argument("--kd-replay", action="append", default=[], choices=["cpu", "cuda", "auto"],
                   help="also run kd with this data.replay_device in each round (repeat for several; cuda on a GPU)")
    p.add_argument("--bare", action="store_true",
                   help="also time a bare fp32 loop of the same student and batch in each round (kd_over_bare_loop)")
    p.add_argument("--quick", action="store_true", help="digits, tiny student, random ResNet-20, 10 steps")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--bare-loop-run", action="store_true", help=argparse.SUPPRESS)  # the bare loop's own process
    p.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    p.set_defaults(accelerator="cpu")  # benchmarks/bench_gpu.py runs the trainer on cuda
    args = p.parse_args(argv)
    if args.bare_loop_run:
        print(bare_loop(args))
        return None
    tmp = tempfile.mkdtemp(prefix="bench_student_")
    if args.quick:
        args.config, args.steps, args.batch_size, args.workers = os.path.join(REPO, "configs/smoke_digits.yaml"), 10, 32, 0
        args.store = make_quick_store(tmp)
        args.teacher = [f"cifar10_resnet20={os.path.join(tmp, 'teacher.pt')}"]
    if not args.store:
        p.error("--store is required (or --quick)")
    runs = {"kd": ("kd", None, None), "scratch": ("scratch", None, None)}  # key: (mode, teacher, replay device)
    runs.update({f"online:{t.partition('=')[0]}": ("online", t, None) for t in args.teacher})
    runs.update({f"kd:replay_device={d}": ("kd", None, d) for d in args.kd_replay})
    runs.update({"bare": ("bare", None, None)} if args.bare else {})
    results = {key: [] for key in runs}
    for r in range(args.repeats):
        for key, (mode, teacher, replay) in runs.items():
            out = os.path.join(tmp, f"{key}-{r}".replace(":", "_").replace("=", "_"))
            results[key].append(bare_run(args) if mode == "bare" else train(args, mode, out, 1, teacher, replay))
            print(f"{key:>32}: {results[key][-1]:8.1f} img/s", flush=True)
    summary = {"command": command_line("bench_student_step.py", argv), "repeats": args.repeats, "steps": args.steps,
               **{k: float(sum(v) / len(v)) for k, v in results.items()}}
    for name, (a, b) in ratio_pairs(results).items():
        summary[f"{name}_spread"] = spread([x / y for x, y in zip(results[a], results[b])])
        summary[name] = summary[f"{name}_spread"]["median"]
        print(f"{name:>48}: {describe(summary[f'{name}_spread'])}", flush=True)
    if not args.no_ranks:
        summary["kd_2ranks"] = train(args, "kd", os.path.join(tmp, "kd_2ranks"), ranks=2)
        summary["kd_1rank"] = summary["kd"]
        summary["scaling_2_over_1"] = summary["kd_2ranks"] / summary["kd"]
    print(json.dumps(summary, indent=1))
    write_json(args.json, summary)
    return summary


def make_quick_store(tmp: str) -> str:
    """A small digits store from a fixed random ResNet-20 (speed does not depend on its weights)."""
    import torch

    from distill.models import create_teacher

    torch.manual_seed(0)
    ckpt = os.path.join(tmp, "teacher.pt")
    torch.save(create_teacher("cifar10_resnet20").model.state_dict(), ckpt)
    store = os.path.join(tmp, "store")
    subprocess.run([sys.executable, os.path.join(REPO, "tools/save_logits.py"), "--teacher", "cifar10_resnet20",
                    "--checkpoint", ckpt, "--dataset", "digits", "--aug", "crop", "--limit", "512", "--workers", "0",
                    "--topk", "5", "--shard-records", "128", "--out", store], check=True, capture_output=True, env={**os.environ, "PYTHONPATH": REPO})
    return store


if __name__ == "__main__":
    run_main(main)
