"""distill.models: shared teacher checkpoints, student sizes, TinyViT windows, safe loading."""
import io
import os
import pickle
import shlex

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from helpers import SHARED, needs_shared, run_program

from distill.models import Preprocessed, create_student, create_teacher, load_weights
from teacher_logits.errors import UserError

TEACHERS = SHARED / "teachers"
CIFAR10_TEST = SHARED / "data" / "cifar10" / "test.npz"

CIFAR10_TEACHERS = [
    ("cifar10_resnet20", "cifar10/resnet20_akamaster-12fca82f.th"),
    ("cifar10_resnet56", "cifar10/resnet56_akamaster-4bfd9763.th"),
    ("cifar10_densenet_bc100", "cifar10/densenet_bc100_k12_odin_cifar10_statedict.pt"),
]
CIFAR100_TEACHERS = [
    ("cifar100_resnet56", "cifar100/cifar100_resnet56-f2eff4c8.pt"),
    ("cifar100_densenet_bc100", "cifar100/densenet_bc100_k12_odin_cifar100_statedict.pt"),
    ("cifar100_densenet_bc100.dice", "cifar100/densenet_bc100_k12_dice_cifar100_checkpoint_100.pth.tar"),
]


def shared_checkpoint(relative):
    return needs_shared(TEACHERS / relative)


@pytest.fixture(scope="module")
def cifar10_sample():
    """200 real CIFAR-10 test images in [0, 1], 20 per class (the file is sorted by class)."""
    needs_shared(CIFAR10_TEST)
    from PIL import Image

    data = np.load(CIFAR10_TEST)
    offsets, encoded = data["offsets"], data["encoded"]
    index = np.linspace(0, len(data["y"]) - 1, 200).astype(int)
    images = [np.asarray(Image.open(io.BytesIO(encoded[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
              for i in index]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(data["y"][index])


@torch.no_grad()
def predict(model, x):
    return torch.cat([model(batch) for batch in x.split(100)]).argmax(1)


# ------------------------------------------------------------------- shared teachers


@pytest.mark.parametrize("name,relative", CIFAR10_TEACHERS)
def test_cifar10_teacher_loads_strictly_and_classifies(name, relative, cifar10_sample):
    teacher = create_teacher(name, checkpoint=shared_checkpoint(relative))
    x, y = cifar10_sample
    accuracy = (predict(teacher, x) == y).float().mean().item()
    # 81-84 % on the JPEG test set (README); a wrong shortcut padding or mean/std falls far below.
    assert accuracy > 0.7, f"{name}: {accuracy:.1%}"


def test_cifar100_teachers_load_strictly_and_agree(cifar10_sample):
    # No CIFAR-100 data here, so compare the teachers with each other on CIFAR-10 images:
    # working models pick the same fine class about 30 % of the time, a broken one ~1 %.
    x = cifar10_sample[0][::5]
    teachers = [create_teacher(n, checkpoint=shared_checkpoint(r)) for n, r in CIFAR100_TEACHERS]
    with torch.no_grad():
        logits = [teacher(x) for teacher in teachers]
    assert all(out.shape == (len(x), 100) and torch.isfinite(out).all() for out in logits)
    preds = [out.argmax(1) for out in logits]
    for other in preds[1:]:
        assert (preds[0] == other).float().mean() > 0.15


def test_teacher_state_dict_is_inner_model_with_prefix():
    model = timm.create_model("cifar10_resnet20")
    wrapped = Preprocessed(model)
    assert wrapped.state_dict().keys() == {f"model.{k}" for k in model.state_dict()}
    assert wrapped.input_size == (3, 32, 32) and wrapped.num_classes == 10


def test_preprocessed_resizes_then_normalises():
    model = timm.create_model("cifar10_resnet20").eval()
    wrapped = Preprocessed(model).eval()
    x = torch.rand(2, 3, 64, 64)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    expected = model((F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) - mean) / std)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), expected)
        with pytest.raises(TypeError, match="float"):
            wrapped((x * 255).to(torch.uint8))


# ---------------------------------------------------------------------------- students


def test_cifar_cnn_parameter_count_from_its_architecture():
    """Counted layer by layer from the architecture (3x3 convs with bias, BatchNorm after each
    pool, MLP 4096-1024-512-10), not fitted to the output."""
    convs = [(3, 32), (32, 64), (64, 128), (128, 128), (128, 256), (256, 256)]
    expected = sum(9 * i * o + o for i, o in convs) + 2 * (64 + 128 + 256)
    expected += (4096 * 1024 + 1024) + (1024 * 512 + 512) + (512 * 10 + 10)
    model = create_student("cifar_cnn", num_classes=10, img_size=32)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name,params,tolerance", [
    ("cifar_vit", 1.2e6, 0.10),
    ("cct_7_3x1", 3.7e6, 0.10),
])
def test_student_parameter_count(name, params, tolerance):
    model = create_student(name, num_classes=10, img_size=32)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - params) <= tolerance * params, f"{name}: {count:,}"
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("img_size,windows", [(32, (4, 2, 1)), (64, (4, 4, 2)), (96, (6, 6, 3))])
def test_tiny_vit_windows_fit_every_stage(img_size, windows):
    model = create_student("tiny_vit_5m", num_classes=10, img_size=img_size).eval()
    stages = list(model.stages)[1:]  # stage 0 is convolutional
    assert tuple(stage.blocks[0].window_size for stage in stages) == windows
    seen = []  # (feature size, window) of every attention block, recorded during the forward

    def record(block, args):
        seen.append((args[0].shape[1:3], block.window_size))

    hooks = [block.register_forward_pre_hook(record) for stage in stages for block in stage.blocks]
    with torch.no_grad():
        out = model(torch.rand(2, 3, img_size, img_size))
    for hook in hooks:
        hook.remove()
    assert out.shape == (2, 10)
    assert seen and all(h % w == 0 and wd % w == 0 for (h, wd), w in seen), seen  # nothing padded
    assert Preprocessed(model).input_size == (3, img_size, img_size)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="resnet57.*cifar_vit"):
        create_student("resnet57", 10, 32)
    with pytest.raises(ValueError, match="cifar10_resnet57.*did you mean"):
        create_teacher("cifar10_resnet57")
    with pytest.raises(ValueError, match="--checkpoint"):
        create_teacher("cifar10_resnet20", pretrained=True)


def test_offline_pretrained_download_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError, match="offline.*--checkpoint"):  # was a RuntimeError: a traceback
        create_teacher("resnet18", pretrained=True)


# ---------------------------------------------------------------------------- loading


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "deepspeed", "dataparallel", "old_bn"])
def test_load_weights_unwraps_common_layouts(layout, tmp_path):
    source = timm.create_model("cifar10_resnet20").state_dict()
    saved = {
        "plain": source,
        "state_dict": {"state_dict": source, "epoch": 3},
        "model": {"model": source, "epoch": 3},
        "deepspeed": {"module": source, "global_steps": 10},
        "dataparallel": {"state_dict": {f"module.{k}": v for k, v in source.items()}},
        "old_bn": {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")},
    }[layout]
    torch.save(saved, tmp_path / "ckpt.pt")
    model = load_weights(timm.create_model("cifar10_resnet20"), tmp_path / "ckpt.pt")
    torch.testing.assert_close(model.state_dict()["layer3.2.conv2.weight"], source["layer3.2.conv2.weight"])


def test_wrong_number_of_classes_names_key_shapes_and_fix(tmp_path):
    torch.save(timm.create_model("cifar10_resnet20", num_classes=100).state_dict(), tmp_path / "c100.pt")
    with pytest.raises(ValueError, match=r"linear\.weight.*\(100, 64\).*\(10, 64\).*trained for 100 classes"):
        load_weights(timm.create_model("cifar10_resnet20"), tmp_path / "c100.pt")


def test_wrong_number_of_classes_with_shared_checkpoint():
    path = shared_checkpoint("cifar100/densenet_bc100_k12_odin_cifar100_statedict.pt")
    with pytest.raises(ValueError, match=r"fc\.weight.*\(100, 342\).*\(10, 342\)"):
        create_teacher("cifar10_densenet_bc100", checkpoint=path)


def test_wrong_architecture_names_keys(tmp_path):
    torch.save(timm.create_model("cifar100_resnet56").state_dict(), tmp_path / "b.pt")
    with pytest.raises(ValueError, match="missing keys: linear.*unexpected keys: fc"):
        load_weights(timm.create_model("cifar10_resnet56"), tmp_path / "b.pt")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would run this shell command
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the raw pickle's protocol
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused(writer, tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"state_dict": _Exploit(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ValueError, match="refusing to unpickle untrusted data"):
        load_weights(timm.create_model("cifar10_resnet20"), path)
    assert not marker.exists()


def test_non_checkpoint_and_missing_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="notes.txt.*refusing to unpickle"):
        load_weights(timm.create_model("cifar10_resnet20"), tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_weights(timm.create_model("cifar10_resnet20"), tmp_path / "missing.pt")


def test_the_model_list_names_every_student_and_teacher_with_its_size():
    """`python -m distill.models` (tvd-models): one row per registered model."""
    import timm

    from distill.model_cost import count_params

    printed = run_program("list_models", ["--num-classes", "10"], check=True).out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in printed.splitlines() if line.startswith("| ") and "---" not in line}
    rows.pop("model")
    assert {"cifar_vit", "cct_7_3x1", "tiny_vit_5m", "tiny_vit_21m", "cifar10_resnet56", "cifar100_resnet56"} <= set(rows)
    assert rows["cifar_vit"][:1] == ["student"] and rows["cifar10_resnet56"][:1] == ["teacher"]
    assert float(rows["cifar_vit"][1]) == pytest.approx(count_params(create_student("cifar_vit", 10, 32)) / 1e6, abs=0.01)
    assert float(rows["cifar10_resnet20"][1]) == pytest.approx(count_params(timm.create_model("cifar10_resnet20")) / 1e6,
                                                                abs=0.01)
    assert "dist_in22k" in rows["tiny_vit_5m"][3] and rows["cifar_vit"][3] == "-"
    assert all(float(r[2]) > 0 for r in rows.values())


def test_python_dash_m_distill_models_runs():
    import subprocess
    import sys

    from helpers import REPO

    proc = subprocess.run([sys.executable, "-m", "distill.models", "--help"], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0 and "tvd-models" in proc.stdout
