"""The teacher stage's typed job: tools/save_logits.py turns every flag into a field of
`LabelJob` (a new flag cannot be silently dropped), and `run` takes the job as given, deriving
what a store decides (records per shard) into a copy of its own.
"""
from dataclasses import FrozenInstanceError, fields

import pytest

# the teacher's flags make the job's TeacherSpec; local_rank is the launcher's
TEACHER_FLAGS = {"teacher", "checkpoint", "pretrained", "teacher_weights"}


def parsed(base, out, *extra):
    from distill.programs.save_logits import parse_args

    argv = [str(a) for a in base]
    argv[argv.index("--out") + 1] = str(out)
    return parse_args([*argv, *extra])


def test_every_save_logits_flag_is_a_field_of_the_job(base, tmp_path):
    from distill.programs.save_logits import label_job
    from distill.teacher_stage import LabelJob

    args = parsed(base, tmp_path / "s", "--teacher-weights", "3")
    job = label_job(args)
    flags = set(vars(args)) - TEACHER_FLAGS - {"local_rank"}
    assert {f.name for f in fields(LabelJob)} == flags | {"teacher"}
    assert all(getattr(job, flag) == getattr(args, flag) for flag in flags)
    assert job.teacher.names == ("cifar10_resnet20",) and job.teacher.weights == (1.0,)  # normalised
    assert job.teacher.checkpoints == (str(args.checkpoint[0]),) and job.teacher.pretrained is False


@pytest.mark.usefixtures("one_thread")
def test_run_leaves_the_job_as_given(base, tmp_path):
    import json

    from distill.programs.save_logits import label_job
    from distill.teacher_stage import default_shard_records, run

    job = label_job(parsed(base, tmp_path / "s"))
    before = repr(job)
    assert run(job)["labelled"] == 40
    assert repr(job) == before and job.shard_records is None
    settings = json.loads((tmp_path / "s" / "manifest.json").read_text())["settings"]
    assert settings["shard_records"] == default_shard_records(40, job.chunk_records)  # derived into a copy
    with pytest.raises(FrozenInstanceError):
        job.workers = 1
