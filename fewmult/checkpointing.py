"""Checkpoints that let a killed job continue exactly where its last checkpoint left it.

* :class:`LastCheckpoint` writes ``checkpoints/last.ckpt`` after every training epoch: after the
  epoch's ``metrics.csv`` row, its validation and the NaN check (so it never holds a diverged net).
  With ``checkpoint.every_steps`` or ``checkpoint.every_minutes`` it also writes one inside the epoch,
  and on SIGTERM (preemption) it writes one after the batch in progress: a relaunch continues from
  that batch with the same data order, augmentation and random streams (the loaders are resumable,
  :class:`fewmult.data.order.ResumableOrder`; the module keeps the epoch's running sums).
* :class:`AtomicCheckpointIO` writes every checkpoint through a temporary file in the same folder
  (Lightning's own writer goes through the system temp folder and ``shutil.move``, a copy when that
  is another file system), so a kill while writing leaves the previous checkpoint intact.
* :class:`RandomStates` stores the global random generators in the checkpoint. Everything else a
  run's future depends on is already in it: weights and buffers (BN statistics, LAB's scale, the
  hashed random streams' counters), optimizer, schedule, loop counters and callback states (the best
  epoch so far); the data order is a function of the epoch (:class:`fewmult.data.order.EpochShuffle`).
* :func:`resume_point` checks ``last.ckpt`` and ``metrics.csv`` before a relaunch continues them.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fewmult.atomic import atomic_open
from fewmult.errors import UserError
from fewmult.results import read_metrics, truncate_epochs
from fewmult.rundir import start_over_advice


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, fsync, then an atomic rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_open(Path(path)) as f:
            torch.save(checkpoint, f)


TIME_CHECK_STEPS = 25  # every_minutes: how often rank zero looks at the clock (and tells the others)


class LastCheckpoint(Checkpoint):
    """Saves the whole training state to ``path`` at the end of every training epoch, and inside it
    every ``every_steps`` training batches, every ``every_minutes`` minutes and on SIGTERM.

    A :class:`~lightning.pytorch.callbacks.Checkpoint`, so Lightning runs it after the other
    callbacks and the module's ``on_train_epoch_end``. Every DDP rank must save together (the save
    ends in a barrier): the step count is the same on all of them, and the clock is read on rank
    zero every :data:`TIME_CHECK_STEPS` batches and its verdict broadcast, one small collective per
    25 steps rather than a host sync per step.
    """

    def __init__(
        self, path: Path, every_steps: int | None = None, every_minutes: float | None = None
    ) -> None:
        self.path = Path(path)
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self.epochs_done = 0
        self.batches_done = 0  # training batches of the epoch in progress, at the last save
        self._last_save = time.monotonic()

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)  # every rank calls; only rank zero writes
        self._last_save = time.monotonic()

    def _time_is_up(self, trainer: L.Trainer, batches: int) -> bool:
        if self.every_seconds is None or batches % TIME_CHECK_STEPS:
            return False
        due = time.monotonic() - self._last_save >= self.every_seconds
        return bool(trainer.strategy.broadcast(due, src=0)) if trainer.world_size > 1 else due

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        batches = batch_idx + 1
        if batches >= trainer.num_training_batches:
            return  # the epoch's end saves after validation
        by_steps = self.every_steps is not None and batches % self.every_steps == 0
        if by_steps or self._time_is_up(trainer, batches):
            self.batches_done = batches
            self._save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """SIGTERM (preemption, scancel, time limit): keep the batches trained since the last save.

        Lightning raises it between training batches (the state is whole) or during validation
        (then the epoch's end was not reached, and the last save stays the one to resume from).
        """
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        between_batches = trainer.training and not trainer.validating and not trainer.sanity_checking
        if (
            isinstance(exception, SIGTERMException)
            and between_batches
            and 0 < batches < trainer.num_training_batches
        ):
            self.batches_done = batches
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's "epoch" field is the index of the epoch being finished; this is the count
        self.epochs_done = trainer.current_epoch + 1
        self.batches_done = 0
        self._save(trainer)

    def state_dict(self) -> dict[str, int]:
        return {"epochs_done": self.epochs_done, "batches_done": self.batches_done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.epochs_done = state_dict["epochs_done"]
        self.batches_done = state_dict.get("batches_done", 0)  # absent before mid-epoch checkpoints


def progress(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """(epochs completed, training batches of the next epoch) in a :class:`LastCheckpoint` checkpoint."""
    state = checkpoint["callbacks"][LastCheckpoint.__qualname__]
    return int(state["epochs_done"]), int(state.get("batches_done", 0))


def epochs_done(checkpoint: dict[str, Any]) -> int:
    """The training epochs completed in a checkpoint written by :class:`LastCheckpoint`."""
    return progress(checkpoint)[0]


class RandomStates(L.Callback):
    """The global generators (torch CPU and CUDA, NumPy, Python) in and out of checkpoints.

    fewmult's own random numbers come from seeded streams in the model's buffers; the global
    generators still feed ``rng=torch`` and any user code. DDP ranks are seeded alike, so rank
    zero's states, restored on every rank, are every rank's.
    """

    def state_dict(self) -> dict[str, Any]:
        _, keys, pos, has_gauss, cached = np.random.get_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
        return {
            "torch": torch.get_rng_state(),
            "cuda": cuda,
            # plain types, so that checkpoints load with torch.load(weights_only=True)
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": pos,
                "gauss": (has_gauss, cached),
            },
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"][: torch.cuda.device_count()])
        numpy = state_dict["numpy"]
        keys = numpy["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, numpy["pos"], *numpy["gauss"]))
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))


def _progress(last: Path) -> tuple[int, int]:
    """:func:`progress` of ``last``; a :class:`UserError` naming the file if it cannot be used."""
    try:
        return progress(torch.load(last, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise UserError(
            f"cannot resume from {last}: it is unreadable ({type(exc).__name__}: {exc}). Put a readable "
            f"last.ckpt there (e.g. a backup copy) and relaunch, or {start_over_advice(last.parent.parent)}."
        ) from exc


def resume_point(last: Path, metrics: Path, layers: Path | None = None) -> str | None:
    """The checkpoint a relaunch continues from (None: start at epoch 0), with ``metrics.csv`` (and
    ``layers``, the diagnostics' layers.csv) cut to it.

    Rows of epochs after the checkpoint (the epoch a kill interrupted after its row was written)
    are dropped, because the relaunch trains them again. Rows missing for epochs the checkpoint has
    done mean the two files do not belong together: refused rather than silently mixed.
    """
    done, batches = _progress(last) if last.is_file() else (0, 0)
    try:
        rows = read_metrics(metrics)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read {metrics} ({exc}); {start_over_advice(metrics.parent)}.") from exc
    kept = [row for row in rows if row["epoch"] < done]
    if [int(row["epoch"]) for row in kept] != list(range(done)):
        have = sorted({int(row["epoch"]) for row in rows})
        raise UserError(
            f"{last} has {done} epochs done, but {metrics} has rows for epochs {have}: the two files "
            f"are not from the same run. Restore the matching pair, or {start_over_advice(metrics.parent)}."
        )
    for path in (metrics, layers):
        if path is not None:
            truncate_epochs(path, done)
    if done == 0 and batches == 0:
        return None
    inside = f" and {batches} training batches of epoch {done}" if batches else ""
    print(f"resuming from {last} ({done} epochs{inside} done)", flush=True)
    return str(last)
