"""The rules an input obeys, each written once: a number in its range (`Bounds`), a positive
count, an existing file. The programs check their flags with them and the config schema
(distill/config.py, built by distill/config_tree.py) its keys, so a flag and the config key it
stands for refuse the same values in the same words. Each refusal is a UserError naming the
input (`name`: '--epochs', 'config key train.epochs') and, where one helps, the fix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from teacher_logits.errors import UserError


@dataclass(frozen=True)
class Bounds:
    """The valid range of a number: [low, high], or open at an end ("(0, 10]")."""
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        low, high = (str(x) if isinstance(x, int) else f"{x:g}" for x in (self.low, self.high))
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def check_bounds(value, bounds: Bounds, name: str) -> None:
    """A number (or each of a list of numbers) finite and in `bounds`; None (unset) passes."""
    for n, number in enumerate(value if isinstance(value, list) else [value]):
        finite = not isinstance(number, float) or math.isfinite(number)  # ints are, however long
        if number is not None and not (finite and number in bounds):
            where = f"{name}[{n}]" if isinstance(value, list) else name
            raise UserError(f"{where}: must lie in {bounds}, got {number!r}")


def check_positive(value, name: str) -> None:
    """A count above 0 (epochs, a batch size, a limit); None (unset) passes."""
    if value is not None and value <= 0:
        raise UserError(f"{name} must be positive, got {value}")


def check_file(path, name: str, fix: str) -> None:
    """`path` an existing file (a checkpoint, a weights file); None (not given) passes."""
    if path is not None and not Path(path).is_file():
        raise UserError(f"{name} {path}: no such file; {fix}")
