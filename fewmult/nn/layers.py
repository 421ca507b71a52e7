"""Linear and convolution layers with a per-layer weight quantizer.

The registered ``weight`` parameter is always the latent, real-valued weight that the optimizer
updates and the checkpoint stores. ``forward`` computes with ``weight_quantizer(weight)``, the
weight the papers use in forward and backward propagation. Each layer owns its quantizer
instance, so quantizers with per-layer state (LAB's scale, RNG streams) never share it.

``fan_in`` / ``fan_out`` follow Lin et al.'s code (docs/papers.md A.0): a convolution followed by
max-pooling has ``fan_out = C_out * k * k / pool_area``. They fix the Glorot-uniform
initialization and the weight scale W0 = sqrt(1.5 / (fan_in + fan_out)) of the binary methods.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fewmult.qbp import ErrorAfterBN, QBPConv2dFunction, QBPLinearFunction, QBPSettings
from fewmult.quant.rng import RandomStream


class QuantMixin:
    """Shared by :class:`QuantLinear` and :class:`QuantConv2d`."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_quantizer: nn.Module | None
    qbp: QBPSettings | None
    fan_in: int
    fan_out: int

    @property
    def w0(self) -> float:
        """Lin et al.'s weight scale: half the Glorot-uniform bound."""
        return math.sqrt(1.5 / (self.fan_in + self.fan_out))

    def _attach(
        self, fan_in: int, fan_out: int, weight_quantizer: nn.Module | None, qbp: QBPSettings | None
    ) -> None:
        """Give the quantizer its layer (for W0), set up QBP, initialize as the quantizer's paper does."""
        self.fan_in, self.fan_out = fan_in, fan_out
        self.qbp = qbp
        self.qbp_stream = RandomStream() if qbp is not None else None
        # inputs whose exponent QBP clipped (raised to exp_min, lowered to exp_max) and inputs seen,
        # summed until fewmult.diagnostics reads and resets them; not saved with the model
        self.register_buffer(
            "qbp_clipped", torch.zeros(2, dtype=torch.int64) if qbp is not None else None, persistent=False
        )
        self.qbp_inputs = 0
        self.weight_quantizer = weight_quantizer
        gain = 2.0  # full precision: Glorot uniform
        if weight_quantizer is not None:
            weight_quantizer.setup(self)
            gain = weight_quantizer.init_gain
        with torch.no_grad():
            self.weight.uniform_(-gain * self.w0, gain * self.w0)  # gain 2: Glorot uniform
            if self.bias is not None:
                self.bias.zero_()

    def count_qbp_clipping(self, x: torch.Tensor) -> None:
        """Add ``x``'s clipped exponents to :attr:`qbp_clipped` (None: not counted, ``diagnostics=false``)."""
        if self.qbp_clipped is not None:
            self.qbp_clipped += self.qbp.clipped_counts(x)
            self.qbp_inputs += x.numel()

    def effective_weight(self) -> torch.Tensor:
        """The weight used in forward and backward propagation."""
        if self.weight_quantizer is None:
            return self.weight
        return self.weight_quantizer(self.weight)


class QuantLinear(QuantMixin, nn.Linear):
    """``y = x W_q^T + b`` with ``W_q = weight_quantizer(W)``; ``qbp`` switches the weight gradient to QBP."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_quantizer: nn.Module | None = None,
        qbp: QBPSettings | None = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._attach(in_features, out_features, weight_quantizer, qbp)
        # with qbp.error="after_bn", the model places a TapError after this layer's BN that fills it
        self.error_after_bn = ErrorAfterBN() if qbp is not None and qbp.error == "after_bn" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qbp is not None and self.training:
            key = self.qbp_stream.next_key()
            self.count_qbp_clipping(x)
            box = self.error_after_bn.open() if self.error_after_bn is not None else None
            return QBPLinearFunction.apply(x, self.effective_weight(), self.bias, self.qbp, key, box)
        return F.linear(x, self.effective_weight(), self.bias)


class QuantConv2d(QuantMixin, nn.Conv2d):
    """2-D convolution with ``W_q = weight_quantizer(W)`` (``qbp`` as in :class:`QuantLinear`).

    Takes ``nn.Conv2d``'s geometry (kernel, stride, padding, dilation, groups), so any
    convolutional net (a ResNet's strided and grouped convolutions) can be built from it.
    ``pool_area`` (of the max-pooling that follows) only enters ``fan_out``; with groups, the
    fan-in is that of one group, as in PyTorch's own initialization.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        pool_area: int = 1,
        weight_quantizer: nn.Module | None = None,
        qbp: QBPSettings | None = None,
    ) -> None:
        nn.Conv2d.__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias
        )
        k2 = math.prod(self.kernel_size)
        self._attach(in_channels // groups * k2, out_channels * k2 // pool_area, weight_quantizer, qbp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qbp is not None and self.training:
            key = self.qbp_stream.next_key()
            self.count_qbp_clipping(x)
            geometry = (self.stride, self.padding, self.dilation, self.groups)
            return QBPConv2dFunction.apply(x, self.effective_weight(), self.bias, geometry, self.qbp, key)
        return self._conv_forward(x, self.effective_weight(), self.bias)


def named_quant_layers(model: nn.Module) -> Iterator[tuple[str, QuantLinear | QuantConv2d]]:
    """Every quantizable layer of ``model`` with its module name, in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, QuantMixin):
            yield name, module


def quant_layers(model: nn.Module) -> Iterator[QuantLinear | QuantConv2d]:
    """Every quantizable layer of ``model``, in registration order."""
    for _, layer in named_quant_layers(model):
        yield layer
