"""Train/validation/test tensors and the ways the papers carve them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fewmult.errors import UserError


@dataclass
class Splits:
    """Float images (N, C, H, W) and int64 labels for the three splits."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def check_val_size(val_size: int, n_train: int, dataset: str) -> None:
    """Fail early when the validation split would leave no training data."""
    if not isinstance(val_size, int) or val_size < 0:
        raise UserError(f"dataset.val_size must be a non-negative integer, got {val_size!r}.")
    if val_size >= n_train:
        raise UserError(
            f"dataset.val_size={val_size} is not smaller than the {n_train} training examples of "
            f"'{dataset}'; choose dataset.val_size below {n_train}."
        )


def tail_split(x: torch.Tensor, y: torch.Tensor, val_size: int) -> tuple[torch.Tensor, ...]:
    """Validation = the last ``val_size`` examples in file order (pylearn2's MNIST and CIFAR-10 splits)."""
    cut = len(y) - val_size
    return x[:cut], y[:cut], x[cut:], y[cut:]


def class_balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` random indices of every class, sorted; fails if a class is too small."""
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise UserError(
                f"class {c} has only {len(members)} examples, fewer than the {per_class} per class "
                "the validation split needs; lower dataset.val_size."
            )
        picked.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picked))


def complement(n: int, indices: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[indices] = False
    return np.flatnonzero(mask)
