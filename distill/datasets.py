"""The labelled datasets both stages read: torchvision's own classes, `digits`, and `folder`.

`digits` is scikit-learn's bundled 8x8 handwritten digits (1,797 real images,
shipped inside the package), upsampled to 32x32 RGB: the embedded default that
lets the whole pipeline run with no download.

`skip_md5=True` accepts a local re-created copy (e.g. the one written by
shared/data/materialize.py), which torchvision's md5 check would reject: the
subclasses below differ from torchvision's only in having no md5 to compare.

`folder` is your own images in torchvision's ImageFolder layout, DIR/train/<class>/*
and DIR/val/<class>/* (see `ImageFolderSplit`). Its class count comes from the folder.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools

import numpy as np
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import datasets as tvd

from distill.catalog import DATASETS, NUM_CLASSES  # noqa: F401  (importers take the names from here too)
from teacher_logits.errors import UserError

# Per-channel (mean, std) of each training set: the students' input normalisation.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "digits": ((0.3055,) * 3, (0.3232,) * 3),
    "folder": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),  # photographs: ImageNet's, as timm's models
}
FOLDER_SPLITS = {True: "train", False: "val"}
# timm create_dataset sources that only stream: replay needs any sample on demand
STREAMING_PREFIXES = ("tfds/", "wds/", "hfids/", "hfds/")
_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}
_TV = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "stl10": tvd.STL10}


class DatasetError(UserError):
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


def _check_sizes(data: bytes) -> None:
    """Refuse a pickle whose opcodes ask for more than the file holds before anything is
    allocated: a memo slot past the ones stored so far (the unpickler would grow its memo to
    it) or a frame longer than the rest of the file. Lengths of strings and bytes are bounded
    by reading from memory: a read past the end fails at once."""
    stored = 0
    for op, arg, pos in pickletools.genops(io.BytesIO(data)):
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) > stored:
            raise pickle.UnpicklingError(f"memo slot {arg} at byte {pos}, but only {stored} stored")
        if op.name == "FRAME" and arg > len(data) - pos:
            raise pickle.UnpicklingError(f"frame of {arg} bytes at byte {pos} in a {len(data)}-byte file")
        stored += op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE")


UNREADABLE = (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError, OverflowError)


def _check_pickles(cls, root: str) -> None:
    """Load every pickle a CIFAR class will read with the restricted unpickler first, from
    memory and after its sizes are checked, so that no content can exhaust memory, and check
    its layout; a file that fails is named."""
    folder = os.path.join(root, cls.base_folder)
    for name, _ in cls.train_list + cls.test_list + [[cls.meta["filename"], None]]:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            try:
                _check_sizes(data)
                _check_layout(_ArraysOnly(io.BytesIO(data), encoding="latin1").load(),
                              cls.meta["key"] if name == cls.meta["filename"] else None)
            except UNREADABLE as e:
                raise DatasetError(f"{cls.__name__.removesuffix('NoMD5')} file {path} is unreadable "
                                   f"({type(e).__name__}: {' '.join(str(e).split())[:120]}): re-create or "
                                   "re-download it") from None


def _check_layout(entry, meta_key: str | None) -> None:
    """A CIFAR batch: {data: N x 3072 uint8, labels or fine_labels: N}; the meta file: {meta_key: names}."""
    if not isinstance(entry, dict):
        raise TypeError(f"a {type(entry).__name__}, not a dict")
    if meta_key is not None:
        if not isinstance(entry.get(meta_key), list):
            raise KeyError(f"no list {meta_key!r}")
        return
    labels = entry.get("labels", entry.get("fine_labels"))
    images = np.asarray(entry.get("data", ()))
    if labels is None or images.ndim != 2 or images.shape[1] != 3072 or len(labels) != len(images):
        raise ValueError(f"expected data of shape (N, 3072) and N labels, got data {images.shape} and "
                         f"{'no' if labels is None else len(labels)} labels")


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


class ImageFolderSplit(tvd.ImageFolder):
    """One split of an image folder: torchvision's ImageFolder (classes are the sorted
    sub-folder names) with every image RGB-converted, and errors that name the file or
    folder to fix instead of a traceback from deep inside a DataLoader worker."""

    def __init__(self, root: str, train: bool):
        for name in FOLDER_SPLITS.values():  # both, whichever is read: every stage sees the same layout
            if not os.path.isdir(os.path.join(root, name)):
                raise DatasetError(f"image folder {root} has no {name}/ sub-folder: lay it out as "
                                   f"{root}/train/<class>/<image> and {root}/val/<class>/<image>")
        split = os.path.join(root, FOLDER_SPLITS[train])
        try:
            super().__init__(split, loader=self._load_rgb)
        except FileNotFoundError as e:
            empty = [c for c in self.find_classes(split)[0] if not any(self._images_in(os.path.join(split, c)))]
            where = os.path.join(split, empty[0]) if empty else split
            raise DatasetError(f"{where} holds no images ({' '.join(str(e).split())[:100]}): add images to it "
                               "or remove the folder") from None

    @staticmethod
    def _images_in(folder: str):
        return (f for _, _, files in os.walk(folder) for f in files if f.lower().endswith(tvd.folder.IMG_EXTENSIONS))

    @staticmethod
    def _load_rgb(path: str) -> Image.Image:
        try:
            with open(path, "rb") as f:
                return Image.open(f).convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DatasetError(f"image {path} cannot be decoded ({type(e).__name__}: {' '.join(str(e).split())[:80]}):"
                               " replace or delete the file") from None

    def files_sha256(self) -> str:
        """A digest of every (relative path, byte size, label): changes when files are added,
        removed, renamed, moved between classes or rewritten at another size."""
        h = hashlib.sha256()
        for path, label in self.samples:
            h.update(f"{os.path.relpath(path, self.root)}\0{os.path.getsize(path)}\0{label}\n".encode())
        return h.hexdigest()


def build_dataset(name: str, root: str | None, train: bool, skip_md5: bool = False, download: bool = True):
    """The labelled train or test split of `name`, items (PIL image, int label)."""
    if name == "digits":
        return Digits(train)
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not root:
        raise DatasetError(f"--data-root is required for {name}")
    if name == "folder":
        return _image_folder(root, train)
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
    except DatasetError:
        raise
    except UNREADABLE as e:
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


def _image_folder(root: str, train: bool) -> ImageFolderSplit:
    if root.startswith(STREAMING_PREFIXES) or "://" in root:
        raise DatasetError(f"--data-root {root}: streaming sources cannot be replayed, which needs random access "
                           "(a record's Mixup partner and a resumed epoch need any image on demand): export it to an "
                           "image folder DIR/train/<class>/<image>, DIR/val/<class>/<image>")
    if not os.path.isdir(root):
        raise DatasetError(f"--data-root {root}: no such directory; pass a folder holding train/<class>/<image> "
                           "and val/<class>/<image>")
    return ImageFolderSplit(root, train)


def num_classes_of(name: str, dataset) -> int:
    """Classes of a built dataset: fixed for the built-in ones, the sub-folders of a folder."""
    return len(dataset.classes) if name == "folder" else NUM_CLASSES[name]


def labels_of(dataset) -> np.ndarray:
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = getattr(dataset, "labels", None)
    return np.asarray(labels, dtype=np.int64)


def fingerprint(name: str, dataset, train: bool, limit: int | None = None) -> dict:
    """What a logit store must agree on with the data a student reads."""
    labels = labels_of(dataset)[:limit]
    found = {"name": name, "split": "train" if train else "test", "size": int(len(labels)),
             "num_classes": num_classes_of(name, dataset),
             "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest()}
    if name == "folder":  # other classes, or changed files, are other data
        found |= {"classes": list(dataset.classes), "files_sha256": dataset.files_sha256()}
    return found
