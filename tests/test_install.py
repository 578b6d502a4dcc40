"""A non-editable install (`pip install .`; here into a folder with --target) gives the
programs as console scripts and ships the configs with them: from an empty folder outside the
checkout, each script answers --help and train_student finds README's `configs/...` paths."""
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from helpers import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_console_scripts_and_shipped_configs_work_from_an_installed_copy(tmp_path):
    source, site = tmp_path / "source", tmp_path / "site"  # a copy: pip builds in the tree it is given
    for package in ("distill", "teacher_logits"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(source)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1"}

    def run(*cmd):
        proc = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    assert run(sys.executable, "-c", "import distill; print(distill.__file__)").startswith(str(site))  # the copy
    assert len(SCRIPTS) == 8
    for script in SCRIPTS:
        assert "usage:" in run(str(site / "bin" / script), "--help"), script
    printed = run(str(site / "bin" / "tvd-train-student"), "--config", "configs/smoke_digits.yaml", "--print-config")
    assert yaml.safe_load(printed)["data"]["dataset"] == "digits"  # read from the installed package
