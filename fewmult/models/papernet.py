"""Networks written in the papers' notation, e.g. ``128C3-128C3-MP2-256C2-...-1024FC``.

Tokens: ``NCk`` a k x k convolution with N maps (``KCk``, ``2KCk``: multiples of the width K of
Hou et al.'s SVHN sweep), ``MPp`` p x p max-pooling, ``NFC`` a dense layer with N units. The
output layer (``num_classes`` units) is appended. Every layer is followed by batch norm, as in
both papers, and hidden layers by the activation:

    conv -> [max-pool] -> BN -> activation      dense -> BN -> activation      out -> BN

Pooling sits between a convolution and its BN, as in both authors' code. With batch norm the
layers carry no bias (BN's shift is the bias: Lin et al. add it after BN, Hou et al. before, where
BN cancels it).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from itertools import pairwise

from torch import nn

from fewmult.errors import UserError
from fewmult.models.base import LayerUse, ModuleFactory, feedforward_uses
from fewmult.nn.layers import QuantConv2d, QuantLinear
from fewmult.qbp import QBPSettings, TapError


@dataclass(frozen=True)
class LayerSpec:
    kind: str  # "conv" | "fc"
    units: int
    kernel: int = 0
    pool: int = 1


_CONV = re.compile(r"^(\d*)(K?)C(\d+)$")
_POOL = re.compile(r"^MP(\d+)$")
_FC = re.compile(r"^(\d+)FC$")


def parse_arch(arch: str, width: int | None = None) -> list[LayerSpec]:
    """Parse the papers' notation into layer specs (pooling folded into the preceding conv)."""
    layers: list[LayerSpec] = []
    for token in [t.strip() for t in arch.split("-") if t.strip()]:
        if m := _CONV.match(token):
            count, uses_k, kernel = m.groups()
            if uses_k and width is None:
                raise UserError(f"model.arch uses K ({token}) but model.width is not set.")
            units = (int(count) if count else 1) * (width if uses_k else 1)
            layers.append(LayerSpec("conv", units, int(kernel)))
        elif m := _POOL.match(token):
            if not layers or layers[-1].kind != "conv" or layers[-1].pool != 1:
                raise UserError(f"model.arch: {token} must follow a convolution ({arch}).")
            last = layers.pop()
            layers.append(LayerSpec("conv", last.units, last.kernel, int(m.group(1))))
        elif m := _FC.match(token):
            layers.append(LayerSpec("fc", int(m.group(1))))
        else:
            raise UserError(
                f"model.arch: cannot read {token!r} in {arch!r}; use NCk, KCk, MPp or NFC tokens."
            )
    if any(a.kind == "fc" and b.kind == "conv" for a, b in pairwise(layers)):
        raise UserError(f"model.arch: convolutions cannot follow dense layers ({arch}).")
    return layers


class PaperNet(nn.Sequential):
    """A feed-forward classifier from the papers' notation.

    Args:
        arch: the hidden layers, e.g. ``"1024FC-1024FC-1024FC"`` (Lin et al.'s MNIST MLP).
        input_shape: (C, H, W) of one example.
        num_classes: units of the output layer.
        width: K, for archs written with ``KCk`` tokens.
        padding: convolution padding (0 = "valid" as Lin et al.; 1 = "same" for 3x3 as Hou et al.).
        pool_in_fan_out: a convolution followed by max-pooling has ``fan_out = C_out k^2 / pool area``
            (Lin et al.'s code), or ``C_out k^2`` (False: Hou et al.'s code, Lasagne's Glorot
            init). It sets the initialization and Lin et al.'s W0 (docs/papers.md A.0, D.25).
        batch_norm: BN after every layer (both papers); without it, layers get biases.
        output_bn: BN after the output layer too (both papers); false: the output layer has a bias
            and no BN (VGG-Small as the binary-network papers since 2018 train it).
        full_precision_first_last: the first layer and the output layer keep real-valued weights
            (nearly every binary-network paper since 2018; both 2016 papers quantize them).
        bn_eps, bn_momentum: BN constants (the authors' code uses 1e-4 and 0.1).
        activation: builds each hidden activation from ``channels=`` (default ReLU).
        weight_quantizer: builds each layer's weight quantizer (default: none, full precision).
        qbp_dense, qbp_conv: quantized back propagation settings of dense and conv layers (None: off).
        name: the architecture's name in configs and results (e.g. ``lin2016_mlp``).
    """

    input_kind = "images"

    def __init__(
        self,
        arch: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int | None = None,
        padding: int = 0,
        pool_in_fan_out: bool = True,
        batch_norm: bool = True,
        output_bn: bool = True,
        full_precision_first_last: bool = False,
        bn_eps: float = 1e-4,
        bn_momentum: float = 0.1,
        activation: ModuleFactory | None = None,
        weight_quantizer: ModuleFactory | None = None,
        qbp_dense: QBPSettings | None = None,
        qbp_conv: QBPSettings | None = None,
        name: str = "",
    ) -> None:
        if qbp_dense is not None and qbp_dense.error == "after_bn" and not (batch_norm and output_bn):
            raise UserError(
                "qbp_settings.dense.error=after_bn needs model.batch_norm=true and model.output_bn=true "
                "(the error after every dense layer's BN)."
            )
        channels, height, width_px = (*tuple(input_shape), 1, 1)[:3]
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        flat = False
        specs = [*parse_arch(arch, width), LayerSpec("fc", num_classes)]
        n_conv = n_fc = 0
        for i, spec in enumerate(specs):
            is_output = i == len(specs) - 1
            real_valued = full_precision_first_last and (i == 0 or is_output)
            quantizer = weight_quantizer() if weight_quantizer and not real_valued else None
            normalized = batch_norm and (output_bn or not is_output)
            parts: list[nn.Module] = []
            if spec.kind == "conv":
                n_conv += 1
                parts.append(
                    QuantConv2d(
                        channels,
                        spec.units,
                        spec.kernel,
                        padding=padding,
                        bias=not batch_norm,
                        pool_area=spec.pool**2 if pool_in_fan_out else 1,
                        weight_quantizer=quantizer,
                        qbp=qbp_conv,
                    )
                )
                height = height + 2 * padding - spec.kernel + 1
                width_px = width_px + 2 * padding - spec.kernel + 1
                if spec.pool > 1:
                    parts.append(nn.MaxPool2d(spec.pool))
                    height, width_px = height // spec.pool, width_px // spec.pool
                if height < 1 or width_px < 1:
                    raise UserError(f"model.arch {arch!r} shrinks the {tuple(input_shape)} input to nothing.")
                channels = spec.units
                bn: nn.Module = nn.BatchNorm2d(spec.units, eps=bn_eps, momentum=bn_momentum)
                block = f"conv{n_conv}"
            else:
                if not flat:
                    parts.insert(0, nn.Flatten())
                    channels, flat = channels * height * width_px, True
                linear = QuantLinear(
                    channels, spec.units, bias=not normalized, weight_quantizer=quantizer, qbp=qbp_dense
                )
                parts.append(linear)
                channels = spec.units
                bn = nn.BatchNorm1d(spec.units, eps=bn_eps, momentum=bn_momentum)
                n_fc += not is_output
                block = "out" if is_output else f"fc{n_fc}"
            if normalized:
                parts.append(bn)
            if spec.kind == "fc" and linear.error_after_bn is not None:
                parts.append(TapError(linear.error_after_bn))  # Lin et al.'s dense QBP: the error after BN
            if not is_output:
                parts.append(activation(channels=channels) if activation else nn.ReLU())
            blocks[block] = nn.Sequential(*parts)
        super().__init__(blocks)
        self.name = name

    def layer_uses(self, input_shape: tuple[int, ...]) -> list[LayerUse]:
        """Every block's quantized layer with its output units and the BN units after it."""
        return feedforward_uses(self, input_shape)
