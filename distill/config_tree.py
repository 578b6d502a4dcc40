"""A tree of dataclasses built from a nested dict (parsed YAML), strictly: every key must be a
field, every value convert losslessly to the field's type (numbers finite, strings not empty)
and lie in its key's `Bounds` (distill/input_rules.py) or set of choices, or a UserError names
the dotted key (with the closest names where one is close). distill/config.py holds the schema
(its dataclasses, bounds and choices) and uses these to load it."""
from __future__ import annotations

import copy
import difflib
import math
import types
import typing
from dataclasses import fields, is_dataclass

from distill.input_rules import check_bounds
from teacher_logits.errors import UserError


def did_you_mean(word, names, n: int = 3) -> str:
    """' (did you mean a, b?)' for the names closest to `word`, or ''."""
    close = difflib.get_close_matches(str(word), [str(name) for name in names], n=n, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def get_dotted(cfg, key: str):
    """The value of dotted `key` in a built config (nested dataclasses)."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def set_dotted(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = tree
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"config key {'.'.join(parents[:depth + 1])} is a value, not a section: cannot set {key}")
        node = child
    node[last] = value


def merged(under: dict, over: dict) -> dict:
    """`under` with `over` written on top, section by section (neither is changed)."""
    out = copy.deepcopy(under)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build(cls, tree, prefix: str, choices: dict, bounds: dict):
    if not isinstance(tree, dict):
        raise UserError(f"config key {prefix.rstrip('.')}: expected a section (mapping), got {tree!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in tree:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (valid: {', '.join(names)})"
            raise UserError(f"unknown config key {prefix}{key}{hint}")
    values = {}
    for name in tree:
        dotted, kind = prefix + name, hints[name]
        if is_dataclass(kind):
            values[name] = build(kind, tree[name], dotted + ".", choices, bounds)
            continue
        values[name] = coerce(tree[name], kind, dotted)
        allowed = choices[dotted]() if callable(choices.get(dotted)) else choices.get(dotted)
        if allowed is not None and values[name] not in allowed:
            raise UserError(f"config key {dotted}: expected one of {', '.join(map(str, allowed))}, "
                            f"got {values[name]!r}{did_you_mean(values[name], allowed)}")
        if dotted in bounds:
            check_bounds(values[name], bounds[dotted], f"config key {dotted}")
    return cls(**values)


def dotted_keys(cls, prefix: str = "") -> list[str]:
    """Every leaf key of a dataclass tree, dotted: ['data.dataset', 'data.root', ...]."""
    hints = typing.get_type_hints(cls)
    return [key for f in fields(cls) for key in (dotted_keys(hints[f.name], f"{prefix}{f.name}.")
                                                 if is_dataclass(hints[f.name]) else [prefix + f.name])]


def closest(name: str, keys: list[str]) -> str | None:
    """The dotted key that a flag-like `name` ('data-root', 'warmup-epochs', 'warmup') most
    likely means: the whole key spelled with '_', then its last part, then the only last part
    starting with it, then the closest spelling; None if nothing is close."""
    name = name.replace("-", "_").lower()
    whole = {key.replace(".", "_"): key for key in keys}
    last = {key: key.rsplit(".", 1)[-1] for key in keys}
    for matches in ([whole[name]] if name in whole else [], [k for k in keys if last[k] == name],
                    [k for k in keys if last[k].startswith(name)]):
        if len(matches) == 1:
            return matches[0]
    spelled = difflib.get_close_matches(name, [*whole, *last.values()], n=1, cutoff=0.75)
    if not spelled:
        return None
    return whole.get(spelled[0]) or next(k for k in keys if last[k] == spelled[0])


def coerce(value, kind, key: str):
    """`value` as type `kind`, or a ValueError naming `key`. Only lossless conversions."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None, X | list[X] | None
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return coerce(value, option, key)
            except ValueError:
                pass
        try:
            return coerce(value, options[-1], key)
        except ValueError:
            if len(options) == 1:
                raise
        raise UserError(f"config key {key}: expected {' or '.join(map(type_name, options))}, got {value!r}")
    if typing.get_origin(kind) is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key}: expected a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is dict and isinstance(value, dict):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and not isinstance(value, bool):
        # YAML 1.1 reads `3e-4` (no dot) as a string; accept any string float() accepts.
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is not None and not math.isfinite(number):
            raise UserError(f"config key {key}: expected a finite number, got {value!r}")
        if number is not None:
            return number
    if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        if not str(value).strip():
            raise UserError(f"config key {key}: empty; give a value, or null to leave it unset")
        return str(value)
    raise UserError(f"config key {key}: expected {type_name(kind)}, got {value!r}")


def type_name(kind) -> str:
    """'str', 'list[str]': how a type reads in an error message."""
    return kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
