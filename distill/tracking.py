"""Experiment tracking with Weights & Biases, on rank 0 only.

The mode is decided once, in this order: config `wandb.mode`; else $WANDB_MODE; else
`offline` when no API key is available ($WANDB_API_KEY or a netrc entry), since
wandb.init then raises; else `online`. Offline runs land in OUTPUT_DIR/wandb and can
be uploaded later with `wandb sync`. The run id is kept in OUTPUT_DIR/wandb_run_id,
so a resumed training run continues the same W&B run.

`start_tracking` returns a `NoTracker` (same methods, does nothing) on other ranks
and when `wandb.enabled` is false, so the training loop never asks.

A killed process leaves W&B's history with holes and overlaps: wandb-core writes its
`.wandb` file only every 15 s (`x_transaction_log_flush_interval`) and loses the rest on a
SIGKILL (it sees its parent die at once and shuts down without writing), while the
resumed process re-trains the steps after the last checkpoint, some of
which may already be in that file. `WandbTracker.catch_up` mends both on resume: it reads
the steps the earlier processes' `.wandb` files hold, re-logs the lost ones from the
trainer's durable train_log.jsonl / evals.jsonl, and drops the re-trained steps W&B has.
Each file is an append-only log, so what it holds is a prefix of what was logged and the
history stays in step order across files, as W&B requires.
"""
from __future__ import annotations

import json
import netrc
import os
import struct
import uuid
from pathlib import Path
from urllib.parse import urlparse

from teacher_logits.errors import UserError

MODES = ("online", "offline", "disabled")


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(configured: str | None) -> str:
    mode, source = configured, "wandb.mode"
    if mode is None and os.environ.get("WANDB_MODE"):
        mode, source = os.environ["WANDB_MODE"], "$WANDB_MODE"
    if mode is None:
        return "online" if has_api_key() else "offline"
    if mode == "dryrun":  # wandb's old name for offline
        mode = "offline"
    if mode not in MODES:
        raise UserError(f"config key wandb.mode ({source}): expected one of {', '.join(MODES)}, got {mode!r}")
    return mode


def read_wandb_records(path) -> list:
    """The complete records of a `.wandb` file: a LevelDB-style log of 32 KiB blocks, each
    chunk a 7-byte header (checksum, length, type: 1 full, 2 first, 3 middle, 4 last) and a
    piece of a protobuf Record. wandb 0.31 ships no reader. A file whose writer was killed
    can end inside a record; that torn tail is not a record and is left out."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, records = Path(path).read_bytes(), 32768, 7, b"", []  # 7: file header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 or pos + 7 + length > len(data):  # zero padding, or a chunk cut short
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history_steps(wandb_dir, run_id: str) -> set[int]:
    """The `_step` of every history row that the `.wandb` files of run `run_id` hold."""
    steps = set()
    for path in Path(wandb_dir).glob(f"*run-*-{run_id}/run-{run_id}.wandb"):
        for record in read_wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                steps.add(record.history.step.num)
    return steps


def last_rows_by_step(path: Path) -> dict[int, dict]:
    """{step: row} of a JSON-lines log; a step written again by a resumed process keeps its last row."""
    if not path.is_file():
        return {}
    return {row["step"]: row for row in map(json.loads, path.read_text().splitlines())}


class NoTracker:
    def log(self, metrics: dict, step: int) -> None:
        pass

    def catch_up(self, out_dir, resumed_at: int, log_every: int) -> None:
        pass

    def summary(self, metrics: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker(NoTracker):
    def __init__(self, settings, config: dict, out_dir: Path):
        import wandb

        mode = resolve_mode(settings.mode)
        out_dir.mkdir(parents=True, exist_ok=True)
        id_file = out_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=settings.project, entity=settings.entity, name=settings.name, mode=mode,
                              config=config, dir=str(out_dir), id=run_id, resume="allow")
        self.mode, self.run_id = mode, run_id
        self.held_up_to = -1  # the last step earlier processes got into W&B (none: -1); later logs skip up to it

    def log(self, metrics: dict, step: int) -> None:
        if step > self.held_up_to:
            self.run.log(metrics, step=step)

    def catch_up(self, out_dir, resumed_at: int, log_every: int) -> None:
        """On resume from the checkpoint at step `resumed_at`: log again, from the trainer's
        logs, the rows up to that step that earlier processes logged but W&B lost, and skip
        from now on the steps W&B already has (the re-trained steps give the same values)."""
        out_dir = Path(out_dir)
        # this process's own run directory is in the glob too; it holds no history yet
        self.held_up_to = max(history_steps(out_dir / "wandb", self.run_id), default=0)
        train = last_rows_by_step(out_dir / "train_log.jsonl")
        evals = last_rows_by_step(out_dir / "evals.jsonl")
        for step in sorted(set(train) | set(evals)):
            if not self.held_up_to < step <= resumed_at:
                continue
            row = {}
            if step in train and step % log_every == 0:  # the trainer logs every log_every-th step
                row.update({"train/loss": train[step]["loss"], "train/lr": train[step]["lr"]})
            if step in evals:  # evals.jsonl rows: epoch, step, wall_s and the eval metrics
                row.update({f"eval/{k}": v for k, v in evals[step].items() if k not in ("epoch", "step", "wall_s")})
            if row:
                self.run.log(row, step=step)

    def summary(self, metrics: dict) -> None:
        for key, value in metrics.items():
            self.run.summary[key] = value

    def finish(self) -> None:
        self.run.finish()


def start_tracking(settings, config: dict, out_dir, rank: int) -> NoTracker:
    """A W&B run on rank 0 when `settings.enabled` (a config's `wandb` section), else a no-op."""
    resolve_mode(settings.mode)  # a bad mode is an error on every rank, not only rank 0
    if rank != 0 or not settings.enabled:
        return NoTracker()
    return WandbTracker(settings, config, Path(out_dir))
