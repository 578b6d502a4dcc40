"""Run folders are not trusted: a planted checkpoint is refused unrun, a folder of someone
else's files is not written into, and a resume continues only a run of the same training
config (distill/run_folder.py, distill/engine.py's weights-only loads)."""
import json
import pickle

import pytest
import yaml
from helpers import run_program, user_error

TINY = ["--config", "configs/smoke_digits.yaml", "logits.store=null", "loss.mode=scratch", "wandb.enabled=false",
        "train.batch_size=64", "data.test_limit=64", "train.epochs=1", "data.workers=0"]


def train(out, *extra):
    """A run expected to be refused: its exit code and output."""
    return run_program("train_student", [*TINY, f"output.dir={out}", *extra])


def train_ok(out, *extra) -> str:
    """A run expected to train: what it printed."""
    return run_program("train_student", [*TINY, f"output.dir={out}", *extra], check=True).out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch run (checkpoint and export), trained once for the module."""
    out = tmp_path_factory.mktemp("run") / "run"
    run_program("train_student", [*TINY, f"output.dir={out}"], check=True)
    return out


def copy_of(run, tmp_path):
    import shutil

    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


class Planted:
    """Pickles as a call to os.system: what a hostile checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_planted_checkpoint_is_refused_and_never_runs(finished_run, tmp_path, no_tvd_debug):
    run = copy_of(finished_run, tmp_path)
    tag = (run / "checkpoints" / "latest").read_text().strip()
    marker = tmp_path / "code-ran"
    with open(run / "checkpoints" / tag / "mp_rank_00_model_states.pt", "wb") as f:
        pickle.dump({"module": Planted(marker)}, f)
    r = train(run, "train.epochs=2", "output.resume=continue")
    user_error(r, "mp_rank_00_model_states.pt", "not loaded", "output.resume=none")
    assert not marker.exists(), "the planted code ran"


def test_folder_of_other_files_is_not_written_into(tmp_path, no_tvd_debug):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my: own notes\n")
    (out / "metrics.json").write_text("{}")
    r = train(out)
    user_error(r, str(out), "did not write", "config.yaml", "output.overwrite=true")
    assert (out / "config.yaml").read_text() == "my: own notes\n" and sorted(p.name for p in out.iterdir()) == \
        ["config.yaml", "metrics.json"]


def test_resume_with_another_config_is_refused_naming_the_keys(finished_run, tmp_path, no_tvd_debug):
    run = copy_of(finished_run, tmp_path)
    before = (run / "final" / "config.yaml").read_text()
    r = train(run, "train.batch_size=32", "optim.lr=0.5")
    line = user_error(r, "another config", "train.batch_size: 64 != 32", "optim.lr", "output.resume=continue")
    assert "wandb" not in line
    assert (run / "final" / "config.yaml").read_text() == before, "the export still describes what was trained"


def test_keys_that_cannot_change_the_result_may_differ(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path)
    train_ok(run, "train.epochs=2", "train.log_every=3", "data.test_limit=32", "output.resume=continue")
    exported = yaml.safe_load((run / "final" / "config.yaml").read_text())
    assert exported["train"]["epochs"] == 2 and exported["continued"] == [["train.epochs: 1 != 2"]]
    assert json.loads((run / "run.json").read_text())["continued"] == [["train.epochs: 1 != 2"]]
    # result-free keys; a run made before replay_device's default became auto resumes under it
    again = train_ok(run, "train.epochs=2", "train.log_every=7", "wandb.name=other", "data.replay_device=cpu")
    assert "this run has finished" in again  # the same training config: nothing to redo


def test_a_finished_runs_command_reports_it_in_seconds_and_writes_nothing(finished_run, tmp_path):
    """As a user re-runs it: a fresh process, W&B on (offline); --reevaluate evaluates on purpose."""
    import time

    from helpers import run_tool, snapshot

    run = copy_of(finished_run, tmp_path)
    before, started = snapshot(run), time.time()
    proc = run_tool("distill/train_student.py", *TINY, f"output.dir={run}", "wandb.enabled=true")
    assert time.time() - started < 15
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"this run has finished: top1 {metrics['eval']['top1']:.2f}%" in proc.stdout
    assert str(run / "final") in proc.stdout and "--reevaluate" in proc.stdout
    assert snapshot(run) == before  # no W&B run, no evaluation, final/ untouched
    again = train_ok(run, "--reevaluate")
    assert "resumed from" in again and f"final: top1 {metrics['eval']['top1']:.2f}%" in again


def test_a_run_recorded_before_a_key_existed_is_still_this_configs(finished_run, tmp_path):
    """run.json of an older trainer lacks the keys added since: they compare as their defaults."""
    run = copy_of(finished_run, tmp_path)
    record = json.loads((run / "run.json").read_text())
    for section, key in (("deepspeed", "fp16"), ("deepspeed", "config"), ("output", "license")):
        del record["config"][section][key]
    (run / "run.json").write_text(json.dumps(record))
    assert "this run has finished" in train_ok(run)
    r = train(run, "deepspeed.grad_clip=0.5")  # a key that was recorded still counts
    user_error(r, "another config", "deepspeed.grad_clip")
