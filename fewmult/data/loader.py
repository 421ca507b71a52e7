"""Minibatches sliced from tensors already on the training device.

The papers' datasets fit in (GPU) memory, so a per-sample ``Dataset`` + ``DataLoader`` with PIL
transforms only adds Python overhead. :class:`TensorBatches` shuffles with one ``randperm`` per
epoch and slices. Under DDP every rank draws the same permutation and takes its own stride of it
(:mod:`fewmult.data.order`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fewmult.data.augment import CropFlip, batch_key
from fewmult.data.order import EpochShuffle, ResumableOrder, rank_share, share_size


class TensorBatches(ResumableOrder):
    """An iterable of ``(x, y)`` minibatches.

    Args:
        x, y: the whole split, on the device where the batches are wanted.
        batch_size: examples per batch (per process under DDP).
        shuffle: training order from :class:`EpochShuffle` (``self.sampler``), or file order.
        shuffle_every: epochs that share one order (``shuffle``).
        drop_last: drop the last incomplete batch (training, as both papers do).
        seed: makes the sequence of permutations (and of augmentations) repeatable.
        rank, world_size: this process's share under data parallelism.
        augment, fill: training-time augmentation of every batch (:mod:`fewmult.data.augment`),
            with the preprocessed value of a black pixel per channel.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: CropFlip | None = None,
        fill: torch.Tensor | None = None,
        shuffle_every: int = 1,
    ) -> None:
        self.x, self.y = x, y
        self.seed, self.augment = seed, augment
        self.fill = fill if fill is not None else torch.zeros(x.shape[1] if x.dim() > 1 else 1)
        self.batch_size = batch_size
        self.sampler = EpochShuffle(seed, shuffle_every) if shuffle else None
        self.batch_sampler = None  # Lightning reads it beside ``sampler``, as on a DataLoader
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch`` (for loops other than Lightning's)."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def _indices(self) -> torch.Tensor | None:
        n = len(self.y)
        if self.sampler is not None:
            order = self.sampler.permutation(n)
        elif self.world_size == 1:
            return None
        else:
            order = torch.arange(n)
        return rank_share(order, self.rank, self.world_size, equal=self.drop_last).to(self.x.device)

    def _num_examples(self) -> int:
        return share_size(len(self.y), self.rank, self.world_size, equal=self.drop_last)

    def __len__(self) -> int:
        n, b = self._num_examples(), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        epoch = self._epoch()
        for i in range(self._first_batch(), len(self)):
            if order is None:
                sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
                x, y = self.x[sl], self.y[sl]
            else:
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                x, y = self.x[idx], self.y[idx]
            if self.augment is not None:
                x = self.augment(x, self.fill, batch_key(self.seed, epoch, self.rank, i))
            self._yielding()
            yield x, y
