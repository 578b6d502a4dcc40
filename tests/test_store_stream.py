"""The student's store stream (teacher_logits/stream.py, distill/replay.py StoreViews): one
reader per shard, the same records and batches whatever the ranks and workers, exact resume,
sparse targets whose loss equals the dense reference, and training from part of a store."""
import os

import numpy as np
import pytest
import torch

from helpers import run_tool, save_logits_args
from distill.augment import record_seed
from distill.datasets import build_dataset, labels_of
from distill.batch import Batch, SparseTarget
from distill.loss import DistillationLoss
from distill.replay import SeededViews, StoreViews, store_view_maker
from store_doubles import CountingStore
from teacher_logits.codec import decode_values, dense_distribution, encode_values
from teacher_logits.reader import LogitStore

SAMPLES, SHARD = 200, 50  # 4 shards per epoch: one per (rank, worker) of 2 ranks x 2 workers


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, cifar_root, teacher_ckpt):
    out = tmp_path_factory.mktemp("stream") / "store"
    run_tool("tools/save_logits.py", *save_logits_args(
        cifar_root, teacher_ckpt, out, "--epochs", "2", "--shard-records", str(SHARD), "--chunk-records", "20",
        "--mixup", "0.8", "--cutmix", "1.0", "--mix-prob", "0.7"))
    return out


@pytest.fixture(scope="module")
def parts(store_path, cifar_root):
    store = LogitStore(store_path)
    dataset = build_dataset("cifar10", cifar_root, train=True, skip_md5=True)
    maker = store_view_maker(dataset, store, SAMPLES)
    return store, maker, labels_of(dataset)[:SAMPLES]


def stream(parts, rank=0, world=1, store=None, **kw):
    base, maker, labels = parts
    return StoreViews(store or base, maker, labels, 12, rank=rank, world=world, **kw)


def run_epoch(views: StoreViews, epoch: int, workers: int, skip: int = 0) -> list[Batch]:
    views.set_epoch(epoch, skip_batches=skip)
    return list(views.batches(num_workers=workers))


def same_batches(a: list[Batch], b: list[Batch]) -> bool:
    keys = ("view", "index", "seed", "label", "partner_label", "lam", "mix_partner")
    return len(a) == len(b) and all(
        all(torch.equal(getattr(x, k), getattr(y, k)) for k in keys)
        and torch.equal(x.target.top_classes, y.target.top_classes) and torch.equal(x.target.top_probs, y.target.top_probs)
        and torch.equal(x.target.tail, y.target.tail) for x, y in zip(a, b))


def test_both_sides_give_an_unmixed_view_its_own_label_as_partner(parts):
    """One rule for the partner label (distill.replay.mix_label), on the student side and the
    teacher's: the partner's label where a view is mixed, the sample's own where it is not."""
    store, maker, labels = parts
    teacher = SeededViews(maker, store.settings.seed, np.zeros(SAMPLES, int), np.arange(SAMPLES), labels)
    sides = [Batch.collate([teacher[n] for n in range(SAMPLES)]), *run_epoch(stream(parts), 0, 0)]
    mixed = 0
    for b in sides:
        partner = b.mix_partner.numpy()
        expected = np.where(partner >= 0, labels[np.maximum(partner, 0)], labels[b.index.numpy()])
        assert np.array_equal(b.partner_label.numpy(), expected)
        mixed += int((partner >= 0).sum())
    assert 0 < mixed < 2 * SAMPLES  # --mix-prob 0.7: both kinds of view are there


def test_each_shard_is_read_once_per_epoch_across_two_ranks_and_two_workers(parts, tmp_path):
    log = tmp_path / "reads.txt"
    counting = CountingStore(parts[0].path, log)
    for epoch in range(2):
        log.write_text("")
        seen = []
        for rank in range(2):
            batches = run_epoch(stream(parts, rank, 2, store=counting), epoch, workers=2)
            seen += [i for b in batches for i in b.index.tolist()]
        reads = [line.split() for line in log.read_text().splitlines()]
        names = sorted(name for _, name, _ in reads)
        assert names == sorted(e.name for e in counting.shards(epoch))  # every shard of the epoch, once
        assert {int(pid) for pid, _, _ in reads} == {os.getpid()}  # by the rank's process; workers read none
        assert sorted(seen) == list(range(SAMPLES))


def test_epoch_records_are_one_set_for_any_ranks_and_workers(parts):
    single = run_epoch(stream(parts), 1, workers=0)
    records = sorted(i for b in single for i in b.index.tolist())
    assert records == list(range(SAMPLES))
    per_rank = [[i for b in run_epoch(stream(parts, rank, 2), 1, workers=2) for i in b.index.tolist()]
                for rank in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == SAMPLES // 2  # equal steps
    assert sorted(per_rank[0] + per_rank[1]) == records  # each record once


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2)])
def test_batch_sequence_does_not_depend_on_workers(parts, rank, world):
    reference = run_epoch(stream(parts, rank, world), 0, workers=0)
    assert len(reference) == len(stream(parts, rank, world)) > 3
    for workers in (1, 2, 3):
        assert same_batches(run_epoch(stream(parts, rank, world), 0, workers), reference), workers


def test_resume_mid_epoch_repeats_the_uninterrupted_batches(parts):
    uninterrupted = run_epoch(stream(parts, 1, 2), 1, workers=2)
    resumed = run_epoch(stream(parts, 1, 2), 1, workers=2, skip=3)
    assert same_batches(resumed, uninterrupted[3:])


def test_shuffled_per_epoch_and_ranks_unequal_shards_trimmed(parts):
    first, second = (run_epoch(stream(parts, 0, 2), e, 0) for e in (0, 2))  # both read stored epoch 0
    assert [b.index.tolist() for b in first] != [b.index.tolist() for b in second]
    # 3 ranks over 4 shards of 50: shares 100, 50, 50; every rank streams 50
    shares = [sum(len(b.index) for b in run_epoch(stream(parts, r, 3), 0, 0)) for r in range(3)]
    assert shares == [50, 50, 50]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_more_ranks_than_shards_share_shards_by_records(parts, tmp_path):
    """5 ranks over 4 shards of 50: each shard cut into 5 ranges of 10; every rank streams 40
    records (equal steps), the ranks together the whole epoch, a rank reads each shard it has
    a range of once, and workers still do not matter."""
    log = tmp_path / "reads.txt"
    counting = CountingStore(parts[0].path, log)
    per_rank, shards_read = [], set()
    for rank in range(5):
        log.write_text("")
        per_rank.append([i for b in run_epoch(stream(parts, rank, 5, store=counting), 1, 0) for i in b.index.tolist()])
        reads = [line.split()[1] for line in log.read_text().splitlines()]
        assert len(reads) == len(set(reads)) <= 4
        shards_read |= set(reads)
    assert [len(r) for r in per_rank] == [40] * 5
    assert sorted(sum(per_rank, [])) == list(range(SAMPLES))
    assert shards_read == {e.name for e in counting.shards(1)}
    reference = run_epoch(stream(parts, 3, 5), 1, workers=0)
    assert same_batches(run_epoch(stream(parts, 3, 5), 1, workers=2), reference)


def test_student_cycles_through_the_first_stored_epochs(parts):
    run_seed = parts[0].settings.seed
    for epoch in range(3):
        for b in run_epoch(stream(parts, stored_epochs=1), epoch, 0):
            assert np.array_equal(b.seed.numpy(), record_seed(run_seed, 0, b.index.numpy()))


def stored_dense(store) -> dict[tuple[int, int], np.ndarray]:
    """The dense reference: teacher_logits.codec.dense_distribution on every stored record."""
    out = {}
    for epoch in range(store.epochs):
        for cols in store.iter_shards(epoch):
            dense = dense_distribution(cols["topk_idx"], cols["topk_val"], store.settings.values, store.num_classes)
            out.update({(epoch, int(i)): d for i, d in zip(cols["index"], dense)})
    return out


LOSSES = [dict(temperature=1.0), dict(temperature=4.0, alpha=0.3, label_smoothing=0.1),
          dict(teacher_target="hard", alpha=0.5, label_smoothing=0.1), dict(temperature=2.0, standardize=True)]


@pytest.mark.parametrize("settings", LOSSES, ids=["T1", "T4-alpha", "hard", "standardize"])
def test_sparse_target_loss_equals_the_dense_reference(parts, settings):
    store = parts[0]
    reference = stored_dense(store)
    criterion = DistillationLoss("kd", **settings)
    g = torch.Generator().manual_seed(0)
    for epoch in range(2):
        for b in run_epoch(stream(parts), epoch, 0):
            dense = torch.from_numpy(np.stack([reference[(epoch, i)] for i in b.index.tolist()]))
            assert torch.equal(b.target.dense(store.num_classes), dense)
            logits = torch.randn(len(dense), store.num_classes, generator=g) * 3
            extra = (b.label, b.partner_label, b.lam)
            assert torch.equal(criterion(logits, b.target, *extra), criterion(logits, dense, *extra))


@pytest.mark.parametrize("values", ["log8", "fp16"])
def test_sparse_target_at_21841_classes_equals_dense_distribution(values):
    num_classes, k, n = 21841, 100, 6
    rng = np.random.default_rng(0)
    probs = torch.softmax(torch.from_numpy(rng.normal(0, 4, (n, num_classes))), 1).numpy()
    top = np.argsort(-probs, axis=1)[:, :k].astype("<u2")
    stored = encode_values(probs, top, values)
    top_p, tail = decode_values(stored, values, num_classes)
    sparse = SparseTarget(torch.from_numpy(top.astype(np.int64)), torch.from_numpy(top_p), torch.from_numpy(tail))
    dense = dense_distribution(top, stored, values, num_classes)
    assert torch.equal(sparse.dense(num_classes), torch.from_numpy(dense))
    logits = torch.randn(n, num_classes)
    for settings in LOSSES:
        criterion = DistillationLoss("kd", **settings)
        assert torch.equal(criterion(logits, sparse, torch.zeros(n, dtype=torch.long)),
                           criterion(logits, torch.from_numpy(dense), torch.zeros(n, dtype=torch.long)))


def test_logits_epochs_beyond_the_store_is_refused(store_path, cifar_root, tmp_path):
    from test_train_student import train_args

    out = tmp_path / "run"
    proc = run_tool("distill/train_student.py", *train_args(cifar_root, store_path, out, "logits.epochs=3",
                                                            "wandb.enabled=false"), check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "logits.epochs: 3" in proc.stderr and "1 to 2" in proc.stderr and not out.exists()
