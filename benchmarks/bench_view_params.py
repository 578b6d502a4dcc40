#!/usr/bin/env python
"""Benchmark: the two ways of making view parameters free to recover (issue 29), measured
before choosing one.

(a) Stored: the parameters a store made today draws from its generators (crop offsets and
    flips of the view and its partner, the CutMix box) added to each record as small integer
    columns. Measured on a store made today (--store: `save_logits --view-params generators`,
    Mixup/CutMix for the full picture): its shards re-written with the extra columns, bytes per
    record before and after. Two layouts: `packed`, one uint8 per crop+flip (9 x 9 x 2 < 256)
    and four uint8 for the box; `exact`, the same plus the Mixup weight as float64 in place of
    today's float16 (a view is mixed with float32(lam) and float32(1 - lam), which float16
    cannot give back: without it, (a) changes the views too).
(b) Counter: every parameter a hash of (record seed, draw number), vectorised over the batch
    (distill/view_draws.py). Measured as microseconds per view to recover a batch's parameters,
    against today's generator draws (torch's generator per view, numpy's default_rng per pair),
    the two alternated over --repeats passes of --batches batches.

  python benchmarks/bench_view_params.py --store STORE --repeats 5 --json docs/results/bench_view_params.json
"""
import argparse
import time

import numpy as np

from benchmarks.bench_report import command_line, describe, spread, write_json
from distill.augment import Mixing, record_seed
from distill.cli import HelpFormatter, run_main
from distill.recipes import get_recipe
from distill.view_draws import ViewParams, draw_params
from teacher_logits.reader import LogitStore
from teacher_logits.codec import encode_records
from teacher_logits.errors import UserError
from teacher_logits.schema import chunk_header


def param_columns(params: ViewParams, span: int, layout: str) -> dict[str, np.ndarray]:
    """The parameters as codec columns: `packed` or `exact` (module docstring)."""
    columns = {"crop": (params.top * span + params.left + span * span * params.flipped).astype("|u1"),
               "partner_crop": (params.partner_top * span + params.partner_left
                                + span * span * params.partner_flipped).astype("|u1"),
               "box": params.box.astype("|u1")}
    if layout == "exact":
        columns["lam"] = params.lam.astype("<f8")
    return columns


def chunk_bytes(columns: dict[str, np.ndarray], header: dict, chunk_records: int) -> int:
    """Compressed bytes of a shard's chunks (its tar framing aside, which extra columns do not change
    but for the 512-byte rounding that would hide them in a small store)."""
    n = len(columns["seed"])
    return sum(len(encode_records({name: col[a:a + chunk_records] for name, col in columns.items()}, header))
               for a in range(0, n, chunk_records))


def stored_bytes(store: LogitStore) -> dict:
    """Bytes per record of the store as written today, and with the parameters its records' seeds
    give (generator draws, as the store made them) added to every chunk."""
    settings, aug = store.settings, store.settings.augmentation
    steps, mixing = get_recipe(aug["recipe"]).device_steps, Mixing(**aug["mixing"])
    if steps is None or aug.get("params", "generators") != "generators":
        raise UserError(f"--store {store.path}: made with recipe {aug['recipe']} and {aug.get('params')} parameters; "
                        "(a) needs a store of none, crop or cifar made with --view-params generators")
    header, span = chunk_header(store.manifest), 2 * steps.padding + 1
    today, added = sum(entry.bytes for entry in store.shards()), {"packed": 0, "exact": 0}
    for entry in store.shards():
        columns = store.read(entry)
        params = draw_params("generators", columns["seed"], steps, mixing, settings.dataset["size"], aug["resolution"])
        base = chunk_bytes(columns, header, settings.chunk_records)
        for layout in added:
            extra = param_columns(params, span, layout)
            added[layout] += chunk_bytes({**columns, **extra}, header, settings.chunk_records) - base
    records = store.manifest.records
    out = {"bytes_per_record_today": today / records}
    out.update({f"bytes_per_record_{name}": (today + extra) / records for name, extra in added.items()})
    out.update({f"increase_{name}": extra / today for name, extra in added.items()})
    return {"store": store.path, "records": records, "k": settings.k, "mixing": aug["mixing"], **out}


def recovery_cost(batch: int, batches: int, repeats: int) -> dict:
    """Microseconds per view to recover a batch's parameters, each way, alternated."""
    steps, mixing = get_recipe("cifar").device_steps, Mixing(0.8, 1.0)
    seeds = [record_seed(0, 0, np.arange(b * batch, (b + 1) * batch)) for b in range(batches)]

    def per_view(kind: str) -> float:
        start = time.perf_counter()
        for s in seeds:
            draw_params(kind, s, steps, mixing, 50_000, 32)
        return (time.perf_counter() - start) / (batch * batches) * 1e6

    per_view("counter"), per_view("generators")  # warm-up: scipy's import, allocator
    passes = [{kind: per_view(kind) for kind in (order if r % 2 else order[::-1])}
              for r in range(repeats) for order in [("counter", "generators")]]
    return {"batch": batch, "views": batch * batches, "repeats": repeats,
            "generators_us_per_view": spread([p["generators"] for p in passes]),
            "counter_us_per_view": spread([p["counter"] for p in passes]),
            "generators_over_counter": spread([p["generators"] / p["counter"] for p in passes])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--store", help="a store made with --view-params generators, for (a); left out: (b) only")
    p.add_argument("--batch", type=int, default=128, help="views per batch of (b)")
    p.add_argument("--batches", type=int, default=20, help="batches per pass of (b)")
    p.add_argument("--repeats", type=int, default=5, help="alternated passes of (b)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    result = {"command": command_line("bench_view_params.py", argv),
              "recovery": recovery_cost(args.batch, args.batches, args.repeats)}
    if args.store:
        result["stored"] = stored_bytes(LogitStore(args.store))
        s = result["stored"]
        print(f"(a) bytes/record: today {s['bytes_per_record_today']:.2f}, packed {s['bytes_per_record_packed']:.2f} "
              f"(+{100 * s['increase_packed']:.1f} %), exact {s['bytes_per_record_exact']:.2f} "
              f"(+{100 * s['increase_exact']:.1f} %)")
    r = result["recovery"]
    print(f"(b) us/view: generators {describe(r['generators_us_per_view'], 2)}, counter "
          f"{describe(r['counter_us_per_view'], 3)}; ratio {describe(r['generators_over_counter'], 1)}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    run_main(main)
