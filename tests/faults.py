"""Fault injection for tests: kill a training process at a chosen point, as a cluster would.

:class:`KillAt` is an ordinary Lightning callback, passed to the real entry point through the
``callbacks`` config key, so the killed run uses fewmult's own checkpointing untouched. It fires
once: before killing, it creates its ``marker`` file, and a relaunch with the very same command
(as SLURM requeues a job) runs past it.

The signal is SIGKILL (nothing runs after it) or ``signal=TERM`` (what SLURM sends first on
preemption or at the time limit; Lightning stops after the current batch). Points (``at``), each
in training epoch ``epoch``:

* ``epoch_start``: before the epoch starts (the previous epoch's ``last.ckpt`` is on disk);
* ``train_batch``: in the middle of the epoch, after training batch ``batch``;
* ``validation``: during validation, after its first batch;
* ``epoch_end``: after the epoch's ``metrics.csv`` row, before its ``last.ckpt`` is written;
* ``checkpoint_write``: while ``last.ckpt`` is being written, after more than ``min_bytes`` of its
  temporary file are on disk (a padding of many small tensors makes the write long enough to
  catch; a watcher thread kills the process when it sees the partial file).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import lightning as L
import torch

POINTS = ("epoch_start", "train_batch", "validation", "epoch_end", "checkpoint_write")


def _signal_number(name: str) -> int:
    return {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}[name]


def _kill_now(signum: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), signum)


class KillAt(L.Callback):
    def __init__(
        self,
        at: str,
        epoch: int,
        marker: str,
        batch: int = 1,
        min_bytes: int = 1 << 20,
        signal: str = "KILL",
        in_folder: str | None = None,
    ) -> None:
        if at not in POINTS:
            raise ValueError(f"at must be one of {POINTS}, got {at!r}")
        self.at, self.epoch, self.batch, self.min_bytes = at, epoch, batch, min_bytes
        self.marker = Path(marker)
        self.signum = _signal_number(signal)
        self.in_folder = in_folder  # only in the run folder of this name (a stage of a two-stage run)

    def _armed(self, trainer: L.Trainer, at: str) -> bool:
        here = self.in_folder is None or Path(trainer.default_root_dir).name == self.in_folder
        return here and at == self.at and trainer.current_epoch == self.epoch and not self.marker.exists()

    def _kill(self) -> None:
        self.marker.write_text(self.at)
        _kill_now(self.signum)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._armed(trainer, "epoch_start"):
            self._kill()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._armed(trainer, "train_batch") and batch_idx == self.batch:
            self._kill()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._armed(trainer, "validation") and not trainer.sanity_checking:
            self._kill()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._armed(trainer, "epoch_end"):
            self._kill()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not self._armed(trainer, "checkpoint_write") or trainer.validating:
            return  # best.ckpt is saved during validation, last.ckpt after it
        self.marker.write_text(self.at)
        checkpoint["kill_padding"] = [torch.zeros(1 << 14) for _ in range(1024)]  # 64 MiB in 1,024 records
        folder = Path(trainer.default_root_dir) / "checkpoints"
        threading.Thread(target=self._watch, args=(folder,), daemon=True).start()

    def _watch(self, folder: Path) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for tmp in folder.glob(".last.ckpt.*.tmp"):
                try:
                    if tmp.stat().st_size > self.min_bytes:
                        _kill_now()
                except FileNotFoundError:
                    pass
            time.sleep(0.0005)
