#!/usr/bin/env python
"""Benchmark: the slow students' CPU fixes, each against the same student without it.

  cifar_vit   as shipped (distill/models/layers.py's CPU dropout)  vs  torch.nn.Dropout
  cifar_cnn   channels-last (as the trainer makes it at fp32)       vs  contiguous

A bare fp32 loop (AdamW, cross-entropy, one fixed random batch, 32 px): each measurement is
a fresh process with every core's threads, timed over --steps steps after 3; the variants
alternate within each round (in reverse order every other round), and a ratio pairs the two
runs of one round. Median (min-max) over the rounds.

  python benchmarks/bench_student_fixes.py --repeats 3 --json docs/results/bench_student_fixes.json
  python benchmarks/bench_student_fixes.py --quick     # 2 steps, batch 8: the test suite's smoke run
"""
import argparse
import subprocess
import sys

from benchmarks.bench_report import command_line, describe, spread, write_json
from distill.cli import HelpFormatter, run_main

WARMUP_STEPS = 3
PAIRS = {"cifar_vit": ("as_shipped", "nn_dropout"), "cifar_cnn": ("channels_last", "contiguous")}


def bare_loop(model_name: str, variant: str, steps: int, batch: int) -> float:
    """Images/s of `steps` training steps of `model_name` made as `variant` says."""
    import time

    import timm
    import torch

    import distill.models  # noqa: F401  (registers the students)
    from distill.models.layers import Dropout

    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10)
    if variant == "nn_dropout":  # undo fast_dropout: torch's own layer, same p
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if type(child) is Dropout:
                    setattr(parent, name, torch.nn.Dropout(child.p))
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    views, labels = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    stamps = []
    for _ in range(WARMUP_STEPS + steps):
        loss = torch.nn.functional.cross_entropy(model(views), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    return steps * batch / (stamps[-1] - stamps[WARMUP_STEPS - 1])


def measured(model_name: str, variant: str, steps: int, batch: int) -> float:
    """bare_loop in a fresh process."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_student_fixes", "--run", model_name, variant,
                           "--steps", str(steps), "--batch", str(batch)], capture_output=True, text=True, check=True)
    return float(proc.stdout.split()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--batch", type=int, default=128, help="batch size")
    p.add_argument("--repeats", type=int, default=3, help="rounds of every variant")
    p.add_argument("--quick", action="store_true", help="2 steps, batch 8, 1 round")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--run", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)  # one measurement
    args = p.parse_args(argv)
    if args.run:
        print(bare_loop(*args.run, args.steps, args.batch))
        return None
    if args.quick:
        args.steps, args.batch, args.repeats = 2, 8, 1
    order = [(m, v) for m, variants in PAIRS.items() for v in variants]
    runs = {f"{m}:{v}": [] for m, v in order}
    for r in range(args.repeats):
        for m, v in order if r % 2 == 0 else order[::-1]:
            runs[f"{m}:{v}"].append(measured(m, v, args.steps, args.batch))
            print(f"{m:>10} {v:>14}: {runs[f'{m}:{v}'][-1]:7.1f} img/s", flush=True)
    result = {"command": command_line("bench_student_fixes.py", argv), "steps": args.steps, "batch": args.batch,
              "images_per_s": {k: spread(v) for k, v in runs.items()}}
    for m, (fixed, plain) in PAIRS.items():
        result[f"{m}_speedup"] = spread([a / b for a, b in zip(runs[f"{m}:{fixed}"], runs[f"{m}:{plain}"])])
        print(f"{m} {fixed} / {plain}: {describe(result[f'{m}_speedup'])}", flush=True)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    run_main(main)
