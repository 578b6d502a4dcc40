"""What travels from the data path to a training or labelling step: one `Batch` type for every
consumer, and the stored teacher distribution it may carry (`SparseTarget`).

Seeded views (replay.SeededViews: the teacher stage, a student without a store, evaluation)
collate into a Batch; a store's views (replay.StoreViews) arrive as a Batch with `target` set.
`SparseTarget` keeps the store's field names (teacher_logits.schema.StoredRecords:
top_classes, top_probs, tail) from the codec to the loss, which densifies it on the training
device. This module sits below both the data path and the loss, so neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch.utils.data import default_collate

from teacher_logits.codec import tail_share


@dataclass
class SparseTarget:
    """A batch of stored teacher distributions: the k probabilities where they were, the tail
    mass 1 - sum(top-k) spread evenly over the other C - k classes (TinyViT's rule)."""

    top_classes: torch.Tensor  # (N, k) int64 class indices, most probable first
    top_probs: torch.Tensor    # (N, k) float32 probabilities
    tail: torch.Tensor         # (N,) float32 mass outside the top-k

    @classmethod
    def of(cls, records) -> SparseTarget:
        """The targets of decoded records (teacher_logits.schema.StoredRecords), sharing their memory."""
        return cls(*(torch.from_numpy(getattr(records, f.name)) for f in fields(cls)))

    def to(self, device, non_blocking: bool = False) -> SparseTarget:
        return SparseTarget(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))

    def dense(self, num_classes: int) -> torch.Tensor:
        """(N, C) float32 distribution, on the tensors' device; equal bit for bit to
        teacher_logits.codec.dense_distribution on the host."""
        n, k = self.top_probs.shape
        each = tail_share(self.tail, num_classes, k)
        dense = each.float().view(n, 1).expand(n, num_classes).contiguous()
        return dense.scatter_(1, self.top_classes.long(), self.top_probs.float())


@dataclass
class Batch:
    """A batch of views with their labels and how each was made."""
    view: torch.Tensor           # (B, 3, H, W) float32 in [0, 1]
    label: torch.Tensor          # (B,) int64
    partner_label: torch.Tensor  # (B,) int64: the mix partner's label, the sample's own where unmixed
    lam: torch.Tensor            # (B,) float64: weight of the sample's own image, 1 where unmixed
    index: torch.Tensor          # (B,) int64 sample indices
    seed: torch.Tensor           # (B,) int64 view seeds
    mix_partner: torch.Tensor    # (B,) int64, -1 where unmixed
    target: SparseTarget | None = None  # the stored teacher distribution (kd), joined by StoreViews

    @classmethod
    def collate(cls, samples: list[dict]) -> Batch:
        """SeededViews items -> a Batch (the DataLoader's collate_fn)."""
        return cls(**default_collate(samples))

    def __len__(self) -> int:
        return len(self.index)

    def pin_memory(self) -> Batch:  # the DataLoader's pin_memory=True calls this
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})
