"""Layers whose weights pass through a pluggable quantizer, and the papers' losses."""

from fewmult.nn.layers import QuantConv2d, QuantLinear, quant_layers
from fewmult.nn.losses import SquaredHingeLoss

__all__ = ["QuantConv2d", "QuantLinear", "SquaredHingeLoss", "quant_layers"]
