"""DistillationLoss against dense references written out directly with torch."""
import pytest
import torch
import torch.nn.functional as F

from distill.loss import DistillationLoss, soften

B, C = 16, 10


def random_batch(seed, zeros_in_teacher=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, generator=g) * 3
    teacher = torch.softmax(torch.randn(B, C, generator=g) * 2, dim=1)
    if zeros_in_teacher:  # e.g. a store with k = C and exact zeros
        teacher[:, :3] = 0
        teacher = teacher / teacher.sum(1, keepdim=True)
    label = torch.randint(0, C, (B,), generator=g)
    partner = torch.randint(0, C, (B,), generator=g)
    lam = torch.rand(B, generator=g)
    lam[: B // 2] = 1.0  # half the batch unmixed
    return logits, teacher, label, partner, lam


def reference(logits, teacher, label, partner, lam, T, alpha, smoothing, mode="kd"):
    """The loss written out term by term in float64."""
    logits, teacher = logits.double(), teacher.double()
    eye = torch.eye(C, dtype=torch.float64)
    smooth = lambda y: eye[y] * (1 - smoothing) + smoothing / C  # noqa: E731
    y = lam.double()[:, None] * smooth(label) + (1 - lam.double()[:, None]) * smooth(partner)
    ce = -(y * torch.log_softmax(logits, 1)).sum(1).mean()
    if mode == "scratch":
        return ce
    q = teacher ** (1 / T)
    q = q / q.sum(1, keepdim=True)
    log_q = torch.where(q > 0, q.log(), torch.zeros_like(q))
    kl = (q * (log_q - torch.log_softmax(logits / T, 1))).sum(1).mean()
    return (1 - alpha) * T * T * kl + alpha * ce


@pytest.mark.parametrize("T,alpha,smoothing", [(1.0, 0.0, 0.0), (4.0, 0.0, 0.0), (2.0, 0.3, 0.1), (0.5, 1.0, 0.0)])
@pytest.mark.parametrize("zeros", [False, True])
def test_kd_matches_dense_reference(T, alpha, smoothing, zeros):
    logits, teacher, label, partner, lam = random_batch(int(T * 10 + alpha * 100), zeros)
    loss = DistillationLoss("kd", T, alpha, smoothing)(logits, teacher, label, partner, lam)
    want = reference(logits, teacher, label, partner, lam, T, alpha, smoothing)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)


def test_scratch_is_mixed_smoothed_cross_entropy():
    logits, teacher, label, partner, lam = random_batch(1)
    loss = DistillationLoss("scratch", 3.0, 0.0, 0.1)(logits, None, label, partner, lam)
    torch.testing.assert_close(loss.double(), reference(logits, teacher, label, partner, lam, 1, 0, 0.1, "scratch"))
    # unmixed, it is torch's own label-smoothed cross-entropy
    ones = torch.ones(B)
    torch.testing.assert_close(DistillationLoss("scratch", label_smoothing=0.1)(logits, None, label, partner, ones),
                               F.cross_entropy(logits, label, label_smoothing=0.1))


def test_soften_equals_teacher_softmax_at_temperature():
    """For a full distribution, q^(1/T) renormalised is softmax(teacher_logits / T)."""
    z = torch.randn(B, C, dtype=torch.float64) * 3
    for T in (0.5, 2.0, 8.0):
        torch.testing.assert_close(soften(z.softmax(1), T), (z / T).softmax(1))


def test_partner_minus_one_means_unmixed():
    logits, teacher, label, partner, lam = random_batch(4)
    unmixed = DistillationLoss("scratch", label_smoothing=0.1)
    ones = torch.ones(B)
    torch.testing.assert_close(unmixed(logits, None, label, torch.full((B,), -1), ones),
                               unmixed(logits, None, label, label, ones))


def test_online_equals_kd_on_same_probabilities():
    logits, teacher, label, partner, lam = random_batch(2)
    kd = DistillationLoss("kd", 2.0, 0.2)(logits, teacher, label, partner, lam)
    online = DistillationLoss("online", 2.0, 0.2)(logits, teacher, label, partner, lam)
    assert torch.equal(kd, online)


def test_bf16_logits_and_gradient():
    logits, teacher, label, partner, lam = random_batch(3)
    x = logits.bfloat16().requires_grad_()
    loss = DistillationLoss("kd", 2.0, 0.5)(x, teacher, label, partner, lam)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()


def test_perfect_student_has_zero_kl():
    teacher_logits = torch.randn(B, C)
    loss = DistillationLoss("kd", 3.0)(teacher_logits, teacher_logits.softmax(1))
    assert abs(loss.item()) < 1e-5


def test_bad_mode():
    with pytest.raises(ValueError, match="kd, scratch, online"):
        DistillationLoss("hinton")
