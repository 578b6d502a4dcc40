"""Experiment tracking with Weights & Biases, on rank 0 only.

The mode is decided once, in this order: config `wandb.mode`; else $WANDB_MODE; else
`offline` when no API key is available ($WANDB_API_KEY or a netrc entry), since
wandb.init then raises; else `online`. Offline runs land in OUTPUT_DIR/wandb and can
be uploaded later with `wandb sync`. The run id is kept in OUTPUT_DIR/wandb_run_id,
so a resumed training run continues the same W&B run.

`start_tracking` returns a `NoTracker` (same methods, does nothing) on other ranks
and when `wandb.enabled` is false, so the training loop never asks.
"""
from __future__ import annotations

import netrc
import os
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


class NoTracker:
    def log(self, metrics: dict, step: int) -> None:
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
        self.mode = mode

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

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
