#!/usr/bin/env python
"""Train a student on stored teacher logits, with DeepSpeed, on CPU or GPU.

    deepspeed distill/train_student.py --config configs/cifar10_vit.yaml \\
        data.root=DATA logits.store=STORE output.dir=runs/c10_vit
    deepspeed --num_gpus 2 distill/train_student.py --config ... (one process per GPU / CPU rank)
    python distill/train_student.py --config ...                  (one process, no launcher)

Top to bottom: config -> process group -> data and store (refused if made for other data)
-> student -> DeepSpeed engine -> resume -> epochs of train steps, evaluation and
checkpoints -> export. Outputs in output.dir: config.yaml (resolved), checkpoints/
(DeepSpeed; the newest two kept), train_log.jsonl (loss and lr per optimizer step),
evals.jsonl (test metrics per evaluated epoch), metrics.json (final test metrics), wandb/ (offline runs), and final/ (model.pt: the
student's fp32 state_dict; config.yaml: the resolved config plus a `student` section,
all that tools/evaluate.py needs to rebuild it without DeepSpeed).

Views. With a store, every mode (kd, scratch, online) trains on the store's views,
rebuilt from the records' seeds; kd also takes their soft targets. Without a store
(scratch or online only) the views are view(i, seed(train.seed, epoch, i)) over a
seeded permutation, with the config's recipe and no mixing.

Resume. output.resume=auto loads the checkpoint named in checkpoints/latest, which
DeepSpeed writes only after a save completed. The batch stream is a pure function of
(seed, epoch), and the RNG for dropout and drop-path is reseeded every micro-step from
(seed, step, rank), so a run resumed mid-epoch (skipping the batches already done)
repeats the steps of an uninterrupted one, bit for bit under ZeRO 0-2. Optimizer and
LR-schedule state come from the checkpoint; a ZeRO checkpoint needs the same number of
ranks (see DeepSpeed's ds_to_universal to change it).
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm import tqdm  # noqa: E402

from distill.augment import Mixing, ViewMaker, derive_seed, native_resolution  # noqa: E402
from distill.cli import run_main  # noqa: E402
from distill.config import check_runnable, load_config, resolved_config  # noqa: E402
from distill.datasets import NUM_CLASSES, STATS, build_dataset, fingerprint, labels_of  # noqa: E402
from distill.distributed import set_single_process_env  # noqa: E402
from distill.evaluation import test_views_loader  # noqa: E402
from distill.loss import DistillationLoss  # noqa: E402
from distill.metrics import MetricAccumulator  # noqa: E402
from distill.replay import StoreViews, TeacherViews  # noqa: E402
from distill.tracking import resolve_mode, start_tracking  # noqa: E402
from teacher_logits.manifest import StoreError, atomic_write, differences, failpoint  # noqa: E402
from teacher_logits.reader import LogitStore  # noqa: E402

KEEP_CHECKPOINTS = 2


def check_store(store: LogitStore, cfg, dataset) -> int:
    """Refuse a store made for other data; return the number of samples it covers."""
    made = store.settings
    size = cfg.data.limit or made["dataset"]["size"]  # the store may cover a --limit prefix
    if size > len(dataset):
        raise StoreError(f"logits.store {store.path} covers {size} samples, but {cfg.data.dataset} train has "
                         f"only {len(dataset)}: was it made on another dataset?")
    expected = {"dataset": fingerprint(cfg.data.dataset, dataset, True, size),
                "augmentation": {"recipe": cfg.data.recipe, "resolution": native_resolution(cfg.data.recipe)}}
    actual = {"dataset": made["dataset"],
              "augmentation": {k: made["augmentation"][k] for k in ("recipe", "resolution")}}
    diff = differences(actual, expected)
    if diff:
        raise StoreError(f"logits.store {store.path} was made for other data than this config "
                         f"({'; '.join(diff)} [store != config]): use a store made for this config")
    return size


def seeded_batches(maker, labels, cfg, epoch, rank, world, skip):
    """No store: one epoch of this rank's batches over a seeded permutation."""
    order = np.random.default_rng([cfg.train.seed, epoch]).permutation(len(labels))
    order = order[: len(order) // world * world][rank::world]  # equal step counts on every rank
    order = order[skip * cfg.train.batch_size:]  # resuming: never build the skipped views
    views = TeacherViews(maker, cfg.train.seed, np.full(len(order), epoch), order, labels)
    return DataLoader(views, batch_size=cfg.train.batch_size, num_workers=cfg.data.workers)


def lr_factor(step, warmup_steps, total_steps, min_ratio):
    """Linear warm-up to 1, then cosine decay to min_ratio at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + np.cos(np.pi * progress))


@torch.no_grad()
def evaluate(engine, test_set, cfg, rank, world, dtype):
    """top1/top5/loss on the unaugmented test views; ranks take disjoint slices, then all-reduce."""
    loader = test_views_loader(test_set, native_resolution(cfg.data.recipe), 2 * cfg.train.batch_size,
                               cfg.data.workers, cfg.data.test_limit, rank, world)
    acc = MetricAccumulator(NUM_CLASSES[cfg.data.dataset])
    engine.eval()
    for batch in loader:
        acc.update(engine(batch["view"].to(engine.device, dtype)), batch["label"])
    engine.train()
    acc.all_reduce(engine.device)
    return {k: v for k, v in acc.compute().items() if k in ("top1", "top5", "loss", "num_samples")}


def save_checkpoint(engine, ckpt_dir: Path, epoch, step_in_epoch, global_step, rank):
    """Every rank's files first, then `latest` (renamed into place) names the tag: resume
    never picks up half a checkpoint, whenever the run is killed."""
    state = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step}
    tag = f"step{global_step}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state, save_latest=False)
    torch.distributed.barrier()  # every rank's files of this tag are complete
    failpoint("checkpoint:latest")  # crash tests: files written, `latest` not yet moved
    if rank == 0:  # DeepSpeed writes `latest` in place; a rename cannot leave it half-written
        atomic_write(ckpt_dir / "latest", tag.encode())
        # prune older tags (a later-numbered one may be a killed run's half-save: leave it)
        older = sorted(int(p.name[4:]) for p in ckpt_dir.glob("step*") if p.is_dir() and int(p.name[4:]) < global_step)
        for step in older[: max(len(older) - (KEEP_CHECKPOINTS - 1), 0)]:
            shutil.rmtree(ckpt_dir / f"step{step}", ignore_errors=True)


def build_model(cfg, num_classes: int):
    """(model taking [0, 1] views, kind). Our students by name, normalised with the dataset's
    statistics; any other timm name is a teacher being trained or fine-tuned
    (tools/train_teacher.py), with its own normalisation and input size."""
    from distill.models import Preprocessed, create_student, create_teacher, load_weights
    from distill.models.students import STUDENTS

    if cfg.model.name not in STUDENTS:
        import timm

        if not timm.is_model(cfg.model.name):
            raise ValueError(f"config key model.name: unknown model {cfg.model.name!r}; students: "
                             f"{', '.join(STUDENTS)} (or any timm model name, trained as a teacher)")
        teacher = create_teacher(cfg.model.name, cfg.model.init, cfg.model.pretrained, num_classes)
        return teacher.train(), "teacher"
    inner = create_student(cfg.model.name, num_classes, cfg.data.img_size, **cfg.model.kwargs)
    if cfg.model.init:
        load_weights(inner, cfg.model.init)
    mean, std = STATS[cfg.data.dataset]
    return Preprocessed(inner, mean, std, (cfg.data.img_size, cfg.data.img_size)), "student"


def export_state_dict(engine, cfg, ckpt_dir: Path) -> dict:
    """The student's weights as a plain fp32 state_dict (rank 0, after the last checkpoint).

    ZeRO 0-2 keep whole weights in the module: under bf16 those are the bf16 weights the
    model computed (and was evaluated) with, upcast. ZeRO-3 partitions them, so its
    module state_dict is empty: DeepSpeed's documented consolidation rebuilds the fp32
    weights from the checkpoint files of every rank instead.
    """
    if cfg.deepspeed.zero_stage < 3:
        state = engine.module.model.state_dict()
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        full = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir))
        state = {k.removeprefix("model."): v for k, v in full.items()}
    return {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu() for k, v in state.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML experiment config, e.g. configs/smoke_cifar10.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    check_runnable(cfg)
    resolve_mode(cfg.wandb.mode)  # a bad W&B mode fails before anything is written
    out_dir, ckpt_dir = Path(cfg.output.dir), Path(cfg.output.dir) / "checkpoints"

    # ---- process group: DeepSpeed picks gloo on CPU, nccl on GPUs
    set_single_process_env()  # no-op under a launcher, which sets these itself
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # skip a 30-80 s CPU build used only by inference
    deepspeed.init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    say = print if rank == 0 else (lambda *a, **k: None)

    # ---- data: training views from the store (or seeded, without one) and the test split
    train_set = build_dataset(cfg.data.dataset, cfg.data.root, train=True, skip_md5=cfg.data.skip_md5)
    test_set = build_dataset(cfg.data.dataset, cfg.data.root, train=False, skip_md5=cfg.data.skip_md5)
    num_classes = NUM_CLASSES[cfg.data.dataset]
    store = LogitStore(cfg.logits.store) if cfg.logits.store else None
    if store is not None:
        size = check_store(store, cfg, train_set)
        aug = store.settings["augmentation"]
        maker = ViewMaker(train_set, aug["recipe"], Mixing(**aug["mixing"]), aug["resolution"], num_samples=size)
        train_views = StoreViews(store, maker, labels_of(train_set)[:size], cfg.train.batch_size, rank, world,
                                 shuffle_seed=cfg.train.seed)
        micro_per_epoch = len(train_views)
    else:
        size = cfg.data.limit or len(train_set)
        maker = ViewMaker(train_set, cfg.data.recipe, num_samples=size)
        micro_per_epoch = -(-(size // world) // cfg.train.batch_size)
    labels = labels_of(train_set)[:size]
    steps_per_epoch = micro_per_epoch // cfg.train.grad_accum  # a tail shorter than grad_accum is dropped
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size x train.grad_accum = {cfg.train.batch_size * cfg.train.grad_accum} "
                         f"exceeds the {size // world} samples per rank: lower them")
    schedule_steps = cfg.train.epochs * steps_per_epoch  # train.max_steps stops early, as a kill would
    total_steps = min(schedule_steps, cfg.train.max_steps or schedule_steps)

    # ---- student: normalisation and resizing inside the model, so it takes [0, 1] views of any size
    torch.manual_seed(cfg.train.seed)
    from distill.config import TEACHER_KEYS
    from distill.models import create_teachers

    student, kind = build_model(cfg, num_classes)
    inner = student.model
    export_info = {"kind": kind, "name": cfg.model.name, "num_classes": num_classes,  # before any bf16 cast
                   "img_size": student.input_size[-1], "mean": student.mean.tolist(), "std": student.std.tolist(),
                   "kwargs": cfg.model.kwargs}
    teacher = None
    if cfg.loss.mode == "online":
        teacher = create_teachers(cfg.teacher.name, cfg.teacher.checkpoint, cfg.teacher.pretrained, num_classes,
                                  cfg.teacher.weights, TEACHER_KEYS, require_weights=False)  # one, or an ensemble
    criterion = DistillationLoss(cfg.loss.mode, cfg.loss.temperature, cfg.loss.alpha, cfg.loss.label_smoothing,
                                 cfg.loss.teacher_target, cfg.loss.standardize)

    # ---- DeepSpeed engine: AdamW (torch's, not the fused build), warm-up + cosine per optimizer step
    from timm.optim import param_groups_weight_decay

    no_decay = inner.no_weight_decay() if hasattr(inner, "no_weight_decay") else ()
    groups = param_groups_weight_decay(inner, cfg.optim.weight_decay, no_decay)
    ds_config = {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,  # no train_batch_size: it pins the world size
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.optim.lr, "betas": cfg.optim.betas,
                                                  "weight_decay": cfg.optim.weight_decay, "torch_adam": True}},
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": cfg.deepspeed.bf16},
        # DeepSpeed >= 0.18 casts parameters only; BatchNorm's running statistics (TinyViT,
        # cifar_cnn) must follow them, or batch_norm refuses the mixed dtypes.
        **({"data_types": {"buffer_dtype": "bf16"}} if cfg.deepspeed.bf16 else {}),
        "gradient_clipping": cfg.deepspeed.grad_clip,
        "steps_per_print": 1 << 30,  # we print our own progress
    }
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    min_ratio = cfg.optim.min_lr / cfg.optim.lr

    def schedule(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, warmup_steps, schedule_steps, min_ratio))

    engine, _, _, _ = deepspeed.initialize(model=student, model_parameters=groups, config=ds_config,
                                           lr_scheduler=schedule)
    device = engine.device
    dtype = torch.bfloat16 if cfg.deepspeed.bf16 else torch.float32
    if teacher is not None:
        teacher = teacher.to(device)

    # ---- resume from the newest complete checkpoint
    epoch, step_in_epoch, global_step, saved_at = 0, 0, 0, None
    if cfg.output.resume == "auto" and (ckpt_dir / "latest").is_file():
        path, state = engine.load_checkpoint(str(ckpt_dir))
        if path is None:
            raise OSError(f"could not load the checkpoint named in {ckpt_dir / 'latest'}: delete {ckpt_dir} "
                          "or set output.resume=none")
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        saved_at = global_step
        say(f"resumed from {path}: epoch {epoch}, step {step_in_epoch} of {steps_per_epoch}, global step {global_step}")
    config = resolved_config(cfg)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tracker = start_tracking(cfg.wandb, config, out_dir, rank)
    if global_step:  # W&B may have lost rows before the checkpoint, and may hold rows after it
        tracker.catch_up(out_dir, global_step, cfg.train.log_every)
    # a fresh start rewrites the log; a resumed run appends (re-done steps log again)
    train_log = open(out_dir / "train_log.jsonl", "a" if global_step else "w") if rank == 0 else None
    say(f"{cfg.model.name} on {cfg.data.dataset} ({size} samples, {world} rank(s)), mode {cfg.loss.mode}: "
        f"{steps_per_epoch} steps/epoch, {total_steps} steps in all")

    # ---- train
    started, last_eval, evaluated_at = time.time(), None, None
    bar = tqdm(total=total_steps, initial=global_step, unit="step", disable=rank != 0, dynamic_ncols=True,
               file=sys.stderr)
    while global_step < total_steps and epoch < cfg.train.epochs:
        skip = step_in_epoch * cfg.train.grad_accum
        if store is not None:
            train_views.set_epoch(epoch, skip_batches=skip)  # a resumed run replays the rest of the epoch
            batches = DataLoader(train_views, batch_size=None, num_workers=cfg.data.workers)
        else:
            batches = seeded_batches(maker, labels, cfg, epoch, rank, world, skip)
        micro, step_loss, tick = 0, 0.0, time.time()
        for batch in batches:
            # dropout / drop-path draw from here: a function of the step, so a resumed run repeats them
            torch.manual_seed(int(derive_seed(cfg.train.seed, global_step, micro % cfg.train.grad_accum, rank)))
            view = batch["view"].to(device)
            logits = engine(view.to(dtype))
            target = batch["target"].to(device) if cfg.loss.mode == "kd" else None
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(view).float().softmax(dim=-1)
            loss = criterion(logits, target, batch["label"].to(device), batch["partner_label"].to(device),
                             batch["lam"].to(device))
            engine.backward(loss)
            lr = engine.get_lr()[0]  # the rate this step uses; step() moves the schedule on
            engine.step()
            micro += 1
            step_loss += loss.item() / cfg.train.grad_accum
            if micro % cfg.train.grad_accum:
                continue
            # one optimizer step done
            global_step, step_in_epoch = global_step + 1, step_in_epoch + 1
            img_per_s = cfg.train.batch_size * cfg.train.grad_accum * world / (time.time() - tick)
            if train_log:
                train_log.write(json.dumps({"step": global_step, "epoch": epoch, "loss": step_loss, "lr": lr,
                                            "time": round(time.time(), 3)}) + "\n")
                train_log.flush()
            if global_step % cfg.train.log_every == 0:
                tracker.log({"train/loss": step_loss, "train/lr": lr, "train/img_per_s": img_per_s,
                             "train/epoch": epoch + step_in_epoch / steps_per_epoch}, step=global_step)
            bar.set_postfix(epoch=epoch, loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_per_s:.0f}")
            bar.update(1)
            if cfg.train.checkpoint_every and global_step % cfg.train.checkpoint_every == 0:
                save_checkpoint(engine, ckpt_dir, epoch, step_in_epoch, global_step, rank)
                saved_at = global_step
            step_loss, tick = 0.0, time.time()
            if step_in_epoch == steps_per_epoch or global_step == total_steps:
                break
        if global_step == total_steps and step_in_epoch < steps_per_epoch:
            break  # stopped by train.max_steps mid-epoch
        if step_in_epoch < steps_per_epoch:
            raise RuntimeError(f"epoch {epoch} ended after {step_in_epoch} of {steps_per_epoch} steps")
        epoch, step_in_epoch = epoch + 1, 0
        if epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs:
            last_eval, evaluated_at = evaluate(engine, test_set, cfg, rank, world, dtype), global_step
            tracker.log({f"eval/{k}": v for k, v in last_eval.items()}, step=global_step)
            if rank == 0:
                bar.write(f"epoch {epoch}: test top1 {last_eval['top1']:.2f}% top5 {last_eval['top5']:.2f}% "
                          f"loss {last_eval['loss']:.4f}")
                with open(out_dir / "evals.jsonl", "a") as f:  # the learning curve, machine-readable
                    f.write(json.dumps({"epoch": epoch, "step": global_step, "wall_s": round(time.time() - started, 2),
                                        **last_eval}) + "\n")
        save_checkpoint(engine, ckpt_dir, epoch, 0, global_step, rank)
        saved_at = global_step
    bar.close()
    wall = time.time() - started

    # ---- finish: a checkpoint of the final state, a last evaluation, the export
    if saved_at != global_step:
        save_checkpoint(engine, ckpt_dir, epoch, step_in_epoch, global_step, rank)
    if evaluated_at != global_step:
        last_eval = evaluate(engine, test_set, cfg, rank, world, dtype)
        tracker.log({f"eval/{k}": v for k, v in last_eval.items()}, step=global_step)
    torch.distributed.barrier()  # every rank's checkpoint files are written
    if rank == 0:
        final = out_dir / "final"
        final.mkdir(exist_ok=True)
        torch.save(export_state_dict(engine, cfg, ckpt_dir), final / "model.pt")
        (final / "config.yaml").write_text(yaml.safe_dump({**config, "student": export_info}, sort_keys=False))
        metrics = {"eval": last_eval, "steps": global_step, "epochs": epoch + step_in_epoch / steps_per_epoch,
                   "world_size": world, "train_wall_s": round(wall, 2)}
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        tracker.summary({f"final/{k}": v for k, v in last_eval.items()})
        train_log.close()
        print(f"final: top1 {last_eval['top1']:.2f}% top5 {last_eval['top5']:.2f}% loss {last_eval['loss']:.4f} "
              f"after {global_step} steps; model in {final / 'model.pt'}")
    tracker.finish()
    torch.distributed.barrier()


if __name__ == "__main__":
    run_main(main)
