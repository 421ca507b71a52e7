"""Weight quantizers and binary activations, with a registry (``create_quantizer``, ``list_quantizers``)."""

from fewmult.quant.activations import SignActivation
from fewmult.quant.base import WeightQuantizer, sign_plus, straight_through
from fewmult.quant.curvature import AdamSecondMoment
from fewmult.quant.quantizers import (
    BinaryConnect,
    BinaryWeightNetwork,
    FullPrecision,
    LossAwareBinarization,
    StochasticBinaryConnect,
    TernaryConnect,
)
from fewmult.quant.registry import create_quantizer, list_quantizers, quantizer_class, register_quantizer

__all__ = [
    "AdamSecondMoment",
    "BinaryConnect",
    "BinaryWeightNetwork",
    "FullPrecision",
    "LossAwareBinarization",
    "SignActivation",
    "StochasticBinaryConnect",
    "TernaryConnect",
    "WeightQuantizer",
    "create_quantizer",
    "list_quantizers",
    "quantizer_class",
    "register_quantizer",
    "sign_plus",
    "straight_through",
]
