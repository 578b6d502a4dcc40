"""Teacher ensembles in one store: the stored target is the weighted mean of the teachers'
probabilities on the same view; verify re-runs the whole ensemble and refuses other teachers;
bad ensemble input gets one line naming the flag. On `digits`, 64 samples, in-process."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import run_program, user_error
from distill.augment import ViewMaker
from distill.datasets import build_dataset
from teacher_logits.codec import decode_values
from distill.replay import store_view_maker
from teacher_logits.reader import LogitStore

R20 = "cifar10_resnet20"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """In-process teacher runs on one thread, like the subprocesses (conftest.one_thread)."""


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two random-init ResNet-20s whose BatchNorm statistics are set on digits views, so their
    predictions vary per sample and the two disagree (teacher 1 mostly says 6, teacher 2 mostly 0)."""
    import timm

    from distill.models import Preprocessed

    dataset = build_dataset("digits", None, train=True)
    maker = ViewMaker(dataset, "crop", num_samples=64)
    views = torch.stack([maker(i, i)[0] for i in range(64)])
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = timm.create_model(R20)
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the batch below
        with torch.no_grad():
            Preprocessed(model).train()(views)
            model.linear.weight.mul_(3)
        path = tmp_path_factory.mktemp("teachers") / f"r20_{seed}.pt"
        torch.save(model.state_dict(), path)
        paths.append(path)
    return paths


def pairs(paths):
    return [a for p in paths for a in ("--teacher", R20, "--checkpoint", p)]


BASE = ["--dataset", "digits", "--aug", "crop", "--limit", "64", "--epochs", "1", "--topk", "10", "--workers", "0",
        "--batch-size", "32"]


@pytest.fixture(scope="module")
def stores(teachers, tmp_path_factory):
    """{name: (path, normalised weights)}: equal weights with 8-bit values; weights 1:3 with
    fp16 values and Mixup (the teachers label the mixed view)."""
    root = tmp_path_factory.mktemp("ensemble")
    made = {}
    for name, extra, weights in [("equal", [], [0.5, 0.5]),
                                 ("weighted", ["--teacher-weights", "1", "3", "--values", "fp16", "--mixup", "0.8"],
                                  [0.25, 0.75])]:
        run_program("save_logits", [*pairs(teachers), *BASE, *extra, "--out", root / name], check=True)
        made[name] = (root / name, weights)
    return made


def replayed_average(store: LogitStore, paths, weights):
    """Every record of the store: (columns, the weighted mean of the teachers' probabilities on
    its replayed view, each teacher's probabilities)."""
    from distill.models import create_teacher

    data = store.settings.dataset
    dataset = build_dataset(data["name"], None, train=True)
    maker = store_view_maker(dataset, store)
    cols = [store.read(entry) for entry in store.shards()]
    cols = {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}
    views = torch.stack([maker(int(i), int(s))[0] for i, s in zip(cols["index"], cols["seed"])])
    probs = []
    with torch.no_grad():
        for path in paths:
            probs.append(create_teacher(R20, path, num_classes=10)(views).double().softmax(1).numpy())
    return cols, sum(w * p for w, p in zip(weights, probs)), probs


@pytest.mark.parametrize("name", ["equal", "weighted"])
def test_stored_targets_are_the_weighted_mean_of_the_teachers(stores, teachers, name):
    path, weights = stores[name]
    store = LogitStore(path)
    teacher = store.settings.teacher
    assert teacher["weights"] == weights and teacher["precision"] == "fp32"
    assert [(m["name"], m["pretrained"]) for m in teacher["members"]] == [(R20, False), (R20, False)]
    assert len({m["checkpoint_sha256"] for m in teacher["members"]}) == 2
    cols, avg, (p1, p2) = replayed_average(store, teachers, weights)
    assert len(avg) == 64
    idx = cols["topk_idx"].astype(np.int64)
    stored, _ = decode_values(cols["topk_val"], store.settings.values, 10)
    expected = np.take_along_axis(avg, idx, 1)
    if store.settings.values == "fp16":  # 11-bit mantissa
        np.testing.assert_allclose(stored, expected, rtol=1e-3, atol=1e-6)
    else:  # codec.py: each log-ratio within STEP/2 (one STEP for a near-tie): <= ~8 % each side of the renorm
        np.testing.assert_allclose(stored, expected, rtol=0.13, atol=1e-6)
        assert np.abs(stored - expected).mean() < 0.01
    top2 = np.sort(avg, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # leave out exact near-ties of the recomputed mean
    assert clear.mean() > 0.9
    assert np.array_equal(idx[clear, 0], avg.argmax(1)[clear])
    # the mean is neither teacher alone: the test can tell them apart
    assert (avg.argmax(1) != p1.argmax(1)).any()
    for single in (p1, p2):
        assert np.abs(np.take_along_axis(single, idx, 1) - expected).max() > 0.05


def test_verify_reruns_the_whole_ensemble(stores, teachers):
    for name in ("equal", "weighted"):
        code, out, err = run_program("verify_logits", [stores[name][0], *pairs(teachers), "--check", "64",
                                                       "--device", "cpu"])
        assert code == 0, err
        agreement = float(out.split("top-1 agreement ")[1].split("%")[0])
        error = float(out.split("mean |p - stored p| ")[1].split()[0])
        assert agreement == 100.0 and error < (0.01 if name == "equal" else 1e-4), out


@pytest.mark.parametrize("given, needle", [
    ("first only", "the store was made by 2 teacher(s)"),
    ("swapped", "teacher.members[0].checkpoint_sha256"),
])
def test_verify_refuses_other_teachers(stores, teachers, given, needle):
    paths = teachers[:1] if given == "first only" else teachers[::-1]
    result = run_program("verify_logits", [stores["equal"][0], *pairs(paths), "--check", "8"])
    user_error(result, needle, "in the store's order")
    assert "teacher check" not in result.out


def test_single_teacher_settings_are_unchanged(teachers, tmp_path):
    """One --teacher: the fingerprint stores have always had (no members, no weights)."""
    run_program("save_logits", [*pairs(teachers[:1]), *BASE, "--limit", "16", "--out", tmp_path / "s"], check=True)
    teacher = json.loads((tmp_path / "s" / "manifest.json").read_text())["settings"]["teacher"]
    assert sorted(teacher) == ["checkpoint_sha256", "name", "precision", "pretrained"]
    assert teacher["name"] == R20


@pytest.mark.parametrize("extra, needles", [
    (["--checkpoint", "B"], ["--checkpoint: 3 given for 2 teacher(s)", "one --checkpoint per --teacher"]),
    (["--teacher-weights", "1"], ["--teacher-weights: 1 weight(s) for 2 teacher(s)", "one positive weight"]),
    (["--teacher-weights", "1", "0"], ["--teacher-weights: every weight must be a positive number, got 0"]),
    (["--teacher-weights", "1", "-2"], ["--teacher-weights: every weight must be a positive number, got -2"]),
])
def test_bad_ensemble_input_is_one_line_naming_the_flag(teachers, tmp_path, extra, needles):
    out = tmp_path / "s"
    result = run_program("save_logits", [*pairs(teachers), *BASE, *extra, "--out", out])
    assert result.err.strip() == user_error(result, *needles)  # the one line, nothing else
    assert not out.exists()


def test_teachers_with_different_class_counts_are_refused():
    from distill.models import TeacherEnsemble, create_teacher

    with pytest.warns(UserWarning, match="random weights"):
        members = [create_teacher(R20), create_teacher("cifar100_resnet56")]
    with pytest.raises(ValueError, match=r"different class counts \(a: 10, b: 100\)"):
        TeacherEnsemble(members, names=["a", "b"])


def test_ensemble_module_returns_log_of_the_weighted_mean():
    from distill.models import TeacherEnsemble

    class Fixed(torch.nn.Module):
        num_classes = 3

        def __init__(self, logits):
            super().__init__()
            self.logits = torch.tensor(logits)

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    a, b = [2.0, 0.0, -1.0], [-3.0, 1.0, 0.5]
    ensemble = TeacherEnsemble([Fixed(a), Fixed(b)], weights=[1, 3])
    probs = ensemble(torch.zeros(2, 3, 4, 4)).softmax(-1)
    expected = 0.25 * torch.tensor(a).softmax(-1) + 0.75 * torch.tensor(b).softmax(-1)
    torch.testing.assert_close(probs, expected.expand(2, -1), rtol=1e-6, atol=1e-7)
    assert ensemble.weights == [0.25, 0.75] and ensemble.num_classes == 3


def test_flip_averaged_targets_are_the_mean_over_the_view_and_its_mirror(teachers, tmp_path):
    """--flip-average: the stored target is the mean of the teacher's probabilities on the view and
    on its mirror image (not the plain view's), the store says so, and verify re-checks it."""
    from distill.models import create_teacher

    out = tmp_path / "flip"
    run_program("save_logits", [*pairs(teachers[:1]), *BASE, "--flip-average", "--out", out], check=True)
    store = LogitStore(out)
    assert store.settings.teacher["flip_average"] is True
    maker = store_view_maker(build_dataset("digits", None, train=True), store)
    cols = [store.read(entry) for entry in store.shards()]
    cols = {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}
    views = torch.stack([maker(int(i), int(s))[0] for i, s in zip(cols["index"], cols["seed"])])
    teacher = create_teacher(R20, teachers[0], num_classes=10)
    with torch.no_grad():
        plain, mirrored = (teacher(v).double().softmax(1).numpy() for v in (views, views.flip(-1)))
    idx = cols["topk_idx"].astype(np.int64)
    stored, _ = decode_values(cols["topk_val"], store.settings.values, 10)
    expected = np.take_along_axis((plain + mirrored) / 2, idx, 1)
    np.testing.assert_allclose(stored, expected, rtol=0.13, atol=1e-6)  # the 8-bit codec's bound, as above
    assert np.abs(stored - expected).mean() < 0.01
    assert np.abs(np.take_along_axis(plain, idx, 1) - expected).max() > 0.05  # the mirror changed the targets

    code, text, err = run_program("verify_logits", [out, *pairs(teachers[:1]), "--check", "64", "--device", "cpu"])
    assert code == 0, err
    assert float(text.split("top-1 agreement ")[1].split("%")[0]) == 100.0
    assert float(text.split("mean |p - stored p| ")[1].split()[0]) < 0.01
