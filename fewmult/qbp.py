"""Quantized back propagation (Lin et al. 2016, Algorithm 1; docs/papers.md A.5).

The weight gradient of a layer, ``dL/dW = delta^T x``, is computed with the layer input ``x``
rounded to a signed power of two, so that its products become shifts. The error signals
(``dL/dx = delta W``), the bias and batch-norm gradients stay full precision, as in the authors'
code. The rounded input is what the layer saves for its backward pass, either as a float tensor or,
with ``compact=True``, as one small signed integer per element (sign and exponent), 4x smaller.

Under autocast (``trainer.precision=bf16-mixed`` or ``16-mixed``) the forward products run in the
autocast dtype as any layer's do, and the backward products run in the dtype of the incoming
gradient; the gradients are returned to the dtypes of the float32 weights and inputs by autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from fewmult.errors import UserError
from fewmult.quant.fusion import fused_or_eager, run_fused
from fewmult.quant.rng import hashed_uniform


def _exponent_and_fraction(x: torch.Tensor, exp_min: int | None, exp_max: int | None):
    """``e = floor(log2|x|)`` (clipped), and ``|x| / 2^e - 1``, the probability of rounding up."""
    _, exponent = torch.frexp(x)  # x = m * 2**exponent with |m| in [0.5, 1)
    e = exponent.sub_(1)
    if exp_min is not None or exp_max is not None:
        e = e.clamp_(min=exp_min, max=exp_max)
    frac = torch.ldexp(x.abs(), -e).sub_(1)
    return e, frac


def pow2_quantize(
    x: torch.Tensor,
    exp_min: int | None = None,
    exp_max: int | None = None,
    stochastic: bool = True,
) -> torch.Tensor:
    """Round ``x`` to ``sign(x) * 2^k`` (Lin et al. 2016, Algorithm 1).

    With ``e = floor(log2|x|)``, ``x`` becomes ``sign(x) 2^(e+1)`` with probability
    ``p = |x|/2^e - 1`` and ``sign(x) 2^e`` otherwise, so ``E[q(x)] = x`` (unbiased) when the
    exponent is not clipped. ``exp_min``/``exp_max`` clip ``e`` before rounding, as the authors' code
    does for convolutions with [-4, 3]: magnitudes then lie in ``[2^exp_min, 2^(exp_max+1)]``;
    smaller inputs round up to ``2^exp_min`` and larger ones saturate (biased, by design). Zero
    stays zero. ``stochastic=False`` rounds to the nearer of the two powers (``p >= 0.5``).
    """
    e, frac = _exponent_and_fraction(x, exp_min, exp_max)
    up = torch.rand_like(frac) < frac if stochastic else frac >= 0.5
    return torch.ldexp(torch.sign(x), e.add_(up))


def _pow2_from_bits(
    x: torch.Tensor, key: torch.Tensor, exp_min: int | None, exp_max: int | None
) -> torch.Tensor:
    """:func:`pow2_quantize` on the float32 bit pattern with hashed uniforms (fused by torch.compile).

    ``|x| = 2^e (1 + m 2^-23)``, so the exponent and the probability of rounding up are read off
    the bits exactly. Magnitudes below 2^-126 (float32 subnormals) become zero.
    """
    bits = x.view(torch.int32)
    biased = (bits >> 23) & 0xFF
    e = biased - 127
    if exp_min is not None:
        e = e.clamp(min=exp_min)
    if exp_max is not None:
        e = e.clamp(max=exp_max)
    inverse_power = ((127 - e) << 23).view(torch.float32)  # 2^-e
    up = hashed_uniform(x, key) < x.abs() * inverse_power - 1
    rounded = (((e + up.to(torch.int32) + 127) << 23) | (bits & -(2**31))).view(torch.float32)
    return torch.where(biased == 0, torch.zeros_like(x), rounded)


def _clipped_counts(x: torch.Tensor, low: float, high: float, zero_raised: bool) -> torch.Tensor:
    """How many ``|x|`` lie below ``low`` (zeros only if ``zero_raised``) and at or above ``high``."""
    a = x.abs()
    raised = (a < low) if zero_raised else (a < low) & (a > 0)
    return torch.stack([raised.sum(), (a >= high).sum()])


QBP_ERRORS = ("exact", "after_bn")


class _ErrorBox:
    """The error at one forward pass's BN output, kept for that pass's weight gradient."""

    grad: torch.Tensor | None = None


class ErrorAfterBN:
    """Links a dense layer with the :class:`TapError` after its batch norm (Lin et al.'s dense QBP).

    Every training forward of the layer opens a new box, the tap that follows takes it, and the
    tap's backward fills it with the error at the BN output before the layer's backward reads it.
    A box per forward pass lives exactly as long as that pass's graph, so repeated forwards before
    one backward (several losses, gradient accumulation) each get their own error.
    """

    def __init__(self) -> None:
        self._open: _ErrorBox | None = None

    def open(self) -> _ErrorBox:
        self._open = _ErrorBox()
        return self._open

    def take(self) -> _ErrorBox:
        box, self._open = self._open, None
        if box is None:
            raise RuntimeError(
                "fewmult.qbp.TapError ran without a forward of its QBP layer just before it: place it "
                "right after the batch norm that follows that layer (PaperNet does)."
            )
        return box


class _Tap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, box: _ErrorBox) -> torch.Tensor:
        ctx.box = box
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.box.grad = grad
        return grad, None


class TapError(torch.nn.Module):
    """Identity placed after a dense layer's BN; in training, its backward keeps the error it passes."""

    def __init__(self, link: ErrorAfterBN) -> None:
        super().__init__()
        self.link = link

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Tap.apply(x, self.link.take()) if self.training else x


@dataclass(frozen=True)
class QBPSettings:
    """How a layer rounds its saved input: exponent range, stochastic rounding, compact storage."""

    exp_min: int | None = -4
    exp_max: int | None = 3
    stochastic: bool = True
    compact: bool = False
    # Lin et al.'s code: log2(0) = -inf is clipped to exp_min and sign(0) taken as -1, so a zero
    # input rounds to -2^exp_min (docs/papers.md A.5); False keeps zero
    zero_to_min: bool = False
    # which error multiplies q(x) in a dense layer's weight gradient: "exact" (dL/d(x W^T), the
    # paper's form) or "after_bn" (dL/d(BN output), Lin et al.'s code, which ignores BN's Jacobian)
    error: str = "exact"

    def __post_init__(self) -> None:
        if self.error not in QBP_ERRORS:
            raise UserError(f"qbp_settings.*.error must be one of {QBP_ERRORS}, got {self.error!r}.")

    def _offset_and_dtype(self) -> tuple[int, torch.dtype]:
        if self.exp_min is not None and self.exp_max is not None and self.exp_max - self.exp_min + 2 <= 127:
            return self.exp_min - 1, torch.int8
        return -152, torch.int16  # float32 exponents of powers of two: -149 ... 128

    def round(self, x: torch.Tensor, key: torch.Tensor | None = None) -> torch.Tensor:
        """Power-of-two rounding; with a stream ``key`` the fused hashed-uniform kernel is used.

        Half-precision inputs are rounded through float32, which holds them exactly, so the
        rounding is the same exact, unbiased one; every power of two in the result is one that the
        input's dtype holds (for float16 the exponent is capped so that rounding up stays finite).
        """
        if x.dtype in (torch.float16, torch.bfloat16):
            top = int(math.log2(torch.finfo(x.dtype).max))  # the largest power of two is 2^top
            capped = replace(self, exp_max=top - 1 if self.exp_max is None else min(self.exp_max, top - 1))
            return capped.round(x.float(), key).to(x.dtype)
        q = None
        if self.stochastic and key is not None and x.dtype == torch.float32:
            q = run_fused(_pow2_from_bits, x.reshape(-1), key, self.exp_min, self.exp_max)
            q = None if q is None else q.view_as(x)
        if q is None:
            q = pow2_quantize(x, self.exp_min, self.exp_max, self.stochastic)
        if self.zero_to_min and self.exp_min is not None:
            q = torch.where(x == 0, torch.full_like(q, -(2.0**self.exp_min)), q)
        return q

    def clipped_counts(self, x: torch.Tensor) -> torch.Tensor:
        """How many entries of ``x`` get their exponent raised to ``exp_min`` and how many lowered to
        ``exp_max``, as an int64 tensor of two (on ``x``'s device: nothing waits for it).

        ``floor(log2|x|) < exp_min`` is ``|x| < 2^exp_min``, and ``> exp_max`` is ``|x| >= 2^(exp_max+1)``.
        A zero counts as raised only with ``zero_to_min`` (it becomes ``-2^exp_min``; else it stays 0).
        """
        low = 2.0**self.exp_min if self.exp_min is not None else 0.0
        high = 2.0 ** (self.exp_max + 1) if self.exp_max is not None else math.inf
        return fused_or_eager(_clipped_counts, x.detach().reshape(-1), low, high, self.zero_to_min)

    def encode(self, x: torch.Tensor, key: torch.Tensor | None = None) -> torch.Tensor:
        """The rounded input as saved for backward (a float tensor, or sign * (exponent - offset))."""
        q = self.round(x, key)
        if not self.compact:
            return q
        offset, dtype = self._offset_and_dtype()
        _, exponent = torch.frexp(q)
        return torch.sign(q).mul_(exponent.sub_(1 + offset)).to(dtype)

    def decode(self, saved: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The rounded input in ``dtype`` (that of the gradient it is multiplied with)."""
        if not self.compact:
            return saved.to(dtype)
        offset, _ = self._offset_and_dtype()
        code = saved.to(torch.int32)
        return torch.ldexp(torch.sign(code).to(dtype), code.abs().add_(offset))


class QBPLinearFunction(torch.autograd.Function):
    """``y = x W^T + b``; backward: ``dL/dx = g W`` (exact), ``dL/dW = e^T q(x)``, ``dL/db = sum g``.

    ``e = g``, or with ``after_bn`` (the box of :meth:`ErrorAfterBN.open`, filled by the tap after the
    layer's BN) the error at the BN output, as Lin et al.'s code computes dense weight gradients.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, settings: QBPSettings, key=None, after_bn: _ErrorBox | None = None):
        ctx.settings, ctx.has_bias, ctx.after_bn = settings, bias is not None, after_bn
        ctx.save_for_backward(settings.encode(x.detach(), key), weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        saved, weight = ctx.saved_tensors
        grad_x = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            qx = ctx.settings.decode(saved, grad.dtype)
            error = grad
            if ctx.after_bn is not None:
                if ctx.after_bn.grad is None:
                    raise RuntimeError(
                        "QBP with error='after_bn' found no error after the layer's batch norm: put a "
                        "fewmult.qbp.TapError(layer.error_after_bn) right after that BN (PaperNet does)."
                    )
                error = ctx.after_bn.grad.to(grad.dtype)
            grad_w = error.reshape(-1, error.shape[-1]).T @ qx.reshape(-1, qx.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None, None, None


class QBPConv2dFunction(torch.autograd.Function):
    """2-D convolution; backward: exact input gradient, weight gradient from ``q(x)``.

    ``geometry`` is ``(stride, padding, dilation, groups)`` as ``nn.Conv2d`` holds them.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, geometry, settings: QBPSettings, key=None):
        stride, padding, dilation, groups = geometry
        if isinstance(padding, str):
            raise UserError(
                f"QBP convolutions take numeric padding, got padding={padding!r}; give the sizes."
            )
        ctx.settings, ctx.geometry = settings, (list(stride), list(padding), list(dilation), groups)
        ctx.bias_shape = None if bias is None else list(bias.shape)
        ctx.save_for_backward(settings.encode(x.detach(), key), weight)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        saved, weight = ctx.saved_tensors
        qx = ctx.settings.decode(saved, grad.dtype)
        stride, padding, dilation, groups = ctx.geometry
        # One fused call: the input gradient depends on the weight only, so computing it "at" q(x)
        # is exact, and the weight gradient comes from q(x) as QBP wants.
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad,
            qx,
            weight.to(grad.dtype),
            ctx.bias_shape,
            stride,
            padding,
            dilation,
            False,
            [0, 0],
            groups,
            [
                ctx.needs_input_grad[0],
                ctx.needs_input_grad[1],
                ctx.bias_shape is not None and ctx.needs_input_grad[2],
            ],
        )
        return grad_x, grad_w, grad_b, None, None, None
