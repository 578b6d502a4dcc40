"""The DeepSpeed side of training: engine configuration, checkpoints that survive a kill,
and the plain fp32 export. Students (distill/student_stage.py) and fine-tuned teachers
(tools/train_teacher.py) share it.

Checkpoints. Every rank writes its files of a tag first; then rank 0 renames `latest`
into place naming the tag, so resume never picks up half a checkpoint whenever the run
is killed. The newest KEEP_CHECKPOINTS tags are kept. A tag that cannot be written (no space
left, permission denied, read-only file system) is removed and reported in one line naming
output.dir; `latest` still names the last complete tag, so the same command resumes from it
once the disk is fixed. Files are written through Python's file layer (`torch_save`), where an
OS error keeps its kind (torch's C++ writer turns it into a RuntimeError). Resume unpickles
nothing: DeepSpeed's files are
loaded with torch.load(weights_only=True), which admits tensors, plain containers and the few
DeepSpeed and numpy types its states hold (`SAFE_CHECKPOINT_GLOBALS`); a file that needs
anything else (one planted in a shared run folder, say) is refused naming it, unrun.
"""
from __future__ import annotations

import io
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from teacher_logits.errors import UserError
from teacher_logits.files import atomic_write, failpoint

KEEP_CHECKPOINTS = 2


def safe_checkpoint_globals() -> list:
    """The non-tensor types DeepSpeed's checkpoint files hold (ZeRO 0-3, fp32, bf16 and fp16): its
    ZeRO stage enum, loss scalers and fragment addresses, and numpy scalars in the LR state."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray  # numpy 2 moved it
    numpy_scalars = [np.dtype, multiarray.scalar] + [
        type(np.dtype(t)) for t in ("f2", "f4", "f8", "i4", "i8", "u1", "bool")]
    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address, *numpy_scalars]


def torch_save(obj, path) -> None:
    """torch.save into memory, then written whole by `atomic_write`: a failed write raises the
    OSError the operating system gave (ENOSPC, EACCES, EROFS) and leaves no file, where torch's
    own writers (of a path or of a file object) report a RuntimeError that says nothing a
    program can act on."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(Path(path), buffer.getbuffer())


class SafeCheckpointFiles:
    """DeepSpeed's checkpoint engine with `load` weights-only and `save` through `torch_save`
    (see the module docstring)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def save(self, state_dict, path: str) -> None:
        torch_save(state_dict, path)

    def load(self, path: str, map_location=None):
        import pickle

        with torch.serialization.safe_globals(safe_checkpoint_globals()):
            try:
                return torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as e:
                what = next((line for line in str(e).splitlines() if "Unsupported global" in line), "")
                raise UserError(f"{path}: this checkpoint needs objects a training state never holds "
                                f"({what.strip()[:120] or 'not weights only'}), so it is not loaded; delete it, or "
                                "set output.resume=none to start over") from None


@dataclass
class Position:
    """Where a run is: epoch, optimizer steps done in it, optimizer steps done in all, and the
    training wall time spent to get here, summed over the processes of a resumed run (a
    checkpoint keeps it, so a learning curve's times hold across a kill)."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    wall_s: float = 0.0

    def advance(self) -> None:
        self.global_step, self.step_in_epoch = self.global_step + 1, self.step_in_epoch + 1

    def next_epoch(self) -> None:
        self.epoch, self.step_in_epoch = self.epoch + 1, 0


def check_schedule(cfg) -> None:
    """A warm-up as long as training or longer never reaches optim.lr nor decays: warned (not
    refused: a shortened run of a published config, e.g. one epoch of bench_seeds, may mean it)."""
    from distill.distributed import env_rank

    if cfg.optim.warmup_epochs and cfg.optim.warmup_epochs >= cfg.train.epochs and env_rank()[0] == 0:
        print(f"warning: config key optim.warmup_epochs ({cfg.optim.warmup_epochs:g}) is not shorter than "
              f"train.epochs ({cfg.train.epochs}): the learning rate never reaches optim.lr nor decays; lower "
              "optim.warmup_epochs or raise train.epochs")


def lr_factor(step, warmup_steps, total_steps, min_ratio):
    """Linear warm-up to 1, then cosine decay to min_ratio at total_steps.

    Ours, not a library's: DeepSpeed's WarmupCosineLR trains its first step at lr 0, and timm's
    CosineLRScheduler is stepped with the update count (`step_update(n)`), which DeepSpeed's
    engine, calling `lr_scheduler.step()`, does not pass; as a LambdaLR it checkpoints with the
    engine and resumes exactly."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + np.cos(np.pi * progress))


# the DeepSpeed keys the trainer sets from the run config, and the config key each comes from
OWNED_KEYS = {
    "train_micro_batch_size_per_gpu": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
    "optimizer": "optim.*", "scheduler": "optim.* (the trainer's warm-up + cosine)",
    "zero_optimization.stage": "deepspeed.zero_stage", "bf16.enabled": "deepspeed.bf16",
    "fp16.enabled": "deepspeed.fp16", "gradient_clipping": "deepspeed.grad_clip",
}


def compute_dtype(cfg) -> torch.dtype:
    """The dtype the student computes in: bf16 or fp16 under DeepSpeed's mixed precision, else fp32."""
    return torch.bfloat16 if cfg.deepspeed.bf16 else torch.float16 if cfg.deepspeed.fp16 else torch.float32


def check_precision(cfg) -> None:
    """One of bf16 and fp16; fp16 only on a GPU (DeepSpeed's fp16 optimizer is CUDA's)."""
    from teacher_logits.errors import UserError

    if cfg.deepspeed.bf16 and cfg.deepspeed.fp16:
        raise UserError("config keys deepspeed.bf16 and deepspeed.fp16 are both true: choose one")
    if cfg.deepspeed.fp16 and not torch.cuda.is_available():
        raise UserError("config key deepspeed.fp16 (--amp) needs a GPU, and none is visible: on CPU train in fp32, "
                        "or with deepspeed.bf16=true (--bf16)")


def deepspeed_config(cfg) -> dict:
    """DeepSpeed's config: defaults, then the user's `deepspeed.config` file (ZeRO offload,
    communication, anything DeepSpeed has; distill/deepspeed_file.py), then what the trainer
    owns (OWNED_KEYS: AdamW, torch's not the fused build, multi-tensor; the ZeRO stage; bf16 or
    fp16; clipping). fp16 scales the loss dynamically (DeepSpeed's loss_scale 0: from 2^16, halved on
    an overflow, whose step is skipped) unless the file says otherwise."""
    check_precision(cfg)
    half = "bf16" if cfg.deepspeed.bf16 else "fp16" if cfg.deepspeed.fp16 else None
    defaults = {
        "fp16": {"loss_scale": 0, "initial_scale_power": 16},
        # DeepSpeed >= 0.18 casts parameters only; BatchNorm's running statistics (TinyViT,
        # cifar_cnn) must follow them, or batch_norm refuses the mixed dtypes.
        **({"data_types": {"buffer_dtype": half}} if half else {}),
        "steps_per_print": 1 << 30,  # we print our own progress
    }
    owned = {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,  # no train_batch_size: it pins the world size
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.optim.lr, "betas": cfg.optim.betas,
                                                  "weight_decay": cfg.optim.weight_decay, "torch_adam": True,
                                                  # torch's default on GPUs; on CPU tensors torch picks its per-tensor
                                                  # loop, ~20 % slower a step for the same update bit for bit
                                                  "foreach": True}},
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": cfg.deepspeed.bf16},
        "fp16": {"enabled": cfg.deepspeed.fp16},
        "gradient_clipping": cfg.deepspeed.grad_clip,
    }
    from distill.config_tree import merged
    from distill.deepspeed_file import merge_under, read_deepspeed_file

    if not cfg.deepspeed.config:
        return merged(defaults, owned)
    user = merged(defaults, read_deepspeed_file(cfg.deepspeed.config))
    return merge_under(user, owned, OWNED_KEYS, cfg.deepspeed.config)


def build_engine(cfg, model, steps_per_epoch: int, schedule_steps: int):
    """The DeepSpeed engine: weight decay off for norms, biases and the model's no_weight_decay
    names, warm-up + cosine stepped once per optimizer step."""
    import deepspeed
    from timm.optim import param_groups_weight_decay

    inner = model.model
    no_decay = inner.no_weight_decay() if hasattr(inner, "no_weight_decay") else ()
    groups = param_groups_weight_decay(inner, cfg.optim.weight_decay, no_decay)
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    min_ratio = cfg.optim.min_lr / cfg.optim.lr

    def schedule(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, warmup_steps, schedule_steps, min_ratio))

    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=deepspeed_config(cfg),
                                           lr_scheduler=schedule)
    engine.checkpoint_engine = SafeCheckpointFiles(engine.checkpoint_engine)
    if cfg.train.compile:  # compiles on the first step (minutes on a CPU); checkpoints stay the eager module's
        engine.compile()
    plain = cfg.deepspeed.zero_stage == 0 and compute_dtype(cfg) == torch.float32  # DeepSpeed keeps the parameters
    if plain and engine.dp_world_size == 1:
        # One rank has nothing to average: DeepSpeed's all-reduce would still flatten, copy and
        # divide by 1 every gradient each step (~3 % of a CPU step); the gradients are the same.
        engine.enable_backward_allreduce = False
    if plain:
        # Channels-last convolution weights: cifar_cnn trains ~1.1-1.3x faster with oneDNN here. Only
        # after initialize (it broadcasts parameters as flat bytes) and only where DeepSpeed keeps the
        # parameters themselves (ZeRO 1-3 and its bf16 optimizer make them views of flat buffers).
        inner.to(memory_format=torch.channels_last)
    return engine


class Checkpoints:
    """Save and resume a run's engine state under `directory` (see the module docstring)."""

    def __init__(self, engine, directory: Path, rank: int):
        self.engine, self.directory, self.rank = engine, Path(directory), rank
        self.saved_at: int | None = None  # global step of the newest checkpoint of this process
        self.loaded_from: str | None = None

    def resume(self) -> Position | None:
        """Load the checkpoint that `latest` names; None when there is none."""
        if not (self.directory / "latest").is_file():
            return None
        path, state = self.engine.load_checkpoint(str(self.directory))
        if path is None:
            raise OSError(f"could not load the checkpoint named in {self.directory / 'latest'}: delete "
                          f"{self.directory} or set output.resume=none")
        self.saved_at, self.loaded_from = state["global_step"], path
        # checkpoints written before wall_s was kept restart the clock at 0
        return Position(state["epoch"], state["step_in_epoch"], state["global_step"], state.get("wall_s", 0.0))

    def save(self, at: Position) -> None:
        tag = f"step{at.global_step}"
        try:
            self.engine.save_checkpoint(str(self.directory), tag=tag, client_state=asdict(at), save_latest=False)
            torch.distributed.barrier()  # every rank's files of this tag are complete
            failpoint("checkpoint:latest")  # crash tests: files written, `latest` not yet moved
            if self.rank == 0:  # DeepSpeed writes `latest` in place; a rename cannot leave it half-written
                atomic_write(self.directory / "latest", tag.encode())
        except OSError as e:
            shutil.rmtree(self.directory / tag, ignore_errors=True)  # half a tag is no checkpoint
            raise UserError(unwritable(self.directory.parent, f"checkpoint {tag}", e, self.saved_at)) from None
        if self.rank == 0:
            self._prune(at.global_step)
        self.saved_at = at.global_step

    def _prune(self, newest: int) -> None:
        """Drop all but the newest tags (a later-numbered one may be a killed run's half-save: leave it)."""
        older = sorted(int(p.name[4:]) for p in self.directory.glob("step*")
                       if p.is_dir() and int(p.name[4:]) < newest)
        for step in older[: max(len(older) - (KEEP_CHECKPOINTS - 1), 0)]:
            shutil.rmtree(self.directory / f"step{step}", ignore_errors=True)


def unwritable(out_dir: Path, what: str, error: OSError, resumable: int | None = None) -> str:
    """The one line for an OS error while a run writes `what` into output.dir `out_dir`."""
    then = (f"re-run the same command to resume from step {resumable}" if resumable is not None
            else "re-run the same command")
    return (f"output.dir {out_dir}: cannot write {what} ({error.strerror or type(error).__name__}): free space, "
            f"fix the folder's permissions or choose another output.dir, then {then}")


def export_state_dict(engine, zero_stage: int, ckpt_dir: Path) -> dict:
    """The model's weights as a plain fp32 state_dict (rank 0, after the last checkpoint).

    ZeRO 0-2 keep whole weights in the module: under bf16 those are the bf16 weights the
    model computed (and was evaluated) with, upcast. ZeRO-3 partitions them, so its
    module state_dict is empty: DeepSpeed's documented consolidation rebuilds the fp32
    weights from the checkpoint files of every rank instead.
    """
    if zero_stage < 3:
        state = engine.module.model.state_dict()
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        full = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir))
        state = {k.removeprefix("model."): v for k, v in full.items()}
    return {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu() for k, v in state.items()}
