"""SVHN (cropped digits) through ``torchvision.datasets.SVHN`` (``.mat`` files in ``root``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision

from fewmult.data.files import open_dataset
from fewmult.data.splits import Splits, check_val_size, class_balanced_indices, complement
from fewmult.data.vision import VisionDataModule
from fewmult.errors import UserError

SPLIT_SEED = 322  # pylearn2's svhn.py draws its validation set with RandomState(322)


class SVHNData(VisionDataModule):
    """SVHN with the papers' split (pylearn2 ``splitted_train`` / ``valid`` / ``test``).

    Validation is class balanced: with ``use_extra`` two thirds of it come from ``train`` and one
    third from ``extra`` (400 + 200 per class at the default 6,000), leaving 598,388 examples for
    training; without ``extra`` all of it comes from ``train``. The indices are drawn with a fixed
    seed, so the split is equivalent to pylearn2's, not identical (its RNG order is not replicable).
    """

    image_shape = (3, 32, 32)

    def __init__(self, *args, use_extra: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.use_extra = use_extra

    @property
    def parts(self) -> list[str]:
        return ["train", "test", "extra"] if self.use_extra else ["train", "test"]

    def _files_md5(self) -> list[tuple[str, str]]:
        table = torchvision.datasets.SVHN.split_list
        return [(table[p][1], table[p][2]) for p in self.parts]

    def source_files(self) -> list[Path]:
        return [self.root / name for name, _ in self._files_md5()]

    def cache_key_extra(self) -> dict:
        return {"use_extra": self.use_extra}

    def raw(self) -> dict[str, torch.Tensor]:
        def make(root: Path, download: bool) -> dict:
            return {p: torchvision.datasets.SVHN(str(root), split=p, download=download) for p in self.parts}

        sets = open_dataset(
            "SVHN",
            self.root,
            self.root,
            self._files_md5(),
            self.download,
            "Get train_32x32.mat, test_32x32.mat and extra_32x32.mat from ufldl.stanford.edu/housenumbers "
            "(or set dataset.use_extra=false to do without extra_32x32.mat).",
            make,
        )
        out = {}
        for part, ds in sets.items():
            out[f"{part}_x"] = torch.from_numpy(ds.data)
            out[f"{part}_y"] = torch.from_numpy(ds.labels).long()
        return out

    def split(self, data: dict[str, torch.Tensor]) -> Splits:
        n_train = len(data["train_y"]) + (len(data["extra_y"]) if self.use_extra else 0)
        check_val_size(self.val_size, n_train, self.name)
        if self.val_size % (30 if self.use_extra else 10):
            raise UserError(
                f"dataset.val_size={self.val_size} cannot be split evenly over the 10 classes"
                + (
                    " with 2/3 from train and 1/3 from extra; use a multiple of 30."
                    if self.use_extra
                    else "; use a multiple of 10."
                )
            )
        rng = np.random.default_rng(SPLIT_SEED)
        per_class = self.val_size // 10
        from_train = per_class * 2 // 3 if self.use_extra else per_class
        pieces = (
            {"train": from_train, "extra": per_class - from_train} if self.use_extra else {"train": per_class}
        )
        train_x, train_y, val_x, val_y = [], [], [], []
        for part, k in pieces.items():
            labels = data[f"{part}_y"].numpy()
            val_idx = class_balanced_indices(labels, k, rng)
            keep = torch.from_numpy(complement(len(labels), val_idx))
            val_idx = torch.from_numpy(val_idx)
            train_x.append(data[f"{part}_x"][keep])
            train_y.append(data[f"{part}_y"][keep])
            val_x.append(data[f"{part}_x"][val_idx])
            val_y.append(data[f"{part}_y"][val_idx])
        return Splits(
            torch.cat(train_x),
            torch.cat(train_y),
            torch.cat(val_x),
            torch.cat(val_y),
            data["test_x"],
            data["test_y"],
            self.num_classes,
        )
