"""Every program's --help names each flag's default (timm's and HF's scripts do), the way a
user reads it: the printed text, flag by flag."""
import argparse
import importlib.util
import re

import pytest
from helpers import REPO

PROGRAMS = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("tools/*.py"), *REPO.glob("benchmarks/*.py")]
                  if p.name not in ("__init__.py", "bench_report.py"))
PROGRAMS += ["distill/train_student.py", "distill/programs/list_models.py"]


def parser_of(path: str, monkeypatch) -> argparse.ArgumentParser:
    """The program's parser, caught as its parse function builds it (argparse patched until the
    test ends)."""
    spec = importlib.util.spec_from_file_location(f"help_{path.replace('/', '_')}", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = []

    def capture(self, *args, **kwargs):
        built.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(SystemExit):
        (getattr(module, "parse_args", None) or module.main)([])
    return built[0]


def entries(help_text: str) -> dict[str, str]:
    """Each flag's entry in the printed options list, joined onto one line."""
    found, current = {}, None
    for line in help_text.split("options:", 1)[1].splitlines():
        if re.match(r"^  -", line):
            current = re.findall(r"--[a-z0-9-]+", line.split("  ")[1] if "  " in line[2:] else line)[-1]
            found[current] = line
        elif current:
            found[current] += " " + line.strip()
    return {flag: " ".join(text.split()) for flag, text in found.items()}


@pytest.mark.parametrize("path", PROGRAMS)
def test_help_shows_every_default(path, monkeypatch):
    parser = parser_of(path, monkeypatch)
    printed = entries(parser.format_help())
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or \
                any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            continue
        entry = printed[action.option_strings[-1]]
        shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
        assert shown in entry or re.search(r"\(default[: ]", entry), f"{path}: no default shown: {entry!r}"


USER_PROGRAMS = ["tools/save_logits.py", "tools/train_teacher.py", "tools/evaluate.py", "tools/verify_logits.py",
                 "tools/inspect_logits.py", "tools/demo.py", "distill/train_student.py"]
IMPORTS_AFTER_HELP = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print(sorted(m for m in ("torch", "timm", "torchvision", "deepspeed", "webdataset", "numpy") if m in sys.modules))
"""


def test_help_answers_before_anything_heavy_is_imported():
    """--help answers in well under a second: no program imports torch, timm, torchvision,
    DeepSpeed, webdataset or numpy before it has parsed its flags (each costs seconds)."""
    import subprocess
    import sys

    for path in USER_PROGRAMS:
        proc = subprocess.run([sys.executable, "-c", IMPORTS_AFTER_HELP, str(REPO / path)], capture_output=True,
                              text=True, cwd=REPO, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "[]", (path, proc.stdout[-300:])
