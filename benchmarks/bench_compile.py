"""train.compile against eager: two run folders of one config, trained side by side, compared.

    python benchmarks/bench_compile.py --eager runs/kd --compiled runs/kd_compiled --json OUT.json

Both runs must have the same training config but for `train.compile` (and the keys that cannot
change what is trained: distill/run_folder.py), and should have run at the same time on equal
shares of the machine (one core each). Over the epochs both evaluated, it reports:

- `speedup`: the eager run's training time over the compiled one's at the last such epoch, start-up
  included (a run's clock, `evals.jsonl` `wall_s`, starts before its first step, which is where
  torch.compile compiles; evaluations are timed too, as a user waits for them);
- `steady_steps_per_s`: each run's optimizer steps/s over their common steps after the first
  epoch (from the median step time, so evaluations between steps do not count): what compiling
  buys once it has paid for itself;
- the learning curves side by side: mean training loss per epoch and test top-1 at each
  evaluation, and the largest difference between the two loss curves.
"""
import argparse
import json
import os
import statistics

from benchmarks.bench_report import command_line, write_json
from distill.cli import HelpFormatter, run_main
from distill.run_folder import recorded_config, training_config
from teacher_logits.errors import UserError
from teacher_logits.manifest import differences


def read_run(folder: str) -> dict:
    """A run folder's config, per-step log and evaluations."""
    paths = {name: os.path.join(folder, name) for name in ("run.json", "train_log.jsonl", "evals.jsonl")}
    missing = [name for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise UserError(f"{folder}: no {', '.join(missing)}: give the output.dir of a run that has evaluated once")
    with open(paths["run.json"]) as f:
        config = training_config(recorded_config(json.load(f)))
    return {"config": config, "steps": json_lines(paths["train_log.jsonl"]), "evals": json_lines(paths["evals.jsonl"])}


def json_lines(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def steady_rate(steps: list[dict], first: int, last: int) -> float:
    """Steps/s from the median time between consecutive logged steps numbered first..last."""
    times = {s["step"]: s["time"] for s in steps}
    gaps = [times[n] - times[n - 1] for n in range(first + 1, last + 1) if n in times and n - 1 in times]
    if not gaps:
        raise UserError(f"no two consecutive steps logged between steps {first} and {last}: set train.log_every=1")
    return 1 / statistics.median(gaps)


def epoch_losses(steps: list[dict]) -> dict[int, float]:
    by_epoch: dict[int, list[float]] = {}
    for s in steps:
        by_epoch.setdefault(s["epoch"] + 1, []).append(s["loss"])
    return {epoch: statistics.fmean(losses) for epoch, losses in by_epoch.items()}


def compare(eager: dict, compiled: dict) -> dict:
    config_diff = differences(eager["config"], compiled["config"])  # train.compile is not in a training config
    if config_diff:
        raise UserError(f"the two runs differ in more than train.compile: {'; '.join(config_diff)}")
    evals = {e["epoch"]: e for e in eager["evals"]}
    common = [c["epoch"] for c in compiled["evals"] if c["epoch"] in evals]
    if not common:
        raise UserError("the two runs have no evaluated epoch in common yet: compare them later")
    last = common[-1]
    at_last = {"eager": evals[last]["wall_s"], "compiled": next(c for c in compiled["evals"] if c["epoch"] == last)["wall_s"]}
    steps_per_epoch = evals[common[0]]["step"] // common[0]
    last_step = min(eager["steps"][-1]["step"], compiled["steps"][-1]["step"])
    losses = {name: epoch_losses(run["steps"]) for name, run in (("eager", eager), ("compiled", compiled))}
    loss_epochs = [e for e in sorted(losses["eager"]) if e in losses["compiled"] and e <= last]
    return {
        "epochs": last, "wall_s": at_last, "speedup": round(at_last["eager"] / at_last["compiled"], 3),
        "steady_steps_per_s": {name: round(steady_rate(run["steps"], min(steps_per_epoch, last_step - 1), last_step), 3)
                               for name, run in (("eager", eager), ("compiled", compiled))},
        "loss_curves": {e: [round(losses["eager"][e], 4), round(losses["compiled"][e], 4)] for e in loss_epochs},
        "largest_loss_difference": round(max(abs(losses["eager"][e] - losses["compiled"][e]) for e in loss_epochs), 4),
        "top1": {e: [evals[e]["top1"], next(c for c in compiled["evals"] if c["epoch"] == e)["top1"]] for e in common},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--eager", required=True, help="output.dir of the eager run")
    p.add_argument("--compiled", required=True, help="output.dir of the same config with train.compile=true")
    p.add_argument("--json", help="write the comparison here too")
    args = p.parse_args(argv)
    result = {"command": command_line("bench_compile.py", argv),
              **compare(read_run(args.eager), read_run(args.compiled))}
    print(json.dumps(result, indent=1))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    run_main(main)
