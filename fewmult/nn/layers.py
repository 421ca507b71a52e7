"""Linear and convolution layers with a per-layer weight quantizer.

The registered ``weight`` parameter is always the latent, real-valued weight that the optimizer
updates and the checkpoint stores. ``forward`` computes with ``weight_quantizer(weight)``, the
weight the papers use in forward and backward propagation. Each layer owns its quantizer
instance, so quantizers with per-layer state (LAB's scale, RNG streams) never share it.

``fan_in`` / ``fan_out`` follow Lin et al.'s code (papers.md A.0): a convolution followed by
max-pooling has ``fan_out = C_out * k * k / pool_area``. They fix the Glorot-uniform
initialization and the weight scale W0 = sqrt(1.5 / (fan_in + fan_out)) of the binary methods.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class QuantMixin:
    """Shared by :class:`QuantLinear` and :class:`QuantConv2d`."""

    weight: nn.Parameter
    weight_quantizer: nn.Module | None
    fan_in: int
    fan_out: int

    @property
    def w0(self) -> float:
        """Lin et al.'s weight scale: half the Glorot-uniform bound."""
        return math.sqrt(1.5 / (self.fan_in + self.fan_out))

    def reset_parameters_glorot(self) -> None:
        """Glorot uniform, U(-2 W0, 2 W0), biases zero (both papers)."""
        with torch.no_grad():
            self.weight.uniform_(-2 * self.w0, 2 * self.w0)
            if getattr(self, "bias", None) is not None:
                self.bias.zero_()

    def effective_weight(self) -> torch.Tensor:
        """The weight used in forward and backward propagation."""
        if self.weight_quantizer is None:
            return self.weight
        return self.weight_quantizer(self.weight)


class QuantLinear(QuantMixin, nn.Linear):
    """``y = x W_q^T + b`` with ``W_q = weight_quantizer(W)``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_quantizer: nn.Module | None = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self.fan_in, self.fan_out = in_features, out_features
        self.weight_quantizer = weight_quantizer
        self.reset_parameters_glorot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class QuantConv2d(QuantMixin, nn.Conv2d):
    """2-D convolution with ``W_q = weight_quantizer(W)``; ``pool_area`` only enters ``fan_out``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        bias: bool = True,
        pool_area: int = 1,
        weight_quantizer: nn.Module | None = None,
    ) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        k2 = kernel_size * kernel_size
        self.fan_in, self.fan_out = in_channels * k2, out_channels * k2 // pool_area
        self.weight_quantizer = weight_quantizer
        self.reset_parameters_glorot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


def quant_layers(model: nn.Module) -> Iterator[QuantLinear | QuantConv2d]:
    """Every quantizable layer of ``model``, in registration order."""
    for module in model.modules():
        if isinstance(module, QuantMixin):
            yield module
