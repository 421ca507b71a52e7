"""CIFAR-10 through ``torchvision.datasets.CIFAR10`` (pickles under ``root/cifar-10-batches-py``)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from fewmult.data.vision import VisionDataModule


class CIFAR10Data(VisionDataModule):
    """CIFAR-10 with the papers' split: train = first 45,000, validation = last 5,000, test = 10,000."""

    image_shape = (3, 32, 32)

    @property
    def folder(self) -> Path:
        return self.root / torchvision.datasets.CIFAR10.base_folder

    def _files_md5(self) -> list[tuple[str, str]]:
        cls = torchvision.datasets.CIFAR10
        return [(name, md5) for name, md5 in cls.train_list + cls.test_list] + [
            (cls.meta["filename"], cls.meta["md5"])
        ]

    def source_files(self) -> list[Path]:
        return [self.folder / name for name, _ in self._files_md5()]

    def raw(self) -> dict[str, torch.Tensor]:
        train, test = self.open_train_test(
            torchvision.datasets.CIFAR10,
            "CIFAR-10",
            self._files_md5(),
            "Get cifar-10-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html "
            "and unpack it in dataset.root.",
        )

        def images(ds) -> torch.Tensor:
            return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()

        return {
            "train_x": images(train),
            "train_y": torch.tensor(train.targets, dtype=torch.long),
            "test_x": images(test),
            "test_y": torch.tensor(test.targets, dtype=torch.long),
        }
