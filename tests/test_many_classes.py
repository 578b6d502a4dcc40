"""Many classes: ImageNet-21k's 21,841 (k = 100) and the uint16 limit of 65,535 (k = 256):
shard round trip, dense-target rebuild, and the teacher stage's device-side top-k."""
import dataclasses

import numpy as np
import pytest
import torch

from benchmarks.bench_store import synthetic_probs  # a confident teacher's distribution over C classes
from teacher_logits import codec
from teacher_logits.files import sha256_bytes
from teacher_logits.manifest import ShardEntry
from teacher_logits.schema import StoreSettings
from teacher_logits.shards import read_shard, shard_bytes, write_shard


@pytest.mark.parametrize("num_classes,k,n", [(21841, 100, 300), (codec.MAX_CLASSES, 256, 60)])
def test_shard_round_trip_and_dense_rebuild(tmp_path, num_classes, k, n):
    probs = synthetic_probs(n, num_classes)
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    assert idx.max() > 255  # the indices need 16 bits
    columns = {"index": np.arange(n), "seed": np.arange(n, dtype="<u4"),
               "topk_idx": idx.astype(codec.index_dtype(num_classes)),
               "topk_val": codec.encode_values(probs, idx, "log8")}
    assert columns["topk_idx"].dtype == np.dtype("<u2")
    plan = ShardEntry("e0000-000000000.tar", 0, 0, n)
    settings = StoreSettings(k, num_classes, "log8", 1, 0, n, 128, {"size": n}, {}, {})
    header = {"store_id": "s", "k": k, "num_classes": num_classes, "values": "log8"}
    size, digest = write_shard(tmp_path, plan, columns, header, chunk_records=128)
    entry = dataclasses.replace(plan, bytes=size, sha256=digest)
    read = read_shard(tmp_path, entry, "s", settings)
    for name in columns:
        assert read[name].dtype == columns[name].dtype and np.array_equal(read[name], columns[name]), name

    dense = codec.dense_distribution(read["topk_idx"], read["topk_val"], "log8", num_classes)
    assert dense.shape == (n, num_classes)
    assert np.allclose(dense.sum(1), 1.0, atol=1e-4)
    assert np.array_equal(dense.argmax(1), probs.argmax(1))
    true_top = np.take_along_axis(probs, idx, 1).astype(np.float64)
    rebuilt_top = np.take_along_axis(dense, idx, 1).astype(np.float64)
    representable = true_top / true_top[:, :1] > np.exp(-codec.LOG_RANGE + codec.STEP)
    err = np.abs(np.log(rebuilt_top / rebuilt_top[:, :1]) - np.log(true_top / true_top[:, :1]))
    assert err[:, 1:][representable[:, 1:]].max() <= codec.STEP + 1e-5  # the stated error, near-ties included
    outside = np.ones_like(dense, dtype=bool)
    np.put_along_axis(outside, idx, False, 1)
    tail = dense[outside].reshape(n, num_classes - k)
    assert np.allclose(tail, tail[:, :1])  # the tail mass is spread evenly
    assert np.allclose(tail.sum(1), 1.0 - true_top.sum(1), rtol=0.1, atol=1e-6)


def test_class_indices_beyond_uint16_are_refused():
    assert codec.index_dtype(256) == np.uint8 and codec.index_dtype(257) == np.dtype("<u2")
    with pytest.raises(ValueError, match="65535"):
        codec.index_dtype(codec.MAX_CLASSES + 1)


def test_top_k_from_the_device_encodes_like_the_dense_probabilities():
    """label_batch keeps only (N, k) values and indices of the teacher's output; they encode to
    the same bytes as the full (N, C) probabilities did, at C = 21,841."""
    from distill.augment import Mixing
    from distill.batch import Batch
    from distill.teacher_stage import label_batch

    torch.manual_seed(0)
    num_classes, k, n = 21841, 100, 16
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, num_classes)).eval()
    with torch.no_grad():
        teacher[1].weight.mul_(8)  # peaked, yet with a real tail outside the top-k
    batch = Batch(view=torch.randn(n, 3, 8, 8), index=torch.arange(n), seed=torch.arange(n),
                  label=torch.zeros(n, dtype=torch.long), partner_label=torch.zeros(n, dtype=torch.long),
                  lam=torch.ones(n), mix_partner=torch.full((n,), -1))
    settings = StoreSettings(k, num_classes, "log8", 1, 0, n, 128, {"size": n},
                             {"mixing": dataclasses.asdict(Mixing())}, {"name": "linear"})  # no mixing
    columns = label_batch(teacher, batch, settings, torch.device("cpu"), "fp32").columns
    with torch.no_grad():
        probs = teacher(batch.view).float().softmax(1)
    idx = probs.topk(k, dim=1).indices.numpy()
    assert columns["topk_idx"].dtype == np.dtype("<u2")
    assert np.array_equal(columns["topk_idx"], idx)
    assert np.array_equal(columns["topk_val"], codec.encode_values(probs.numpy(), idx, "log8"))
    assert codec.decode_values(columns["topk_val"], "log8", num_classes)[1].max() > 1e-3  # a real tail


def test_many_class_chunks_are_deterministic():
    probs = synthetic_probs(50, 21841, seed=3)
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :100]
    columns = {"index": np.arange(50), "seed": np.arange(50, dtype="<u4"),
               "topk_idx": idx.astype(codec.index_dtype(21841)),
               "topk_val": codec.encode_values(probs, idx, "log8")}
    plan = ShardEntry("e0000-000000000.tar", 0, 0, 50)
    digests = {sha256_bytes(shard_bytes(plan, dict(columns), {"store_id": "s"}, 16)) for _ in range(2)}
    assert len(digests) == 1
