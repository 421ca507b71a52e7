"""The LightningDataModule every dataset shares: load once, keep tensors on the device, slice."""

from __future__ import annotations

import lightning as L
import torch

from fewmult.data.augment import make_augmentation
from fewmult.data.loader import TensorBatches
from fewmult.data.splits import Splits
from fewmult.errors import UserError, require_positive


class TensorDataModule(L.LightningDataModule):
    """Serves :class:`Splits` as device-resident minibatches.

    Subclasses implement :meth:`load_splits`. Validation batches come in two loaders, the
    validation split (index 0) and the test split (index 1), because both papers report the test
    error at the epoch of best validation error and so evaluate the test set at every epoch.

    Args:
        name: the dataset's name as the config group calls it.
        batch_size: training minibatch size (per process under DDP).
        val_size: examples carved out of the training files for validation.
        eval_batch_size: minibatch size for evaluation (default: 1000, larger is faster).
        seed: seeds the shuffling of the training set.
        data_device: ``auto`` keeps the data on the training device; ``cpu`` keeps it in host
            memory and copies each batch (for data larger than GPU memory).
        augment, augment_pad: training-time augmentation of images (``none`` or ``crop_flip``,
            :mod:`fewmult.data.augment`) and its padding in pixels.
        shuffle_every: a new training order every this many epochs (Lin et al.'s code: 2).
        eval_whole_batches: score only the first ``floor(n / batch_size) * batch_size`` examples of
            the validation and test splits, as Lin et al.'s code does (their ``test_epoch``); the
            default scores every example.
    """

    def __init__(
        self,
        name: str,
        batch_size: int,
        val_size: int,
        eval_batch_size: int = 1000,
        seed: int = 0,
        data_device: str = "auto",
        augment: str = "none",
        augment_pad: int = 4,
        shuffle_every: int = 1,
        eval_whole_batches: bool = False,
    ) -> None:
        super().__init__()
        require_positive(batch_size, "dataset.batch_size")
        require_positive(eval_batch_size, "dataset.eval_batch_size")
        require_positive(shuffle_every, "dataset.shuffle_every")
        if data_device not in ("auto", "cpu"):
            raise UserError(f"dataset.data_device must be 'auto' or 'cpu', got {data_device!r}.")
        self.name = name
        self.batch_size = batch_size
        self.val_size = val_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.data_device = data_device
        self.augment = make_augmentation(augment, augment_pad)
        self.shuffle_every = shuffle_every
        self.eval_whole_batches = bool(eval_whole_batches)
        if self.augment is not None and self.input_kind != "images":
            raise UserError(f"dataset.augment={augment} crops and flips images; '{name}' is not images.")
        self._splits: Splits | None = None
        self._on_device: tuple[torch.device, Splits] | None = None

    image_shape: tuple[int, ...] = ()  # (C, H, W) of one example, known without loading the data
    input_kind = "images"  # what the model must read: "images" (float) or "tokens" (int64 codes)
    selection_metric = "error"  # the validation metric that picks the reported epoch (both papers)
    top5 = False  # whether top-5 error is logged beside top-1 (ImageNet's streamed data module does)

    def load_splits(self) -> Splits:
        raise NotImplementedError

    def pad_fill(self) -> torch.Tensor:
        """What a black pixel is after preprocessing, per channel: the augmentation's padding."""
        return torch.zeros(self.image_shape[0])

    def load(self) -> Splits:
        """Load (once) and return the splits on the CPU."""
        if self._splits is None:
            splits = self.load_splits()
            if len(splits.train_y) < self.batch_size:
                raise UserError(
                    f"dataset.batch_size={self.batch_size} is larger than the {len(splits.train_y)} "
                    f"training examples of '{self.name}'; lower dataset.batch_size."
                )
            self._splits = splits
        return self._splits

    @property
    def num_classes(self) -> int:
        return self.load().num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.load().input_shape

    def setup(self, stage: str | None = None) -> None:
        """Every DDP rank loads (from the preprocessing cache, memory-mapped) in its own process."""
        self.load()

    def __getstate__(self) -> dict:
        # ddp_spawn pickles the datamodule to every rank: the tensors stay behind (SVHN would be
        # ~7.7 GB through shared memory), each rank loads them in setup()
        state = self.__dict__.copy()
        state["_splits"] = state["_on_device"] = None
        return state

    def _device(self) -> torch.device:
        if self.trainer is None or self.data_device == "cpu":
            return torch.device("cpu")
        return self.trainer.strategy.root_device

    def _device_splits(self) -> Splits:
        device = self._device()
        if self._on_device is None or self._on_device[0] != device:
            s = self.load()
            moved = [t.to(device) for t in (s.train_x, s.train_y, s.val_x, s.val_y, s.test_x, s.test_y)]
            self._on_device = (device, Splits(*moved, num_classes=s.num_classes))
        return self._on_device[1]

    def _batches(self, x: torch.Tensor, y: torch.Tensor, train: bool) -> TensorBatches:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if not train and self.eval_whole_batches:
            scored = len(y) - len(y) % self.batch_size
            x, y = x[:scored], y[:scored]
        return TensorBatches(
            x,
            y,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            seed=self.seed,
            rank=rank,
            world_size=world,
            augment=self.augment if train else None,
            fill=self.pad_fill() if train and self.augment is not None else None,
            shuffle_every=self.shuffle_every,
        )

    def train_dataloader(self) -> TensorBatches:
        s = self._device_splits()
        return self._batches(s.train_x, s.train_y, train=True)

    def val_dataloader(self) -> list[TensorBatches]:
        s = self._device_splits()
        return [self._batches(s.val_x, s.val_y, train=False), self._batches(s.test_x, s.test_y, train=False)]

    def statistics_batches(self, epoch: int, shuffle_val: bool) -> list[TensorBatches]:
        """Training then validation split in whole training-size batches, whole on every rank.

        For re-estimating batch-norm statistics (Lin et al.); every DDP rank sees all of it so
        that all ranks evaluate the same network. The training split comes in the order ``epoch``
        trained in (Lin et al.'s code keeps its shuffled copy of the set); the validation split in
        file order, or with ``shuffle_val`` in one fixed order drawn from the seed. A split stored
        sorted by class (mnist_mini is) gives batches of one or two classes in file order, whose
        statistics average to the within-class variance only.
        """
        s = self._device_splits()
        common = {"batch_size": self.batch_size, "drop_last": True, "seed": self.seed}
        train = TensorBatches(s.train_x, s.train_y, shuffle=True, shuffle_every=self.shuffle_every, **common)
        train.set_epoch(epoch)
        return [train, TensorBatches(s.val_x, s.val_y, shuffle=shuffle_val, **common)]

    def test_dataloader(self) -> TensorBatches:
        s = self._device_splits()
        return self._batches(s.test_x, s.test_y, train=False)
