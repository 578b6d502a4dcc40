"""The labelled datasets both stages read: torchvision's own classes, plus `digits`.

`digits` is scikit-learn's bundled 8x8 handwritten digits (1,797 real images,
shipped inside the package), upsampled to 32x32 RGB: the embedded default that
lets the whole pipeline run with no download.

`skip_md5=True` accepts a local re-created copy (e.g. the one written by
shared/data/materialize.py), which torchvision's md5 check would reject: the
subclasses below differ from torchvision's only in having no md5 to compare.
"""
from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
from PIL import Image
from torchvision import datasets as tvd

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "stl10": 10, "digits": 10}
# Per-channel (mean, std) of each training set: the students' input normalisation.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "digits": ((0.3055,) * 3, (0.3232,) * 3),
}
_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}
_TV = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "stl10": tvd.STL10}


class DatasetError(RuntimeError):
    """A dataset that cannot be loaded; the message names the path and the fix."""


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR batch files (dicts, lists, strings, numpy arrays) and nothing else:
    without the md5 check, a crafted batch file could otherwise run code when loaded."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only arrays are expected)")
        return super().find_class(module, name)


def _check_pickles(cls, root: str) -> None:
    """Load every pickle a CIFAR class will read with the restricted unpickler first."""
    folder = os.path.join(root, cls.base_folder)
    for name, _ in cls.train_list + cls.test_list + [[cls.meta["filename"], None]]:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                _ArraysOnly(f, encoding="latin1").load()


def _without_md5(cls):
    """A torchvision dataset class whose integrity check only asks that files exist."""
    strip = lambda files: [[name, None] for name, _ in files]  # noqa: E731
    attrs = {"train_list": strip(cls.train_list), "test_list": strip(cls.test_list)}
    if hasattr(cls, "meta"):
        attrs["meta"] = {**cls.meta, "md5": None}
    return type(cls.__name__ + "NoMD5", (cls,), attrs)


class Digits:
    """scikit-learn's digits as (PIL RGB 32x32, label); a fixed 1,347 / 450 split."""

    classes = [str(d) for d in range(10)]

    def __init__(self, train: bool):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        order = np.random.default_rng(0).permutation(len(bunch.target))
        order = order[:1347] if train else order[1347:]
        pixels = (bunch.images[order] * (255.0 / 16.0)).round().astype(np.uint8)
        self.data = np.stack([np.asarray(Image.fromarray(p).resize((32, 32), Image.BILINEAR)) for p in pixels])
        self.targets = bunch.target[order].astype(np.int64).tolist()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return Image.fromarray(self.data[i]).convert("RGB"), self.targets[i]


def build_dataset(name: str, root: str | None, train: bool, skip_md5: bool = False, download: bool = True):
    """The labelled train or test split of `name`, items (PIL image, int label)."""
    if name == "digits":
        return Digits(train)
    if name not in _TV:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(NUM_CLASSES)}")
    if not root:
        raise DatasetError(f"--data-root is required for {name}")
    cls = _without_md5(_TV[name]) if skip_md5 else _TV[name]
    split = {"split": "train" if train else "test"} if name == "stl10" else {"train": train}
    where = os.path.join(root, _FOLDERS[name])
    try:
        if skip_md5 and name != "stl10":  # STL-10 is raw bytes; CIFAR files are pickles
            _check_pickles(cls, root)
        return cls(root, download=False, **split)
    except RuntimeError:
        if not download or skip_md5:
            raise DatasetError(_missing(name, where, skip_md5)) from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
        # present (md5 skipped) but unreadable: truncated, corrupted or another layout
        raise DatasetError(f"{name} files under {where} are unreadable ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:120]}): re-create or re-download them") from None
    try:
        return cls(root, download=True, **split)
    except Exception as e:  # offline: URLError, socket errors, ...
        raise DatasetError(_missing(name, where, skip_md5) + f" (download failed: {type(e).__name__})") from None


def _missing(name: str, where: str, skip_md5: bool) -> str:
    if skip_md5:
        return f"{name} files not found under {where}: write them there (e.g. shared/data/materialize.py --root ROOT)"
    return (f"{name} not found or failed its md5 check under {where}: download it (needs network), "
            f"or for a local re-created copy pass --skip-md5 (config: data.skip_md5=true)")


def labels_of(dataset) -> np.ndarray:
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = getattr(dataset, "labels", None)
    return np.asarray(labels, dtype=np.int64)


def fingerprint(name: str, dataset, train: bool, limit: int | None = None) -> dict:
    """What a logit store must agree on with the data a student reads."""
    labels = labels_of(dataset)[:limit]
    return {"name": name, "split": "train" if train else "test", "size": int(len(labels)),
            "num_classes": NUM_CLASSES[name], "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest()}
