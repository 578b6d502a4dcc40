"""Classification metrics accumulated over batches (and ranks) from one confusion matrix.

Training-time evaluation and tools/evaluate.py share this: each batch adds to a CxC confusion
matrix (rows = true class, columns = predicted, scikit-learn's convention), top-k hits and summed
cross-entropy, so ranks can sum their state with a single all_reduce. The scores themselves are
scikit-learn's, computed from the matrix's (true, predicted) cells weighted by their counts.

Units: `top1`/`top5` are percentages (0-100, as timm reports them); every other score
(precision, recall, f1, mcc) is a fraction in [0, 1] ([-1, 1] for mcc).
"""

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

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

        Zero division gives 0 (zero_division=0). Macro averages run over the classes that
        occur in the targets or the predictions, as scikit-learn does when `labels` is not
        given; a class absent from both has nothing to measure, and counting it as 0 would
        punish small evaluation subsets for their sampling.
        """
        cm = self.confusion.numpy()
        n = int(cm.sum())
        if n == 0:
            raise ValueError("no samples accumulated")
        # Each non-empty cell is one (true, predicted) pair weighted by its count: scikit-learn
        # then scores the whole evaluation set without it ever being held in memory.
        true, pred = np.nonzero(cm)
        weight = cm[true, pred]
        macro = skm.precision_recall_fscore_support(true, pred, sample_weight=weight, average="macro",
                                                    zero_division=0)
        per_class = skm.precision_recall_fscore_support(true, pred, sample_weight=weight, average=None,
                                                        labels=range(self.num_classes), zero_division=0)
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        return {
            "top1": 100.0 * np.trace(cm) / n,
            "top5": 100.0 * self.topk_hits / n,
            "loss": self.loss_sum / n,
            "precision_macro": float(macro[0]),
            "recall_macro": float(macro[1]),
            "f1_macro": float(macro[2]),
            "mcc": float(skm.matthews_corrcoef(true, pred, sample_weight=weight)),
            "per_class": [{"index": i, "name": names[i], "precision": float(per_class[0][i]),
                           "recall": float(per_class[1][i]), "f1": float(per_class[2][i]),
                           "support": int(cm[i].sum())} for i in range(self.num_classes)],
            "confusion": self.confusion.tolist(),
            "num_samples": n,
        }
