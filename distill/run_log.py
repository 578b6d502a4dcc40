"""What a training run tells the world, on rank 0: the progress bar and printed lines,
train_log.jsonl (one line per optimizer step, flushed: it survives a kill), evals.jsonl
(the learning curve), metrics.json (the final scores), config.yaml and W&B.

Other ranks get the same object and it stays silent, so the training loop never asks.

The run's clock (evals.jsonl `wall_s`, metrics.json `train_wall_s`, kept by checkpoints) is its
training time: a resumed run's goes on from its checkpoint, and a process stopped (SIGSTOP, as
this project pauses long runs to time something else) and continued (SIGCONT) leaves the pause
out, to within a second (tests/test_run_clock.py).
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from distill.tracking import start_tracking
from teacher_logits.files import atomic_write

PAUSE_MATCH_S = 30.0  # how long after a late beat its SIGCONT may be handled (RunLog.pauses_left_out)


class RunLog:
    def __init__(self, cfg, config: dict, out_dir: Path, rank: int, at, steps_per_epoch: int, total_steps: int):
        self.out_dir, self.rank, self.steps_per_epoch = Path(out_dir), rank, steps_per_epoch
        self.log_every, self.epochs = cfg.train.log_every, cfg.train.epochs
        if rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.tracker = start_tracking(cfg.wandb, config, self.out_dir, rank)
        if at.global_step:  # W&B may have lost rows before the checkpoint, and may hold rows after it
            self.tracker.catch_up(self.out_dir, at.global_step, cfg.train.log_every)
        # a fresh start rewrites the log; a resumed run appends (re-done steps log again)
        self.train_log = (open(self.out_dir / "train_log.jsonl", "a" if at.global_step else "w")
                          if rank == 0 else None)
        self.bar = tqdm(total=total_steps, initial=at.global_step, unit="step", disable=rank != 0,
                        dynamic_ncols=True, file=sys.stderr)
        self.started = time.time() - at.wall_s  # a resumed run's clock goes on from its checkpoint
        self.clock_done, self.sigcont_before = threading.Event(), None
        self.pauses_left_out()
        self.wall = None
        self.last_eval, self.evaluated_at = None, None

    def pauses_left_out(self) -> None:
        """A clock thread beats every second. A stop (SIGSTOP) shows as a late beat, the continue
        as a SIGCONT inside it: only such a pair moves the clock's start on by the delay, so a
        beat kept late by other work (a long checkpoint write holding the GIL) counts as training."""
        if not hasattr(signal, "SIGCONT") or threading.current_thread() is not threading.main_thread():
            return
        late, continued = [], []  # (from, to) of late beats; times of SIGCONTs (the handler only appends)

        def beat():
            last = time.time()
            while not self.clock_done.wait(1.0):
                now = time.time()
                if now - last > 2.0:
                    late.append((last, now))
                last = now
                for start, end in late[:]:  # the handler runs once the main thread gets the GIL: either order
                    match = next((c for c in continued if start < c <= end + PAUSE_MATCH_S), None)
                    if match is not None:
                        self.started += end - start - 1.0
                        late.remove((start, end))
                        continued.remove(match)
                del late[:-4], continued[:-4]

        threading.Thread(target=beat, name="run-clock", daemon=True).start()
        self.sigcont_before = signal.signal(signal.SIGCONT, lambda signum, frame: continued.append(time.time()))

    def say(self, message: str) -> None:
        if self.rank == 0:
            print(message)

    def step(self, at, loss: float, lr: float, img_per_s: float) -> None:
        """One optimizer step done: the jsonl line, W&B every train.log_every steps, the bar; `at`
        takes the run's wall time so far, which the next checkpoint keeps."""
        now = time.time()
        at.wall_s = now - self.started
        if self.train_log:
            self.train_log.write(json.dumps({"step": at.global_step, "epoch": at.epoch, "loss": loss, "lr": lr,
                                             "time": round(now, 3)}) + "\n")
            self.train_log.flush()
        if at.global_step % self.log_every == 0:
            self.tracker.log({"train/loss": loss, "train/lr": lr, "train/img_per_s": img_per_s,
                              "train/epoch": at.epoch + at.step_in_epoch / self.steps_per_epoch}, step=at.global_step)
        # the epoch being trained, counted from 1 as the evaluation lines count the epochs done
        self.bar.set_postfix(epoch=f"{at.epoch + 1}/{self.epochs}", loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                             img_s=f"{img_per_s:.0f}")
        self.bar.update(1)

    def evaluation(self, at, scores: dict) -> None:
        """Test scores at `at`: W&B, a printed line and a line of evals.jsonl."""
        self.last_eval, self.evaluated_at = scores, at.global_step
        self.tracker.log({f"eval/{k}": v for k, v in scores.items()}, step=at.global_step)
        if self.rank == 0:
            where = f"epoch {at.epoch + 1}, step {at.step_in_epoch} of {self.steps_per_epoch}" if at.step_in_epoch \
                else f"epoch {at.epoch}"  # mid-epoch (train.max_steps): the epoch it stopped in
            self.bar.write(f"{where}: test top1 {scores['top1']:.2f}% top5 {scores['top5']:.2f}% "
                           f"loss {scores['loss']:.4f}")
            with open(self.out_dir / "evals.jsonl", "a") as f:  # the learning curve, machine-readable
                f.write(json.dumps({"epoch": at.epoch, "step": at.global_step,
                                    "wall_s": round(time.time() - self.started, 2), **scores}) + "\n")

    def training_done(self) -> None:
        self.bar.close()
        self.wall = time.time() - self.started
        self.clock_done.set()
        if self.sigcont_before is not None:
            signal.signal(signal.SIGCONT, self.sigcont_before)

    def finish(self, at, world: int) -> None:
        """metrics.json, the W&B summary and the closing line; then W&B is closed."""
        if self.rank == 0:
            scores = self.last_eval
            metrics = {"eval": scores, "steps": at.global_step,
                       "epochs": at.epoch + at.step_in_epoch / self.steps_per_epoch,
                       "world_size": world, "train_wall_s": round(self.wall, 2)}
            atomic_write(self.out_dir / "metrics.json", (json.dumps(metrics, indent=1) + "\n").encode())
            self.tracker.summary({f"final/{k}": v for k, v in scores.items()})
            self.train_log.close()
            print(f"final: top1 {scores['top1']:.2f}% top5 {scores['top5']:.2f}% loss {scores['loss']:.4f} "
                  f"after {at.global_step} steps; model in {self.out_dir / 'final'} "
                  "(model.pt; model.safetensors + config.json for timm)")
        self.tracker.finish()
