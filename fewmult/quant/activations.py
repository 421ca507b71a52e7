"""Binary activations for the weight-and-activation methods (LAB2, BNN, XNOR)."""

from __future__ import annotations

import torch
from torch import nn

from fewmult.quant.base import sign_plus


class _SignHardTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return sign_plus(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1)


class SignActivation(nn.Module):
    """``sign(x)`` with sign(0) = +1; pseudo-gradient of hard tanh: ``dL/dx = dL/dy * 1{|x| <= 1}``.

    The authors' ``binary_tanh_unit`` (Hou et al. 2017 code, docs/papers.md A.8), also BNN's activation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignHardTanh.apply(x)
