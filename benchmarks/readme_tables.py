"""README's result tables, generated from the benchmarks' JSON files in docs/results/.

  python benchmarks/readme_tables.py           # rewrite the tables in README.md
  python benchmarks/readme_tables.py --check   # exit 1, naming them, where README and the JSONs disagree

Each generated block in README.md sits between `<!-- table:NAME -->` and `<!-- /table -->`
and is one entry of TABLES: NAME, the JSON files it reads, and a function from their parsed
contents to the block's Markdown. A new results file is a new entry here and a marker pair in
README (tests/test_readme_tables.py fails while README and the JSONs disagree), so a figure
is typed in one place only: the JSON its benchmark wrote.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import yaml

from benchmarks.bench_tinyvit import teacher_label
from distill.cli import HelpFormatter

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"

# the published rows' names in README, and the model each config trains (read from the config)
ROW_NAMES = {"s1_vit": "S1: minimal ViT, width 64", "s0_cnn": "S0-CNN: the small-ViT study's CNN",
             "s0_vit": "S0-ViT: the small-ViT study's ViT"}


def signed(value: float) -> str:
    return f"{value:+.2f}"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min"


def model_of(row: dict) -> str:
    return yaml.safe_load((REPO / row["config"]).read_text())["model"]["name"]


def mixed_cell(row: dict | None) -> str:
    """A row's figures from the Mixup/CutMix store: its epochs, kd against scratch on plain
    views at those epochs, and scratch on the mixed views where it was run."""
    if row is None:
        return "not run"
    on_mixed = row["runs"].get("scratch-mixed")
    return (f"{row['epochs']} epochs: kd {row['kd_top1']:.2f} against {row['scratch_top1']:.2f} "
            f"({signed(row['kd_minus_scratch'])})" + (f"; scratch on the mixed views {on_mixed['test_top1']:.2f}"
                                                      if on_mixed else ""))


def seed_rows_table(plain: dict, mixed: dict) -> str:
    """The published CIFAR-10 rows: scratch and kd from the plain store at equal epochs, and
    the same rows from the Mixup/CutMix store."""
    lines = ["| row | model | published | epochs here (published) | scratch here | kd here (plain store) | kd - scratch "
             "| from the Mixup/CutMix store (scratch: plain views) |",
             "|---|---|---:|---|---:|---:|---:|---|"]
    for name, row in plain["rows"].items():
        lines.append(f"| {ROW_NAMES.get(name, name)} | `{model_of(row)}` | {row['published_top1']} | "
                     f"{row['epochs']} ({row['published_epochs']}) | {row['scratch_top1']:.2f} | "
                     f"**{row['kd_top1']:.2f}** | {signed(row['kd_minus_scratch'])} | "
                     f"{mixed_cell(mixed['rows'].get(name))} |")
    gains = [row["kd_minus_scratch"] for row in plain["rows"].values()]
    mixed_gains = [f"{signed(row['kd_minus_scratch'])} for {ROW_NAMES.get(name, name).split(':')[0]} at "
                   f"{row['epochs']} epochs" for name, row in mixed["rows"].items()]
    s1 = plain["rows"].get("s1_vit")
    short = (f" A short CIFAR-10 run to expect: S1 (`{s1['config']}`, {s1['epochs']} epochs, 50,000 images) reaches "
             f"{s1['scratch_top1']:.2f} % from scratch in {minutes(s1['runs']['scratch']['train_wall_s'])} and "
             f"{s1['kd_top1']:.2f} % distilled in {minutes(s1['runs']['kd']['train_wall_s'])} of training on 2 CPU "
             "cores (the store's labelling not counted).") if s1 else ""
    teacher = ", ".join(f"{k} {v:.2f} %" for k, v in plain["teacher_top1"].items())
    return "\n".join(lines) + (
        f"\n\nTeacher: {teacher} on the 10,000 test images; the plain store holds {plain['store']['epochs']} "
        f"epochs. kd - scratch at equal epochs from the plain store: {signed(min(gains))} to {signed(max(gains))}; "
        f"from the Mixup/CutMix store, against scratch on plain views: {', '.join(mixed_gains)}.{short}")


def stored_epochs(result: dict, run: dict) -> str:
    """The stored epochs a run read: none for scratch on plain views, else logits.epochs or the whole store."""
    if "logits.store=null" in run["command"]:
        return "-"
    found = re.search(r"logits\.epochs=(\d+)", run["command"])
    return found.group(1) if found else str(result["store"]["epochs"])


def tinyvit_table(*results: dict) -> str:
    """TinyViT-5M on full CIFAR-10: the teachers as stored, and every run of each queue (one JSON
    a queue, finished runs or not), with what kd gained at each budget where both finished and
    what each finished ablation scored against kd."""
    first = results[0]
    store_teacher = teacher_label(first["teacher"], first["flip_average"])
    lines = ["| teacher, as a store applies it | test top-1 |", "|---|---:|"]
    lines += [f"| {label} | {'**%.2f**' % top1 if label == store_teacher else '%.2f' % top1} |"
              for label, top1 in first["teacher_scores"].items()]
    lines += ["", "| TinyViT-5M run | epochs | stored epochs | test top-1 | status |", "|---|---:|---:|---:|---|"]
    found = []
    for result in results:
        lines += [f"| {name.split('@')[0]} | {r['epochs']} | {stored_epochs(result, r)} | {r['test_top1']:.2f} | "
                  f"{'finished' if r['finished'] else 'at epoch %d' % r['epochs_done']} |"
                  for name, r in result["runs"].items()]
        for epochs, c in result["by_budget"].items():
            if c:
                reached = c["kd_reaches_best_scratch_final"]
                found.append(f"at {epochs} epochs kd {signed(c['kd_minus_best_scratch'])} against the best scratch "
                             f"({c['best_scratch']}, {c['best_scratch_top1']:.2f})" +
                             (f", whose final top-1 kd reached at epoch {reached['epoch']}" if reached else "") +
                             ("; against kd: " + ", ".join(f"{m} {signed(d)}" for m, d in c["ablations_minus_kd"].items())
                              if c["ablations_minus_kd"] else ""))
    return "\n".join(lines) + ("\n\n" + "; ".join(found) + "." if found else "")


def read(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


# name -> (JSON files, function of their contents): one entry per generated README block
TABLES = {
    "seed_rows": (("seed_rows.json", "seed_rows_mixed.json"), seed_rows_table),
    "tinyvit": (("tinyvit_cifar10_25ep.json", "tinyvit_cifar10.json"), tinyvit_table),
}


def block(name: str) -> str:
    files, make = TABLES[name]
    return make(*(read(f) for f in files))


def rendered(readme: str) -> str:
    """`readme` with every generated block made anew from the JSONs."""
    for name in TABLES:
        # the shortest body, possibly empty: never across another block's end
        pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- /table -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no <!-- table:{name} --> ... <!-- /table --> block")
        readme = pattern.sub(lambda m: m.group(1) + block(name) + "\n" + m.group(2), readme)
    return readme


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--check", action="store_true", help="only compare; exit 1 where README differs")
    p.add_argument("--readme", default=str(REPO / "README.md"), help="the README to rewrite or check")
    args = p.parse_args(argv)
    path = Path(args.readme)
    current = path.read_text()
    fresh = rendered(current)
    if args.check:
        if fresh != current:
            stale = [n for n in TABLES if block(n) not in current]
            print(f"{path}: tables disagree with docs/results: {', '.join(stale)} (run "
                  "python benchmarks/readme_tables.py)", file=sys.stderr)
            sys.exit(1)
        return
    path.write_text(fresh)


if __name__ == "__main__":
    main()
