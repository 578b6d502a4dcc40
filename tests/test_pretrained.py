"""Students and teachers start from other weights the way timm users expect
(distill/models/weights.py, distill/models/timm_export.py):

- a local weights file (.safetensors or a state_dict) or an export starts a run, its head
  re-made for another class count, resampled to another resolution (64 -> 32 and 64 -> 96 px);
- the export loads in a fresh process through `timm.create_model("local-dir:...")` and gives
  the project's logits with timm's own data config;
- `model.pretrained=true` offline, or for a model timm has no weights for, fails in one line
  naming the local-file alternative;
- tools/train_teacher.py re-makes the head of a --checkpoint trained for other classes.
"""
import json
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import REPO, TINY_STUDENT, run_program, run_tool, tiny_scratch, user_error

from distill.models import create_student, load_adapted, read_state_dict

TINY = [*tiny_scratch(), "train.batch_size=32", "data.test_limit=64", "train.max_steps=2"]


def train(out, *extra) -> str:
    """A short run of the tiny ViT on digits; what it printed."""
    return run_program("train_student", [*TINY, f"output.dir={out}", *extra], check=True).out


@pytest.fixture(scope="module")
def export_64px(tmp_path_factory):
    """A tiny ViT trained two steps at 64 px on digits: its final/ folder."""
    out = tmp_path_factory.mktemp("src") / "run"
    train(out, "data.img_size=64")
    return out / "final"


def test_export_has_timm_layout(export_64px):
    config = json.loads((export_64px / "config.json").read_text())
    student = yaml.safe_load((export_64px / "config.yaml").read_text())["student"]
    assert config["architecture"] == "cifar_vit" and config["num_classes"] == 10
    assert config["model_args"]["img_size"] == [64, 64] and config["model_args"]["depth"] == 1
    cfg = config["pretrained_cfg"]
    assert cfg["num_classes"] == 10 and cfg["input_size"] == [3, 64, 64] and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == pytest.approx(student["mean"]) and cfg["std"] == pytest.approx(student["std"])
    tensors, plain = read_state_dict(export_64px / "model.safetensors"), read_state_dict(export_64px / "model.pt")
    assert tensors.keys() == plain.keys() and all(torch.equal(tensors[k], plain[k]) for k in plain)


FRESH = """
import sys, torch, timm
import distill.models  # registers this project's architectures; TinyViT needs only timm
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
cfg = timm.data.resolve_data_config({}, model=model)
x = torch.rand(4, 3, *cfg["input_size"][1:], generator=torch.Generator().manual_seed(5))
mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
torch.save(model((x - mean) / std).detach(), sys.argv[2])
"""


def test_export_loads_in_a_fresh_timm_process_with_the_same_logits(export_64px, tmp_path):
    from distill.evaluation import load_student

    subprocess.run([sys.executable, "-c", FRESH, str(export_64px), str(tmp_path / "logits.pt")], check=True,
                   cwd=tmp_path, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                   timeout=120)
    ours = load_student(export_64px).eval()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "logits.pt"), ours(x), atol=1e-5)


@pytest.mark.parametrize("px", [32, 96])
def test_a_weights_file_starts_a_run_at_another_resolution_and_class_count(export_64px, tmp_path, px):
    # digits (10 classes) from a 64 px source whose head is cut to 3 classes: a foreign file
    state = read_state_dict(export_64px / "model.safetensors")
    state["head.weight"], state["head.bias"] = state["head.weight"][:3], state["head.bias"][:3]
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "weights.safetensors"))
    printed = train(tmp_path / "run", f"data.img_size={px}", f"model.init={tmp_path / 'weights.safetensors'}")
    assert "classifier head re-made for 10 classes (the source's has 3" in printed
    final = tmp_path / "run" / "final"
    assert json.loads((final / "config.json").read_text())["model_args"]["img_size"] == [px, px]
    assert read_state_dict(final)["pos_embed"].shape == (1, (px // 4) ** 2 + 1, 32)


@pytest.mark.parametrize("name", ["tiny_vit_5m", "cct_7_3x1"])
def test_resolution_bound_weights_are_resampled(tmp_path, name):
    """TinyViT's attention biases (other windows) and CCT's position embedding, 64 -> 32 px."""
    kwargs = {} if name == "tiny_vit_5m" else TINY_STUDENT
    torch.manual_seed(0)
    source = create_student(name, 10, 64, **kwargs)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    target = create_student(name, 10, 32, **kwargs)
    resized = [k for k, v in source.state_dict().items() if v.shape != target.state_dict()[k].shape]
    assert resized  # the test would be empty otherwise
    assert load_adapted(target, tmp_path / "model.pt") is None  # same classes: nothing re-made
    for key, value in target.state_dict().items():
        if key not in resized:
            assert torch.equal(value, source.state_dict()[key]), key
    assert target(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_pretrained_offline_fails_in_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the same with or without network
    r = run_program("train_student", [*TINY, "model.name=tiny_vit_5m", "model.kwargs={}", "model.pretrained=true",
                                      f"output.dir={tmp_path / 'run'}"])
    user_error(r, "could not download timm's weights for tiny_vit_5m_224", "model.init=FILE")
    r = run_program("train_student", [*TINY, "model.pretrained=true", f"output.dir={tmp_path / 'run2'}"])
    user_error(r, "timm has no pretrained weights for cifar_vit", "model.init=FILE")


def test_train_teacher_remakes_the_head_of_a_checkpoint_for_other_classes(tmp_path, cifar_root):
    torch.manual_seed(0)
    import timm

    three = timm.create_model("cifar10_resnet20", num_classes=3)
    torch.save(three.state_dict(), tmp_path / "r20_3.pt")
    proc = run_tool("tools/train_teacher.py", "--teacher", "cifar10_resnet20", "--checkpoint", tmp_path / "r20_3.pt",
                    "--dataset", "cifar10", "--data-root", cifar_root, "--skip-md5", "--epochs", "1", "--out",
                    tmp_path / "t", "wandb.enabled=false", "train.max_steps=1", "data.test_limit=32",
                    env={"DS_ACCELERATOR": "cpu"})
    assert "classifier head re-made for 10 classes (the source's has 3" in proc.stdout
    head = three.pretrained_cfg["classifier"]
    assert read_state_dict(tmp_path / "t" / "final")[f"{head}.weight"].shape[0] == 10
    assert json.loads((tmp_path / "t" / "final" / "config.json").read_text())["num_classes"] == 10


def test_the_in22k_config_names_a_timm_weight_set():
    """configs/cifar10_tinyvit5m_in22k_kd.yaml builds (without its download): the tag parses and
    the 32 px windows are fitted."""
    import timm

    from distill.config import load_config

    cfg = load_config(str(REPO / "configs" / "cifar10_tinyvit5m_in22k_kd.yaml"), [])
    assert cfg.model.pretrained and timm.models.get_pretrained_cfg(cfg.model.name).num_classes == 21841
    model = create_student(cfg.model.name, 10, cfg.data.img_size).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_export_config_describes_this_run_not_timms_defaults(export_64px):
    """cifar_vit's default config says `license: mit`; TinyViT's (below) names its IN-22k weights."""
    from distill.models.timm_export import timm_data_config

    config = json.loads((export_64px / "config.json").read_text())
    student = yaml.safe_load((export_64px / "config.yaml").read_text())["student"]
    cfg = config["pretrained_cfg"]
    assert cfg["tag"] == "scratch_digits" and "license" not in cfg
    wanted = json.loads(json.dumps(timm_data_config(student)))  # tuples as JSON lists
    assert {k: cfg[k] for k in wanted} == wanted
    assert config["label_names"] == [str(d) for d in range(10)]


def test_tinyvit_export_drops_the_imagenet_weights_description(tmp_path):
    from distill.models.timm_export import save_for_timm

    model = create_student("tiny_vit_5m", 10, 32)
    assert model.pretrained_cfg["tag"] == "dist_in22k"  # what the export must not repeat
    info = {"img_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    save_for_timm(model, model.state_dict(), info, tmp_path, "kd_cifar10", license="cc-by-4.0")
    cfg = json.loads((tmp_path / "config.json").read_text())["pretrained_cfg"]
    assert cfg["tag"] == "kd_cifar10" and cfg["license"] == "cc-by-4.0" and cfg["num_classes"] == 10
    assert not {"pool_size", "hf_hub_id", "url", "test_input_size"} & set(cfg)
    assert cfg["input_size"] == [3, 32, 32] and cfg["mean"] == [0.5] * 3


def test_export_has_a_hugging_face_model_card(export_64px):
    from huggingface_hub import ModelCard

    card = ModelCard.load(export_64px / "README.md")
    metrics = json.loads((export_64px.parent / "metrics.json").read_text())["eval"]
    assert card.data.library_name == "timm" and "knowledge-distillation" in card.data.tags
    assert card.data.license is None  # none claimed: output.license unset
    top1, top5 = card.data.eval_results
    assert top1.metric_value == round(metrics["top1"], 2) and top5.metric_value == round(metrics["top5"], 2)
    assert "`cifar_vit`" in card.text and "labels only" in card.text and "timm.create_model" in card.text


def test_a_run_folder_or_export_folder_names_the_exports_weights(export_64px):
    """model.init (and every --checkpoint) takes RUN/final or RUN itself."""
    from distill.models.weights import weights_file

    assert weights_file(export_64px) == weights_file(export_64px.parent) == export_64px / "model.pt"
    assert weights_file(export_64px / "model.safetensors") == export_64px / "model.safetensors"
    plain = read_state_dict(export_64px / "model.pt")
    run = read_state_dict(export_64px.parent)
    assert run.keys() == plain.keys() and all(torch.equal(run[k], plain[k]) for k in plain)
