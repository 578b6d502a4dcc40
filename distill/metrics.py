"""Classification metrics, model cost, and report helpers.

Everything is derived from one CxC confusion matrix (rows = true class, columns =
predicted class, the scikit-learn convention), so evaluation only has to keep a
few integers per batch and distributed ranks can sum their state with a single
all_reduce. scikit-learn is used only by the tests, as the reference.

Units: `top1`/`top5` are percentages (0-100, as timm reports them); every other
score (precision, recall, f1, mcc) is a fraction in [0, 1] ([-1, 1] for mcc).
"""

import math
import numbers
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TOPK = 5  # the "top5" metric is top-min(TOPK, num_classes)


class MetricAccumulator:
    """Accumulates a confusion matrix, top-k hits and summed cross-entropy over batches.

    Usage:
        acc = MetricAccumulator(10, class_names)
        for x, y in loader:
            acc.update(model(x), y)
        acc.all_reduce()          # no-op unless torch.distributed is initialised
        results = acc.compute()
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.topk = min(TOPK, num_classes)
        self.reset()

    def reset(self) -> None:
        C = self.num_classes
        self.confusion = torch.zeros(C, C, dtype=torch.int64)
        self.topk_hits = 0
        self.loss_sum = 0.0  # python float is float64, so long runs don't lose precision

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: logits [N, C] (any device/dtype), integer targets [N]."""
        C = self.num_classes
        if logits.ndim != 2 or logits.shape[1] != C:
            raise ValueError(f"expected logits of shape [N, {C}], got {tuple(logits.shape)}")
        if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
            raise ValueError(f"expected targets of shape [{logits.shape[0]}], got {tuple(targets.shape)}")
        if targets.numel() == 0:
            return
        targets = targets.to(logits.device, torch.int64)
        if targets.min() < 0 or targets.max() >= C:
            raise ValueError(f"targets must lie in [0, {C})")

        logits = logits.float()  # CE in half precision is too coarse to average over a dataset
        self.loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()

        preds = logits.argmax(dim=1)
        # Encode each (true, pred) pair as one index so a single bincount fills the matrix.
        pairs = torch.bincount(targets * C + preds, minlength=C * C)
        self.confusion += pairs.view(C, C).cpu()

        topk_preds = logits.topk(self.topk, dim=1).indices
        self.topk_hits += (topk_preds == targets[:, None]).any(dim=1).sum().item()

    # --- distributed / merge support -------------------------------------------------
    # The whole state is packed into one float64 vector so ranks need one collective.
    # float64 holds integers exactly up to 2**53, far beyond any evaluation set.

    def state(self) -> torch.Tensor:
        """The raw state as one flat float64 tensor: [confusion.flatten(), topk_hits, loss_sum]."""
        extras = torch.tensor([self.topk_hits, self.loss_sum], dtype=torch.float64)
        return torch.cat([self.confusion.flatten().double(), extras])

    def load_state(self, state: torch.Tensor) -> None:
        """Replace the accumulator's state with a (e.g. all-reduced) `state()` vector."""
        C = self.num_classes
        state = state.detach().cpu().double()
        if state.numel() != C * C + 2:
            raise ValueError(f"state has {state.numel()} values, expected {C * C + 2}")
        self.confusion = state[: C * C].round().long().view(C, C)
        self.topk_hits = int(round(state[-2].item()))
        self.loss_sum = state[-1].item()

    def merge(self, other: "MetricAccumulator") -> None:
        """Add another accumulator's counts into this one."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge accumulators with different num_classes")
        self.load_state(self.state() + other.state())

    def all_reduce(self, device: torch.device | str | None = None) -> None:
        """Sum the state across ranks in place; a no-op outside torch.distributed.

        NCCL only reduces CUDA tensors, so pass device="cuda" there; gloo works on CPU.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        state = self.state().to(device or "cpu")
        dist.all_reduce(state, op=dist.ReduceOp.SUM)
        self.load_state(state)

    # --- results ---------------------------------------------------------------------

    def compute(self) -> dict:
        """All metrics from the accumulated state.

        Keys: top1, top5 (percent); loss (mean cross-entropy, nats); precision_macro,
        recall_macro, f1_macro, mcc (fractions); per_class (list of dicts with index,
        name, precision, recall, f1, support); confusion (list of lists, rows = true);
        num_samples.

        Zero division gives 0, as sklearn's zero_division=0. Macro averages run over
        the classes that occur in the targets or the predictions, as sklearn does when
        `labels` is not given; a class absent from both has nothing to measure, and
        counting it as 0 would punish small evaluation subsets for their sampling.
        """
        cm = self.confusion.double()
        n = cm.sum().item()
        if n == 0:
            raise ValueError("no samples accumulated")

        tp = cm.diag()
        support = cm.sum(dim=1)  # true count per class
        predicted = cm.sum(dim=0)  # predicted count per class
        precision = _safe_div(tp, predicted)
        recall = _safe_div(tp, support)
        # 2tp / (2tp + fp + fn) equals 2PR/(P+R) but stays defined when P or R is 0/0.
        f1 = _safe_div(2 * tp, support + predicted)

        seen = (support + predicted) > 0
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        per_class = [
            {
                "index": i,
                "name": names[i],
                "precision": precision[i].item(),
                "recall": recall[i].item(),
                "f1": f1[i].item(),
                "support": int(support[i].item()),
            }
            for i in range(self.num_classes)
        ]
        return {
            "top1": 100.0 * tp.sum().item() / n,
            "top5": 100.0 * self.topk_hits / n,
            "loss": self.loss_sum / n,
            "precision_macro": precision[seen].mean().item(),
            "recall_macro": recall[seen].mean().item(),
            "f1_macro": f1[seen].mean().item(),
            "mcc": _matthews(cm),
            "per_class": per_class,
            "confusion": self.confusion.tolist(),
            "num_samples": int(n),
        }


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0 wherever den is 0 (sklearn's zero_division=0)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


def _matthews(cm: torch.Tensor) -> float:
    """Multiclass Matthews correlation from a float64 confusion matrix (Gorodkin, 2004).

    MCC = (c*s - t.p) / sqrt((s^2 - p.p) * (s^2 - t.t)), with c correct predictions,
    s samples, t true counts and p predicted counts per class. 0 when undefined.
    """
    t, p = cm.sum(dim=1), cm.sum(dim=0)
    c, s = cm.trace(), cm.sum()
    cov_tp = c * s - t @ p
    cov_pp = s * s - p @ p
    cov_tt = s * s - t @ t
    denom = math.sqrt((cov_pp * cov_tt).item())
    return (cov_tp / denom).item() if denom > 0 else 0.0


# --- plots and tables -----------------------------------------------------------------


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


# --- model cost -----------------------------------------------------------------------


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def count_flops(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """FLOPs of one forward pass on a zero tensor of `input_size` (batch included).

    Uses torch's FlopCounterMode, which counts a multiply-add as 2 FLOPs (so
    Linear(i, o) on batch B is 2*B*i*o) and counts only matmul/conv/attention-like
    ops: elementwise work, norms, softmax and bias adds count 0.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()  # don't disturb BatchNorm running stats
    try:
        x = torch.zeros(input_size, device=_model_device(model))
        with FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


@torch.no_grad()
def measure_throughput(
    model: nn.Module,
    input_size: tuple[int, int, int] = (3, 32, 32),
    batch_size: int = 256,
    device: torch.device | str | None = None,
    warmup: int = 5,
    iters: int = 20,
) -> float:
    """Inference throughput in images/s: eval mode, no_grad, random input.

    `input_size` is one image's (C, H, W). If `device` is given the model is moved
    there (in place, as nn.Module.to does); by default it stays where it is.
    Warm-up iterations are excluded so allocator and kernel-selection costs don't count.
    """
    if len(input_size) != 3:
        raise ValueError(f"input_size is one image's (C, H, W), got {tuple(input_size)}")
    if device is not None:
        model.to(device)
    device = _model_device(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    was_training = model.training
    model.eval()
    try:
        x = torch.randn(batch_size, *input_size, device=device)
        for _ in range(warmup):
            model(x)
        sync()  # CUDA launches are async; time only finished work
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
        sync()
        elapsed = time.perf_counter() - start
    finally:
        model.train(was_training)
    return batch_size * iters / elapsed
