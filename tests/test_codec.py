"""Codec round trip, stated error, and refusal of malformed or hostile chunks."""
import json
import struct

import numpy as np
import pytest
import torch
import zstandard

from teacher_logits import codec


def teacher_like(n, num_classes, scale, seed=0):
    logits = np.random.default_rng(seed).normal(size=(n, num_classes)) * scale
    probs = torch.tensor(logits).softmax(1).numpy()
    return probs, np.argsort(-probs, axis=1)


@pytest.mark.parametrize("num_classes,k", [(10, 1), (10, 5), (10, 10), (100, 10), (300, 20)])
def test_round_trip_within_stated_error(num_classes, k):
    probs, order = teacher_like(500, num_classes, scale=4.0)
    idx = order[:, :k].astype(codec.index_dtype(num_classes))
    records = {"index": np.arange(7, 507), "seed": np.random.default_rng(1).integers(0, 1 << 32, 500).astype("<u4"),
               "topk_idx": idx, "topk_val": codec.encode_values(probs, order[:, :k], "log8")}
    header, cols = codec.decode_records(codec.encode_records(records, {"store_id": "s"}))
    assert header["store_id"] == "s" and header["n"] == 500
    for name in records:
        assert np.array_equal(cols[name], records[name]), name
    top, tail = codec.decode_values(cols["topk_val"], "log8", num_classes)
    true = np.take_along_axis(probs, order[:, :k], 1)
    # stated error: every log-ratio to the top-1 within STEP/2
    true_ratio = np.log(true / true[:, :1])
    err = np.abs(np.log(top / top[:, :1]) - true_ratio)
    representable = true_ratio > -codec.LOG_RANGE  # smaller ratios are clipped by design
    near_tie = np.zeros_like(representable)
    near_tie[:, 1:] = true_ratio[:, 1:] > -codec.STEP / 2  # stored as -STEP: the top-1 stays first
    assert err[representable & ~near_tie].max() <= codec.STEP / 2 + 1e-6
    assert err[near_tie].max(initial=0) <= codec.STEP + 1e-6
    assert np.all(top[~representable] <= np.exp(-codec.LOG_RANGE + codec.STEP) * top[:, :1].repeat(k, 1)[~representable])
    assert np.allclose(top.sum(1) + tail, 1.0, atol=1e-5)
    if k == num_classes:
        assert np.allclose(tail, 0.0)


def test_quantisation_adds_little_kl_over_exact_truncation():
    probs, order = teacher_like(2000, 100, scale=3.0)
    idx = order[:, :10]
    dense = codec.dense_distribution(idx, codec.encode_values(probs, idx, "log8"), "log8", 100).astype(np.float64)
    true = np.take_along_axis(probs, idx, 1)
    exact = np.repeat(((1 - true.sum(1)) / 90)[:, None], 100, 1)
    np.put_along_axis(exact, idx, true, 1)
    kl = lambda p, q: float((p * np.log(p / q)).sum(1).mean())  # noqa: E731
    assert kl(probs, dense) - kl(probs, exact) < 0.001
    assert np.array_equal(dense.argmax(1), probs.argmax(1))  # near-ties included


def test_fp16_values_round_trip():
    probs, order = teacher_like(100, 10, scale=2.0)
    stored = codec.encode_values(probs, order[:, :3], "fp16")
    top, tail = codec.decode_values(stored, "fp16", 10)
    assert np.allclose(top, np.take_along_axis(probs, order[:, :3], 1), atol=1e-3)
    assert np.allclose(top.sum(1) + tail, 1.0, atol=1e-3)


def chunk(header: dict, body: bytes, content_size=True) -> bytes:
    head = json.dumps(header).encode()
    raw = codec.MAGIC + struct.pack("<I", len(head)) + head + body
    return zstandard.ZstdCompressor(write_content_size=content_size).compress(raw)


def test_decompression_bomb_is_refused_before_inflating():
    bomb = zstandard.ZstdCompressor(level=3).compress(b"\0" * (80 << 20))  # 80 MiB of zeros, ~KB compressed
    assert len(bomb) < 100_000
    with pytest.raises(codec.CorruptChunk, match="declares"):
        codec.decode_records(bomb)
    streamed = zstandard.ZstdCompressor().compressobj().compress(b"\0" * (80 << 20))  # no declared size
    with pytest.raises(codec.CorruptChunk):
        codec.decode_records(streamed + zstandard.ZstdCompressor().compressobj().flush())


@pytest.mark.parametrize("header,body,match", [
    ({"n": 2, "columns": [["index", "|O", []]]}, b"\0" * 16, "disallowed dtype"),
    ({"n": 4, "columns": [["index", "<u4", []]]}, b"\0" * 8, "past the end"),
    ({"n": 0, "columns": []}, b"", "record count"),
    ({"columns": []}, b"", "bad header"),
])
def test_malformed_chunks_are_refused(header, body, match):
    with pytest.raises(codec.CorruptChunk, match=match):
        codec.decode_records(chunk(header, body))


def test_flipped_byte_is_detected():
    records = {"index": np.arange(100), "seed": np.arange(100, dtype="<u4"),
               "topk_idx": np.zeros((100, 2), np.uint8), "topk_val": np.full((100, 2), 7, np.uint8)}
    blob = bytearray(codec.encode_records(records, {}))
    blob[len(blob) // 2] ^= 0x40
    with pytest.raises(codec.CorruptChunk):
        codec.decode_records(bytes(blob))
