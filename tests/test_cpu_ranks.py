"""CPU ranks as a first-class way to run (distill/distributed.py, distill/engine.py): each rank
takes its share of the cores for torch's threads unless OMP_NUM_THREADS says otherwise,
DataLoader workers are capped to that share (said once), and a warm-up that is not shorter
than training is warned about naming both keys. The 2-rank launcher run that prints the threads it
took is tests/test_train_student.py's `deepspeed_run`."""
import pytest
import torch

from distill.distributed import capped_workers, set_rank_threads, usable_cores


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("launcher_variable", ["LOCAL_SIZE", "LOCAL_WORLD_SIZE"])  # deepspeed's, torchrun's
def test_each_rank_takes_its_share_of_the_cores(launcher_variable, monkeypatch, threads_restored):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv(launcher_variable, str(usable_cores() * 2))  # more ranks than cores: one thread each
    assert set_rank_threads() == 1
    monkeypatch.setenv(launcher_variable, "1")
    assert set_rank_threads() == usable_cores()


def test_omp_num_threads_is_the_users_choice(monkeypatch, threads_restored):
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LOCAL_SIZE", "1")
    assert set_rank_threads() == 1 and torch.get_num_threads() == 1


def test_workers_are_capped_to_the_cores_once(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_SIZE", "1")
    assert capped_workers(0, "data.workers", say=True) == 0
    assert capped_workers(usable_cores() + 3, "data.workers", say=False) == usable_cores()
    assert capsys.readouterr().out == ""  # the ranks that do not say it
    assert capped_workers(usable_cores() + 3, "data.workers", say=True) == usable_cores()
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and f"data.workers: {usable_cores() + 3} DataLoader workers capped to" in line


@pytest.mark.parametrize("warmup, epochs, warned", [(3, 2, True), (2, 2, True), (0.5, 1, False)])
def test_warmup_not_shorter_than_training_is_warned(warmup, epochs, warned, capsys):
    from distill.config import load_config
    from distill.engine import check_schedule

    check_schedule(load_config(None, [f"optim.warmup_epochs={warmup}", f"train.epochs={epochs}"]))
    out = capsys.readouterr().out
    assert (f"optim.warmup_epochs ({warmup:g}) is not shorter than train.epochs ({epochs})" in out) == warned
