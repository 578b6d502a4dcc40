"""The student stage: train a model on stored teacher logits (or on labels) with DeepSpeed.

`train(cfg)` reads top to bottom: process group -> data and store (refused if made for
other data) -> model -> DeepSpeed engine -> resume -> epochs of optimizer steps, evaluation
and checkpoints -> export. Outputs in output.dir: config.yaml (resolved), checkpoints/
(DeepSpeed; the newest two kept), train_log.jsonl (loss and lr per optimizer step),
evals.jsonl (test metrics per evaluated epoch), metrics.json (final test metrics), wandb/
(offline runs), and final/ (model.pt: the fp32 state_dict; config.yaml: the resolved config
plus a `student` section, all that tools/evaluate.py needs to rebuild it without DeepSpeed;
model.safetensors + config.json: the same weights as a timm model folder; README.md: its
Hugging Face model card). A finished run of the same config is not trained again: `run`
reports it (distill/run_folder.py's finished_run) unless asked to re-evaluate it.

Views. With a store, every mode (kd, scratch, online) trains on the store's views, rebuilt
from the records' seeds; kd also takes their soft targets (sparse top-k, densified on the
training device by the loss). Without a store (scratch or
online only) the views are view(i, seed(train.seed, epoch, i)) over a seeded permutation,
with the config's recipe and no mixing.

Resume. output.resume=auto loads the checkpoint named in checkpoints/latest. The batch
stream is a pure function of (seed, epoch), and the RNG for dropout and drop-path is
reseeded every micro-step from (seed, step, rank), so a run resumed mid-epoch (skipping the
batches already done) repeats the steps of an uninterrupted one, bit for bit under ZeRO 0-2.
Optimizer and LR-schedule state come from the checkpoint; a ZeRO checkpoint needs the same
number of ranks (see DeepSpeed's ds_to_universal to change it).
"""
from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import torch
import yaml

from distill.augment import derive_seed
from distill.config import TEACHER_KEYS, check_runnable, load_config, resolved_config
from distill.datasets import STATS
from distill.recipes import eval_view_spec
from distill.distributed import capped_workers, env_rank, port_in_use_said, set_rank_threads, set_single_process_env
from distill.engine import (Checkpoints, Position, build_engine, check_schedule, compute_dtype, deepspeed_config,
                           export_state_dict, torch_save, unwritable)
from distill.evaluation import eval_views_loader, score_views
from distill.loss import MODES, DistillationLoss
from distill.metrics import MetricAccumulator
from distill.run_folder import check_run_folder, finished_run, record_run
from distill.run_log import RunLog
from distill.student_data import load_data
from distill.tracking import resolve_mode
from teacher_logits.errors import UserError


def build_model(cfg, num_classes: int):
    """(model taking [0, 1] views, kind). Our students by name, normalised with the dataset's
    statistics; any other timm name is a teacher being trained or fine-tuned
    (tools/train_teacher.py), with its own normalisation and input size. model.pretrained
    starts from timm's weights, model.init from a file or export (resampled to this
    resolution, its head re-made for another class count)."""
    from distill.models import Preprocessed, create_student, create_teacher, load_adapted
    from distill.models.students import STUDENTS, is_student

    if is_student(cfg.model.name):
        inner = create_student(cfg.model.name, num_classes, cfg.data.img_size, cfg.model.pretrained,
                               **cfg.model.kwargs)
        mean, std = STATS[cfg.data.dataset]
        model, kind = Preprocessed(inner, mean, std, (cfg.data.img_size, cfg.data.img_size)), "student"
    else:
        import timm

        if not timm.is_model(cfg.model.name):
            raise UserError(f"config key model.name: unknown model {cfg.model.name!r}; students: "
                            f"{', '.join(STUDENTS)} (or any timm model name, trained as a teacher)")
        model, kind = create_teacher(cfg.model.name, None, cfg.model.pretrained, num_classes,
                                     weights_later=bool(cfg.model.init)).train(), "teacher"
    if cfg.model.init:  # transfer: a distilled student or a teacher, fine-tuned or distilled again here
        remade = load_adapted(model.model, cfg.model.init)
        if remade and torch.distributed.get_rank() == 0:
            print(f"model.init {cfg.model.init}: {remade}")
    return model, kind


def model_info(cfg, model, kind: str, num_classes: int) -> dict:
    """The export's `student` section: all tools/evaluate.py needs to rebuild the model."""
    return {"kind": kind, "name": cfg.model.name, "num_classes": num_classes, "img_size": model.input_size[-1],
            "mean": model.mean.tolist(), "std": model.std.tolist(), "kwargs": cfg.model.kwargs}


def online_teacher(cfg, num_classes: int):
    """loss.mode=online: the teacher (or ensemble) run on every view; else None."""
    if MODES[cfg.loss.mode].teacher != "online":
        return None
    from distill.models import create_teachers

    return create_teachers(cfg.teacher.name, cfg.teacher.checkpoint, cfg.teacher.pretrained, num_classes,
                           cfg.teacher.weights, TEACHER_KEYS, require_weights=False)


@torch.no_grad()
def evaluate(engine, test_set, num_classes, cfg, rank, world, dtype):
    """top1/top5/loss on the unaugmented test views; ranks take disjoint slices, then all-reduce."""
    recipe, resolution = eval_view_spec(cfg.data.dataset, cfg.data.img_size)
    loader = eval_views_loader(test_set, resolution, 2 * cfg.train.batch_size, cfg.data.workers,
                               cfg.data.test_limit, rank, world, recipe)
    engine.eval()
    acc = score_views(engine, loader, MetricAccumulator(num_classes), engine.device, dtype, show=rank == 0)
    engine.train()
    acc.all_reduce(engine.device)
    return {k: v for k, v in acc.compute().items() if k in ("top1", "top5", "loss", "num_samples")}


def optimizer_steps(engine, batches, criterion, teacher, cfg, at: Position, rank: int):
    """Train on `batches`, yielding (loss, lr, seconds) after each optimizer step (grad_accum
    micro-steps); the caller advances `at` before the next micro-step reads it."""
    dtype = compute_dtype(cfg)
    micro, step_loss, tick = 0, 0.0, time.time()
    for batch in batches:
        # dropout / drop-path draw from here: a function of the step, so a resumed run repeats them
        torch.manual_seed(int(derive_seed(cfg.train.seed, at.global_step, micro % cfg.train.grad_accum, rank)))
        # pinned views (DataLoader pin_memory on CUDA) copy asynchronously; elsewhere this is a plain copy
        view = batch.view.to(engine.device, non_blocking=True)
        logits = engine(view.to(dtype))
        sparse = batch.target if criterion.mode.teacher == "store" else None  # densified on the device, in the loss
        target = sparse.to(engine.device, non_blocking=True) if sparse is not None else None
        if teacher is not None:
            with torch.no_grad():
                target = teacher(view).float().softmax(dim=-1)
        loss = criterion(logits, target, *(t.to(engine.device, non_blocking=True)
                                           for t in (batch.label, batch.partner_label, batch.lam)))
        engine.backward(loss)
        lr = engine.get_lr()[0]  # the rate this step uses; step() moves the schedule on
        engine.step()
        micro += 1
        step_loss += loss.item() / cfg.train.grad_accum
        if micro % cfg.train.grad_accum == 0:
            yield step_loss, lr, time.time() - tick
            step_loss, tick = 0.0, time.time()


def run(config_path, overrides=(), reevaluate: bool = False) -> None:
    """Load and check a config (refusing bad keys, values and W&B modes before anything is
    written), then train it; a finished run of it is only reported, unless `reevaluate`."""
    cfg = load_config(config_path, list(overrides))
    check_runnable(cfg)
    check_schedule(cfg)
    resolve_mode(cfg.wandb.mode)
    finished = None if reevaluate else finished_run(cfg)
    if finished is not None:
        if env_rank()[0] == 0:
            scores = finished["eval"]
            print(f"{cfg.output.dir}: this run has finished: top1 {scores['top1']:.2f}% top5 {scores['top5']:.2f}% "
                  f"after {finished['steps']} steps (metrics.json); model in {Path(cfg.output.dir) / 'final'}. "
                  "Nothing to do (--reevaluate evaluates and exports it again)")
        return
    try:
        train(cfg)
    except OSError as e:  # the disk under output.dir, whichever file met it (logs, W&B, run.json)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise UserError(unwritable(Path(cfg.output.dir), e.filename or "its files", e)) from None


def join_process_group(log_level: str = "warning") -> tuple[int, int]:
    """(rank, world size) in DeepSpeed's process group: gloo on CPU, nccl on GPUs; one process
    without a launcher. DeepSpeed's own logging is set to `log_level` first (its INFO lines
    bury ours; DeepSpeed before 0.18 logs at INFO by default)."""
    set_single_process_env()  # no-op under a launcher, which sets these itself
    import deepspeed
    from deepspeed.utils.logging import set_log_level_from_string

    set_log_level_from_string(log_level)
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # skip a 30-80 s CPU build used only by inference
    with port_in_use_said():
        deepspeed.init_distributed()
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def start_rank(cfg) -> tuple[int, int, int]:
    """(rank, world size, torch threads) of this process, in the process group, with its share
    of the cores (threads, DataLoader workers) and the DeepSpeed config checked (precision, a
    deepspeed.config file) before anything is read or written."""
    rank, world = join_process_group(cfg.deepspeed.log_level)
    threads = set_rank_threads()
    cfg.data.workers = capped_workers(cfg.data.workers, "data.workers", say=rank == 0)
    deepspeed_config(cfg)
    return rank, world, threads


def train(cfg) -> None:
    """One training run of `cfg` (see the module docstring); every rank calls it."""
    rank, world, threads = start_rank(cfg)
    changed = check_run_folder(cfg)
    data = load_data(cfg, rank, world)
    steps_per_epoch = data.steps_per_epoch(cfg.train.grad_accum, world)
    schedule_steps = cfg.train.epochs * steps_per_epoch  # train.max_steps stops early, as a kill would
    total_steps = min(schedule_steps, cfg.train.max_steps or schedule_steps)

    torch.manual_seed(cfg.train.seed)
    model, kind = build_model(cfg, data.num_classes)  # normalises and resizes: takes [0, 1] views of any size
    export_info = model_info(cfg, model, kind, data.num_classes)  # before any bf16 cast
    teacher = online_teacher(cfg, data.num_classes)
    criterion = DistillationLoss(cfg.loss.mode, cfg.loss.temperature, cfg.loss.alpha, cfg.loss.label_smoothing,
                                 cfg.loss.teacher_target, cfg.loss.standardize)
    engine = build_engine(cfg, model, steps_per_epoch, schedule_steps)
    teacher = teacher.to(engine.device) if teacher is not None else None
    dtype = compute_dtype(cfg)

    out_dir = Path(cfg.output.dir)
    checkpoints = Checkpoints(engine, out_dir / "checkpoints", rank)
    at = (checkpoints.resume() if cfg.output.resume != "none" else None) or Position()
    config = resolved_config(cfg)
    config.update(record_run(cfg, changed) if rank == 0 else {})  # the export says what was trained
    log = RunLog(cfg, config, out_dir, rank, at, steps_per_epoch, total_steps)
    if checkpoints.loaded_from:
        log.say(f"resumed from {checkpoints.loaded_from}: epoch {at.epoch}, step {at.step_in_epoch} of "
                f"{steps_per_epoch}, global step {at.global_step}")
    log.say(f"{cfg.model.name} on {cfg.data.dataset} ({data.size} samples, {world} rank(s) of {threads} thread(s)), "
            f"mode {cfg.loss.mode}: {steps_per_epoch} steps/epoch, {total_steps} steps in all")

    while at.global_step < total_steps and at.epoch < cfg.train.epochs:
        batches = data.batches(cfg, at.epoch, rank, world, skip=at.step_in_epoch * cfg.train.grad_accum)
        for loss, lr, seconds in optimizer_steps(engine, batches, criterion, teacher, cfg, at, rank):
            at.advance()
            log.step(at, loss, lr, cfg.train.batch_size * cfg.train.grad_accum * world / seconds)
            if cfg.train.checkpoint_every and at.global_step % cfg.train.checkpoint_every == 0:
                checkpoints.save(at)
            if at.step_in_epoch == steps_per_epoch or at.global_step == total_steps:
                break
        if at.global_step == total_steps and at.step_in_epoch < steps_per_epoch:
            break  # stopped by train.max_steps mid-epoch
        if at.step_in_epoch < steps_per_epoch:
            raise RuntimeError(f"epoch {at.epoch} ended after {at.step_in_epoch} of {steps_per_epoch} steps")
        at.next_epoch()
        if at.epoch % cfg.train.eval_every == 0 or at.epoch == cfg.train.epochs:
            log.evaluation(at, evaluate(engine, data.test_set, data.num_classes, cfg, rank, world, dtype))
        checkpoints.save(at)

    # finish: a checkpoint of the final state, a last evaluation, the export
    log.training_done()
    if checkpoints.saved_at != at.global_step:
        checkpoints.save(at)
    if log.evaluated_at != at.global_step:
        log.evaluation(at, evaluate(engine, data.test_set, data.num_classes, cfg, rank, world, dtype))
    torch.distributed.barrier()  # every rank's checkpoint files are written
    if rank == 0:
        export(engine, cfg, config, export_info, out_dir, log.last_eval, data)
    log.finish(at, world)
    torch.distributed.barrier()


def export(engine, cfg, config: dict, export_info: dict, out_dir: Path, scores: dict, data) -> Path:
    """out_dir/final: model.pt (plain fp32 state_dict) and config.yaml (+ a `student` section)
    for this project's tools; the same weights as model.safetensors with timm's config.json for
    any timm user (`timm.create_model("local-dir:RUN/final", pretrained=True)`, the hub), and
    README.md, the Hugging Face model card (distill/model_card.py)."""
    from distill.model_card import export_tag, write_model_card
    from distill.models.timm_export import save_for_timm

    final, staging = out_dir / "final", out_dir / ".final.tmp"
    state = export_state_dict(engine, cfg.deepspeed.zero_stage, out_dir / "checkpoints")
    store = data.store_views.store if data.store_views is not None else None
    shutil.rmtree(staging, ignore_errors=True)
    try:  # written whole beside final/, then moved into place: a failed export leaves the old one or none
        need = 2 * sum(t.numel() * t.element_size() for t in state.values()) + (1 << 20)  # model.pt, safetensors
        if shutil.disk_usage(out_dir).free < need:  # safetensors reports a full disk as its own error type
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        staging.mkdir()
        torch_save(state, staging / "model.pt")
        classes = [str(c) for c in getattr(data.test_set, "classes", None) or []]
        save_for_timm(engine.module.model, state, export_info, staging, export_tag(config), cfg.output.license,
                      classes if len(classes) == data.num_classes else None)
        (staging / "config.yaml").write_text(yaml.safe_dump({**config, "student": export_info}, sort_keys=False))
        write_model_card(staging, config, export_info, scores, store)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(unwritable(out_dir, "the export final/", e)) from None
    return final

