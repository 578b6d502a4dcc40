"""The dataset names the programs offer before anything heavy is imported, so that `--help`
and flag errors answer at once (the recipes' names: distill/recipes.py, as light).
distill/datasets.py builds on these names; this module imports nothing."""

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "stl10": 10, "digits": 10}  # "folder": its class folders
DATASETS = (*NUM_CLASSES, "folder")
