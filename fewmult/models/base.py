"""What every fewmult model offers the rest of the package: the protocol PaperNet and CharLSTM share.

``fewmult.build.build_model`` constructs a model as
``Model(input_shape=..., num_classes=..., weight_quantizer=..., activation=..., qbp_dense=...,
qbp_conv=..., **architecture)`` (the architecture keys come from ``conf/model/``), so a new model
takes these arguments, says what it reads (:attr:`QuantModel.input_kind`) and lists its layer uses
for ``fewmult.count``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from fewmult.nn.layers import QuantConv2d, QuantLinear
from fewmult.quant.fusion import eager_fusion

# builds a module: weight quantizers take no argument, activations ``channels=`` (what they read)
ModuleFactory = Callable[..., nn.Module]

INPUT_KINDS = ("images", "tokens")  # float images (N, C, H, W); int64 token codes (N, T)
_BatchNorm = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class LayerUse:
    """What one quantizable layer does per example: multiply-accumulates with full-precision
    weights (0 for a lookup of one-hot inputs), output units, and units batch-normalized after it."""

    name: str
    layer: nn.Module
    macs: int
    units: int
    bn_units: int = 0


@runtime_checkable
class QuantModel(Protocol):
    """A model built from the configs: ``name`` for results, ``input_kind`` for the data check."""

    input_kind: ClassVar[str]
    name: str

    def layer_uses(self, input_shape: tuple[int, ...]) -> list[LayerUse]:
        """Per example of ``input_shape``: every quantizable layer's use (``fewmult.count``)."""
        ...


def input_kind_of(model_class: type) -> str:
    """What a model class reads; a class outside the protocol is taken to read images."""
    return getattr(model_class, "input_kind", "images")


def _forward_observed(model: nn.Module, x: torch.Tensor, hooks: list) -> None:
    """One forward pass of ``x`` in eval mode without gradients, with ``hooks`` (handles) removed
    after it and the model's training mode restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), eager_fusion():
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()


def _quantizable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))]


def output_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, torch.Size]:
    """The output shape (one example) of every BN and quantizable layer, from one forward pass."""
    shapes: dict[nn.Module, torch.Size] = {}
    modules = [*_quantizable(model), *(m for m in model.modules() if isinstance(m, _BatchNorm))]
    hooks = [
        m.register_forward_hook(lambda mod, _inp, out: shapes.__setitem__(mod, out.shape[1:]))
        for m in modules
    ]
    _forward_observed(model, torch.zeros(1, *input_shape), hooks)
    return shapes


def binary_input_layers(model: nn.Module, input_shape: tuple[int, ...]) -> set[nn.Module]:
    """The quantizable layers that read only +-1 in a forward pass of random inputs: those a sign
    activation feeds, whose products with binary weights are XNOR + popcount (``fewmult.count``'s
    BOPs). A model of token codes has none (its first layer is a lookup)."""
    if input_kind_of(type(model)) != "images":
        return set()
    binary: set[nn.Module] = set()

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if inputs[0].abs().eq(1).all():
            binary.add(module)

    hooks = [m.register_forward_pre_hook(record) for m in _quantizable(model)]
    x = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))
    _forward_observed(model, x, hooks)
    return binary


def feedforward_uses(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerUse]:
    """Layer uses of a feed-forward net of blocks (its children), from one forward pass's shapes.

    A block's BN units are counted with every quantizable layer in it."""
    shapes = output_shapes(model, input_shape)
    uses = []
    for block_name, block in model.named_children():
        norms = [m for m in block.modules() if isinstance(m, _BatchNorm)]
        bn_units = sum(int(torch.Size(shapes[n]).numel()) for n in norms)
        for layer in (m for m in block.modules() if isinstance(m, (QuantLinear, QuantConv2d))):
            out = shapes[layer]
            units = int(torch.Size(out).numel())
            macs = layer.weight.numel() * (units // out[0])  # weights x output positions
            uses.append(LayerUse(block_name, layer, macs, units, bn_units))
    return uses
