"""Tiny datasets written in the real on-disk formats that torchvision reads.

MNIST: IDX files (big-endian headers). CIFAR-10: Python pickles of dicts with ``data`` and
``labels``. SVHN: MATLAB ``.mat`` files with ``X`` (32, 32, 3, N) and ``y`` in 1..10 (10 = digit 0).
The files are random but class labels cycle through 0..9 so every class is present.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io


def _labels(n: int, offset: int = 0) -> np.ndarray:
    return ((np.arange(n) + offset) % 10).astype(np.uint8)


def write_mnist(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + _labels(n).tobytes())
    return raw


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path, per_batch: int = 12, n_test: int = 20, seed: int = 0) -> dict[str, str]:
    """Writes the seven pickles; returns {file name: md5} to register as the expected checksums."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        batch = {
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "labels": _labels(n, offset=i).tolist(),
        }
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)
    return {p.name: md5(p) for p in folder.iterdir()}


def write_svhn(root: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, str]:
    """Writes ``{split}_32x32.mat``; returns {split: md5}."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 60, "test": 20, "extra": 30}
    root.mkdir(parents=True, exist_ok=True)
    sums = {}
    for split, n in sizes.items():
        labels = _labels(n).astype(np.int64)
        labels[labels == 0] = 10  # SVHN's code for the digit 0
        path = root / f"{split}_32x32.mat"
        scipy.io.savemat(
            path,
            {
                "X": rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8),
                "y": labels.reshape(-1, 1).astype(np.uint8),
            },
        )
        sums[split] = md5(path)
    return sums


def write_cifar100(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, str]:
    """Writes ``cifar-100-python/{train,test,meta}`` as the real archive holds them (fine and coarse
    labels); returns {file name: md5}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, n) in enumerate((("train", n_train), ("test", n_test))):
        fine = (np.arange(n) * 7 + i) % 100
        batch = {
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "fine_labels": fine.tolist(),
            "coarse_labels": (fine // 5).tolist(),
        }
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    meta = {
        "fine_label_names": [f"fine{i}" for i in range(100)],
        "coarse_label_names": [f"c{i}" for i in range(20)],
    }
    with (folder / "meta").open("wb") as f:
        pickle.dump(meta, f, protocol=2)
    return {p.name: md5(p) for p in folder.iterdir()}


def register_cifar10_md5(monkeypatch, sums: dict[str, str], cls: type | None = None) -> None:
    """Make torchvision's CIFAR10 (or ``cls``, e.g. CIFAR100) expect the checksums of the tiny files
    (its real check still runs)."""
    import torchvision

    cls = cls or torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[name, sums[name]] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, sums[name]] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": sums[cls.meta["filename"]]})


def register_svhn_md5(monkeypatch, sums: dict[str, str]) -> None:
    import torchvision

    cls = torchvision.datasets.SVHN
    table = {split: [url, name, sums.get(split, md5_)] for split, (url, name, md5_) in cls.split_list.items()}
    monkeypatch.setattr(cls, "split_list", table)


def write_image_folder(
    root: Path,
    classes: int = 6,
    train_per_class: int = 6,
    val_per_class: int = 2,
    seed: int = 0,
    flat_val: bool = False,
) -> Path:
    """An ImageNet-layout tree of real JPEG files (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``, or
    a flat ``val/`` as the validation archive extracts) of varied sizes, each class a colour of its own
    under noise, so that a net can tell them apart. Returns the tree's folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "imagenet"
    colours = rng.integers(40, 216, size=(classes, 3))
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            wnid = f"n{c:08d}"
            where = folder / split if split == "val" and flat_val else folder / split / wnid
            where.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = int(rng.integers(40, 72)), int(rng.integers(40, 96))
                pixels = colours[c] + rng.normal(0, 30, size=(h, w, 3))
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                image.save(where / f"{split}_{wnid}_{i}.JPEG", quality=90)
    return folder
