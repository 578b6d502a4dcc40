"""Summarise a logit store: records, epochs, bytes per record, k, teacher, top-1 classes.

  python tools/inspect_logits.py STORE [--json]
"""
import argparse
import json
import sys


from distill.cli import HelpFormatter, run_main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("store", help="store directory or fsspec URL (file://, s3://, gs://, az://, memory://, "
                                 "http(s)://) holding manifest.json")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)  # before the heavy imports: --help and flag errors answer at once
    from teacher_logits.manifest import load_manifest, teacher_members
    from teacher_logits.verify import verify_store

    settings = load_manifest(args.store).settings
    problems, _, stats = verify_store(args.store)
    summary = {"store": args.store, "records": stats.get("records"), "epochs": settings.epochs,
               "samples": settings.dataset["size"], "dataset": settings.dataset["name"],
               "k": settings.k, "num_classes": settings.num_classes, "values": settings.values,
               "teacher": settings.teacher, "augmentation": settings.augmentation,
               "bytes": stats.get("bytes"), "bytes_per_record": stats.get("bytes_per_record"),
               "framing_bytes": stats.get("framing_bytes"),
               "top1_histogram": stats.get("top1_histogram"), "problems": problems}
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    for key in ("store", "dataset", "samples", "epochs", "records", "k", "num_classes", "values", "bytes"):
        print(f"{key:>16}: {summary[key]}")
    if stats:  # small stores read large: tar headers and the manifest are a fixed cost a shard
        records = max(stats["records"], 1)
        print(f"{'bytes/record':>16}: {stats['bytes_per_record']:.2f} ({(stats['bytes'] - stats['framing_bytes']) / records:.2f}"
              f" of records, {stats['framing_bytes'] / records:.2f} of tar headers and manifest; "
              f"{stats['shards']} shards of {settings.shard_records} records)")
    for n, member in enumerate(teacher_members(settings.teacher)):
        weight = f", weight {settings.teacher['weights'][n]:.3g}" if "weights" in settings.teacher else ""
        print(f"{'teacher' if n == 0 else '':>16}: {member['name']} (checkpoint sha256 "
              f"{member['checkpoint_sha256']}{weight})")
    print(f"{'augmentation':>16}: {json.dumps(settings.augmentation)}")
    if stats:
        hist = stats["top1_histogram"]
        total = max(sum(hist), 1)
        print(f"{'top-1 classes':>16}: " + ", ".join(f"{c}:{100 * n / total:.1f}%" for c, n in enumerate(hist) if n))
    for problem in problems:
        print(f"FAIL: {problem}")
    sys.exit(1 if problems else 0)


def cli() -> None:
    """The console script's entry point: main() ending on bad input in one line."""
    run_main(main)


if __name__ == "__main__":
    cli()
