"""MNIST through ``torchvision.datasets.MNIST`` (raw IDX files under ``root/MNIST/raw``)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from fewmult.data.vision import VisionDataModule

RAW_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


class MNISTData(VisionDataModule):
    """MNIST with the papers' split: train = first 50,000, validation = last 10,000, test = 10,000."""

    image_shape = (1, 28, 28)

    @property
    def folder(self) -> Path:
        return self.root / "MNIST" / "raw"

    def source_files(self) -> list[Path]:
        return [self.folder / f for f in RAW_FILES]

    def raw(self) -> dict[str, torch.Tensor]:
        train, test = self.open_train_test(
            torchvision.datasets.MNIST,
            "MNIST",
            [(f, None) for f in RAW_FILES],  # torchvision keeps no checksum of the unpacked files
            "Get them from the MNIST page (yann.lecun.com/exdb/mnist), gunzip them, "
            "and put them in that folder.",
        )
        return {
            "train_x": train.data.unsqueeze(1),
            "train_y": train.targets.long(),
            "test_x": test.data.unsqueeze(1),
            "test_y": test.targets.long(),
        }
