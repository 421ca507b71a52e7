"""Layers whose weights pass through a pluggable quantizer, the papers' losses, and the one call that
binds the layers to an optimizer in any training loop (:func:`bind_optimizer`); ReActNet's RPReLU and
IR-Net's hard tanh after residual additions."""

from fewmult.nn.activations import HardTanh, RPReLU
from fewmult.nn.layers import QuantConv2d, QuantLinear, quant_layers
from fewmult.nn.losses import SquaredHingeLoss
from fewmult.nn.recurrent import QuantLSTM
from fewmult.nn.training import bind_optimizer, set_epoch

__all__ = [
    "HardTanh",
    "QuantConv2d",
    "QuantLSTM",
    "QuantLinear",
    "RPReLU",
    "SquaredHingeLoss",
    "bind_optimizer",
    "quant_layers",
    "set_epoch",
]
