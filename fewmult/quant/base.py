"""What every weight quantizer shares: straight-through gradients, clipping, evaluation policy.

Vocabulary (used the same way in code, logs and docs):

* **latent weight** ``w``: the real-valued ``Parameter`` the optimizer updates, clipped after every
  step, stored in checkpoints;
* **effective weight** ``q(w)``: what forward and backward propagation use (binary, ternary,
  scaled binary). Its gradient is applied to ``w`` unchanged (straight-through estimator);
* **evaluation policy**: in ``eval()`` mode, ``"quantized"`` evaluates with ``q(w)`` (a
  deterministic quantizer) and ``"latent"`` with ``w`` itself (Lin et al. evaluate stochastically
  trained nets with the real-valued weights).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from fewmult.errors import UserError

EVAL_POLICIES = ("quantized", "latent")


def sign_plus(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1 (both authors' codes), in three cheap passes (no torch.where)."""
    return torch.sign(x).add_(0.5).sign_()


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized tensor. Backward: the gradient reaches the latent tensor unchanged."""

    @staticmethod
    def forward(ctx, latent: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(latent: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    return _StraightThrough.apply(latent, quantized)


class WeightQuantizer(nn.Module):
    """Base class. Subclasses set the class attributes and implement :meth:`quantize`.

    Class attributes:
        bits: bits per effective weight (1 binary, 2 ternary, 32 none).
        stochastic: whether :meth:`quantize` samples.
        multiplies: what a product with an effective weight costs, for ``fewmult.count``:
            ``"full"`` a multiplication, ``"sign"`` a sign change, ``"ternary"`` a sign change or a
            skipped zero, ``"scaled_sign"`` a sign change plus one multiplication by the layer's
            scale per output.
        default_eval: the evaluation policy unless the config overrides it.
        needs_optimizer_state: whether the quantizer reads the optimizer's state of its weight
            (LAB: Adam's second moment), handed over through :meth:`bind_curvature`.
        signs_latent: whether a binary effective weight's sign is its latent weight's own sign
            (Bop flips a binary weight by negating its latent weight; IR-Net binarizes each
            channel's weights around their mean instead).

    What the layer and the training module read from every quantizer (the contract):
    :attr:`init_gain` (the layer initializes ``U(-gain W0, gain W0)``), :attr:`clip_bound` (the
    module clips the latent weight after every step), :meth:`setup` (called once by the layer)
    and, where :attr:`needs_optimizer_state`, :meth:`bind_curvature`. The per-layer diagnostics
    and the export also read :meth:`effective_scale`, :meth:`expected_zero_fraction` and
    :meth:`most_likely`.
    """

    bits: ClassVar[int] = 32
    stochastic: ClassVar[bool] = False
    multiplies: ClassVar[str] = "full"
    default_eval: ClassVar[str] = "quantized"
    needs_optimizer_state: ClassVar[bool] = False
    signs_latent: ClassVar[bool] = True
    init_gain: float = 2.0  # Glorot uniform, U(-2 W0, 2 W0)

    def __init__(self, eval_policy: str | None = None) -> None:
        super().__init__()
        policy = eval_policy or self.default_eval
        if policy not in EVAL_POLICIES:
            raise UserError(f"method.eval_policy must be one of {EVAL_POLICIES}, got {policy!r}.")
        self.eval_policy = policy

    def setup(self, layer: nn.Module) -> None:
        """Called once by the layer that owns this quantizer (reads its fan-in/out)."""

    def bind_curvature(self, source) -> None:
        """Give the quantizer the optimizer state it reads (only where ``needs_optimizer_state``)."""
        raise TypeError(f"{type(self).__name__} reads no optimizer state")

    @property
    def clip_bound(self) -> float | None:
        """Latent weights are clipped to [-bound, bound] after every step (None: no clipping)."""
        return None

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def effective_scale(self, w: torch.Tensor) -> torch.Tensor | None:
        """The magnitude of the nonzero effective weights (one per layer, or one per output channel
        shaped to broadcast over ``w``), without drawing random numbers; None where there is none
        (full precision). For diagnostics and export."""
        return None

    def most_likely(self, w: torch.Tensor) -> torch.Tensor:
        """The effective weight without chance: ``q(w)`` itself, or a stochastic quantizer's most
        likely value. What ``fewmult.export`` writes for nets evaluated with their latent weights."""
        return self.quantize(w.detach())

    def expected_zero_fraction(self, w: torch.Tensor) -> torch.Tensor | None:
        """The expected share of effective weights that are 0 (ternary quantizers); None otherwise."""
        return None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training and self.eval_policy == "latent":
            return w
        with torch.no_grad():
            q = self.quantize(w)
        return straight_through(w, q)

    @torch.no_grad()
    def clip_(self, w: torch.Tensor) -> None:
        bound = self.clip_bound
        if bound is not None:
            w.clamp_(-bound, bound)

    def extra_repr(self) -> str:
        return f"eval_policy={self.eval_policy!r}, clip_bound={self.clip_bound}"
