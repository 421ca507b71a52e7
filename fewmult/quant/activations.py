"""Activation quantizers: the binary activations of LAB2, BNN, XNOR and the modern 1/1 networks.

Registered by name (``create_activation("approx_sign", channels=64)``, ``list_activations()``).
Each class states its forward formula, its pseudo-gradient and the paper it comes from; sign(0) = +1
everywhere. Every one is built with ``channels``, the size of dim 1 of what it reads, so that a
model builds any of them the same way; only those with per-channel parameters (``rsign``) use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from fewmult.errors import UserError
from fewmult.quant.base import sign_plus
from fewmult.quant.registry import register_activation


class _SignWithSurrogate(torch.autograd.Function):
    """``sign(x)`` forward; backward ``dL/dy * surrogate(x)``, the activation's pseudo-gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return sign_plus(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return ctx.surrogate(x).mul_(grad), None


class _ShiftedSign(torch.autograd.Function):
    """``sign(x - t)`` with ``t`` broadcast from shape (1, C, 1, ...); backward ApproxSign's
    pseudo-gradient at ``x - t`` for ``x``, and its negative summed over all but dim 1 for ``t``.

    One autograd node with the pseudo-gradient written in place: half the time of the subtraction,
    sign and broadcast reduction left to autograd (CPU, 32 x 128 x 16 x 16: 2.1 vs 4.0 ms forward +
    backward, interleaved medians).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        shifted = x - threshold
        ctx.save_for_backward(shifted)
        return sign_plus(shifted)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (shifted,) = ctx.saved_tensors
        grad_x = _approx_sign_gradient(shifted).mul_(grad)
        others = [d for d in range(grad_x.dim()) if d != 1]
        return grad_x, grad_x.sum(dim=others, keepdim=True).neg_()


# Pseudo-gradients, each a new tensor written in place (one allocation: these run on every
# activation of the network, twice per step)
def _hard_tanh_gradient(x: torch.Tensor) -> torch.Tensor:
    return (x.abs() <= 1).to(x.dtype)


def _approx_sign_gradient(x: torch.Tensor) -> torch.Tensor:
    return x.abs().mul_(-2).add_(2).clamp_(min=0)


class ActivationQuantizer(nn.Module):
    """Base class: ``bits`` per activation (1 binary, 32 real) for counting and ``results.json``."""

    bits: ClassVar[int] = 1

    def __init__(self, channels: int | None = None) -> None:
        super().__init__()


@register_activation("sign")
class SignActivation(ActivationQuantizer):
    """``sign(x)`` with sign(0) = +1; pseudo-gradient of hard tanh: ``dL/dx = dL/dy * 1{|x| <= 1}``.

    Hubara et al.'s straight-through estimator (BNN, arXiv 1602.02830); the authors'
    ``binary_tanh_unit`` (Hou et al. 2017 code, docs/papers.md A.8).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignWithSurrogate.apply(x, _hard_tanh_gradient)


@register_activation("approx_sign")
class ApproxSign(SignActivation):
    """``sign(x)``; pseudo-gradient of Bi-Real Net's piecewise quadratic ApproxSign
    (Liu et al. 2018, arXiv 1808.00278, eq. 5): ``dF/dx = 2 + 2x`` on [-1, 0), ``2 - 2x`` on [0, 1),
    0 elsewhere, i.e. ``max(0, 2 - 2|x|)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignWithSurrogate.apply(x, _approx_sign_gradient)


@register_activation("rsign")
class RSign(ActivationQuantizer):
    """ReActNet's RSign (Liu et al. 2020, arXiv 2003.03488): ``sign(x - alpha_c)`` with a
    learnable threshold ``alpha_c`` per channel, initialized to 0 (docs/papers.md G.2).

    Pseudo-gradient: ApproxSign's, ``dL/dx = dL/dy * max(0, 2 - 2|x - alpha_c|)``, and
    ``dL/dalpha_c`` its negative summed over the channel's entries (the authors' code: a learnable
    bias before Bi-Real's binary activation; the paper's sign(0) = -1 tie is measure zero).
    """

    def __init__(self, channels: int | None = None) -> None:
        super().__init__()
        if not channels:
            raise UserError("rsign learns one threshold per channel: build it with channels=C.")
        self.threshold = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threshold = self.threshold.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))
        return _ShiftedSign.apply(x, threshold)


@register_activation("identity")
class Identity(ActivationQuantizer):
    """Real-valued activations (the 1/32 rows): ``y = x``, gradient 1."""

    bits = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
