"""Minibatches sliced from tensors already on the training device.

The papers' datasets fit in (GPU) memory, so a per-sample ``Dataset`` + ``DataLoader`` with PIL
transforms only adds Python overhead. :class:`TensorBatches` shuffles with one ``randperm`` per
epoch and slices. Under DDP every rank draws the same permutation and takes its own stride of it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class TensorBatches:
    """An iterable of ``(x, y)`` minibatches, reshuffled at every pass.

    Args:
        x, y: the whole split, on the device where the batches are wanted.
        batch_size: examples per batch (per process under DDP).
        shuffle: draw a new permutation at every pass (training) or keep file order (evaluation).
        drop_last: drop the last incomplete batch (training, as both papers do).
        seed: makes the sequence of permutations repeatable.
        rank, world_size: this process's share under data parallelism.
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
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def _indices(self) -> torch.Tensor | None:
        n = len(self.y)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        elif self.world_size == 1:
            return None
        else:
            order = torch.arange(n)
        if self.drop_last:  # equal shares keep DDP ranks in step
            order = order[: n - n % self.world_size]
        return order[self.rank :: self.world_size].to(self.x.device)

    def _num_examples(self) -> int:
        n = len(self.y)
        if self.drop_last:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n, b = self._num_examples(), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        self.epoch += 1
        for i in range(len(self)):
            if order is None:
                sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
                yield self.x[sl], self.y[sl]
            else:
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                yield self.x[idx], self.y[idx]
