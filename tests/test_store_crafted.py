"""Stores whose bytes match their manifest but whose contents are wrong or hostile (a store
someone else made): refused as a one-line StoreError naming the shard and chunk, or decoded
exactly, never another exception. The fuzz test mutates headers, columns and payload bytes of
real chunks (seeded) and re-seals each shard with a correct sha256, as a crafted store would."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import webdataset as wds
from helpers import run_program, save_logits_args, user_error
from webdataset.tariterators import tar_file_iterator

from teacher_logits import codec
from teacher_logits.files import sha256_bytes
from teacher_logits.reader import LogitStore
from teacher_logits.shards import CorruptShard

FUZZ_CASES = 400
ODD_VALUES = [None, "x", -1, 0, 10**12, 3.5, [], {}, True]
MIXED_STORE = ["--limit", "40", "--chunk-records", "10"]  # conftest's mixed_store: 40 samples, one shard of 4 chunks


def chunks_of(shard: bytes) -> list[tuple[str, bytes]]:
    return [(m["fname"], m["data"]) for m in tar_file_iterator(io.BytesIO(shard))]


def raw_payload(blob: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompress(blob)


def seal(raw: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(write_checksum=True).compress(raw)


def payload(header: dict, columns: dict) -> bytes:
    """A chunk's payload (before zstd) as the codec lays it out, from any header and columns."""
    head = json.dumps(header, sort_keys=True).encode()
    body = b"".join(np.ascontiguousarray(a).tobytes() for a in columns.values())
    return codec.MAGIC + len(head).to_bytes(4, "little") + head + body


def split_payload(raw: bytes) -> tuple[dict, dict]:
    """header and raw columns (index as stored: deltas) of a real chunk payload."""
    n = int.from_bytes(raw[4:8], "little")
    header, offset, columns = json.loads(raw[8:8 + n]), 8 + n, {}
    for name, dtype, shape in header["columns"]:
        count = header["n"] * int(np.prod(shape, dtype=np.int64))
        columns[name] = np.frombuffer(raw, dtype, count, offset).reshape(header["n"], *shape).copy()
        offset += count * np.dtype(dtype).itemsize
    return header, columns


def mutate(rng, raw: bytes) -> bytes:
    """One seeded mutation of a real chunk payload."""
    header, columns = split_payload(raw)
    kind = rng.integers(6)
    if kind == 0:  # a header field set to an odd value, or removed
        field = str(rng.choice(["store_id", "shard", "epoch", "chunk", "k", "num_classes", "values", "n"]))
        if rng.random() < 0.3:
            header.pop(field)
        else:
            header[field] = ODD_VALUES[rng.integers(len(ODD_VALUES))]
    elif kind == 1:  # a column cast to another dtype, its header entry to match
        name = str(rng.choice(list(columns)))
        columns[name] = columns[name].astype(rng.choice(["<f8", "|i1", "<u2", "<i8", "<f4", "|u1"]))
    elif kind == 2:  # a column dropped, or one added
        if rng.random() < 0.5:
            columns.pop(str(rng.choice(list(columns))))
        else:
            columns["extra"] = np.zeros(header["n"], "<u4")
    elif kind == 3:  # out-of-range values in one column
        name = str(rng.choice(["topk_idx", "topk_val", "partner", "lam"]))
        flat = columns[name].reshape(-1)
        flat[rng.integers(len(flat))] = {"topk_idx": 200, "topk_val": 0, "partner": 10**6,
                                          "lam": np.float16(np.inf) if rng.random() < 0.5 else 7}[name]
    elif kind == 4:  # a shape changed: the top-k columns lose or gain a class
        name = str(rng.choice(["topk_idx", "topk_val"]))
        columns[name] = columns[name][:, :-1] if rng.random() < 0.5 else np.concatenate(
            [columns[name], columns[name][:, :1]], axis=1)
    else:  # bytes of the header text or the body flipped
        raw = bytearray(raw)
        for _ in range(rng.integers(1, 4)):
            raw[rng.integers(8, len(raw))] = rng.integers(256)
        return bytes(raw)
    header["columns"] = [[name, arr.dtype.str, list(arr.shape[1:])] for name, arr in columns.items()]
    return payload(header, columns)


def write_crafted(store, out, chunk_payloads: dict[str, bytes]) -> None:
    """`store` copied to `out`, its shard's chunks replaced and the manifest re-sealed with
    the new size and sha256: checksums pass, only the content is crafted."""
    shutil.copytree(store, out)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["shards"][0]
    buf = io.BytesIO()
    writer = wds.TarWriter(buf, encoder=False, mtime=0, user="tvd", group="tvd")
    for fname, raw in chunk_payloads.items():
        writer.write({"__key__": fname.rsplit(".", 2)[0], "rec.zst": seal(raw)})
    writer.close()
    (out / entry["name"]).write_bytes(buf.getvalue())
    entry["bytes"], entry["sha256"] = len(buf.getvalue()), sha256_bytes(buf.getvalue())
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_fuzzed_chunks_are_refused_in_one_line_or_decoded_exactly(mixed_store, tmp_path):
    store = LogitStore(mixed_store)
    entry = store.shards(0)[0]
    reference = store.read(entry)
    chunks = {name: raw_payload(blob) for name, blob in chunks_of((mixed_store / entry.name).read_bytes())}
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "decoded": 0}
    for case in range(FUZZ_CASES):
        crafted = dict(chunks)
        target = list(crafted)[rng.integers(len(crafted))]
        crafted[target] = mutate(rng, crafted[target])
        out = tmp_path / f"case{case}"
        write_crafted(mixed_store, out, crafted)
        try:
            columns = LogitStore(out).read(LogitStore(out).shards(0)[0])
        except CorruptShard as e:
            message = str(e)
            assert "\n" not in message and entry.name in message, message
            outcomes["refused"] += 1
        else:  # what the crafted bytes say, within the schema: flipped seeds or in-range values
            written = [split_payload(raw)[1] for raw in crafted.values()]
            assert set(columns) == set(reference), case
            for name in reference:
                decode = (lambda a: np.cumsum(a, dtype=np.int64)) if name == "index" else (lambda a: a)  # noqa: E731
                want = np.concatenate([decode(w[name]) for w in written])  # index: deltas within each chunk
                np.testing.assert_array_equal(columns[name], want, err_msg=f"case {case}: {name}")
            assert (columns["topk_idx"] < store.num_classes).all() and (columns["topk_val"] > 0).all(), case
            outcomes["decoded"] += 1
        shutil.rmtree(out)
    assert outcomes["refused"] > 0.8 * FUZZ_CASES, outcomes
    print(f"fuzz: {FUZZ_CASES} cases, {outcomes['refused']} refused, {outcomes['decoded']} decoded exactly")


def class_index_200(mixed_store, out):
    """The mixed store with one class index of 200 (10 classes), sealed with a correct sha256."""
    entry = LogitStore(mixed_store).shards(0)[0]
    chunks = {name: raw_payload(blob) for name, blob in chunks_of((mixed_store / entry.name).read_bytes())}
    first = next(iter(chunks))
    header, columns = split_payload(chunks[first])
    columns["topk_idx"][3, 0] = 200
    chunks[first] = payload(header, columns)
    write_crafted(mixed_store, out, chunks)
    return out


def test_verify_refuses_a_class_index_past_the_classes(mixed_store, tmp_path, no_tvd_debug):
    out = class_index_200(mixed_store, tmp_path / "crafted")
    code, printed, err = run_program("verify_logits", [out])
    assert code == 1 and "Traceback" not in err, err
    fails = [line for line in printed.splitlines() if line.startswith("FAIL:")]
    assert len(fails) == 1 and "chunk 0: column 'topk_idx' holds 1 out-of-range values" in fails[0], printed


def test_trainer_refuses_a_class_index_past_the_classes(mixed_store, cifar_root, tmp_path, no_tvd_debug):

    out = class_index_200(mixed_store, tmp_path / "crafted")
    run = tmp_path / "run"
    r = run_program("train_student", ["--config", "configs/smoke_cifar10.yaml", f"data.root={cifar_root}",
                                      "data.skip_md5=true", f"logits.store={out}", f"output.dir={run}",
                                      "wandb.enabled=false", "train.epochs=1", "data.recipe=cifar"])
    user_error(r, "column 'topk_idx' holds 1 out-of-range values")
    assert not run.exists(), "refused before the run folder is made"


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["settings"]["dataset"].update(size=4_000_000_000), "claim 4000000000 samples"),
    (lambda m: m["settings"]["dataset"].update(size=2_000_000_000), "shards listed"),
    (lambda m: m.update(records=m["records"] + 1), "records total"),
    (lambda m: m["shards"][0].update(bytes=10**15), "bytes for"),
    (lambda m: m["settings"].update(shard_records=0), "settings.shard_records is 0"),
    (lambda m: m["settings"].update(k="10"), "settings.k is '10'"),
])
def test_manifest_sizes_are_bounded_before_anything_is_planned(mixed_store, tmp_path, edit, needle):
    """A manifest claiming 4e9 samples, another record total or absurd shard sizes is refused in
    one line before a plan or a permutation is built from it (4e9 samples: ~30 GB)."""
    from teacher_logits.manifest import StoreError, load_manifest, store_id

    out = tmp_path / "store"
    shutil.copytree(mixed_store, out)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    manifest["store_id"] = store_id(manifest["settings"])  # as a crafted manifest would
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=needle) as refused:
        load_manifest(out)
    assert "\n" not in str(refused.value)


def test_a_truncated_later_shard_stops_the_trainer_before_it_writes(cifar_root, teacher_ckpt, tmp_path,
                                                                    no_tvd_debug):
    """Sizes of every shard come from one listing before the run starts: a shard truncated in
    transfer is named at once, not when training reaches it."""

    out = tmp_path / "store"
    run_program("save_logits", save_logits_args(cifar_root, teacher_ckpt, out, "--limit", "40",
                                                "--epochs", "2", "--shard-records", "20"), check=True)
    last = sorted(out.glob("e0001-*.tar"))[-1]
    last.write_bytes(last.read_bytes()[:1000])
    run = tmp_path / "run"
    r = run_program("train_student", ["--config", "configs/smoke_cifar10.yaml", f"data.root={cifar_root}",
                                      "data.skip_md5=true", f"logits.store={out}", f"output.dir={run}",
                                      "wandb.enabled=false", "train.epochs=2", "data.recipe=cifar"])
    user_error(r, last.name, "1000 bytes, the manifest says", "re-run the save_logits command")
    assert not run.exists()
