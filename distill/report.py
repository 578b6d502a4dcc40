"""The evaluation report's pictures and tables: the confusion-matrix PNG and markdown tables."""

import math
import numbers
from pathlib import Path

import torch


def confusion_figure_size(num_classes: int) -> float:
    """Side of the square confusion figure in inches: ~0.45in per class, within [5, 24]."""
    return min(max(2.0 + 0.45 * num_classes, 5.0), 24.0)


def plot_confusion(
    confusion, class_names: list[str], path, title: str = "Confusion matrix", dpi: int = 100
) -> Path:
    """Write the confusion matrix as a PNG and return its path.

    Colour is row-normalised (per-class recall) so rare classes are as visible as common
    ones; the cell text shows raw counts, omitted above 30 classes where it can't be read.
    The image is exactly confusion_figure_size(C) * dpi pixels square.
    """
    # The object-oriented API needs no pyplot, so no GUI backend and no global figure state.
    from matplotlib.figure import Figure

    cm = torch.as_tensor(confusion, dtype=torch.float64)
    C = cm.shape[0]
    if cm.shape != (C, C) or len(class_names) != C:
        raise ValueError(f"need a square matrix and one name per class, got {tuple(cm.shape)}, {len(class_names)} names")
    rows = cm.sum(dim=1, keepdim=True)
    normalised = (cm / rows.clamp(min=1)).numpy()

    side = confusion_figure_size(C)
    fig = Figure(figsize=(side, side), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")

    fontsize = 8 if C <= 30 else 5
    # Slanted labels anchored at their end read best for a few names; many need vertical.
    slant = dict(rotation=45, ha="right", rotation_mode="anchor") if C <= 10 else dict(rotation=90)
    ax.set_xticks(range(C), class_names, fontsize=fontsize, **slant)
    ax.set_yticks(range(C), class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)

    if C <= 30:
        for i in range(C):
            for j in range(C):
                # White text on dark cells, black on light, so every count stays legible.
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color=colour, fontsize=fontsize)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No bbox_inches="tight": it would crop the canvas and break the documented pixel size.
    fig.savefig(path, dpi=dpi)
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """Format rows (e.g. one per model) as a GitHub markdown table; missing keys are blank."""
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if _is_number(rows, c) else "---" for c in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_format_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _is_number(rows: list[dict], column: str) -> bool:
    """True if every present value in the column is numeric, so it is right-aligned."""
    values = [r[column] for r in rows if r.get(column) is not None]
    return bool(values) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


def _format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{value:,}"  # params and FLOPs are long; separators make them readable
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"  # accuracies in percent, losses
        return f"{value:.4f}"  # fractions such as f1 or mcc
    return str(value).replace("|", "\\|")
