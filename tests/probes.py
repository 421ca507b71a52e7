"""A callback that lets tests look at a run from outside: passed through the ``callbacks`` config key."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class SaveWeights(L.Callback):
    """Saves the model's weights at the start of training (``init.pt``) and after every epoch
    (``epoch<N>.pt``), so a test can recompute what the run logged about them."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _save(self, pl_module: L.LightningModule, name: str) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save(state, self.folder / f"{name}.pt")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(pl_module, "init")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(pl_module, f"epoch{trainer.current_epoch}")
