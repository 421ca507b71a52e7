"""Weight quantizers and activation quantizers, each with a registry (``create_quantizer``,
``list_quantizers``; ``create_activation``, ``list_activations``)."""

from fewmult.quant.activations import ActivationQuantizer, ApproxSign, Identity, RSign, SignActivation
from fewmult.quant.base import WeightQuantizer, sign_plus, straight_through
from fewmult.quant.curvature import AdamSecondMoment
from fewmult.quant.irnet import EDESign, LibraBinarization
from fewmult.quant.quantizers import (
    BinaryConnect,
    BinaryWeightNetwork,
    FullPrecision,
    LossAwareBinarization,
    StochasticBinaryConnect,
    TernaryConnect,
)
from fewmult.quant.registry import (
    create_activation,
    create_quantizer,
    list_activations,
    list_quantizers,
    quantizer_class,
    register_activation,
    register_quantizer,
)

__all__ = [
    "ActivationQuantizer",
    "AdamSecondMoment",
    "ApproxSign",
    "BinaryConnect",
    "BinaryWeightNetwork",
    "EDESign",
    "FullPrecision",
    "Identity",
    "LibraBinarization",
    "LossAwareBinarization",
    "RSign",
    "SignActivation",
    "StochasticBinaryConnect",
    "TernaryConnect",
    "WeightQuantizer",
    "create_activation",
    "create_quantizer",
    "list_activations",
    "list_quantizers",
    "quantizer_class",
    "register_activation",
    "register_quantizer",
    "sign_plus",
    "straight_through",
]
