"""Datasets in torchvision's exact on-disk formats (CIFAR-10/100 pickles, STL-10
binaries), the --skip-md5 switch, and refusal of a batch file that carries code."""
import pickle

import numpy as np
import pytest

from helpers import write_cifar
from distill.datasets import NUM_CLASSES, DatasetError, build_dataset, fingerprint, labels_of


def write_stl10(root, n_train=12, n_test=8, seed=0):
    """STL-10's binary layout: uint8 3x96x96 column-major images, labels counted from 1."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)
        images.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # column-major per channel
        (rng.integers(1, 11, size=n).astype(np.uint8)).tofile(folder / f"{split}_y.bin")
    (folder / "unlabeled_X.bin").write_bytes(b"")
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    return root, images


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_layouts_load_with_skip_md5(tmp_path, name, classes):
    root = write_cifar(tmp_path, per_batch=6, num_classes=classes)
    train = build_dataset(name, root, train=True, skip_md5=True)
    test = build_dataset(name, root, train=False, skip_md5=True)
    assert (len(train), len(test)) == (30, 6)
    image, label = train[3]
    assert image.size == (32, 32) and 0 <= label < classes
    assert fingerprint(name, train, True)["num_classes"] == NUM_CLASSES[name] == classes


def test_stl10_layout_loads_with_skip_md5(tmp_path):
    root, test_images = write_stl10(tmp_path)
    test = build_dataset("stl10", root, train=False, skip_md5=True)
    assert len(test) == 8 and len(build_dataset("stl10", root, train=True, skip_md5=True)) == 12
    image, label = test[7]
    assert image.size == (96, 96) and 0 <= label < 10
    assert np.array_equal(np.asarray(image).transpose(2, 0, 1), test_images[7])


def test_digits_is_embedded_and_fixed():
    train, test = build_dataset("digits", None, True), build_dataset("digits", None, False)
    assert (len(train), len(test)) == (1347, 450)
    assert np.array_equal(labels_of(train), labels_of(build_dataset("digits", None, True)))
    assert train[0][0].size == (32, 32)


def test_recreated_copy_without_skip_md5_names_the_switch(tmp_path):
    root = write_cifar(tmp_path, per_batch=4)
    with pytest.raises(DatasetError, match="--skip-md5"):
        build_dataset("cifar10", root, train=True, download=False)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # creates a file when unpickled


def test_batch_file_carrying_code_is_refused(tmp_path):
    root = write_cifar(tmp_path, per_batch=4)
    marker = tmp_path / "PWNED"
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    with open(batch, "wb") as f:
        pickle.dump({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 4, "x": Payload(marker)}, f)
    with pytest.raises(DatasetError, match="refusing to load"):
        build_dataset("cifar10", root, train=True, skip_md5=True)
    assert not marker.exists()
