"""Whose run folder is it? `output.dir` is checked before the trainer writes a byte to it.

- missing or empty: a new run.
- a run of this trainer (it holds `run.json`, written when the run starts) whose training
  config equals this one: resumed (`output.resume: auto`) or started over (`none`).
- a run of another config: refused, naming the keys that differ, so that a resume never
  trains one config on another's checkpoint and the export never describes a run that did not
  happen. Keys that cannot change what is trained (RESULT_FREE_KEYS) may differ.
  `output.resume: continue` resumes it deliberately; `run.json` and the export's config.yaml
  then list each change under `continued`.
- anything else (a user's files, a colleague's folder from another tool): refused unless
  `output.overwrite: true`.

A run of this config that has finished (trained to its end, exported, metrics.json written
last) is not run again: `finished_run` finds it in milliseconds, so re-running a command costs
nothing (no evaluation, no W&B run, final/ untouched) unless a re-evaluation is asked for.
"""
from __future__ import annotations

import json
from pathlib import Path

from distill.config import resolved_config
from teacher_logits.errors import UserError
from teacher_logits.files import atomic_write
from teacher_logits.manifest import differences

RUN_FILE = "run.json"
FORMAT = "tinyvit-distill run"
# what a run may change on resume: where it logs and how often, how and where it builds the same views
RESULT_FREE_KEYS = ("wandb", "output", "train.eval_every", "train.log_every", "train.checkpoint_every",
                    "train.max_steps", "train.compile", "data.workers", "data.replay_device", "data.test_limit",
                    "deepspeed.log_level")


def training_config(config: dict) -> dict:
    """`config` without the keys that cannot change what is trained."""
    kept = {section: dict(values) for section, values in config.items() if section not in RESULT_FREE_KEYS}
    for key in RESULT_FREE_KEYS:
        section, _, name = key.partition(".")
        if name and section in kept:
            kept[section].pop(name, None)
    return kept


def recorded_config(record: dict) -> dict:
    """The config a run.json records, with the defaults of keys added to the schema since."""
    from distill.config import load_config
    from distill.config_tree import merged

    return merged(resolved_config(load_config(None)), record["config"])


def check_run_folder(cfg) -> list[str]:
    """Refuse an output.dir this run may not write to (see the module docstring); returns the
    changes a deliberate `output.resume: continue` makes (empty otherwise)."""
    out = Path(cfg.output.dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output.dir {out} is a file, not a directory: choose another output.dir")
    if not out.is_dir() or not any(out.iterdir()):
        return []
    run_file = out / RUN_FILE
    if not run_file.is_file():
        if cfg.output.overwrite:
            return []
        shown = sorted(p.name for p in out.iterdir())[:3]
        raise UserError(f"output.dir {out} holds files this trainer did not write ({', '.join(shown)}): choose "
                        "another output.dir, or set output.overwrite=true to write into it")
    try:
        earlier = json.loads(run_file.read_text())
        assert earlier["format"] == FORMAT and isinstance(earlier["config"], dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise UserError(f"{run_file} is not a run record of this trainer: choose another output.dir, or delete "
                        "it to write into this one") from None
    if cfg.output.resume == "none":
        return []  # started over, deliberately
    changed = differences(training_config(recorded_config(earlier)), training_config(resolved_config(cfg)))
    if changed and cfg.output.resume != "continue":
        raise UserError(f"output.dir {out} holds a run of another config ({'; '.join(changed[:4])}): resuming it "
                        "would train this config on its checkpoint. Use another output.dir, output.resume=none to "
                        "start over, or output.resume=continue to go on with the new values")
    return changed


def finished_run(cfg) -> dict | None:
    """The metrics.json of the run in output.dir if it is a finished run of this training
    config (see the module docstring); None otherwise, and under `output.resume: none`."""
    out = Path(cfg.output.dir)
    if cfg.output.resume == "none" or not (out / "final" / "model.pt").is_file():
        return None
    try:
        earlier = json.loads((out / RUN_FILE).read_text())
        metrics = json.loads((out / "metrics.json").read_text())
        same = earlier["format"] == FORMAT and not differences(training_config(recorded_config(earlier)),
                                                               training_config(resolved_config(cfg)))
        done = metrics["epochs"] >= cfg.train.epochs or bool(cfg.train.max_steps and
                                                             metrics["steps"] >= cfg.train.max_steps)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not a finished run of this trainer: check_run_folder says what it is
    return metrics if same and done else None


def record_run(cfg, changed: list[str]) -> dict:
    """Write run.json (rank 0, once the folder is known to be ours): the config being trained,
    and every change a `continue` made. Returns what to add to the export's config.yaml."""
    out = Path(cfg.output.dir)
    continued = []
    if changed and (out / RUN_FILE).is_file():
        continued = json.loads((out / RUN_FILE).read_text()).get("continued", []) + [changed]
    record = {"format": FORMAT, "config": resolved_config(cfg), "continued": continued}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / RUN_FILE, json.dumps(record, indent=1).encode() + b"\n")
    return {"continued": continued} if continued else {}
