"""Which parameters get weight decay, and which ones Bop flips: the optimizer's parameter groups."""

from __future__ import annotations

from torch import nn

from fewmult.errors import UserError
from fewmult.nn.layers import named_quant_layers
from fewmult.quant.base import WeightQuantizer

# all: every parameter (torch's weight_decay; IR-Net's CIFAR code) | conv_weights: convolution
# kernels only, 4-D parameters (Bi-Real's and ReActNet's code: not BN, biases, RPReLU or the classifier)
DECAY_ON = ("all", "conv_weights")


BOP_METHODS = "bnn, bc_det, bwn, xnor, bireal or reactnet"


def check_bop_can_flip(quantizer: type[WeightQuantizer] | None, where: str) -> None:
    """Refuse, naming the fix, a quantizer whose effective weight is not a deterministic sign of
    its latent weight (Bop flips signs; it has nothing to flip in fp, ternary, stochastic or LAB
    weights, whose scale reads Adam's state of the very weight Bop takes from Adam)."""
    if quantizer is None or quantizer.bits == 32:
        raise UserError(
            f"optim=bop trains binary weights, but {where} has none; use a method with binary "
            f"weights ({BOP_METHODS}) or optim=adam."
        )
    reasons = [
        (quantizer.stochastic, "draws its weights at random"),
        (
            quantizer.needs_optimizer_state,
            "scales them by Adam's state of the weight, which Bop does not keep",
        ),
        (quantizer.bits != 1, f"has {quantizer.bits}-bit weights"),
        (
            not quantizer.signs_latent,
            "takes each binary weight's sign from the channel's weights minus their mean, so a "
            "negated latent weight need not flip it",
        ),
    ]
    why = next((reason for applies, reason in reasons if applies), "")
    if why:
        raise UserError(
            f"optim=bop flips the signs of binary weights, but {where} quantizes with "
            f"{quantizer.__name__}, which {why}; use method={BOP_METHODS} with optim=bop."
        )


def _flippable_weights(model: nn.Module) -> set[int]:
    """The ids of the binary weights Bop flips: every quantized layer's (full-precision layers,
    the first and last by default, stay with Adam)."""
    flippable = set()
    for name, layer in named_quant_layers(model):
        quantizer = layer.weight_quantizer
        if quantizer is not None and quantizer.bits != 32:
            check_bop_can_flip(type(quantizer), f"layer {name!r}")
            flippable.add(id(layer.weight))
    if not flippable:
        check_bop_can_flip(None, "the model")
    return flippable


def parameter_groups(
    model: nn.Module, weight_decay: float = 0.0, decay_on: str = "all", binary_apart: bool = False
) -> list[dict]:
    """``model``'s parameters in optimizer groups, in a fixed order (a checkpoint's optimizer state
    is matched to groups by position):

    * with ``binary_apart`` (Bop), first the binary weights, marked ``binary: True``, never decayed;
    * the parameters that ``decay_on`` selects, with ``weight_decay``;
    * the rest, with weight decay 0.

    Empty groups are left out.
    """
    if decay_on not in DECAY_ON:
        raise UserError(f"optim.weight_decay_on must be one of {DECAY_ON}, got {decay_on!r}.")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise UserError(f"optim.weight_decay must be a number >= 0, got {weight_decay!r}.")
    binary = _flippable_weights(model) if binary_apart else set()
    groups = {"binary": [], "decayed": [], "other": []}
    for p in model.parameters():
        if id(p) in binary:
            groups["binary"].append(p)
        elif weight_decay > 0 and (decay_on == "all" or p.dim() == 4):
            groups["decayed"].append(p)
        else:
            groups["other"].append(p)
    options = {
        "binary": {"binary": True, "weight_decay": 0.0},
        "decayed": {"weight_decay": float(weight_decay)},
        "other": {"weight_decay": 0.0},
    }
    return [{"params": params, **options[kind]} for kind, params in groups.items() if params]
