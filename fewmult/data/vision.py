"""Shared flow of the image datasets: raw files -> preprocessing (cached) -> the papers' splits."""

from __future__ import annotations

from pathlib import Path

import torch

from fewmult.data.cache import cache_path, cached
from fewmult.data.datamodule import TensorDataModule
from fewmult.data.files import open_dataset, resolve_root
from fewmult.data.preprocess import EXPENSIVE, get_preprocessor, require_augmentable, to_float
from fewmult.data.splits import Splits, check_val_size, tail_split


class VisionDataModule(TensorDataModule):
    """A dataset read through a torchvision class from ``root``.

    Subclasses implement :meth:`raw` (uint8 images and labels of the training and test files)
    and may override :meth:`split` (default: validation = the last ``val_size`` training examples).

    Args:
        root: data folder (``FEWMULT_DATA`` or a user cache folder by default).
        download: fetch missing files through torchvision.
        preprocess: one of :data:`fewmult.data.preprocess.PREPROCESSORS`.

    Augmentation (``augment=crop_flip``) pads with black pixels as the preprocessing maps them, so
    it takes the preprocessings that map every pixel alike (``preprocess.AUGMENTABLE``).
    """

    num_classes = 10

    def __init__(
        self, name: str, root: str, download: bool = True, preprocess: str = "none", **kwargs
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.root = resolve_root(root)
        self.download = download
        self.preprocess = preprocess
        get_preprocessor(preprocess)  # fail on a bad name before touching files
        if self.augment is not None:
            require_augmentable(preprocess)
        self._black: torch.Tensor | None = None

    @property
    def folder(self) -> Path:
        """Where the dataset's files are (default: ``root`` itself)."""
        return self.root

    def raw(self) -> dict[str, torch.Tensor]:
        """``train_x``, ``train_y``, ``test_x``, ``test_y`` (+ optional extras) as uint8/int64 tensors."""
        raise NotImplementedError

    def source_files(self) -> list[Path]:
        """The files whose size and date key the preprocessing cache."""
        raise NotImplementedError

    def open_train_test(
        self, tv_class: type, display: str, files_md5: list[tuple[str, str | None]], how_to_get: str
    ) -> tuple:
        """The training and test objects of a torchvision class with a ``train`` flag (MNIST, CIFAR-10).

        Files with an MD5 are verified first, so a damaged one is named rather than reported as unreadable.
        """

        def make(root: Path, download: bool) -> tuple:
            return tuple(tv_class(str(root), train=train, download=download) for train in (True, False))

        return open_dataset(display, self.root, self.folder, files_md5, self.download, how_to_get, make)

    def split(self, data: dict[str, torch.Tensor]) -> Splits:
        check_val_size(self.val_size, len(data["train_y"]), self.name)
        train_x, train_y, val_x, val_y = tail_split(data["train_x"], data["train_y"], self.val_size)
        return Splits(train_x, train_y, val_x, val_y, data["test_x"], data["test_y"], self.num_classes)

    def _preprocessed(self) -> dict[str, torch.Tensor]:
        loaded: dict[str, torch.Tensor] = {}

        def compute() -> dict[str, torch.Tensor]:
            data = loaded or self.raw()
            image_keys = [k for k in data if k.endswith("_x") and k != "train_x"]
            black = torch.zeros(1, *data["train_x"].shape[1:])  # the augmentation's padding
            train, *others, black = get_preprocessor(self.preprocess)(
                to_float(data["train_x"]), [to_float(data[k]) for k in image_keys] + [black]
            )
            return {**data, "train_x": train, **dict(zip(image_keys, others, strict=True)), "black": black}

        if self.preprocess not in EXPENSIVE:
            return compute()
        files = self.source_files()
        if not all(f.is_file() for f in files):
            loaded.update(self.raw())  # downloads the files, or says which are missing
        key = {"dataset": self.name, "preprocess": self.preprocess, **self.cache_key_extra()}
        key["files"] = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]
        return cached(cache_path(self.root, self.name, key), compute)

    def cache_key_extra(self) -> dict:
        return {}

    def load_splits(self) -> Splits:
        data = self._preprocessed()
        black = data.pop("black", None)  # None in caches written before it was kept
        self._black = black[0, :, 0, 0] if black is not None else None
        return self.split(data)

    def pad_fill(self) -> torch.Tensor:
        self.load()
        return self._black if self._black is not None else super().pad_fill()
