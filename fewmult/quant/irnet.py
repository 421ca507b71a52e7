"""IR-Net (Qin et al., CVPR 2020, arXiv 1909.10788): Libra-PB weights and the EDE gradient.

Both halves binarize with sign and take their gradient from the Error Decay Estimator
``g(x) = k t (1 - tanh^2(t x))``, a tanh that sharpens over training: in epoch ``e`` of ``E``,
``t = t_min (t_max / t_min)^(e / E)`` and ``k = max(1 / t, 1)`` (the authors' ``Log_UP``; ``t``
never quite reaches ``t_max``). Early, ``k t = 1`` and ``g`` is nearly 1 everywhere (the identity's
gradient: every weight and activation updates); late, ``g`` approaches sign's derivative. The epoch
comes from :func:`fewmult.nn.set_epoch`, which fewmult's trainer calls at every epoch's start and
when a run resumes, so a relaunched job computes the same ``t`` (docs/papers.md G.6).
"""

from __future__ import annotations

import math

import torch

from fewmult.errors import UserError
from fewmult.quant.activations import SignActivation, _SignWithSurrogate
from fewmult.quant.base import WeightQuantizer
from fewmult.quant.fusion import fused_or_eager
from fewmult.quant.registry import register_activation, register_quantizer

STD_EPS = 1e-12  # a channel of equal weights balances to 0 (and its scale to 0), not to NaN


def ede_t_and_k(epoch: int, epochs: int, t_min: float, t_max: float) -> tuple[float, float]:
    """``(t, k)`` of EDE in ``epoch`` (from 0) of ``epochs``, as the authors' trainers compute them."""
    low, high = math.log10(t_min), math.log10(t_max)
    t = 10 ** (low + (high - low) / epochs * epoch)
    return t, max(1 / t, 1.0)


def _sech_squared(u: torch.Tensor) -> torch.Tensor:
    """``1 - tanh^2(u)`` as ``4 z / (1 + z)^2`` with ``z = exp(-2|u|)``: the same within float32
    rounding (2e-6 relative), and a fused loop of exp runs twice as fast as one of tanh
    (2 M values: 1.5 ms against 3.0 ms on 2 threads)."""
    z = torch.exp(-2 * u.abs())
    return 4 * z / (1 + z).square()


def _ede_backward(x: torch.Tensor, grad: torch.Tensor, t: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
    return grad * kt * _sech_squared(x * t)


class _DecayingEstimator:
    """Mixin for a module: EDE's ``t`` and ``k`` as buffers on the module's device (set per epoch, not saved:
    :func:`fewmult.nn.set_epoch` recomputes them from the epoch, also in a resumed run)."""

    def _init_schedule(self, t_min: float, t_max: float) -> None:
        if not 0 < t_min <= t_max:
            raise UserError(
                f"IR-Net's EDE needs 0 < t_min <= t_max (method.ede_t_min, method.ede_t_max); got "
                f"t_min={t_min!r}, t_max={t_max!r}."
            )
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.register_buffer("t", torch.tensor(0.0), persistent=False)
        self.register_buffer("k", torch.tensor(0.0), persistent=False)
        self.set_epoch(0, 1)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        t, k = ede_t_and_k(epoch, epochs, self.t_min, self.t_max)
        self.t.fill_(t)  # no host sync: a write from the host
        self.k.fill_(k)


@register_activation("ede")
class EDESign(_DecayingEstimator, SignActivation):
    """``sign(x)`` with sign(0) = +1; pseudo-gradient IR-Net's Error Decay Estimator
    ``dL/dx = dL/dy * k t (1 - tanh^2(t x))``, ``t`` from ``t_min`` to ``t_max`` over training
    (Qin et al. 2020, arXiv 1909.10788; docs/papers.md G.6)."""

    def __init__(self, channels: int | None = None, t_min: float = 0.1, t_max: float = 10.0) -> None:
        SignActivation.__init__(self, channels)
        self._init_schedule(t_min, t_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # t and k t in x's precision (under autocast x, and so the gradient, may be bfloat16)
        return _SignWithSurrogate.apply(x, _ede_backward, self.t.to(x.dtype), (self.k * self.t).to(x.dtype))

    def extra_repr(self) -> str:
        return f"t_min={self.t_min}, t_max={self.t_max}"


def _libra_forward(w: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """Rows (O, n) of a weight: ``(q, b, std, scale)``, one fused pass per row reduction."""
    n = w.shape[1]
    centered = w - w.mean(1, keepdim=True)
    std = (centered.square().sum(1, keepdim=True) / max(n - 1, 1)).sqrt() + eps  # unbiased, as torch.std
    b = centered / std
    scale = torch.exp2(torch.round(torch.log2(b.abs().mean(1, keepdim=True))))
    return torch.where(b >= 0, scale, -scale), b, std, scale


def _libra_backward(
    b: torch.Tensor,
    grad: torch.Tensor,
    std: torch.Tensor,
    scale: torch.Tensor,
    t: torch.Tensor,
    kt: torch.Tensor,
) -> torch.Tensor:
    """dL/dw of rows (O, n) from dL/dq: EDE through the sign, then the standardization's exact
    Jacobian, ``(g - mean(g) - b sum(g b) / (n - 1)) / std``."""
    n = b.shape[1]
    g = grad * scale * kt * _sech_squared(b * t)
    return (g - g.mean(1, keepdim=True) - b * (g * b).sum(1, keepdim=True) / max(n - 1, 1)) / std


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


class _LibraSign(torch.autograd.Function):
    """Libra-PB's ``q(w)`` forward and its EDE gradient backward, each one fused loop per reduction
    (eager autograd through the standardization took 1.55x a full-precision ResNet-18 step)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q, b, std, scale = fused_or_eager(_libra_forward, _rows(w), STD_EPS)
        ctx.save_for_backward(b, std, scale, t, k)
        return q.view_as(w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        b, std, scale, t, k = ctx.saved_tensors
        kt = k * t
        return fused_or_eager(_libra_backward, b, _rows(grad), std, scale, t, kt).view_as(grad), None, None


@register_quantizer("irnet")
class LibraBinarization(_DecayingEstimator, WeightQuantizer):
    """IR-Net's Libra-PB: ``q(w) = s_c * sign(b)`` with ``b = (w - mean(w_c)) / std(w_c)`` per output
    channel ``c`` (balanced and standardized, so half the weights of every channel are +1 and the
    binary weights carry the most information) and ``s_c = 2^round(log2(mean|b_c|))``.

    Pseudo-gradient: EDE through the sign and the exact gradient of the standardization,
    ``dL/dw_c = (g - mean(g) - b * sum(g * b) / (n - 1)) / std(w_c)`` with
    ``g = s_c * dL/dq * k t (1 - tanh^2(t b))`` (``s_c`` is a constant, as the authors detach it).
    Latent weights are not clipped. Qin et al. 2020 (arXiv 1909.10788) as the authors' ``IRConv2d``
    computes it; docs/papers.md G.6.
    """

    bits = 1
    multiplies = "scaled_sign"
    per_channel = True  # one scale per output channel, always (as the options of BWN/XNOR/LAB say)
    signs_latent = False  # sign(w - mean(w_c)): negating w need not flip it (no Bop)
    init_gain = 1.0  # the scale of w cancels in b; Hou et al.'s U(-W0, W0) as the other binarizers

    def __init__(self, t_min: float = 0.1, t_max: float = 10.0, eval_policy: str | None = None) -> None:
        WeightQuantizer.__init__(self, eval_policy)
        self._init_schedule(t_min, t_max)

    def effective_scale(self, w: torch.Tensor) -> torch.Tensor:
        scale = fused_or_eager(_libra_forward, _rows(w.detach()), STD_EPS)[3]
        return scale.view(-1, *([1] * (w.dim() - 1)))

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return fused_or_eager(_libra_forward, _rows(w.detach()), STD_EPS)[0].view_as(w)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training and self.eval_policy == "latent":
            return w
        return _LibraSign.apply(w, self.t, self.k)

    def extra_repr(self) -> str:
        return f"t_min={self.t_min}, t_max={self.t_max}, {super().extra_repr()}"
