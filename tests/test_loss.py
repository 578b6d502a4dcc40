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


def test_online_matches_dense_reference():
    """online mode on the teacher's own softmax: the same formula as kd, checked against the
    float64 reference on the teacher's logits (not against kd's code path)."""
    g = torch.Generator().manual_seed(2)
    logits, teacher_logits = torch.randn(B, C, generator=g) * 3, torch.randn(B, C, generator=g) * 2
    label, partner, lam = torch.randint(0, C, (B,), generator=g), torch.randint(0, C, (B,), generator=g), torch.rand(B)
    online = DistillationLoss("online", 2.0, 0.2)(logits, teacher_logits.softmax(-1), label, partner, lam)
    q = (teacher_logits.double() / 2.0).softmax(-1)
    kl = (q * (q.log() - torch.log_softmax(logits.double() / 2.0, 1))).sum(1).mean()
    eye = torch.eye(C, dtype=torch.float64)
    y = lam.double()[:, None] * eye[label] + (1 - lam.double()[:, None]) * eye[partner]
    ce = -(y * torch.log_softmax(logits.double(), 1)).sum(1).mean()
    torch.testing.assert_close(online.double(), 0.8 * 4.0 * kl + 0.2 * ce, rtol=1e-5, atol=1e-6)


def test_bf16_logits_and_gradient_match_fp32():
    logits, teacher, label, partner, lam = random_batch(3)
    x = logits.bfloat16().requires_grad_()
    loss = DistillationLoss("kd", 2.0, 0.5)(x, teacher, label, partner, lam)
    assert loss.dtype == torch.float32
    loss.backward()
    # the same (bf16-rounded) logits in fp32: the loss is computed in fp32 either way
    x32 = x.detach().float().requires_grad_()
    loss32 = DistillationLoss("kd", 2.0, 0.5)(x32, teacher, label, partner, lam)
    loss32.backward()
    torch.testing.assert_close(loss, loss32, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad.float(), x32.grad, rtol=1e-2, atol=1e-3)  # bf16 gradient rounding
    # and within bf16's rounding of the unrounded fp32 loss
    assert abs(loss.item() - DistillationLoss("kd", 2.0, 0.5)(logits, teacher, label, partner, lam).item()) < 0.05


def test_perfect_student_has_zero_kl():
    teacher_logits = torch.randn(B, C)
    loss = DistillationLoss("kd", 3.0)(teacher_logits, teacher_logits.softmax(1))
    assert abs(loss.item()) < 1e-5


def test_bad_mode():
    with pytest.raises(ValueError, match="kd, scratch, online"):
        DistillationLoss("hinton")


def test_hard_teacher_target_by_hand():
    """DeiT's hard distillation, written out for one sample: CE to the teacher's argmax."""
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    q = torch.tensor([[0.1, 0.7, 0.2]])  # argmax 1, not the true label 0
    label = torch.tensor([0])
    log_p = logits[0] - torch.log(torch.exp(logits[0]).sum())
    # pure hard distillation, no smoothing: -log p[1]
    got = DistillationLoss("kd", teacher_target="hard")(logits, q, label)
    torch.testing.assert_close(got, -log_p[1])
    # smoothing 0.3 on 3 classes: target (0.1, 0.8, 0.1); alpha 0.5 mixes in the true label (0.8, 0.1, 0.1)
    got = DistillationLoss("kd", alpha=0.5, label_smoothing=0.3, teacher_target="hard")(logits, q, label)
    want = 0.5 * -(0.1 * log_p[0] + 0.8 * log_p[1] + 0.1 * log_p[2]) \
        + 0.5 * -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])
    torch.testing.assert_close(got, want)
    # the temperature plays no part in hard distillation
    torch.testing.assert_close(DistillationLoss("kd", 4.0, teacher_target="hard")(logits, q, label), -log_p[1])


def test_standardized_kd_matches_reference_and_ignores_logit_scale():
    logits, teacher, label, partner, lam = random_batch(5)
    T = 2.0
    got = DistillationLoss("kd", T, standardize=True)(logits, teacher, label, partner, lam)
    z_t = teacher.double().log()
    z_t = (z_t - z_t.mean(1, keepdim=True)) / z_t.std(1, keepdim=True)
    z_s = logits.double()
    z_s = (z_s - z_s.mean(1, keepdim=True)) / z_s.std(1, keepdim=True)
    q = torch.softmax(z_t / T, 1)
    want = T * T * (q * (q.log() - torch.log_softmax(z_s / T, 1))).sum(1).mean()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # a student whose logits are the teacher's scaled and shifted pays nothing when standardized,
    # and a positive price without it
    student = 0.2 * teacher.log() + 5.0
    assert DistillationLoss("kd", T, standardize=True)(student, teacher).item() < 1e-5
    assert DistillationLoss("kd", T)(student, teacher).item() > 1e-2


def test_standardized_kd_survives_zeros_in_the_store():
    logits, teacher, *_ = random_batch(6, zeros_in_teacher=True)
    x = logits.clone().requires_grad_()
    loss = DistillationLoss("kd", 1.0, standardize=True)(x, teacher)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_bad_teacher_target():
    with pytest.raises(ValueError, match="soft, hard"):
        DistillationLoss("kd", teacher_target="argmax")
