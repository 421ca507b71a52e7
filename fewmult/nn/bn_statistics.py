"""Batch-norm statistics re-estimated from data before an evaluation (Lin et al.'s code, docs/papers.md D.6).

Two forms, both replacing every BN layer's running mean and variance by averages of minibatch
statistics over given sets of batches (training then validation, computed with the weights the
evaluation uses: the rest of the model stays in eval mode):

* ``batch_stats`` (the clean form): each layer normalizes with its own batch's statistics and
  the running values become the plain average of the batch means and of the unbiased batch
  variances over all batches. The batches must be random samples (shuffled): batches of one
  class average to the within-class variance only.
* ``authors_code``: Lin et al.'s ``Trainer.set_mean_var`` with ``BN_fast_eval=True`` (their
  ``trainer.py`` and ``layer.py``). For each set of batches in turn, its first batch is passed
  once with every layer normalizing with the batch's statistics, then every batch (the first one
  again) with every layer normalizing with the running estimate as it stood before that batch.
  After each pass the estimate becomes the average of all batch means and of all biased batch
  variances seen so far, counting from the start of the first set.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fewmult.config import BN_REESTIMATE_FORMS

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def reestimate_batch_norm(model: nn.Module, batch_sets: Iterable[Batches], form: str) -> None:
    """Replace the running statistics of ``model``'s BN layers, in the form ``form``."""
    if form not in BN_REESTIMATE_FORMS:
        raise ValueError(f"unknown BN re-estimation form {form!r}; known: {', '.join(BN_REESTIMATE_FORMS)}")
    norms = batch_norms(model)
    momenta = [bn.momentum for bn in norms]
    try:
        if form == "batch_stats":
            _batch_stats(model, norms, batch_sets)
        else:
            _authors_code(model, norms, batch_sets)
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
            bn.eval()


def _batch_stats(model: nn.Module, norms: list[_BatchNorm], batch_sets: Iterable[Batches]) -> None:
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # PyTorch's cumulative average of the batch statistics
        bn.train()
    for batches in batch_sets:
        for x, _ in batches:
            model(x)


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of a BN layer's input (Theano's ``T.var``)."""
    dims = [0, *range(2, x.dim())]
    x = x.float()
    return x.mean(dims), x.var(dims, unbiased=False)


def _authors_code(model: nn.Module, norms: list[_BatchNorm], batch_sets: Iterable[Batches]) -> None:
    seen: dict[_BatchNorm, tuple[torch.Tensor, torch.Tensor]] = {}
    sums = {bn: (torch.zeros_like(bn.running_mean), torch.zeros_like(bn.running_var)) for bn in norms}
    hooks = [
        bn.register_forward_pre_hook(lambda m, args: seen.__setitem__(m, _moments(args[0]))) for bn in norms
    ]
    count = 0

    def accumulate(x: torch.Tensor, batch_statistics: bool) -> None:
        nonlocal count
        for bn in norms:
            bn.train(batch_statistics)  # eval: normalize with the estimate before this batch
        model(x)
        count += 1
        for bn in norms:
            mean_sum, var_sum = sums[bn]
            mean, var = seen[bn]
            mean_sum += mean
            var_sum += var
            bn.running_mean.copy_(mean_sum / count)  # overwrites what train mode wrote there
            bn.running_var.copy_(var_sum / count)

    try:
        for batches in batch_sets:
            for i, (x, _) in enumerate(batches):
                if i == 0:
                    accumulate(x, batch_statistics=True)
                accumulate(x, batch_statistics=False)
    finally:
        for hook in hooks:
            hook.remove()
