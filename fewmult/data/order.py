"""The order of the examples in an epoch, each DDP rank's share of it, and a resumable position.

Shared by every loader (device-resident tensors and streamed image folders), so that the data order
is a function of (seed, epoch) alone, DDP ranks split it the same way whatever the loader, and a run
relaunched from a checkpoint written inside an epoch continues with the very batches it had not
trained on.
"""

from __future__ import annotations

from typing import Any

import torch


class EpochShuffle:
    """The order of the examples in one epoch: a permutation that depends only on (seed, epoch).

    As with ``DistributedSampler``, the trainer says which epoch comes next through
    :meth:`set_epoch` (Lightning calls it on ``loader.sampler`` before every training epoch), so a
    run resumed at epoch k draws exactly the orders the uninterrupted run drew from epoch k on.
    ``every``: a new order every this many epochs (Lin et al.'s code: 2, its evaluation interval);
    epochs ``[k * every, (k + 1) * every)`` share the order ``k``.
    """

    def __init__(self, seed: int, every: int = 1) -> None:
        self.seed = seed
        self.every = every
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch // self.every)
        return torch.randperm(n, generator=g)


def rank_share(order: torch.Tensor, rank: int, world_size: int, equal: bool) -> torch.Tensor:
    """This rank's examples of ``order``: every ``world_size``-th from ``rank``.

    ``equal`` (training): the tail that does not divide among the ranks is left out, so every rank
    trains the same number of steps and no example is seen twice. Evaluation keeps every example
    once, on one rank, however unequal the shares (fewmult's metrics sum over ranks).
    """
    if equal:
        order = order[: len(order) - len(order) % world_size]
    return order[rank::world_size]


def share_size(n: int, rank: int, world_size: int, equal: bool) -> int:
    """``len(rank_share(...))`` of ``n`` examples, without building the order."""
    return n // world_size if equal else len(range(rank, n, world_size))


class ResumableOrder:
    """A loader whose epoch a relaunch can continue from the middle.

    Lightning stores ``state_dict()`` of the training loader in every checkpoint and hands it back
    through ``load_state_dict`` on restart. The state is (epoch, batches yielded in it): Lightning
    does not prefetch from a loader with a length, so at a checkpoint inside an epoch the batches
    yielded are exactly the batches trained. On restart the epoch that was interrupted starts at
    the first batch not trained; any other epoch (e.g. after an epoch-end checkpoint) from its start.
    Subclasses call :meth:`_first_batch` when an epoch's iteration begins and :meth:`_yielding`
    before each batch they yield.
    """

    sampler: EpochShuffle | None
    _yielded = 0
    _resume_at: tuple[int, int] | None = None

    def _epoch(self) -> int:
        return self.sampler.epoch if self.sampler is not None else 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch(), "batches": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_at = (int(state["epoch"]), int(state["batches"]))

    def _first_batch(self) -> int:
        resume, self._resume_at = self._resume_at, None
        self._yielded = resume[1] if resume is not None and resume[0] == self._epoch() else 0
        return self._yielded

    def _yielding(self) -> None:
        self._yielded += 1
