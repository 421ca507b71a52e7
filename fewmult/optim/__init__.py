"""Optimizers and the parameter groups the papers' recipes give them (weight decay, Bop)."""

from fewmult.optim.bop import Bop
from fewmult.optim.groups import DECAY_ON, check_bop_can_flip, parameter_groups

__all__ = ["DECAY_ON", "Bop", "check_bop_can_flip", "parameter_groups"]
