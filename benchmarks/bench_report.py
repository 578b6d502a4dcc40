"""What every benchmark's --json file holds besides its figures: the command that made it,
and for a ratio measured in several side-by-side rounds, its spread over the rounds."""
import json
import shlex
import statistics
import sys


def spread(values) -> dict:
    """min / median / max of a figure over repeats, and their number."""
    values = [float(v) for v in values]
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def describe(s: dict, digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} (min {s['min']:.{digits}f}, max {s['max']:.{digits}f}, n={s['n']})"


def command_line(tool: str, argv) -> str:
    """The command as typed: `argv` of main(argv), or the process's own arguments."""
    return f"python benchmarks/{tool} " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))


def write_json(path: str | None, result: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


def save_curves(fig, axes, path: str) -> None:
    """A learning-curve figure's common finish: grid and legend on each axis, saved, closed."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def resumed_clock(curve: list[tuple]) -> list[tuple]:
    """A learning curve's wall times, summed over a resumed run's processes: checkpoints written
    before they kept the clock (engine.Position.wall_s) restart it at 0 on resuming, so there a
    drop continues from the last time logged (the work lost in the kill is left out)."""
    fixed, offset, last = [], 0.0, 0.0
    for epoch, top1, wall in curve:
        if wall + offset < last:
            offset = last
        last = wall + offset
        fixed.append((epoch, top1, round(last, 2)))
    return fixed
