"""The LightningModule: a classifier trained with the papers' loss, optimizer and schedule."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from fewmult.errors import UserError
from fewmult.nn.training import bind_optimizer, set_epoch
from fewmult.stages.teacher import Teacher

EVAL_SPLITS = ("val", "test")  # the order of TensorDataModule.val_dataloader()


class MulticlassError(MulticlassAccuracy):
    """Top-k error rate, 1 - accuracy (top-1 as both papers report it; top-5 as ImageNet papers add),
    synchronized across DDP ranks."""

    def __init__(self, num_classes: int, top_k: int = 1) -> None:
        super().__init__(
            num_classes=num_classes, top_k=top_k, average="micro", validate_args=False
        )  # checks cost ~1 ms a step

    def compute(self) -> torch.Tensor:
        return 1 - super().compute()


class LossMean:
    """The mean loss over every example an epoch saw, on all DDP ranks: sum and count, reduced once.

    Exact however the examples are shared among ranks. (Lightning's ``self.log(..., sync_dist=True)``
    is not, when ranks hold different numbers of examples, e.g. 201 validation examples on two
    ranks: it averages the per-rank counts as integers, 100.5 becomes 100, measured 8.897 for 8.853.)
    The sum stays on the device and the count is a Python number, so nothing waits for the device
    before the epoch's end.
    """

    def __init__(self, device: torch.device) -> None:
        # float64: the sum of a resumed epoch adds its parts in another order than the uninterrupted
        # run; in double precision both round to the same six digits of metrics.csv
        self.total = torch.zeros((), device=device, dtype=torch.float64)
        self.count = 0

    def add(self, loss: torch.Tensor, n: int) -> None:
        self.total += loss.detach() * n
        self.count += n

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor | int], device: torch.device) -> LossMean:
        mean = cls(device)
        mean.total.copy_(state["total"])
        mean.count = int(state["count"])
        return mean

    def summed(self, strategy) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the losses, number of examples) over all ranks, in one collective."""
        totals = torch.stack([self.total, torch.full_like(self.total, self.count)])
        total, count = strategy.reduce(totals, reduce_op="sum")
        return total, count

    def compute(self, strategy) -> torch.Tensor:
        total, count = self.summed(strategy)
        return (total / count).float()


def per_position(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (N, C) and labels (N,); a sequence model's (B, T, C) and (B, T) become B*T positions."""
    return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)


class ClassifierModule(L.LightningModule):
    """Trains ``model`` and reports losses and error rates (fractions) per split.

    A language model is a classifier of the next character at every position: its losses and
    errors are means over all positions (for the cross-entropy loss: nats per character).

    Logged per epoch: ``train/loss``, ``train/error``, ``val/loss``, ``val/error``, ``test/loss``,
    ``test/error`` and ``lr``; from a streamed dataset also ``train/data_wait``, the share of the
    epoch spent waiting for data; with a teacher also ``train/distill``, the distribution loss
    (``train/loss`` stays the task's loss, comparable with ``val/loss``). The test split is
    evaluated with the validation split at every validation, so that the test error at the epoch of
    best validation error can be reported.

    Args:
        model: the network; its output is one score per class.
        loss: maps (scores, labels) to a scalar.
        optimizer: builds the optimizer for the model (:func:`fewmult.build.optimizer_factory`).
        scheduler: builds the per-epoch LR scheduler from the optimizer, or returns None.
        num_classes: for the error metrics.
        teacher: a frozen network whose softmax the model also learns to match (``teacher=``).
        top5: also log ``val/top5_error`` and ``test/top5_error`` (ImageNet; needs more than 5 classes).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], object] | None,
        num_classes: int,
        teacher: Teacher | None = None,
        top5: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.teacher = teacher
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # ModuleDict keys cannot be "train" (a Module attribute), hence the underscore
        self.error = nn.ModuleDict({f"{s}_": MulticlassError(num_classes) for s in ("train", *EVAL_SPLITS)})
        self.top5_error = (
            nn.ModuleDict({s: MulticlassError(num_classes, top_k=5) for s in EVAL_SPLITS})
            if top5 and num_classes > 5
            else None
        )
        self._losses: dict[str, LossMean] = {}  # per split, over the epoch so far
        self._epoch_lr = 0.0  # the learning rate the epoch trains with
        self._restored_sums: dict | None = None  # the epoch's sums from a checkpoint written inside it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # No self.log here: per-step logging costs ~5 % of an MLP step on CPU. The epoch's loss and
        # error are accumulated on the device and logged once, after the epoch's last batch.
        x, y = batch
        self._epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]  # a Python float: no sync
        logits, y = per_position(self.model(x), y)
        loss = self.loss(logits, y)
        self.error["train_"].update(logits.detach(), y)
        self._losses["train"].add(loss, len(y))
        if self.teacher is None:
            return loss
        divergence = self.teacher.divergence(x, logits)
        self._losses["distill"].add(divergence, len(y))
        return (1 - self.teacher.weight) * loss + self.teacher.weight * divergence

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_step(EVAL_SPLITS[dataloader_idx], batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_step(self, split: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        logits, y = per_position(self.model(x), y)
        error = self.error[f"{split}_"]
        error.update(logits, y)
        self._losses.setdefault(split, LossMean(self.device)).add(self.loss(logits, y), len(y))
        opts = {"on_step": False, "on_epoch": True, "batch_size": len(y), "add_dataloader_idx": False}
        self.log(f"{split}/error", error, **opts)
        if self.top5_error is not None:
            top5 = self.top5_error[split]
            top5.update(logits, y)
            self.log(f"{split}/top5_error", top5, **opts)

    def _log_eval_losses(self) -> None:
        for split in EVAL_SPLITS:
            if (mean := self._losses.pop(split, None)) is not None:
                # already reduced over ranks; sync_dist only silences Lightning (the mean of equal values)
                self.log(f"{split}/loss", mean.compute(self.trainer.strategy), on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_eval_losses()

    def on_test_epoch_end(self) -> None:
        self._log_eval_losses()

    def on_fit_start(self) -> None:
        if self.teacher is not None:  # not a submodule (see Teacher), so Lightning does not move it
            self.teacher.to(self.device)

    def _set_epoch(self) -> None:
        """IR-Net's EDE follows the epoch; a run resumed inside an epoch sets it in on_train_start."""
        set_epoch(self.model, self.current_epoch, self.trainer.max_epochs)

    def on_train_epoch_start(self) -> None:
        self._set_epoch()
        self._losses["train"] = LossMean(self.device)
        if self.teacher is not None:
            self._losses["distill"] = LossMean(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Inside an epoch, its running training loss, distillation loss and error go along, summed
        over the DDP ranks (every rank builds the checkpoint; rank zero's is written), so that a run
        resumed there logs the same epoch means as the uninterrupted one."""
        names = [name for name in ("train", "distill") if name in self._losses]
        if not names:
            return
        strategy = self.trainer.strategy
        sums = {}
        for name in names:
            total, count = self._losses[name].summed(strategy)
            sums[name] = {"total": total, "count": int(count)}
        error = self.error["train_"]
        checkpoint["epoch_sums"] = {
            "losses": sums,
            "error": {k: strategy.reduce(v.clone(), reduce_op="sum") for k, v in error.metric_state.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._restored_sums = checkpoint.get("epoch_sums")

    def on_train_start(self) -> None:
        # here rather than in on_load_checkpoint: the module is on its device now. A restart inside
        # an epoch does not call on_train_epoch_start, so these sums are the epoch's from here on:
        # the sums over all ranks on rank zero, zero on the others (the epoch's end adds them up)
        self._set_epoch()
        sums, self._restored_sums = self._restored_sums, None
        if sums is None:
            return
        lead = self.global_rank == 0
        for name, state in sums["losses"].items():
            self._losses[name] = LossMean.from_state(state, self.device) if lead else LossMean(self.device)
        error = self.error["train_"]
        error.reset()
        if lead:
            for name, value in sums["error"].items():
                setattr(error, name, value.to(self.device))
            error._update_count = 1  # the states hold updates: compute() may read them

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # after the last batch rather than in on_train_epoch_end, which Lightning calls after the
        # callbacks' on_train_epoch_end (the metrics.csv writer must see these values)
        if self.trainer.is_last_batch:
            self._log_train_epoch()

    def _log_train_epoch(self) -> None:
        # the epoch's learning rate, logged at its end so that an epoch resumed from its middle, where
        # on_train_epoch_start does not run, logs it too (read in the step: Lightning steps an epoch's
        # schedule after the last batch's training_step, before on_train_batch_end)
        self.log("lr", self._epoch_lr, on_step=False, on_epoch=True, sync_dist=True)
        # a streamed dataset's share of the epoch spent waiting for batches (mean over ranks; a
        # timing, so it differs between an interrupted run and its uninterrupted twin)
        if (waited := getattr(self.trainer.train_dataloader, "wait_share", None)) is not None:
            self.log("train/data_wait", float(waited), on_step=False, on_epoch=True, sync_dist=True)
        loss = self._losses.pop("train").compute(self.trainer.strategy)
        # already reduced over ranks; sync_dist only silences Lightning (the mean of equal values)
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/error", self.error["train_"].compute(), on_step=False, on_epoch=True, sync_dist=True)
        self.error["train_"].reset()
        self._epoch_loss = loss
        if self.teacher is not None:
            divergence = self._losses.pop("distill").compute(self.trainer.strategy)
            self.log("train/distill", divergence, on_step=False, on_epoch=True, sync_dist=True)
            self._epoch_loss = loss + divergence  # NaN if either is

    def on_train_epoch_end(self) -> None:
        # runs after the callbacks' on_train_epoch_end, so metrics.csv already has this epoch's row
        if not torch.isfinite(self._epoch_loss):
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            raise UserError(
                f"the training loss became {float(self._epoch_loss)} in epoch {self.current_epoch}. The "
                f"learning rate (now {lr:g}) is probably too high for this method: lower optim.lr. "
                "Checkpoints and metrics of the finished epochs are kept in the run folder."
            )

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.model)
        bind_optimizer(self.model, optimizer)  # LAB reads its Adam state; latent weights clipped per step
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory else None
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
