"""fewmult's layers in any model and any training loop: one call binds them to the optimizer, one
tells them the epoch.

fewmult's own trainer calls :func:`bind_optimizer` and :func:`set_epoch` too, so a plain PyTorch
loop trains a quantized layer exactly as ``python -m fewmult.train`` does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from fewmult.errors import UserError
from fewmult.nn.layers import named_quant_layers
from fewmult.quant.curvature import AdamSecondMoment


def bind_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> RemovableHandle:
    """Make ``optimizer`` train ``model``'s quantized layers as the papers do.

    * Quantizers that read optimizer state (LAB) read ``optimizer``'s: Adam's second moment of
      their own weight (an optimizer other than Adam is refused, as is one that does not update
      that weight: LAB would silently be BWN).
    * After every ``optimizer.step()`` each quantized layer's latent weight is clipped to its
      quantizer's bound (both papers), through an optimizer step hook.

    Call it once, after creating the optimizer. Returns the hook's handle (``remove()`` stops the
    clipping).
    """
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    clipped = []
    for name, layer in named_quant_layers(model):
        quantizer = layer.weight_quantizer
        if quantizer is None:
            continue
        if quantizer.needs_optimizer_state:
            if id(layer.weight) not in updated:
                raise UserError(
                    f"layer {name or type(layer).__name__!r} reads its optimizer's state, but the "
                    "optimizer does not update its weight; create the optimizer over model.parameters()."
                )
            quantizer.bind_curvature(AdamSecondMoment(optimizer, layer.weight))
        if quantizer.clip_bound is not None:
            clipped.append((quantizer, layer.weight))

    def clip(_optimizer, _args, _kwargs) -> None:
        for quantizer, weight in clipped:
            quantizer.clip_(weight)

    return optimizer.register_step_post_hook(clip)


def set_epoch(model: nn.Module, epoch: int, epochs: int) -> int:
    """Tell every part of ``model`` whose pseudo-gradient follows training progress (IR-Net's EDE:
    ``fewmult.quant.irnet``) that ``epoch`` (from 0) of ``epochs`` begins. Call it before each epoch,
    and after resuming inside one. Returns how many parts were told (0: the model has none)."""
    scheduled = [m for m in model.modules() if callable(getattr(type(m), "set_epoch", None))]
    if scheduled and not (isinstance(epochs, int) and epochs > 0):
        raise UserError(
            f"{type(scheduled[0]).__name__}'s gradient follows the share of training done, which needs "
            f"a number of epochs; got {epochs!r}: set trainer.max_epochs."
        )
    for m in scheduled:
        m.set_epoch(epoch, epochs)
    return len(scheduled)
