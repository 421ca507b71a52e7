"""The papers' learning-rate schedules, stepped once per epoch."""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ExponentialLR, LambdaLR, LRScheduler, MultiStepLR, StepLR

from fewmult.errors import UserError, require_positive


def exponential_decay(optimizer: Optimizer, lr_final: float, epochs: int) -> LRScheduler:
    """Lin et al.: ``lr <- lr * (lr_final / lr_0) ** (1 / epochs)`` after every epoch.

    The learning rate falls geometrically from ``lr_0`` to ``lr_final`` over ``epochs`` epochs.
    """
    lr0 = optimizer.param_groups[0]["lr"]
    if lr_final <= 0 or epochs <= 0:
        raise UserError(f"optim.schedule needs lr_final > 0 and epochs > 0, got {lr_final} and {epochs}.")
    return ExponentialLR(optimizer, gamma=(lr_final / lr0) ** (1.0 / epochs))


def step_decay(
    optimizer: Optimizer, gamma: float, milestones: list[int] | None = None, every: int | None = None
) -> LRScheduler:
    """Hou et al.: multiply by ``gamma`` at each epoch in ``milestones`` (MNIST, SVHN: 15 and 25), or
    every ``every`` epochs (CIFAR-10: every 15; docs/papers.md B.2). Exactly one of the two is set."""
    if (milestones is None) == (every is None):
        raise UserError(
            "the step schedule needs exactly one of recipe.milestones (epochs) and recipe.every "
            f"(a period), got milestones={milestones} and every={every}."
        )
    if every is not None:
        require_positive(every, "recipe.every")
        return StepLR(optimizer, step_size=every, gamma=gamma)
    return MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)


def _delayed_factor(epoch: int, gamma: float, start: int) -> float:
    return gamma ** max(0, epoch - start)


def delayed_exponential(optimizer: Optimizer, gamma: float, start: int) -> LRScheduler:
    """Hou et al. (LSTM): ``lr <- gamma * lr`` at the end of every epoch after the first ``start``.

    After ``k`` epochs the learning rate is ``lr_0 * gamma ** max(0, k - start)`` (docs/papers.md B.3:
    0.002, times 0.98 after every epoch once 10 have passed).
    """
    if not 0 < gamma <= 1 or start < 0:
        raise UserError(f"the schedule needs 0 < gamma <= 1 and start >= 0, got {gamma} and {start}.")
    return LambdaLR(optimizer, partial(_delayed_factor, gamma=gamma, start=start))


def _warmup_then(epoch: int, epochs: int, warmup: int, decay: str) -> float:
    if epoch < warmup:  # linear warm-up: lr_0 / warmup, 2 lr_0 / warmup, ..., lr_0 at epoch `warmup`
        return (epoch + 1) / (warmup + 1)
    progress = min(1.0, (epoch - warmup) / max(1, epochs - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress


def _check_decay(epochs: int, warmup: int) -> None:
    require_positive(epochs, "trainer.max_epochs")
    if not 0 <= warmup < epochs:
        raise UserError(f"recipe.warmup_epochs must be in [0, max_epochs), got {warmup} of {epochs}.")


def cosine(optimizer: Optimizer, epochs: int, warmup: int = 0) -> LRScheduler:
    """``lr_0 (1 + cos(pi t / T)) / 2`` after ``warmup`` epochs of linear warm-up, with ``t`` the
    epochs since the warm-up and ``T = epochs - warmup``: 0 after the last epoch (IR-Net's CIFAR
    code: ``CosineAnnealingLR(T_max=epochs, eta_min=0)``, stepped per epoch, no warm-up)."""
    _check_decay(epochs, warmup)
    return LambdaLR(optimizer, partial(_warmup_then, epochs=epochs, warmup=warmup, decay="cosine"))


def _shifted(epoch: int, shift: int, factor) -> float:
    return factor(epoch + shift)


def linear_to_zero(
    optimizer: Optimizer, epochs: int, warmup: int = 0, step_before_epoch: bool = False
) -> LRScheduler:
    """``lr_0 (1 - t / T)`` after ``warmup`` epochs of linear warm-up: 0 after the last epoch.

    ``step_before_epoch``: as ReActNet's code (``LambdaLR(lambda step: 1 - step / epochs)`` stepped
    at the start of every epoch), epoch ``e`` trains at ``lr_0 (1 - (e + 1) / T)``, the last one at 0.
    """
    _check_decay(epochs, warmup)
    if step_before_epoch and epochs - warmup < 2:
        raise UserError(
            f"recipe.step_before_epoch=true trains the last epoch at lr 0, and this run has "
            f"{epochs - warmup} epoch(s) after its warm-up: it would learn nothing. Give it "
            "trainer.max_epochs >= 2 (after recipe.warmup_epochs) or recipe.step_before_epoch=false."
        )
    factor = partial(_warmup_then, epochs=epochs, warmup=warmup, decay="linear")
    return LambdaLR(optimizer, partial(_shifted, shift=int(step_before_epoch), factor=factor))


def constant(optimizer: Optimizer) -> None:
    """No schedule."""
    return None
