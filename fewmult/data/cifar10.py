"""CIFAR-10 and CIFAR-100 through torchvision's ``CIFAR10`` / ``CIFAR100`` (pickles under
``root/cifar-10-batches-py`` and ``root/cifar-100-python``)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from fewmult.data.vision import VisionDataModule


class CIFAR10Data(VisionDataModule):
    """CIFAR-10 with the papers' split: train = first 45,000, validation = last 5,000, test = 10,000."""

    image_shape = (3, 32, 32)
    torchvision_class = torchvision.datasets.CIFAR10
    title, archive = "CIFAR-10", "cifar-10-python.tar.gz"

    @property
    def folder(self) -> Path:
        return self.root / self.torchvision_class.base_folder

    def _files_md5(self) -> list[tuple[str, str]]:
        cls = self.torchvision_class
        return [(name, md5) for name, md5 in cls.train_list + cls.test_list] + [
            (cls.meta["filename"], cls.meta["md5"])
        ]

    def source_files(self) -> list[Path]:
        return [self.folder / name for name, _ in self._files_md5()]

    def raw(self) -> dict[str, torch.Tensor]:
        train, test = self.open_train_test(
            self.torchvision_class,
            self.title,
            self._files_md5(),
            f"Get {self.archive} from www.cs.toronto.edu/~kriz/cifar.html and unpack it in dataset.root.",
        )

        def images(ds) -> torch.Tensor:
            return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()

        return {
            "train_x": images(train),
            "train_y": torch.tensor(train.targets, dtype=torch.long),
            "test_x": images(test),
            "test_y": torch.tensor(test.targets, dtype=torch.long),
        }


class CIFAR100Data(CIFAR10Data):
    """CIFAR-100 (the 100 fine labels) with the same split: the last 5,000 training images validate."""

    num_classes = 100
    torchvision_class = torchvision.datasets.CIFAR100
    title, archive = "CIFAR-100", "cifar-100-python.tar.gz"
