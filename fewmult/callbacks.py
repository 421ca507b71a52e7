"""Lightning callbacks that write the run contract on global rank zero."""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L

from fewmult.nn.bn_statistics import reestimate_batch_norm
from fewmult.results import append_metrics_row, is_better


def _metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


class EpochMetricsCSV(L.Callback):
    """Appends one row per training epoch to ``metrics.csv`` and prints a one-line summary.

    ``shown``: the metrics of the printed line (None: print nothing).
    """

    def __init__(
        self, path: Path, shown: tuple[str, ...] | None = ("train/loss", "val/error", "test/error")
    ) -> None:
        self.path = Path(path)
        self.shown = shown
        self._start = 0.0
        self._validated_epoch = -1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = _metrics(trainer)  # on every rank: reading them reduces sync_dist values across ranks
        if not trainer.is_global_zero:
            return
        row = {"epoch": trainer.current_epoch, **metrics}
        if self._validated_epoch != trainer.current_epoch:  # keep stale val/test values out of this row
            row = {k: v for k, v in row.items() if not k.startswith(("val/", "test/"))}
        row["epoch_seconds"] = round(time.perf_counter() - self._start, 4)
        append_metrics_row(self.path, row)
        if self.shown:
            shown = "  ".join(f"{k} {row[k]:.4f}" for k in self.shown if k in row)
            print(f"epoch {trainer.current_epoch:>4}  {shown}  ({row['epoch_seconds']:.1f} s)", flush=True)


class BestCheckpoint(L.Callback):
    """Saves ``best.ckpt`` at the epoch of lowest validation error (the later one on ties)."""

    def __init__(self, path: Path, monitor: str = "val/error") -> None:
        self.path = Path(path)
        self.monitor = monitor
        self.best: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if is_better(value, self.best):
            self.best = value
            trainer.save_checkpoint(self.path)  # every rank calls; only rank zero writes

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        best = state_dict.get("best")
        self.best = None if best is None or math.isnan(best) else best


class RecomputeBatchNorm(L.Callback):
    """Before every validation, re-estimate BN statistics from the training and validation sets
    (Lin et al.'s code, docs/papers.md B.1 and D.6), in the form ``form``
    (:mod:`fewmult.nn.bn_statistics`).

    Both visit the training set in the order of the epoch just trained, as Lin et al.'s code keeps
    its shuffled copy of the set; the validation set in file order (``authors_code``, as the code)
    or in an order drawn once from the seed (``batch_stats``: file order biases the estimate when a
    file is sorted by class, as mnist_mini is). Both are functions of the epoch alone, so a resumed
    run re-estimates exactly as the uninterrupted one.
    """

    def __init__(self, form: str = "batch_stats") -> None:
        self.form = form

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        batch_sets = trainer.datamodule.statistics_batches(
            trainer.current_epoch, shuffle_val=self.form == "batch_stats"
        )
        with trainer.precision_plugin.forward_context():  # the arithmetic the evaluation will use
            reestimate_batch_norm(pl_module, batch_sets, self.form)
