"""Bad values for every key of the config schema, and for the programs' number flags.

A seeded property test walks the schema (distill/config.py's dataclasses) and gives every key
wrong types, out-of-range and absurd values (not finite, beyond any real run, empty, near-miss
names): load_config must refuse each with one UserError line that names the key. It runs in
this process (thousands of loads in about a second); three real processes prove the exit code
and that no output folder is created. Part of the bad-input catalogue (docs/reliability.md).
"""
from __future__ import annotations

import dataclasses
import json
import random
import typing

import pytest
from helpers import REPO, run_program, run_tool, user_error

from distill.config import BOUNDS, CHOICES, Config, load_config
from teacher_logits.errors import UserError

pytestmark = pytest.mark.usefixtures("no_tvd_debug")

SEED = 27
NAMES = {"model.name": "cifar_vit", "teacher.name": "cifar10_resnet20"}  # keys whose strings a registry checks


def schema_keys(cls=Config, prefix=""):
    """(dotted key, type) of every leaf of the schema."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield from schema_keys(kind, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, kind


def base_types(kind) -> set:
    """The plain types a key admits: {int}, {str, list} for `str | list[str] | None`, ..."""
    args = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, type(int | None)) else (kind,)
    return {typing.get_origin(a) or a for a in args if a is not type(None)}


def wrong_types(kind, rng) -> list:
    """Values of types the key does not admit (ints and floats pass as strings, losslessly)."""
    admits = base_types(kind)
    candidates = [({"a": rng.randint(1, 9)}, dict in admits), ([{"a": 1}], False), (True, bool in admits),
                  (rng.choice(["three", "fast", "maybe", "yes please"]), str in admits),
                  (round(rng.uniform(1.1, 9.9), 3), bool(admits & {float, str}))]
    return [value for value, admitted in candidates if not admitted]


def out_of_range(key, kind, rng) -> list:
    """Below, above and far beyond the key's bounds, and numbers that are not finite."""
    bounds = BOUNDS.get(key)
    if bounds is None:
        return []
    is_int = int in base_types(kind)
    below = bounds.low - (1 if is_int else rng.uniform(1e-3, 1)) * (0 if bounds.low_open else 1)
    above = bounds.high + (1 if is_int else (0 if bounds.high_open else rng.uniform(1e-3, 1)))
    values = [below, above, bounds.high * 10 ** rng.randint(3, 30) + 1, -rng.randint(1, 10 ** 9)]
    if is_int:
        values = [int(v) for v in values] + [10 ** 30, 10 ** 400]
    else:
        values += [float("nan"), float("inf"), -float("inf")]
    return [[v, v] if key == "optim.betas" else [v] if key == "teacher.weights" else v for v in values]


def bad_strings(key, rng) -> list:
    """Empty strings, near-miss choices and near-miss registry names."""
    values = ["", " " * rng.randint(1, 3)] if str in base_types(dict(schema_keys())[key]) else []
    allowed = CHOICES.get(key)
    allowed = allowed() if callable(allowed) else allowed
    valid = [a for a in (allowed or []) if isinstance(a, str)] or ([NAMES[key]] if key in NAMES else [])
    for word in valid[:2]:
        cut = rng.randrange(len(word))
        values += [word[:cut] + word[cut + 1:] + "x", word.upper() + "!"]
    if key == "model.name":
        values += ["tiny_vit_5m.dist_in22", "cifar_vitt"]
    return values


def cases():
    rng = random.Random(SEED)
    for key, kind in schema_keys():
        for category, values in (("type", wrong_types(kind, rng)), ("range", out_of_range(key, kind, rng)),
                                 ("string", bad_strings(key, rng))):
            for value in values:
                yield key, category, value


def yaml_text(value) -> str:
    """How a user writes `value` on the command line (YAML; .nan and .inf for the non-finite)."""
    if isinstance(value, float) and value != value:
        return ".nan"
    if isinstance(value, float) and abs(value) == float("inf"):
        return "-.inf" if value < 0 else ".inf"
    if isinstance(value, list):
        return "[" + ", ".join(map(yaml_text, value)) + "]"
    return json.dumps(value)


CASES = list(cases())


def test_every_key_of_the_schema_has_bad_values():
    """The test covers the schema as it grows: each key gets wrong types or bad strings, and
    each number key has bounds (add the new key to BOUNDS) and out-of-range values."""
    tried = {key for key, _, _ in CASES}
    assert tried == {key for key, _ in schema_keys()}
    numbers = {key for key, kind in schema_keys() if {int, float} & {*base_types(kind), *typing.get_args(kind)}}
    assert numbers - set(BOUNDS) - set(CHOICES) == set(), "number keys without bounds in distill/config.py BOUNDS"
    assert {key for key, category, _ in CASES if category == "range"} == set(BOUNDS)


def test_every_bad_value_of_every_key_is_refused_naming_the_key():
    """Seeded: every case refused with a UserError whose one line names the key; no other error."""
    failures = []
    for key, category, value in CASES:
        override = f"{key}={yaml_text(value)}"
        try:
            load_config(None, [override])
            failures.append(f"{override}: accepted")
        except UserError as e:
            message = str(e)
            if key not in message or "\n" in message:
                failures.append(f"{override}: {message!r}")
        except Exception as e:  # noqa: BLE001  the point: nothing else may escape
            failures.append(f"{override}: {type(e).__name__}: {e}")
    assert not failures, f"{len(failures)} of {len(CASES)} cases:\n" + "\n".join(failures[:20])
    assert len(CASES) > 200


@pytest.mark.parametrize("override, message", [
    ("model.name=tiny_vit_5m.dist_in22", "config key model.name: tiny_vit_5m_224 has no pretrained tag 'dist_in22' "
                                         "(did you mean dist_in22k"),
    ("loss.mode=kdd", "config key loss.mode: expected one of kd, scratch, online, got 'kdd' (did you mean kd?)"),
    ("data.recipe=cifarr", "(did you mean cifar"),
    ("model.kwargs={dept: 2}", "config key model.kwargs: cifar_vit does not accept {'dept': 2}"),
    ("model.kwargs={embed_dim: 30, num_heads: 4}", "config key model.kwargs: cifar_vit does not accept"),
    ("optim.lr=.nan", "config key optim.lr: expected a finite number, got nan"),
    ("train.batch_size=1000000000", "config key train.batch_size: must lie in [1, 1048576], got 1000000000"),
    ("loss.label_smoothing=1", "config key loss.label_smoothing: must lie in [0, 1), got 1.0"),
    ("output.dir=''", "config key output.dir: empty"),
])
def test_named_config_refusals(override, message):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_config_file_values_are_checked_too(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epochs: 1.0e+40\n")
    with pytest.raises(UserError, match=r"config key train.epochs: expected int, got 1e\+40"):
        load_config(path)


def train(*args):
    return run_tool("distill/train_student.py", *args, check=False, timeout=120)


def test_bad_values_exit_2_without_an_output_folder_subprocess(tmp_path):
    """The real program: exit 2, one line naming the key, no output.dir (one process: the
    property test above covers the values in-process, through the same load_config)."""
    out = tmp_path / "run"
    proc = train("--config", REPO / "configs/smoke_digits.yaml", "wandb.enabled=false", f"output.dir={out}",
                 "loss.mode=scratch", "optim.betas=[0.9, 1.5]")
    user_error(proc, "config key optim.betas[1]: must lie in [0, 1), got 1.5")
    assert not out.exists()


def test_mistyped_pretrained_tag_in_process(tmp_path):
    """The issue's example: `tiny_vit_5m.dist_in22` was a RuntimeError traceback from timm."""
    out = tmp_path / "run"
    r = run_program("train_student", ["--config", REPO / "configs/smoke_digits.yaml", "loss.mode=scratch",
                                      "model.name=tiny_vit_5m.dist_in22", "model.pretrained=true",
                                      f"output.dir={out}", "wandb.enabled=false"])
    user_error(r, "config key model.name", "'dist_in22'", "did you mean dist_in22k")
    assert not out.exists()
