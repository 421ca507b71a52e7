"""Checkpoints that let a killed job continue exactly where its last finished epoch left it.

* :class:`LastCheckpoint` writes ``checkpoints/last.ckpt`` after every training epoch: after the
  epoch's ``metrics.csv`` row, its validation and the NaN check (so it never holds a diverged net).
  A kill loses at most the epoch in progress, which the relaunch trains again identically.
* :class:`AtomicCheckpointIO` writes every checkpoint through a temporary file in the same folder
  (Lightning's own writer goes through the system temp folder and ``shutil.move``, a copy when that
  is another file system), so a kill while writing leaves the previous checkpoint intact.
* :class:`RandomStates` stores the global random generators in the checkpoint. Everything else a
  run's future depends on is already in it: weights and buffers (BN statistics, LAB's scale, the
  hashed random streams' counters), optimizer, schedule, loop counters and callback states (the best
  epoch so far); the data order is a function of the epoch (:class:`fewmult.data.loader.EpochShuffle`).
* :func:`resume_point` checks ``last.ckpt`` and ``metrics.csv`` before a relaunch continues them.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fewmult.atomic import atomic_open
from fewmult.errors import UserError
from fewmult.results import read_metrics, truncate_epochs
from fewmult.rundir import start_over_advice


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, fsync, then an atomic rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_open(Path(path)) as f:
            torch.save(checkpoint, f)


class LastCheckpoint(Checkpoint):
    """Saves the whole training state to ``path`` at the end of every training epoch.

    A :class:`~lightning.pytorch.callbacks.Checkpoint`, so Lightning runs it after the other
    callbacks and the module's ``on_train_epoch_end``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.epochs_done = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's "epoch" field is the index of the epoch being finished; this is the count
        self.epochs_done = trainer.current_epoch + 1
        trainer.save_checkpoint(self.path)  # every rank calls; only rank zero writes

    def state_dict(self) -> dict[str, int]:
        return {"epochs_done": self.epochs_done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.epochs_done = state_dict["epochs_done"]


def epochs_done(checkpoint: dict[str, Any]) -> int:
    """The training epochs completed in a checkpoint written by :class:`LastCheckpoint`."""
    return int(checkpoint["callbacks"][LastCheckpoint.__qualname__]["epochs_done"])


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


def _epochs_done(last: Path) -> int:
    """Completed epochs in ``last``; a :class:`UserError` naming the file if it cannot be used."""
    try:
        return epochs_done(torch.load(last, map_location="cpu", weights_only=True))
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
    done = _epochs_done(last) if last.is_file() else 0
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
    if done == 0:
        return None
    print(f"resuming from {last} ({done} epochs done)", flush=True)
    return str(last)
