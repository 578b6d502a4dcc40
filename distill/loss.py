"""The student's loss: distillation from the teacher's distribution q (Hinton et al. 2015),
optionally mixed with hard-label cross-entropy.

    loss = (1 - alpha) * D(q, z) + alpha * CE(y, softmax(z))

z are the student logits, q the teacher distribution and y the hard target. The
distillation term D is one of:

- soft (default): T^2 * KL(q_T || softmax(z / T)).
- soft with `standardize` (logit standardisation, Sun et al. CVPR 2024): both sides'
  logits are z-scored per sample before the temperature, so the student matches the
  teacher's *ranking and relative gaps*, not its logit scale - a small student cannot
  reproduce a large teacher's confident scale, and should not have to. The teacher's
  logits are log q (equal to its logits up to a per-sample constant, which the
  z-score removes).
- hard (DeiT's hard distillation): CE(onehot(argmax q), softmax(z)), the one-hot
  label-smoothed like the true label; with alpha = 0.5 it is DeiT's 50/50 mix.

Temperature. The store holds the teacher's T=1 probabilities q (top-k, rest spread
evenly), not its logits, so the softened target is q_T ∝ q^(1/T), renormalised. For
a full softmax this equals softmax(teacher_logits / T) exactly; for a store it is
the same rule applied to the rebuilt distribution. The factor T^2 keeps the soft
term's gradient scale independent of T, as in Hinton et al.

Hard target. With Mixup/CutMix a view mixes two images, so y = lam * onehot(label) +
(1 - lam) * onehot(partner_label), each one-hot label-smoothed first (timm's rule);
unmixed views have lam = 1 and partner_label = label (distill.replay.mix_label).

Modes (`MODES`, the one table the config check and the trainer ask): `kd` and `online`
take q as an argument (from the store, or the teacher run on the same views by the training
loop); `scratch` uses the hard target only.

Store targets arrive sparse (`SparseTarget`: top-k class indices and probabilities and
the tail mass, as the reader decoded them; distill/batch.py): the dense q is built here, on the training
device, equal bit for bit to teacher_logits.codec.dense_distribution on the host.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from distill.batch import SparseTarget
from teacher_logits.errors import UserError

TEACHER_TARGETS = ("soft", "hard")


@dataclass(frozen=True)
class LossMode:
    """What one `loss.mode` means, the only place it is interpreted: where the teacher
    distribution q comes from and which config key the mode cannot run without."""
    teacher: str | None       # "store": the stored targets joined to each batch; "online": the
    #                           teacher run on each view by the training loop; None: labels only
    requires: str | None      # config key the mode needs set
    hint: str = ""            # added to the error when it is not


MODES = {
    "kd": LossMode(teacher="store", requires="logits.store", hint=" (or use loss.mode scratch)"),
    "scratch": LossMode(teacher=None, requires=None),
    "online": LossMode(teacher="online", requires="teacher.name"),
}


def soften(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """q^(1/T) renormalised; classes with q = 0 stay at 0."""
    if temperature == 1.0:
        return probs
    return torch.softmax(torch.log(probs) / temperature, dim=-1)


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-sample z-score of logits (Sun et al. 2024)."""
    return (logits - logits.mean(-1, keepdim=True)) / (logits.std(-1, keepdim=True) + eps)


def one_hot(label, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    return F.one_hot(label.long(), num_classes).float() * (1.0 - smoothing) + smoothing / num_classes


def hard_target(num_classes: int, label, partner_label=None, lam=None, smoothing: float = 0.0) -> torch.Tensor:
    target = one_hot(label, num_classes, smoothing)
    if partner_label is None or lam is None:
        return target
    lam = lam.float().view(-1, 1)
    return lam * target + (1.0 - lam) * one_hot(partner_label, num_classes, smoothing)


def cross_entropy(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


class DistillationLoss(nn.Module):
    def __init__(self, mode: str = "kd", temperature: float = 1.0, alpha: float = 0.0, label_smoothing: float = 0.0,
                 teacher_target: str = "soft", standardize: bool = False):
        super().__init__()
        if mode not in MODES:
            raise UserError(f"loss mode {mode!r}: expected one of {', '.join(MODES)}")
        if teacher_target not in TEACHER_TARGETS:
            raise UserError(f"loss teacher_target {teacher_target!r}: expected one of {', '.join(TEACHER_TARGETS)}")
        self.mode = MODES[mode]
        self.temperature, self.alpha, self.label_smoothing = temperature, alpha, label_smoothing
        self.teacher_target, self.standardize = teacher_target, standardize

    def forward(self, logits, teacher_probs=None, label=None, partner_label=None, lam=None) -> torch.Tensor:
        """Mean loss over the batch. logits [B, C]; teacher_probs [B, C] or a SparseTarget
        (kd/online); label, partner_label [B] ints and lam [B] (hard term; partner_label/lam may
        be None)."""
        logits = logits.float()  # bf16 logits would make the log-softmax too coarse
        if isinstance(teacher_probs, SparseTarget):
            teacher_probs = teacher_probs.dense(logits.shape[1])
        hard_weight = self.alpha if self.mode.teacher else 1.0  # labels only without a teacher
        loss = logits.new_zeros(())
        if hard_weight > 0:
            y = hard_target(logits.shape[1], label, partner_label, lam, self.label_smoothing)
            loss = loss + hard_weight * cross_entropy(y, logits)
        if hard_weight < 1:
            loss = loss + (1.0 - hard_weight) * self.distillation(logits, teacher_probs.float())
        return loss

    def distillation(self, logits, q) -> torch.Tensor:
        if self.teacher_target == "hard":
            return cross_entropy(one_hot(q.argmax(-1), q.shape[-1], self.label_smoothing), logits)
        T = self.temperature
        if self.standardize:
            # a class the store holds at exactly 0 gets the smallest positive log-probability
            teacher_logits = torch.log(q.clamp_min(torch.finfo(q.dtype).tiny))
            q, logits = F.softmax(standardize(teacher_logits) / T, dim=-1), standardize(logits)
        else:
            q = soften(q, T)
        # kl_div uses xlogy, so classes with q = 0 add 0 rather than nan.
        return T * T * F.kl_div(F.log_softmax(logits / T, dim=-1), q, reduction="batchmean")
