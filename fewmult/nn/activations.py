"""Real-valued activations of binary networks (after the real-valued additions, not binarizers)."""

from __future__ import annotations

import torch
from torch import nn


class _ShiftedPReLU(torch.autograd.Function):
    """``PReLU_beta(x - gamma) + zeta`` with per-channel ``gamma``, ``beta``, ``zeta`` of shape
    (1, C, 1, ...), as one autograd node: the three channel gradients are plain reductions of what
    PReLU's backward kernel returns, and the output shift is added in place."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, zeta: torch.Tensor
    ) -> torch.Tensor:
        shifted = x - gamma
        ctx.save_for_backward(shifted, beta)
        return torch.nn.functional.prelu(shifted, beta.reshape(-1)).add_(zeta)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shifted, beta = ctx.saved_tensors
        grad_x, grad_beta = torch.ops.aten._prelu_kernel_backward(grad, shifted, beta)
        others = [d for d in range(grad.dim()) if d != 1]

        def per_channel(t: torch.Tensor) -> torch.Tensor:
            return t.sum(dim=others, keepdim=True)

        return grad_x, per_channel(grad_x).neg_(), per_channel(grad_beta), per_channel(grad)


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
