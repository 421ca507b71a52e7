"""Batches of decoded images from disk, through one ``DataLoader`` that lives as long as the run.

The ``DataLoader`` keeps its worker processes between epochs (``persistent_workers``), prefetches
``prefetch_factor`` batches per worker and copies each batch into pinned memory, from which it
reaches the GPU asynchronously. Which images form which batch is decided in the training process:
the epoch's order is :class:`fewmult.data.order.EpochShuffle`'s, shared out among DDP ranks by
:func:`fewmult.data.order.rank_share`, and started at the first batch not yet trained when a run
resumes inside an epoch (:class:`fewmult.data.order.ResumableOrder`). The workers receive (image,
epoch) pairs, so each image's random crop is a function of the seed, the epoch and the image.

Each epoch also measures the share of its time the training process spent waiting for a batch
(:attr:`ImageStream.wait_share`): near 0 the device is fed, near 1 it is starving for data.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from fewmult.data.imagenet.decode import draw_key, eval_image, train_image
from fewmult.data.imagenet.on_device import collate, encoded
from fewmult.data.order import EpochShuffle, ResumableOrder, rank_share, share_size
from fewmult.errors import UserError


@dataclass(frozen=True)
class Decoding:
    """How every image of a split is turned into an input: sizes, augmentation, the seed of its draws."""

    size: int
    resize: int
    train: bool
    seed: int
    draft: bool
    lighting: float = 0.0
    on_device: bool = False  # the training process decodes (:mod:`.on_device`); workers read the files


class FolderImages(Dataset):
    """Images of a split, addressed by (index, epoch); each item is (uint8 HWC array, label)."""

    def __init__(self, samples: Sequence[tuple[str, int]], decoding: Decoding, dataset: str) -> None:
        self.samples = samples
        self.decoding = decoding
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple:
        """(uint8 HWC pixels, label); with ``decoding.on_device``: ((the file's bytes, its
        :class:`~fewmult.data.imagenet.on_device.Plan`), or its pixels where the worker must decode
        it, label, path)."""
        index, epoch = key
        path, label = self.samples[index]
        d = self.decoding
        key = draw_key(d.seed, epoch, index)
        try:
            if d.on_device and (item := encoded(path, d.train, key, d.resize, d.lighting)) is not None:
                return item, label, path
            if d.train:
                pixels = train_image(path, d.size, key, d.draft, d.lighting)
            else:
                pixels = eval_image(path, d.size, d.resize, d.draft)
        except Exception as exc:
            raise UserError(
                f"{self.dataset}: cannot decode {path} ({type(exc).__name__}: {exc}). The file is damaged "
                "or not an image: replace it with a good copy, or delete it, and run again."
            ) from None
        pixels = torch.from_numpy(pixels.copy())
        return (pixels, label, path) if d.on_device else (pixels, label)


class _BatchPlan:
    """The batch sampler of the persistent ``DataLoader``: the epoch's batches, set before each epoch."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _user_error_from_worker(exc: UserError) -> UserError:
    """A worker's :class:`UserError` as its own message (``DataLoader`` re-raises it with the
    worker's traceback folded into the text)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return UserError(lines[-1].split("UserError: ", 1)[-1] if lines else str(exc))


class ImageStream(ResumableOrder):
    """An iterable of (uint8 NHWC images, int64 labels) batches of one split, sized like a loader
    (with ``decoding.on_device``, :class:`~fewmult.data.imagenet.on_device.EncodedBatch` es that the
    transfer to the device decodes).

    Args:
        images: the split's images (:class:`FolderImages`).
        batch_size: images per batch (per process under DDP).
        shuffle: a new order every epoch (training), else file order.
        drop_last: equal, whole batches on every rank (training); evaluation keeps every image once.
        seed: of the order.
        rank, world_size: this process's share under data parallelism.
        workers: decoding processes (0: in the training process).
        prefetch_factor: batches each worker prepares ahead.
        pin_memory: copy batches into page-locked memory (for asynchronous copies to a GPU).
    """

    def __init__(
        self,
        images: FolderImages,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        prefetch_factor: int = 4,
        pin_memory: bool = False,
    ) -> None:
        self.images = images
        self.batch_size = batch_size
        self.sampler = EpochShuffle(seed) if shuffle else None
        self.batch_sampler = None  # Lightning reads it beside ``sampler``, as on a DataLoader
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.workers, self.prefetch_factor, self.pin_memory = workers, prefetch_factor, pin_memory
        self._plan = _BatchPlan()
        self._loader: DataLoader | None = None
        self._started = 0.0
        self._waited = 0.0

    def __len__(self) -> int:
        n = share_size(len(self.images), self.rank, self.world_size, equal=self.drop_last)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self) -> torch.Tensor:
        n = len(self.images)
        order = self.sampler.permutation(n) if self.sampler is not None else torch.arange(n)
        return rank_share(order, self.rank, self.world_size, equal=self.drop_last)

    def _make_loader(self) -> DataLoader:
        workers = self.workers
        d = self.images.decoding
        return DataLoader(
            self.images,
            batch_sampler=self._plan,
            collate_fn=functools.partial(collate, train=d.train, size=d.size) if d.on_device else None,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
        )

    @property
    def wait_share(self) -> float:
        """The share of this epoch's time so far spent waiting for batches."""
        elapsed = time.perf_counter() - self._started
        return self._waited / elapsed if elapsed > 0 else 0.0

    def __iter__(self) -> Iterator:
        first, epoch = self._first_batch(), self._epoch()
        ids = self._order().tolist()
        b = self.batch_size
        self._plan.batches = [[(i, epoch) for i in ids[k * b : (k + 1) * b]] for k in range(first, len(self))]
        if self._loader is None:
            self._loader = self._make_loader()
        batches = iter(self._loader)
        self._started, self._waited = time.perf_counter(), 0.0
        for _ in range(len(self._plan)):
            asked = time.perf_counter()
            try:
                batch = next(batches)
            except UserError as exc:
                raise _user_error_from_worker(exc) from None
            self._waited += time.perf_counter() - asked
            self._yielding()
            yield tuple(batch) if isinstance(batch, list) else batch  # (x, y), or an EncodedBatch
