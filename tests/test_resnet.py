"""The ResNets of today's binary-network rows: the papers' parameter counts, every shortcut and stem,
every method's quantizers in the binary convolutions and full precision at the ends."""

from __future__ import annotations

import pytest
import torch
import torchvision

from fewmult.build import build_model
from fewmult.config import compose_config
from fewmult.models import ResNet
from fewmult.nn import quant_layers


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", [18, 34])
def test_the_imagenet_resnets_have_torchvisions_parameters(depth):
    # torchvision's ResNet (He et al.): ImageNet stem, 1x1 convolution + BN where a stage downsamples
    reference = getattr(torchvision.models, f"resnet{depth}")()
    ours = ResNet(depth, (3, 224, 224), 1000, shortcut="conv1x1", convs_per_shortcut=2)
    assert parameters(ours) == parameters(reference) == {18: 11_689_512, 34: 21_797_672}[depth]


def test_the_cifar_resnets_have_their_papers_parameters():
    # ResNet-20, option A (He et al. 2015, Table 6: 0.27 M); the CIFAR-stem ResNet-18 of IR-Net's and
    # RBNN's tables (11.2 M: the 3x3 stem and a 10-way classifier in place of the ImageNet ones)
    assert parameters(ResNet(20, (3, 32, 32), 10, shortcut="zero_pad", convs_per_shortcut=2)) == 269_722
    assert parameters(ResNet(18, (3, 32, 32), 10, shortcut="conv1x1")) == 11_173_962


@pytest.mark.parametrize(
    "shortcut, per_shortcut, stem",
    [("avgpool_conv", 1, "imagenet"), ("conv1x1", 2, "cifar"), ("zero_pad", 1, "cifar")],
)
def test_every_convention_builds_and_trains_a_step(shortcut, per_shortcut, stem):
    """Every shortcut, both block forms and both stems, each once (odd maps included: 28 pixels
    through the ImageNet stem)."""
    cfg = compose_config(
        "model=resnet18",
        "method=bnn",
        f"model.shortcut={shortcut}",
        f"model.convs_per_shortcut={per_shortcut}",
        f"model.stem={stem}",
    )
    torch.manual_seed(0)
    net = build_model(cfg, (1, 28, 28), 10)
    x = torch.randn(4, 1, 28, 28)
    net(x).square().sum().backward()
    binary = [m for m in quant_layers(net) if m.weight_quantizer is not None]
    # the stem, the classifier and Bi-Real's downsampling 1x1 convolutions stay full precision
    assert net.stem[0].weight_quantizer is None and net.classifier.weight_quantizer is None
    assert len(binary) == 16 + (3 if shortcut == "conv1x1" else 0)
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in binary)
    uses = net.layer_uses((1, 28, 28))  # what fewmult.count reads: every conv and the classifier
    assert len(uses) == len(list(quant_layers(net))) and all(u.macs > 0 for u in uses)
