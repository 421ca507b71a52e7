"""The LightningModule: a classifier trained with the papers' loss, optimizer and schedule."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from fewmult.errors import UserError

EVAL_SPLITS = ("val", "test")  # the order of TensorDataModule.val_dataloader()


class MulticlassError(MulticlassAccuracy):
    """Top-1 error rate, 1 - accuracy, as both papers report it (synchronized across DDP ranks)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes=num_classes, average="micro")

    def compute(self) -> torch.Tensor:
        return 1 - super().compute()


class ClassifierModule(L.LightningModule):
    """Trains ``model`` and reports error rates (fractions) per split.

    Logged per epoch: ``train/loss``, ``train/error``, ``val/loss``, ``val/error``, ``test/loss``,
    ``test/error`` and ``lr``. The test split is evaluated with the validation split at every
    validation, so that the test error at the epoch of best validation error can be reported.

    Args:
        model: the network; its output is one score per class.
        loss: maps (scores, labels) to a scalar.
        optimizer: builds the optimizer from the parameters (a Hydra ``_partial_``).
        scheduler: builds the per-epoch LR scheduler from the optimizer, or returns None.
        num_classes: for the error metrics.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], object] | None,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.error = nn.ModuleDict({f"{s}_": MulticlassError(num_classes) for s in ("train", *EVAL_SPLITS)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, split: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        loss = self.loss(logits, y)
        error = self.error[f"{split}_"]  # ModuleDict keys cannot be "train"
        error.update(logits.detach(), y)
        opts = {"on_step": False, "on_epoch": True, "batch_size": len(y), "add_dataloader_idx": False}
        self.log(f"{split}/loss", loss.detach(), sync_dist=True, **opts)
        self.log(f"{split}/error", error, **opts)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step("train", batch)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0):
        self._step(EVAL_SPLITS[dataloader_idx], batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step("test", batch)

    def on_train_epoch_start(self) -> None:
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        loss = self.trainer.callback_metrics.get("train/loss")
        if loss is not None and not torch.isfinite(loss):
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            raise UserError(
                f"the training loss became {float(loss)} in epoch {self.current_epoch}. The learning rate "
                f"(now {lr:g}) is probably too high for this method: lower optim.lr. Checkpoints and "
                "metrics of the finished epochs are kept in the run folder."
            )

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory else None
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
