"""ResNet-20 (CIFAR), ResNet-18 and ResNet-34 as binary-network papers train them.

The conventions that decide published numbers are arguments (docs/papers.md G.1):

* ``stem``: ``cifar`` (3x3 convolution, stride 1, no max-pool: the CIFAR ResNet-18 of IR-Net, RBNN,
  ReCU), ``imagenet`` (7x7 stride 2 + 3x3 max-pool), ``auto`` (ImageNet stem for inputs of 100
  pixels and more, else CIFAR's).
* ``convs_per_shortcut``: 1 (Bi-Real: every binary convolution has its own real-valued shortcut)
  or 2 (the original basic block).
* ``shortcut``, the downsampling shortcut: ``avgpool_conv`` (2x2 average pooling + full-precision
  1x1 convolution + BN, Bi-Real / ReActNet), ``conv1x1`` (strided 1x1 convolution with the method's
  quantizer + BN, He et al.'s option B), ``conv1x1_fp`` (the same convolution in full precision,
  IR-Net's CIFAR ResNet-18) or ``zero_pad`` (strided identity, new channels zero, He et al.'s option
  A, the original CIFAR ResNet-20).
* ``quantize_first_last``: the stem convolution and the classifier stay full precision unless true.

Where activations are real (``activation`` None) a block is ``conv -> BN -> ReLU`` with ReLU after
the addition, as He et al.; with a binary activation each convolution reads the binarized input and
no ReLU follows (Bi-Real): ``out = BN(conv(sign(x))) + shortcut(x)``. ``residual_activation``
(ReActNet's RPReLU, given by the method) replaces what follows every addition:
``out = RPReLU(BN(conv(RSign(x))) + shortcut(x))``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fewmult.errors import UserError
from fewmult.models.base import LayerUse, ModuleFactory, output_shapes
from fewmult.nn.layers import QuantConv2d, QuantLinear
from fewmult.qbp import QBPSettings

# (channels, blocks) per stage
DEPTHS = {
    20: ((16, 3), (32, 3), (64, 3)),
    18: ((64, 2), (128, 2), (256, 2), (512, 2)),
    34: ((64, 3), (128, 4), (256, 6), (512, 3)),
}
SHORTCUTS = ("avgpool_conv", "conv1x1", "conv1x1_fp", "zero_pad")
STEMS = ("auto", "cifar", "imagenet")
IMAGENET_STEM_FROM = 100  # pixels: inputs this large get the 7x7 stride-2 stem and max-pool


class _Layers:
    """Makes the network's convolutions and BNs, remembering each convolution's BN (for counting)."""

    def __init__(
        self, weight_quantizer: ModuleFactory | None, qbp: QBPSettings | None, bn_eps: float
    ) -> None:
        self.weight_quantizer, self.qbp, self.bn_eps = weight_quantizer, qbp, bn_eps
        self.pairs: list[tuple[nn.Module, nn.Module | None]] = []

    def conv(self, cin: int, cout: int, k: int, stride: int = 1, quantized: bool = True) -> nn.Module:
        quantizer = self.weight_quantizer() if quantized and self.weight_quantizer else None
        return QuantConv2d(
            cin, cout, k, stride=stride, padding=k // 2, bias=False, weight_quantizer=quantizer, qbp=self.qbp
        )

    def bn(self, conv: nn.Module, channels: int) -> nn.BatchNorm2d:
        norm = nn.BatchNorm2d(channels, eps=self.bn_eps)
        self.pairs.append((conv, norm))
        return norm


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A: the strided identity, the new channels zero (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


def _downsample(kind: str, cin: int, cout: int, stride: int, layers: _Layers) -> nn.Module:
    if kind == "zero_pad":
        return ZeroPadShortcut(cin, cout, stride)
    if kind in ("conv1x1", "conv1x1_fp"):
        conv = layers.conv(cin, cout, 1, stride, quantized=kind == "conv1x1")
        return nn.Sequential(conv, layers.bn(conv, cout))
    conv = layers.conv(cin, cout, 1, quantized=False)  # avgpool_conv: Bi-Real / ReActNet
    # ceil_mode: odd maps (28 px through the ImageNet stem) pool to the strided convolution's size
    pool = nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    return nn.Sequential(pool, conv, layers.bn(conv, cout))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with one shortcut around both, or one around each (``per_conv``)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        layers: _Layers,
        activation: ModuleFactory | None,
        residual_activation: ModuleFactory | None,
        shortcut: str,
        per_conv: bool,
    ) -> None:
        super().__init__()
        self.conv1, self.conv2 = layers.conv(cin, cout, 3, stride), layers.conv(cout, cout, 3)
        self.bn1, self.bn2 = layers.bn(self.conv1, cout), layers.bn(self.conv2, cout)
        # binary: each conv reads sign(x)
        self.pre1 = activation(channels=cin) if activation else nn.Identity()
        self.pre2 = activation(channels=cout) if activation else nn.Identity()

        def after_sum() -> nn.Module:  # real-valued: ReLU after each sum; binary: nothing
            if residual_activation:
                return residual_activation(channels=cout)
            return nn.Identity() if activation else nn.ReLU()

        self.post1, self.post2 = after_sum(), after_sum()
        same = stride == 1 and cin == cout
        self.shortcut = nn.Identity() if same else _downsample(shortcut, cin, cout, stride, layers)
        self.per_conv = per_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(self.conv1(self.pre1(x)))
        h = self.post1(h + self.shortcut(x) if self.per_conv else h)
        out = self.bn2(self.conv2(self.pre2(h)))
        return self.post2(out + (h if self.per_conv else self.shortcut(x)))


class ResNet(nn.Module):
    """ResNet-``depth`` (20, 18 or 34) for ``input_shape`` images; see the module docstring."""

    input_kind = "images"
    has_residuals = True  # a method's residual_activation (RPReLU) has somewhere to go

    def __init__(
        self,
        depth: int,
        input_shape: tuple[int, ...],
        num_classes: int,
        stem: str = "auto",
        shortcut: str = "avgpool_conv",
        convs_per_shortcut: int = 1,
        quantize_first_last: bool = False,
        bn_eps: float = 1e-5,
        activation: ModuleFactory | None = None,
        residual_activation: ModuleFactory | None = None,
        weight_quantizer: ModuleFactory | None = None,
        qbp_dense: QBPSettings | None = None,
        qbp_conv: QBPSettings | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        for value, allowed, key in (
            (depth, tuple(DEPTHS), "depth"),
            (stem, STEMS, "stem"),
            (shortcut, SHORTCUTS, "shortcut"),
            (convs_per_shortcut, (1, 2), "convs_per_shortcut"),
        ):
            if value not in allowed:
                raise UserError(f"model.{key} must be one of {', '.join(map(str, allowed))}; got {value!r}.")
        channels, height = input_shape[0], input_shape[1]
        if stem == "auto":
            stem = "imagenet" if height >= IMAGENET_STEM_FROM else "cifar"
        layers = _Layers(weight_quantizer, qbp_conv, bn_eps)
        stages = DEPTHS[depth]
        width = stages[0][0]
        real = nn.Identity() if activation else nn.ReLU()
        if stem == "imagenet":
            conv = layers.conv(channels, width, 7, stride=2, quantized=quantize_first_last)
            self.stem = nn.Sequential(conv, layers.bn(conv, width), real, nn.MaxPool2d(3, 2, padding=1))
        else:
            conv = layers.conv(channels, width, 3, quantized=quantize_first_last)
            self.stem = nn.Sequential(conv, layers.bn(conv, width), real)
        blocks, cin = [], width
        for i, (cout, count) in enumerate(stages):
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                per_conv = convs_per_shortcut == 1
                blocks.append(
                    BasicBlock(cin, cout, stride, layers, activation, residual_activation, shortcut, per_conv)
                )
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        classifier_quantizer = weight_quantizer() if quantize_first_last and weight_quantizer else None
        self.classifier = QuantLinear(cin, num_classes, weight_quantizer=classifier_quantizer, qbp=qbp_dense)
        self._pairs = [*layers.pairs, (self.classifier, None)]
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.classifier(F.adaptive_avg_pool2d(h, 1).flatten(1))

    def layer_uses(self, input_shape: tuple[int, ...]) -> list[LayerUse]:
        """Every convolution and the classifier, each with the units of the BN that follows it."""
        shapes = output_shapes(self, input_shape)
        names = {m: n for n, m in self.named_modules()}
        uses = []
        for layer, bn in self._pairs:
            out = shapes[layer]
            units = int(out.numel())
            positions = units // out[0]
            bn_units = int(shapes[bn].numel()) if bn is not None else 0
            uses.append(LayerUse(names[layer], layer, layer.weight.numel() * positions, units, bn_units))
        return uses
