"""The names the programs offer before anything heavy is imported, so that `--help` and flag
errors answer at once: the datasets and the augmentation recipes. distill/datasets.py and
distill/augment.py build on these names; this module imports nothing."""

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "stl10": 10, "digits": 10}  # "folder": its class folders
DATASETS = (*NUM_CLASSES, "folder")
RECIPES = ("none", "crop", "cifar", "cifar-strong", "stl10", "imagenet")  # training recipes
EVAL_RECIPES = ("none", "center-crop")  # test views: as stored, or timm's eval crop
