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
from fewmult.quant.fusion import fused_or_eager
from fewmult.quant.registry import register_activation


def _hard_tanh_backward(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return torch.where(x.abs() <= 1, grad, 0.0)


def _approx_sign_backward(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return grad * (2 - 2 * x.abs()).clamp(min=0)


def channel_rows(x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """``x`` (N, C, ...) as (N, C, L) and each of ``others`` as (1, C, 1) (per-channel parameters) or
    (N, C, L) (like ``x``): long rows for the fused loops (:func:`fewmult.quant.fusion.run_fused`)."""
    n, c = x.shape[0], x.shape[1]
    return [
        x.reshape(n, c, -1),
        *(o.reshape(1, c, 1) if o.numel() == c else o.reshape(n, c, -1) for o in others),
    ]


def channel_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dim but 1 (the channels), kept for broadcasting."""
    return t.sum(dim=[d for d in range(t.dim()) if d != 1], keepdim=True)


def _shifted_sign_backward(
    x: torch.Tensor, threshold: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = _approx_sign_backward(x - threshold, grad)
    return grad_x, -channel_sum(grad_x)


# Every forward and backward below is one fused loop under torch.compile (fused_or_eager, the same
# numbers either way): a binary activation runs on every activation of the network, twice a step,
# and in eager each of its elementwise operations is a pass over memory of its own (measured on the
# CIFAR ResNet-18, BENCHMARKS.md).
class _SignWithSurrogate(torch.autograd.Function):
    """``sign(x)`` forward; backward ``backward_kernel(x, dL/dy, *params)``, the pseudo-gradient
    (``params``: constant tensors it reads, e.g. IR-Net's ``t``, in ``x``'s dtype)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, backward_kernel: Callable, *params: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, *params)
        ctx.backward_kernel = backward_kernel
        return fused_or_eager(sign_plus, x.reshape(-1)).view_as(x)  # one long row: run_fused

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        grad_x = fused_or_eager(ctx.backward_kernel, x.reshape(-1), grad.reshape(-1), *params).view_as(x)
        return grad_x, None, *(None for _ in params)


class _ShiftedSign(torch.autograd.Function):
    """``sign(x - t)`` with ``t`` broadcast from shape (1, C, 1, ...); backward ApproxSign's
    pseudo-gradient at ``x - t`` for ``x``, and its negative summed over all but dim 1 for ``t``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, threshold)
        return fused_or_eager(_shifted_sign, *channel_rows(x, threshold)).view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, threshold = ctx.saved_tensors
        rows, t, g = channel_rows(x, threshold, grad)
        grad_x, grad_t = fused_or_eager(_shifted_sign_backward, rows, t, g)
        return grad_x.view_as(x), grad_t.view_as(threshold)


def _shifted_sign(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return sign_plus(x - threshold)


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
        return _SignWithSurrogate.apply(x, _hard_tanh_backward)


@register_activation("approx_sign")
class ApproxSign(SignActivation):
    """``sign(x)``; pseudo-gradient of Bi-Real Net's piecewise quadratic ApproxSign
    (Liu et al. 2018, arXiv 1808.00278, eq. 5): ``dF/dx = 2 + 2x`` on [-1, 0), ``2 - 2x`` on [0, 1),
    0 elsewhere, i.e. ``max(0, 2 - 2|x|)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignWithSurrogate.apply(x, _approx_sign_backward)


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
