"""Model names asked of timm's registry before anything is built or downloaded.

A name is `arch` or `arch.tag` (timm's pretrained tags: `tiny_vit_5m_224.dist_in22k`). The
architecture must be registered (ours by importing distill.models, the rest by timm), the tag
must be one timm lists for it, and `pretrained=True` needs a tag that has weights. Each miss
is a UserError naming the config key or flag, with the closest names: `check_model_name`
answers from the registry's tables, not from the text of timm's exceptions, so a config is
refused at load time instead of with timm's traceback minutes later.
"""
from __future__ import annotations

import timm
import timm.models

from distill.config_tree import did_you_mean
from teacher_logits.errors import UserError


def has_weights(cfg) -> bool:
    """Whether a pretrained cfg points at weights timm can load."""
    return bool(cfg.url or cfg.hf_hub_id or cfg.file or cfg.state_dict)


def check_model_name(name: str, key: str, pretrained: bool = False, aliases: dict | None = None) -> None:
    """Refuse `name` (given as `key`, e.g. 'config key model.name' or '--teacher') unless timm
    can build it, and with `pretrained` download weights for it. `aliases` maps short names to
    timm's (tiny_vit_5m -> tiny_vit_5m_224). Ours are registered by importing distill.models."""
    aliases = aliases or {}
    short, _, tag = str(name).partition(".")
    arch = aliases.get(short, short)
    if not timm.is_model(arch):
        known = [*aliases, *timm.list_models()]
        raise UserError(f"{key}: unknown model {name!r}{did_you_mean(short, known)}; search with "
                        "timm.list_models('*pattern*')")
    cfgs = {full.partition(".")[2]: cfg for full, cfg in timm.models.get_arch_pretrained_cfgs(arch).items()}
    if tag and tag not in cfgs:
        listed = ", ".join(t for t in cfgs if t) or "none"
        raise UserError(f"{key}: {arch} has no pretrained tag {tag!r}{did_you_mean(tag, cfgs)}; its tags: {listed}")
    cfg = cfgs.get(tag) if tag else timm.models.get_pretrained_cfg(arch)  # timm's default tag
    if pretrained and (cfg is None or not has_weights(cfg)):
        with_weights = [f"{arch}.{t}" for t, c in cfgs.items() if t and has_weights(c)]
        other = f" (tags with weights: {', '.join(with_weights)})" if with_weights else ""
        raise UserError(f"{key}: timm has no pretrained weights for {name}{other}; start from a file instead "
                        "(--checkpoint FILE, model.init=FILE or RUN/final), or leave pretrained off")


def check_model_kwargs(name: str, kwargs: dict, build, key: str) -> None:
    """Refuse extra arguments (model.kwargs) that architecture `name` does not accept, or
    whose values it rejects, by calling `build(**kwargs)` on the meta device (no memory, no
    weights): a TypeError is an unknown argument, a ValueError or AssertionError a value it
    refuses."""
    import torch

    for arg in kwargs:
        if not str(arg).isidentifier():  # `{depth:2}` is YAML for {"depth:2": None}
            raise UserError(f"{key}: {arg!r} is not an argument name "
                            "(YAML needs a space after each colon: model.kwargs={depth: 2})")
    if not kwargs:
        return
    try:
        with torch.device("meta"):
            build(**kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise UserError(f"{key}: {name} does not accept {kwargs} ({reason}); pass only arguments its "
                        "constructor takes, with values it allows") from None
    except (NotImplementedError, RuntimeError):
        pass  # an architecture that cannot be built on the meta device: the real build reports
