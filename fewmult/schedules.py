"""The papers' learning-rate schedules, stepped once per epoch."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ExponentialLR, LRScheduler, MultiStepLR, StepLR

from fewmult.errors import UserError


def exponential_decay(optimizer: Optimizer, lr_final: float, epochs: int) -> LRScheduler:
    """Lin et al.: ``lr <- lr * (lr_final / lr_0) ** (1 / epochs)`` after every epoch.

    The learning rate falls geometrically from ``lr_0`` to ``lr_final`` over ``epochs`` epochs.
    """
    lr0 = optimizer.param_groups[0]["lr"]
    if lr_final <= 0 or epochs <= 0:
        raise UserError(f"optim.schedule needs lr_final > 0 and epochs > 0, got {lr_final} and {epochs}.")
    return ExponentialLR(optimizer, gamma=(lr_final / lr0) ** (1.0 / epochs))


def step_decay(optimizer: Optimizer, milestones: list[int], gamma: float) -> LRScheduler:
    """Hou et al. (MNIST, SVHN): multiply by ``gamma`` at each epoch in ``milestones``."""
    return MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)


def periodic_decay(optimizer: Optimizer, every: int, gamma: float) -> LRScheduler:
    """Hou et al. (CIFAR-10): multiply by ``gamma`` every ``every`` epochs."""
    return StepLR(optimizer, step_size=every, gamma=gamma)


def constant(optimizer: Optimizer) -> None:
    """No schedule."""
    return None
