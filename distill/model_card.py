"""The export's model card: RUN/final/README.md, the page the Hugging Face hub shows for it.

Its YAML front matter is what the hub indexes (`library_name: timm`, the tags, the dataset,
the licence only where `output.license` names one, and a `model-index` holding the run's
final test top-1 and top-5); the text says what was trained, from which teacher(s) and
store, with which recipe, for how long, by which command, and how to load it. Written with
huggingface_hub's own ModelCard classes, so the hub reads back exactly what they write.
Everything on it comes from the run: nothing is inherited from timm's default configs.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

# datasets the hub knows by name; `digits` and `folder` are not on it
HUB_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "stl10": "stl10"}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stl10": "STL-10", "digits": "digits (scikit-learn)",
                 "folder": "an image folder"}


def export_tag(config: dict) -> str:
    """The export's timm tag: how it was trained, on what (`kd_cifar10`, `scratch_stl10`), as
    timm's own tags name a weight set (`dist_in22k`, `ft_in1k`)."""
    return f"{config['loss']['mode']}_{config['data']['dataset']}"


def launch_command(argv: list[str] | None = None) -> str:
    """The command that started this run, as a user would retype it (the launcher's
    --local_rank left out)."""
    argv = list(sys.argv if argv is None else argv)
    kept = [a for a in argv[1:] if not a.startswith(("--local_rank", "--local-rank"))]
    return " ".join(shlex.quote(a) for a in ["python", argv[0], *kept])


def teacher_lines(config: dict, store) -> list[str]:
    """Who taught the student: the store's teacher(s) and its id, or the online teacher(s)."""
    from teacher_logits.manifest import teacher_members

    if store is not None:
        members = teacher_members(store.settings.teacher)
        lines = [f"`{m['name']}`" + (f" (weights sha256 `{m['checkpoint_sha256'][:12]}`)"
                                     if m.get("checkpoint_sha256") else " (timm's pretrained weights)" if
                                     m.get("pretrained") else "") for m in members]
        return lines + [f"teacher-logit store `{store.path}` (store id `{store.manifest.store_id}`, "
                        f"{store.settings.epochs} stored epochs, top-{store.settings.k})"]
    names = config["teacher"]["name"]
    if config["loss"]["mode"] == "online" and names:
        return [f"`{n}`, run online on every view" for n in ([names] if isinstance(names, str) else names)]
    return ["none: trained on labels only"]


def model_card(config: dict, student: dict, scores: dict, store=None, argv: list[str] | None = None):
    """The card (a huggingface_hub ModelCard) of an export: `config` the run's resolved
    config, `student` the export's `student` section, `scores` the final test metrics."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset = config["data"]["dataset"]
    hub_dataset = HUB_DATASETS.get(dataset, dataset)
    results = [EvalResult(task_type="image-classification", dataset_type=hub_dataset,
                          dataset_name=DATASET_NAMES[dataset], dataset_split="test", metric_type=kind,
                          metric_name=name, metric_value=round(float(scores[key]), 2))
               for key, kind, name in (("top1", "accuracy", "top-1 accuracy"),
                                       ("top5", "top_5_accuracy", "top-5 accuracy"))]
    name = f"{student['name']}.{export_tag(config)}"
    data = ModelCardData(library_name="timm", pipeline_tag="image-classification", model_name=name,
                         license=config["output"].get("license"), datasets=[hub_dataset] if dataset in HUB_DATASETS
                         else None, tags=["image-classification", "timm", "knowledge-distillation", "tinyvit-distill"],
                         eval_results=results)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_text(name, config, student, scores, store, argv)}")


def card_text(name, config, student, scores, store, argv) -> str:
    """The card's Markdown body."""
    data, train, optim = config["data"], config["train"], config["optim"]
    teachers = "\n".join(f"  - {line}" for line in teacher_lines(config, store))
    licence = config["output"].get("license") or "none stated (set output.license)"
    side = student["img_size"]
    stopped = f" (stopped at train.max_steps={train['max_steps']})" if train.get("max_steps") else ""
    return f"""# {name}

`{student['name']}` trained with tinyvit-distill on {DATASET_NAMES[data['dataset']]}
({student['num_classes']} classes, {side}x{side} px), loss mode `{config['loss']['mode']}`.

## Results

Test split{f", {data['test_limit']} images" if data.get('test_limit') else ""}: top-1 **{scores['top1']:.2f}%**, \
top-5 {scores['top5']:.2f}%.

## Training

- Teacher(s):
{teachers}
- Recipe: `{data['recipe']}` views at {side} px; {train['epochs']} epochs{stopped} of batch {train['batch_size']} x \
{train['grad_accum']} per rank, AdamW lr {optim['lr']} (warm-up {optim['warmup_epochs']} epochs, cosine to \
{optim['min_lr']}), weight decay {optim['weight_decay']}, seed {train['seed']}
- Loss: temperature {config['loss']['temperature']}, hard-label weight {config['loss']['alpha']}, \
label smoothing {config['loss']['label_smoothing']}
- Preprocessing: inputs in [0, 1], normalised with mean {rounded(student['mean'])} and std {rounded(student['std'])}
- License: {licence}
- Command:

```bash
{launch_command(argv)}
```

The full resolved config is `config.yaml` beside this card.

## How to use

```python
import timm
{"import distill.models  # this project's architectures (pip install tinyvit-distill)" if
 not student['name'].startswith('tiny_vit') else "# TinyViT needs only timm"}

model = timm.create_model("hf-hub:YOU/REPO", pretrained=True).eval()  # or "local-dir:RUN/final"
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
```
"""


def rounded(values) -> list[float]:
    return [round(float(v), 4) for v in values]


def write_model_card(folder: Path, config: dict, student: dict, scores: dict, store=None) -> Path:
    path = Path(folder) / "README.md"
    model_card(config, student, scores, store).save(path)
    return path
