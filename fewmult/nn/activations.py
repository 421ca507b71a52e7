"""Real-valued activations of binary networks (after the real-valued additions, not binarizers)."""

from __future__ import annotations

import torch
from torch import nn


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
        h = self.prelu(x - self.shift_in.to(x.dtype).view(shape))
        return h + self.shift_out.to(h.dtype).view(shape)
