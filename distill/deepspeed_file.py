"""A user's DeepSpeed config file (`deepspeed.config: FILE`), merged with what the trainer owns.

The file reaches every DeepSpeed option the run config does not name (ZeRO offload, bucket
sizes, communication, activation checkpointing...). The keys the trainer sets from the run
config (engine.OWNED_KEYS) stay the trainer's: a file may repeat them with the same value or
Hugging Face's "auto", and one that sets another value is refused naming the config key that
sets it, so one value never hides behind another. The result is checked with DeepSpeed's own
config classes (its pydantic models refuse unknown or mistyped fields of a section), so a bad
file fails at start-up in one line instead of inside `deepspeed.initialize`.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from distill.config_tree import merged
from teacher_logits.errors import UserError

MISSING = object()


def read_deepspeed_file(path: str) -> dict:
    try:
        tree = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config key deepspeed.config: no such file {path}") from None
    except ValueError as e:
        raise UserError(f"config key deepspeed.config: {path} is not valid JSON ({e})") from None
    if not isinstance(tree, dict):
        raise UserError(f"config key deepspeed.config: {path} holds {type(tree).__name__}, not a JSON object")
    return tree


def at(tree: dict, dotted: str):
    """The value at a dotted path of a nested dict, or MISSING."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return MISSING
        tree = tree[part]
    return tree


def without_auto(tree: dict) -> dict:
    """`tree` without Hugging Face's "auto" placeholders (the trainer fills those keys)."""
    return {k: without_auto(v) if isinstance(v, dict) else v for k, v in tree.items() if v != "auto"}


def merge_under(user: dict, owned: dict, owned_keys: dict[str, str], path: str) -> dict:
    """`user`'s settings with the trainer's `owned` ones on top; refused where the file sets an
    owned key (`owned_keys`: DeepSpeed key -> the config key that sets it) to another value."""
    for key, config_key in owned_keys.items():
        theirs, ours = at(user, key), at(owned, key)
        if theirs is not MISSING and theirs != "auto" and theirs != ours:
            raise UserError(f"config key deepspeed.config: {path} sets {key} to {json.dumps(theirs)[:80]}, which the "
                            f"trainer sets from config key {config_key}"
                            f"{f' ({json.dumps(ours)[:80]})' if ours is not MISSING else ''}: "
                            f"set {config_key} instead and remove {key} from the file")
    result = merged(without_auto(user), owned)
    check_with_deepspeed(result, path)
    return result


def check_with_deepspeed(config: dict, path: str) -> None:
    """DeepSpeed's own validation of `config` (its DeepSpeedConfig, as deepspeed.initialize
    builds it), its complaint turned into one line naming the file."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(copy.deepcopy(config))
    except Exception as e:  # pydantic's ValidationError, DeepSpeed's AssertionError / ValueError
        text = " ".join(str(e).split())
        raise UserError(f"config key deepspeed.config: DeepSpeed refuses {path} merged with the run config: "
                        f"{text[:300]}") from None
