"""Experiment configs: a YAML file plus dotted `key=value` overrides, checked against a schema.

The schema is the dataclasses below; their defaults are the defaults. Every key a
file or an override names must exist in the schema and have its type, so a typo
fails at start-up with the dotted key in the message instead of being ignored.

    cfg = load_config("configs/smoke_cifar10.yaml", ["optim.lr=1e-3", "data.root=/data"])
    cfg.optim.lr              # 0.001
    resolved_config(cfg)      # plain nested dict, for W&B and the exported config.yaml

Override values are parsed with yaml.safe_load, so `train.epochs=3` is an int,
`data.skip_md5=true` a bool, `optim.betas=[0.9,0.95]` a list and `logits.store=null` None.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from distill.config_tree import build, closest, dotted_keys, get_dotted, set_dotted
from distill.datasets import DATASETS
from distill.device_replay import REPLAY_DEVICES
from distill.input_rules import Bounds
from distill.loss import MODES, TEACHER_TARGETS
from distill.recipes import default_input_size, recipe_names
from teacher_logits.errors import UserError


@dataclass
class Data:
    dataset: str = "cifar10"  # or digits, cifar100, stl10, folder (root/train/<class>/<image>, root/val/...)
    root: str | None = None  # torchvision layout, or the image folder; not needed for `digits`
    skip_md5: bool = False  # accept a local re-created copy (see distill.datasets)
    recipe: str = "cifar"  # augmentation of the training views; a store must have been made with it
    img_size: int | None = None  # student input (the model resizes views to it); for an any-size recipe
    # (imagenet) also the view size without a store. None: such a recipe's native size (224), else 32
    limit: int | None = None  # first N training samples; None: what the store covers, or all
    test_limit: int | None = None  # evaluate on a fixed random N of the test split; None: all
    workers: int = 0  # DataLoader processes building views
    replay_device: str = "auto"  # auto: a store of counter view parameters (recipes none, crop, cifar)
    # batch-wise on the GPU, or on the CPU in this process (distill/device_replay.py), else in DataLoader
    # workers; cuda: any store of those recipes on the GPU, batch-wise; cpu: in DataLoader workers


@dataclass
class Logits:
    store: str | None = None  # a store from tools/save_logits.py; required for loss.mode kd
    epochs: int | None = None  # train from the store's first N epochs, cycled (e.g. 10 of 90); None: all


@dataclass
class Model:
    name: str = "cifar_vit"
    kwargs: dict = field(default_factory=dict)  # extra arguments for timm.create_model, e.g. {depth: 2}
    init: str | None = None  # start from RUN/final, a .safetensors or state_dict: resampled, head re-made if needed
    pretrained: bool = False  # start from timm's pretrained weights (downloads; name.tag picks a set)


@dataclass
class Loss:
    mode: str = "kd"  # kd: store targets; scratch: labels only; online: teacher run in the loop
    temperature: float = 1.0
    alpha: float = 0.0  # weight of the hard-label cross-entropy (kd and online modes)
    label_smoothing: float = 0.0
    teacher_target: str = "soft"  # soft: KL to q_T; hard: CE to the teacher's argmax (DeiT)
    standardize: bool = False  # z-score both sides' logits before the temperature (Sun et al. 2024)


@dataclass
class Teacher:  # loss.mode online only
    name: str | list[str] | None = None  # a list: an ensemble (mean of the teachers' probabilities)
    checkpoint: str | list[str] | None = None  # one per teacher.name, in the same order
    pretrained: bool = False
    weights: list[float] | None = None  # ensemble weights, one positive number per teacher; None: equal


@dataclass
class Optim:
    lr: float = 1e-3  # peak learning rate, per optimizer step of the whole batch
    weight_decay: float = 0.05  # not applied to biases, norms and embeddings (timm's rule)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 0.0  # linear warm-up, then cosine decay to min_lr
    min_lr: float = 1e-5


@dataclass
class Train:
    epochs: int = 1
    batch_size: int = 64  # per rank and micro-step
    grad_accum: int = 1
    eval_every: int = 1  # epochs; the last epoch is always evaluated
    checkpoint_every: int = 0  # optimizer steps; 0: only at epoch ends
    log_every: int = 10  # optimizer steps between W&B points
    seed: int = 0
    max_steps: int | None = None  # stop after this many optimizer steps; the schedule ignores it
    compile: bool = False  # torch.compile the student (DeepSpeed's engine.compile): minutes up front, for long runs


@dataclass
class Output:
    dir: str | None = None
    resume: str = "auto"  # auto: continue from the newest complete checkpoint in dir, if it is a run of this
    # config; none: start over; continue: resume a run of another config deliberately (distill/run_folder.py)
    overwrite: bool = False  # write into a dir that holds files this trainer did not write
    license: str | None = None  # the export's licence (config.json, model card), e.g. apache-2.0; None: none claimed


@dataclass
class Wandb:
    enabled: bool = True
    project: str = "tinyvit-distill"
    entity: str | None = None
    name: str | None = None
    mode: str | None = None  # None: $WANDB_MODE, else offline without an API key, else online


@dataclass
class DeepSpeed:
    zero_stage: int = 0
    bf16: bool = False
    fp16: bool = False  # GPUs without bf16 (V100, T4): fp16 with dynamic loss scaling
    grad_clip: float = 1.0  # 0: off
    config: str | None = None  # a DeepSpeed JSON (ZeRO offload, ...) merged under the keys above (distill/engine.py)
    log_level: str = "warning"  # DeepSpeed's own logging in the ranks; info restores its INFO lines


@dataclass
class Config:
    data: Data = field(default_factory=Data)
    logits: Logits = field(default_factory=Logits)
    model: Model = field(default_factory=Model)
    loss: Loss = field(default_factory=Loss)
    teacher: Teacher = field(default_factory=Teacher)
    optim: Optim = field(default_factory=Optim)
    train: Train = field(default_factory=Train)
    output: Output = field(default_factory=Output)
    wandb: Wandb = field(default_factory=Wandb)
    deepspeed: DeepSpeed = field(default_factory=DeepSpeed)


CHOICES = {
    "data.dataset": DATASETS,
    "data.recipe": recipe_names,  # the registry, asked when a config is checked
    "data.replay_device": REPLAY_DEVICES,
    "loss.mode": tuple(MODES),
    "loss.teacher_target": TEACHER_TARGETS,
    "output.resume": ("auto", "none", "continue"),
    "wandb.mode": (None, "online", "offline", "disabled"),
    "deepspeed.zero_stage": (0, 1, 2, 3),
    "deepspeed.log_level": ("debug", "info", "warning", "error", "critical"),
}


BIG = 2**31 - 1  # counts a run can hold: samples, steps, epochs
# The valid range of every number in the schema (of each element of a list); load_config
# refuses anything outside, and anything not finite, naming the key.
BOUNDS = {
    "data.img_size": Bounds(8, 4096),
    "data.limit": Bounds(1, BIG),
    "data.test_limit": Bounds(1, BIG),
    "data.workers": Bounds(0, 512),
    "logits.epochs": Bounds(1, 100_000),
    "loss.temperature": Bounds(0, 1000, low_open=True),
    "loss.alpha": Bounds(0, 1),
    "loss.label_smoothing": Bounds(0, 1, high_open=True),
    "teacher.weights": Bounds(0, 1e6, low_open=True),
    "optim.lr": Bounds(0, 10, low_open=True),
    "optim.weight_decay": Bounds(0, 10),
    "optim.betas": Bounds(0, 1, high_open=True),
    "optim.warmup_epochs": Bounds(0, 100_000),
    "optim.min_lr": Bounds(0, 10),
    "train.epochs": Bounds(1, 100_000),
    "train.batch_size": Bounds(1, 2**20),
    "train.grad_accum": Bounds(1, 2**16),
    "train.eval_every": Bounds(1, BIG),
    "train.checkpoint_every": Bounds(0, BIG),
    "train.log_every": Bounds(1, BIG),
    "train.seed": Bounds(0, 2**63 - 1),  # mixed into 64-bit seeds (distill.augment.derive_seed)
    "train.max_steps": Bounds(1, BIG),
    "deepspeed.grad_clip": Bounds(0, 1e6),
}


# how errors about an online teacher (or ensemble) name its config keys
TEACHER_KEYS = {"name": "teacher.name", "checkpoint": "teacher.checkpoint", "pretrained": "teacher.pretrained=true",
                "weights": "teacher.weights", "prefix": "config key "}


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"  # the repository's configs/ links here


def config_file(path: str | Path) -> Path:
    """`path`, or where no such file exists, the shipped config it names (`configs/NAME.yaml`
    as README writes it): README's commands run from any folder after `pip install`."""
    given = Path(path)
    shipped = SHIPPED_CONFIGS / given.as_posix().removeprefix("configs/")
    return shipped if not given.is_file() and shipped.is_file() else given


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The config in `path` (None: all defaults; see config_file) with `key=value` overrides
    applied in order."""
    tree = {}
    if path is not None:
        path = config_file(path)
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config {path}: not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(tree, dict):
            raise UserError(f"config {path}: expected a mapping of sections, got {type(tree).__name__}")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected dotted key=value, e.g. optim.lr=1e-3")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise UserError(f"override {item!r}: the value of config key {key.strip()} is not valid YAML "
                            "(quote it, or check brackets: e.g. optim.betas=[0.9,0.99])") from None
        set_dotted(tree, key.strip(), value)
    cfg = build(Config, tree, "", CHOICES, BOUNDS)
    if cfg.data.img_size is None:
        cfg.data.img_size = default_input_size(cfg.data.recipe)
    check_names(cfg)
    return cfg


def closest_key(name: str) -> str | None:
    """The config key a flag name most likely means (`--warmup-epochs` -> optim.warmup_epochs)."""
    return closest(name, dotted_keys(Config))


def check_names(cfg: Config) -> None:
    """What one key's type and bounds cannot say: the model and teacher names exist in timm's
    registry (with their pretrained tags, and weights where pretrained is asked), the
    architecture accepts model.kwargs, and optim.betas holds two numbers."""
    import timm

    from distill.models.registry import check_model_kwargs, check_model_name
    from distill.models.students import ALIASES, create_student, is_student  # registers our models too

    check_model_name(cfg.model.name, "config key model.name", cfg.model.pretrained, ALIASES)
    teachers = cfg.teacher.name if isinstance(cfg.teacher.name, list) else [cfg.teacher.name]
    for name in filter(None, teachers):
        check_model_name(name, "config key teacher.name", cfg.teacher.pretrained)
    name, size = cfg.model.name, cfg.data.img_size
    build = (lambda **kw: create_student(name, 10, size, **kw)) if is_student(name) else \
        (lambda **kw: timm.create_model(name, **kw))
    check_model_kwargs(name, cfg.model.kwargs, build, "config key model.kwargs")
    if len(cfg.optim.betas) != 2:
        raise UserError(f"config key optim.betas: expected two numbers, got {cfg.optim.betas}")


def resolved_config(cfg: Config) -> dict:
    return asdict(cfg)


def check_runnable(cfg: Config) -> None:
    """Requirements between keys, checked by the trainer (a config file may leave paths unset)."""
    if cfg.output.dir is None:
        raise UserError("config key output.dir is required: where checkpoints and the final model go")
    mode = MODES[cfg.loss.mode]
    if mode.requires and get_dotted(cfg, mode.requires) is None:
        raise UserError(f"config key {mode.requires} is required for loss.mode {cfg.loss.mode}{mode.hint}")
    if mode.teacher == "online":
        from distill.models.teachers import ensemble_spec

        ensemble_spec(cfg.teacher.name, cfg.teacher.checkpoint, cfg.teacher.pretrained, cfg.teacher.weights,
                      TEACHER_KEYS, require_weights=False)  # counts and weights; a random teacher only warns
    if cfg.data.dataset != "digits" and cfg.data.root is None:
        raise UserError(f"config key data.root is required for dataset {cfg.data.dataset}")

