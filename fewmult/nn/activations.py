"""Real-valued activations of binary networks (after the real-valued additions, not binarizers)."""

from __future__ import annotations

import torch
from torch import nn

from fewmult.quant.activations import channel_rows, channel_sum
from fewmult.quant.fusion import fused_or_eager


def _rprelu(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    shifted = x - gamma
    return torch.where(shifted > 0, shifted, beta * shifted) + zeta


def _rprelu_backward(
    x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    shifted = x - gamma
    positive = shifted > 0
    grad_x = torch.where(positive, grad, beta * grad)
    grad_beta = channel_sum(torch.where(positive, 0.0, grad * shifted))
    return grad_x, -channel_sum(grad_x), grad_beta, channel_sum(grad)


class _ShiftedPReLU(torch.autograd.Function):
    """``PReLU_beta(x - gamma) + zeta`` with per-channel ``gamma``, ``beta``, ``zeta`` of shape
    (1, C, 1, ...): forward one fused loop, backward one loop and its channel sums (under
    torch.compile; eager where it cannot compile), instead of six autograd nodes."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, zeta: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(x, gamma, beta)
        return fused_or_eager(_rprelu, *channel_rows(x, gamma, beta, zeta)).view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, gamma, beta = ctx.saved_tensors
        grads = fused_or_eager(_rprelu_backward, *channel_rows(x, gamma, beta, grad))
        return tuple(g.view_as(like) for g, like in zip(grads, (x, gamma, beta, gamma), strict=True))


class RPReLU(nn.Module):
    """ReActNet's RPReLU (Liu et al. 2020, arXiv 2003.03488), per channel ``c``:
    ``y = PReLU_c(x - gamma_c) + zeta_c``, i.e. ``x - gamma_c + zeta_c`` where ``x > gamma_c`` and
    ``beta_c (x - gamma_c) + zeta_c`` elsewhere; ``gamma = zeta = 0`` and ``beta = 0.25`` at the
    start (the authors' code: a learnable bias, ``nn.PReLU(C)``, a learnable bias). Gradients are
    the exact ones of that piecewise-linear function (docs/papers.md G.2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))  # gamma
        self.prelu = nn.PReLU(channels, init=0.25)
        self.shift_out = nn.Parameter(torch.zeros(channels))  # zeta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *([1] * (x.dim() - 2)))
        gamma, beta, zeta = (
            p.to(x.dtype).view(shape) for p in (self.shift_in, self.prelu.weight, self.shift_out)
        )
        return _ShiftedPReLU.apply(x, gamma, beta, zeta)


class HardTanh(nn.Hardtanh):
    """``clamp(x, -1, 1)``: IR-Net's real-valued activation after every residual addition (its
    authors' CIFAR ResNets, docs/papers.md G.6). Takes ``channels`` as every residual activation
    does, and has no parameters."""

    def __init__(self, channels: int | None = None) -> None:
        super().__init__()
