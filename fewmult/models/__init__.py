"""The papers' architectures, built from their own notation, and the protocol every model follows."""

from fewmult.models.base import LayerUse, QuantModel
from fewmult.models.charlstm import CharLSTM
from fewmult.models.papernet import PaperNet, parse_arch
from fewmult.models.resnet import ResNet

__all__ = ["CharLSTM", "LayerUse", "PaperNet", "QuantModel", "ResNet", "parse_arch"]
