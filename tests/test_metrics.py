"""distill.metrics (scores from the accumulated confusion matrix) against scikit-learn run on the
samples themselves; distill.report's pictures and tables; distill.model_cost against torch's counters."""

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm
from torch import nn

from distill.metrics import MetricAccumulator
from distill.model_cost import count_flops, count_params, measure_throughput
from distill.report import confusion_figure_size, markdown_table, plot_confusion

BATCH_SIZES = [37, 64, 1, 98]  # uneven, including a single-sample batch


def make_predictions(num_classes, seed, never_predicted=None, absent=None):
    """Seeded logits that are right more often than chance, plus their targets.

    never_predicted: a class that has support but no logit can ever win.
    absent: a class that is neither a target nor ever predicted.
    """
    g = torch.Generator().manual_seed(seed)
    n = sum(BATCH_SIZES)
    targets = torch.randint(num_classes, (n,), generator=g)
    if absent is not None:
        targets[targets == absent] = (absent + 1) % num_classes
    logits = torch.randn(n, num_classes, generator=g) + 1.5 * F.one_hot(targets, num_classes)
    for c in (never_predicted, absent):
        if c is not None:
            logits[:, c] = -1e4
    return logits, targets


def accumulate(logits, targets, num_classes, **kwargs):
    acc = MetricAccumulator(num_classes, **kwargs)
    for chunk_logits, chunk_targets in zip(logits.split(BATCH_SIZES), targets.split(BATCH_SIZES)):
        acc.update(chunk_logits, chunk_targets)
    return acc


CASES = {
    "C3": dict(num_classes=3, seed=0),
    "C10_never_predicted": dict(num_classes=10, seed=1, never_predicted=7),
    "C10_absent_class": dict(num_classes=10, seed=2, never_predicted=4, absent=9),
}


@pytest.mark.filterwarnings("ignore:'k' .* will result in a perfect score")
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_metrics_match_sklearn(case):
    C = case["num_classes"]
    logits, targets = make_predictions(**case)
    m = accumulate(logits, targets, C).compute()

    y_true, y_score = targets.numpy(), logits.numpy()
    y_pred = y_score.argmax(axis=1)
    labels = list(range(C))
    if "never_predicted" in case:
        assert case["never_predicted"] not in y_pred and case["never_predicted"] in y_true

    assert m["num_samples"] == len(y_true)
    assert m["confusion"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    assert m["top1"] == pytest.approx(100 * skm.accuracy_score(y_true, y_pred))
    k = min(5, C)
    assert m["top5"] == pytest.approx(100 * skm.top_k_accuracy_score(y_true, y_score, k=k, labels=labels))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y_true, y_pred))

    # Macro averages: sklearn's default label set (classes seen in y_true or y_pred).
    p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert (m["precision_macro"], m["recall_macro"], m["f1_macro"]) == pytest.approx((p, r, f))

    # Per class: every class, including ones never seen.
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    assert [c["index"] for c in m["per_class"]] == labels
    np.testing.assert_allclose([c["precision"] for c in m["per_class"]], p)
    np.testing.assert_allclose([c["recall"] for c in m["per_class"]], r)
    np.testing.assert_allclose([c["f1"] for c in m["per_class"]], f)
    assert [c["support"] for c in m["per_class"]] == s.tolist()


def test_loss_is_mean_cross_entropy():
    logits, targets = make_predictions(10, seed=3)
    m = accumulate(logits, targets, 10).compute()
    assert m["loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)


def test_class_names_and_units():
    logits, targets = make_predictions(3, seed=4)
    m = accumulate(logits, targets, 3, class_names=["cat", "dog", "ship"]).compute()
    assert [c["name"] for c in m["per_class"]] == ["cat", "dog", "ship"]
    assert 1 < m["top1"] <= 100  # percent, not a fraction
    assert 0 <= m["f1_macro"] <= 1


def test_merge_and_state_round_trip_equal_single_pass():
    logits, targets = make_predictions(10, seed=5)
    whole = accumulate(logits, targets, 10).compute()

    # Two "ranks" each see half the data; summing their states is what all_reduce does.
    a, b = MetricAccumulator(10), MetricAccumulator(10)
    a.update(logits[:100], targets[:100])
    b.update(logits[100:], targets[100:])
    reduced = MetricAccumulator(10)
    reduced.load_state(a.state() + b.state())
    a.merge(b)

    for merged in (a.compute(), reduced.compute()):
        assert merged["confusion"] == whole["confusion"]
        assert merged["top5"] == whole["top5"]
        assert merged["loss"] == pytest.approx(whole["loss"])


def test_all_reduce_is_noop_without_distributed():
    logits, targets = make_predictions(3, seed=6)
    acc = accumulate(logits, targets, 3)
    before = acc.state()
    acc.all_reduce()
    assert torch.equal(acc.state(), before)


def test_update_rejects_bad_shapes_and_labels():
    acc = MetricAccumulator(3)
    with pytest.raises(ValueError):
        acc.update(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        acc.update(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError):
        acc.compute()  # nothing accumulated


@pytest.mark.parametrize("num_classes, dpi", [(10, 100), (100, 30)])
def test_plot_confusion_writes_png_of_documented_size(tmp_path, num_classes, dpi):
    logits, targets = make_predictions(num_classes, seed=7)
    confusion = accumulate(logits, targets, num_classes).compute()["confusion"]
    names = [f"class_{i}" for i in range(num_classes)]

    path = plot_confusion(confusion, names, tmp_path / "plots" / "cm.png", dpi=dpi)

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = mpimg.imread(path).shape[:2]
    side = round(confusion_figure_size(num_classes) * dpi)
    assert (height, width) == (side, side)


def test_confusion_figure_grows_with_classes():
    assert confusion_figure_size(3) <= confusion_figure_size(10) < confusion_figure_size(30)


def test_markdown_table():
    rows = [
        {"model": "teacher", "top1": 95.123, "f1_macro": 0.95123, "params": 5_543_716},
        {"model": "stu|dent", "top1": 88.0, "params": 21_000},
    ]
    table = markdown_table(rows, ["model", "top1", "f1_macro", "params"])
    assert table.splitlines() == [
        "| model | top1 | f1_macro | params |",
        "|---|---:|---:|---:|",
        "| teacher | 95.12 | 0.9512 | 5,543,716 |",
        "| stu\\|dent | 88.00 |  | 21,000 |",
    ]


def test_count_params():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    model[0].requires_grad_(False)
    assert count_params(model, trainable_only=True) == count_params(model) - model[0].weight.numel() - 8


def test_count_flops_counts_multiply_add_as_two():
    layer = nn.Linear(64, 32)
    in_features, out_features = layer.weight.shape[1], layer.weight.shape[0]
    assert count_flops(layer, input_size=(1, in_features)) == 2 * in_features * out_features


def test_measure_throughput_restores_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).train()
    ips = measure_throughput(model, (3, 8, 8), batch_size=16, warmup=1, iters=2)
    assert ips > 0
    assert model.training
