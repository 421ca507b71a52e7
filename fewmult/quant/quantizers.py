"""The weight quantizers of Lin et al. 2016 and Hou et al. 2017, one small class each.

Each docstring gives the forward rule, the pseudo-gradient and the source (docs/papers.md section).
``W0 = sqrt(1.5 / (fan_in + fan_out))`` is the layer's scale in Lin et al.'s code (docs/papers.md A.0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from fewmult.errors import UserError
from fewmult.quant.base import WeightQuantizer
from fewmult.quant.fusion import fused_or_eager, run_fused
from fewmult.quant.registry import register_quantizer
from fewmult.quant.rng import RandomStream, hashed_uniform

SCALES = ("w0", "unit")
RNGS = ("hash", "torch")


def _scaled_sign(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * sign(w)`` with sign(0) = +1, one fused pass under torch.compile."""
    return torch.where(w >= 0, scale, -scale)


def _lab_alpha(w: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    d = v.sqrt() + eps
    return (d * w.abs()).sum() / d.sum()


def _lab_alpha_per_channel(w: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    d = v.sqrt() + eps
    rest = tuple(range(1, w.dim()))
    return (d * w.abs()).sum(rest, keepdim=True) / d.sum(rest, keepdim=True)


def _mean_abs(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``mean|w|`` of the tensor, or of every output channel (dim 0) shaped to broadcast over ``w``."""
    return w.abs().mean(tuple(range(1, w.dim())), keepdim=True) if per_channel else w.abs().mean()


@register_quantizer("fp")
class FullPrecision(WeightQuantizer):
    """``q(w) = w``: no quantization (the full-precision baseline of both papers)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def most_likely(self, w: torch.Tensor) -> torch.Tensor:
        return w.detach()


class _ScaledByW0(WeightQuantizer):
    """Lin et al.'s quantizers: values ``+-s`` (and 0), latent weights clipped to ``[-s, s]``.

    ``scale="w0"`` (default): ``s = W0`` of the layer, as the authors' code. ``scale="unit"``:
    ``s = 1``, as the paper writes it. With batch norm after every layer the two are the same
    network, but the latent weights live on a ~30x larger range with ``unit``, so SGD needs a ~30x
    larger learning rate to move them the same relative amount (docs/papers.md A.0, D.2).
    """

    def __init__(self, scale: str = "w0", eval_policy: str | None = None) -> None:
        super().__init__(eval_policy)
        if scale not in SCALES:
            raise UserError(f"method.weight_quantizer.scale must be one of {SCALES}, got {scale!r}.")
        self.scale = scale
        # s also as a tensor on the weights' device: a Python number would be copied there every step
        self.register_buffer("level", torch.tensor(1.0), persistent=False)
        self.s = 1.0

    @property
    def s(self) -> float:
        """The value ``s`` of the quantized weights (``level`` holds it as a tensor)."""
        return self._s

    @s.setter
    def s(self, value: float) -> None:
        self._s = float(value)
        self.level.fill_(self._s)

    def setup(self, layer) -> None:
        self.s = layer.w0 if self.scale == "w0" else 1.0

    @property
    def init_gain(self) -> float:
        """Glorot uniform U(-2 W0, 2 W0) (Lin et al.); U(-W0, W0) for the unit scale (Hou et al.)."""
        return 2.0 if self.scale == "w0" else 1.0

    @property
    def clip_bound(self) -> float:
        return self.s

    def effective_scale(self, w: torch.Tensor) -> torch.Tensor:
        return self.level


@register_quantizer("bc_det")
@register_quantizer("bnn", scale="unit")
class BinaryConnect(_ScaledByW0):
    """Deterministic BinaryConnect: ``q(w) = +s if w >= 0 else -s``.

    Pseudo-gradient: straight through, ``dL/dw = dL/dq``; ``w`` is clipped to ``[-s, s]`` after
    each step. Evaluated with ``q(w)``. Courbariaux et al. 2015 as used by Lin et al. (docs/papers.md
    A.2); with ``scale="unit"`` it is the ``sign(w)`` BinaryConnect of Hou et al.'s Table 1 and the
    weight part of BNN (A.9).
    """

    bits = 1
    multiplies = "sign"

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return fused_or_eager(_scaled_sign, w.detach().reshape(-1), self.level.to(w.dtype)).view_as(w)


def _stochastic_binary(w: torch.Tensor, s: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    p = (w / (2 * s) + 0.5).clamp(0, 1)
    return torch.where(hashed_uniform(w, key) < p, s, -s)


def _stochastic_ternary(w: torch.Tensor, s: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    keep = hashed_uniform(w, key) * s < w.abs()
    return torch.sign(w) * keep * s


class _Stochastic(_ScaledByW0):
    """Draws its uniform numbers from a :class:`RandomStream` (``rng="hash"``, fused by torch.compile)
    or from ``torch.rand`` (``rng="torch"``); both give each outcome its exact probability."""

    stochastic = True
    default_eval = "latent"
    kernel: ClassVar[Callable]

    def __init__(self, scale: str = "w0", eval_policy: str | None = None, rng: str = "hash") -> None:
        super().__init__(scale, eval_policy)
        if rng not in RNGS:
            raise UserError(f"method.weight_quantizer.rng must be one of {RNGS}, got {rng!r}.")
        self.rng = rng
        self.stream = RandomStream()

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        if self.rng == "hash":
            flat = w.detach().reshape(-1)  # see fewmult.quant.fusion.run_fused: one long loop, same numbers
            q = run_fused(type(self).kernel, flat, self.level.to(w.dtype), self.stream.next_key())
            if q is not None:
                return q.view_as(w)
        return self.quantize_with_torch_rng(w)

    def quantize_with_torch_rng(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_quantizer("bc_stoch")
class StochasticBinaryConnect(_Stochastic):
    """Stochastic BinaryConnect: ``q(w) = +s`` with probability ``p = clip((w/s + 1)/2, 0, 1)``, else ``-s``.

    A new sample at every forward pass; ``E[q(w)] = w`` for ``|w| <= s``. Pseudo-gradient: straight
    through; ``w`` clipped to ``[-s, s]``. Evaluated with the real-valued ``w`` (the authors'
    ``binary_test=False``). Lin et al. 2016, docs/papers.md A.3.
    """

    bits = 1
    multiplies = "sign"
    kernel = staticmethod(_stochastic_binary)

    def most_likely(self, w: torch.Tensor) -> torch.Tensor:
        """``+s`` is the more likely value exactly when ``w >= 0`` (p = 1/2 at 0 goes to +s, sign(0) = +1)."""
        return _scaled_sign(w.detach(), self.level.to(w.dtype))

    def quantize_with_torch_rng(self, w: torch.Tensor) -> torch.Tensor:
        p = w.div(2 * self.s).add_(0.5).clamp_(0, 1)
        return torch.rand_like(w).lt_(p).to(w.dtype).mul_(2 * self.s).sub_(self.s)


@register_quantizer("tc")
class TernaryConnect(_Stochastic):
    """Stochastic ternary connect: ``q(w) = s * sign(w) * Bernoulli(clip(|w|/s, 0, 1))``.

    A weight in (0, s] becomes +s with probability w/s, else 0; one in [-s, 0] becomes -s with
    probability -w/s, else 0; ``E[q(w)] = w`` for ``|w| <= s``. Pseudo-gradient: straight through;
    ``w`` clipped to ``[-s, s]``. Evaluated with the real-valued ``w``. Lin et al. 2016, docs/papers.md A.4.
    """

    bits = 2
    multiplies = "ternary"
    kernel = staticmethod(_stochastic_ternary)

    def quantize_with_torch_rng(self, w: torch.Tensor) -> torch.Tensor:
        keep = torch.rand_like(w).mul_(self.s).lt_(w.abs())
        return torch.sign(w).mul_(keep).mul_(self.s)

    def most_likely(self, w: torch.Tensor) -> torch.Tensor:
        """``s sign(w)`` where that is more likely than 0 (``|w| > s/2``), else 0."""
        w = w.detach()
        return torch.sign(w) * (w.abs() > self.s / 2) * self.s

    def expected_zero_fraction(self, w: torch.Tensor) -> torch.Tensor:
        """A weight is 0 with probability ``1 - |w|/s``."""
        return (1 - w.detach().abs() / self.level).clamp_(0, 1).mean()


class _ScaledSign(WeightQuantizer):
    """``q(w) = alpha * sign(w)`` with one scale per weight tensor, or with ``per_channel`` one per
    output channel (dim 0: a dense layer's output unit, a convolution's output map); latent weights
    clipped to [-1, 1]."""

    bits = 1
    multiplies = "scaled_sign"
    init_gain = 1.0  # Hou et al.'s code: U(-W0, W0)

    def __init__(self, per_channel: bool = False, eval_policy: str | None = None) -> None:
        super().__init__(eval_policy)
        if not isinstance(per_channel, bool):
            raise UserError(
                f"method.weight_quantizer.per_channel must be true or false, got {per_channel!r}."
            )
        self.per_channel = per_channel

    @property
    def clip_bound(self) -> float:
        return 1.0

    def alpha(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def effective_scale(self, w: torch.Tensor) -> torch.Tensor:
        return self.alpha(w.detach())

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha(w)  # a scalar, or one per output channel (dim 0)
        rows = w.detach().reshape(w.shape[0], -1) if w.dim() > 1 else w.detach()
        scale = alpha.reshape(-1, 1) if alpha.numel() > 1 else alpha
        return fused_or_eager(_scaled_sign, rows, scale).view_as(w)


@register_quantizer("bwn")
@register_quantizer("xnor")
class BinaryWeightNetwork(_ScaledSign):
    """BWN: ``q(w) = alpha * sign(w)`` with ``alpha = ||w||_1 / n`` per layer, or with
    ``per_channel`` ``alpha_c = ||w_c||_1 / n_c`` per output channel (XNOR-Net's own form, Rastegari
    et al. 2016, arXiv 1603.05279, sec. 3.1; Bi-Real's and ReActNet's weights, docs/papers.md G.2).

    Pseudo-gradient: straight through; ``w`` clipped to [-1, 1]. Rastegari et al. 2016 as defined
    in Hou et al. 2017 eq. 2 (docs/papers.md A.6); also the weight part of XNOR-Net (A.10).
    """

    def alpha(self, w: torch.Tensor) -> torch.Tensor:
        return _mean_abs(w, self.per_channel)


@register_quantizer("lab")
@register_quantizer("lab2")
class LossAwareBinarization(_ScaledSign):
    """LAB: ``q(w) = alpha * sign(w)`` with ``alpha = ||d * w||_1 / ||d||_1``.

    ``d = sqrt(v) + 1e-8``, ``v`` Adam's second-moment estimate (``exp_avg_sq``) of this very
    weight, read through :meth:`bind_curvature` (``fewmult.nn.bind_optimizer`` binds it). Before
    the optimizer's first step ``d`` is uniform and LAB is exactly BWN (as in the authors' code);
    training without a bound optimizer is refused, since LAB would silently stay BWN. The last
    ``alpha`` is kept in the buffer ``alpha_last`` (saved with the model), so a checkpoint
    evaluated without its optimizer uses it.
    ``per_channel``: ``alpha_c = ||d_c * w_c||_1 / ||d_c||_1`` for every output channel ``c``, the
    same proposition applied to each channel's rows (an extension of Hou et al., who use one alpha
    per layer; docs/papers.md G.2).
    Pseudo-gradient: straight through (Adam receives ``dL/dq``); ``w`` clipped to [-1, 1].
    Hou et al. 2017, Proposition 3.1 and Algorithm 1 (docs/papers.md A.7); the weight part of LAB2 (A.8).
    """

    needs_optimizer_state = True

    def __init__(self, eps: float = 1e-8, per_channel: bool = False, eval_policy: str | None = None) -> None:
        super().__init__(per_channel, eval_policy)
        self.eps = eps
        self._curvature: Callable[[], torch.Tensor | None] | None = None  # bound by bind_curvature
        self.register_buffer("alpha_last", torch.tensor(float("nan")))

    def setup(self, layer) -> None:
        if self.per_channel:  # one alpha per output channel, shaped to broadcast over the weight
            w = layer.weight
            self.alpha_last = torch.full((w.shape[0],) + (1,) * (w.dim() - 1), float("nan"))

    def effective_scale(self, w: torch.Tensor) -> torch.Tensor:
        """The last ``alpha`` (of the latest training step; BWN's before the first one)."""
        # torch.where, not `if`: a Python branch on a tensor waits for the device
        return torch.where(self.alpha_last.isnan(), _mean_abs(w.detach(), self.per_channel), self.alpha_last)

    def bind_curvature(self, source: Callable[[], torch.Tensor | None]) -> None:
        """``source()`` returns the second moment ``v`` of the weight, or None before any step."""
        self._curvature = source

    def alpha(self, w: torch.Tensor) -> torch.Tensor:
        if self._curvature is None and self.training:
            raise UserError(
                "LAB reads its optimizer's second moment, but no optimizer is bound to this layer, so "
                "it would train as BWN. Call fewmult.nn.bind_optimizer(model, optimizer) once after "
                "creating the (Adam) optimizer (fewmult.train does this itself)."
            )
        v = self._curvature() if self._curvature is not None else None
        if v is None:
            return self.effective_scale(w)
        formula = _lab_alpha_per_channel if self.per_channel else _lab_alpha
        alpha = fused_or_eager(formula, w.detach(), v, self.eps)
        self.alpha_last.copy_(alpha)
        return alpha
