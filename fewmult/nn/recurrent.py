"""An LSTM layer whose eight gate matrices pass through their own weight quantizers.

Hou et al. 2017 binarize the input-to-hidden and hidden-to-hidden matrices of each of the four
gates with its own scale (docs/papers.md A.11): eight :class:`QuantLinear` layers, so LAB keeps eight
curvature vectors and eight alphas, and every quantizer of the registry works unchanged. The
weights are quantized once per forward pass and shared over time steps, as in the paper.

The cell follows Lasagne's ``LSTMLayer`` as the authors configured it: no peepholes, gate order
input, forget, cell, output, zero initial state for every sequence, and ``grad_clipping``: the
gradient with respect to the gate pre-activations is clipped at every time step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fewmult.errors import UserError
from fewmult.nn.layers import QuantLinear
from fewmult.qbp import QBPLinearFunction, QBPSettings
from fewmult.quant.activations import SignActivation
from fewmult.quant.base import sign_plus
from fewmult.quant.fusion import fused_or_eager

GATES = ("input", "forget", "cell", "output")
# the order of the gates in the concatenated matrices: the three sigmoid gates first, so that one
# sigmoid and one tanh cover all four (the parameters stay one module per gate, in GATES order)
STACKED = ("input", "forget", "output", "cell")


class _ClipGradient(torch.autograd.Function):
    """Identity forward; backward clamps the gradient to [-bound, bound] (Theano's ``grad_clip``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.bound = bound
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.clamp(-ctx.bound, ctx.bound), None


def clip_gradient(x: torch.Tensor, bound: float | None) -> torch.Tensor:
    return x if bound is None else _ClipGradient.apply(x, bound)


def _cell_forward(pre: torch.Tensor, c_prev: torch.Tensor, sign_cell: bool):
    """Gates ``(i, f, o, g)`` from the pre-activations in STACKED order, the new cell and hidden state."""
    n = c_prev.shape[1]
    ifo, g = pre[:, : 3 * n].sigmoid(), pre[:, 3 * n :].tanh()
    i, f, o = ifo[:, :n], ifo[:, n : 2 * n], ifo[:, 2 * n :]
    c = f * c_prev + i * g
    act = sign_plus(c) if sign_cell else c.tanh()
    return o * act, c, ifo, g, act


def _cell_backward(dh, dc, ifo, g, act, c, c_prev, bound: float, sign_cell: bool):
    """Gradients of the pre-activations (clipped to [-bound, bound]) and of the previous cell state."""
    n = c_prev.shape[1]
    i, f, o = ifo[:, :n], ifo[:, n : 2 * n], ifo[:, 2 * n :]
    da = dh * o
    # sign: hard tanh's straight-through gradient (SignActivation); tanh: 1 - tanh^2
    dc = dc + (da * (c.abs() <= 1) if sign_cell else da * (1 - act * act))
    difo = torch.cat([dc * g, dc * c_prev, dh * act], dim=1) * ifo * (1 - ifo)
    dpre = torch.cat([difo, dc * i * (1 - g * g)], dim=1)
    return dpre.clamp(-bound, bound), dc * f


class _FusedCell(torch.autograd.Function):
    """One LSTM time step after the recurrent product, with Lasagne's gradient clipping.

    The same arithmetic as the unfused step (sigmoid and tanh gates, ``c = f c + i g``, ``h = o
    act(c)``, the gate pre-activation gradient clamped), written as one forward and one backward
    function that torch.compile fuses into a few kernels (eager where it cannot compile): ~30
    autograd nodes and kernels per time step become a handful.
    """

    @staticmethod
    def forward(ctx, pre, c_prev, bound: float, sign_cell: bool):
        h, c, ifo, g, act = fused_or_eager(_cell_forward, pre, c_prev, sign_cell)
        ctx.save_for_backward(ifo, g, act, c, c_prev)
        ctx.bound, ctx.sign_cell = bound, sign_cell
        return h, c

    @staticmethod
    def backward(ctx, dh, dc):
        ifo, g, act, c, c_prev = ctx.saved_tensors
        dh = torch.zeros_like(c) if dh is None else dh
        dc = torch.zeros_like(c) if dc is None else dc
        dpre, dc_prev = fused_or_eager(
            _cell_backward, dh, dc, ifo, g, act, c, c_prev, ctx.bound, ctx.sign_cell
        )
        return dpre, dc_prev, None, None


class QuantLSTM(nn.Module):
    """One LSTM layer over one-hot inputs (token codes), quantized gate by gate.

    ``i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (W_x[gate] x_t + b[gate] + W_h[gate] h_{t-1})``,
    ``c_t = f c_{t-1} + i g``, ``h_t = o * act(c_t)`` with ``act = tanh``, or ``sign`` for the
    weight-and-activation methods (LAB2: ``h = o * sign(c)``, docs/papers.md A.11).

    Args:
        vocab_size: one-hot input size. ``W_x x_t`` is a column lookup, so it costs no multiplication.
        hidden_size: cells.
        weight_quantizer: builds one quantizer per gate matrix (None: full precision).
        cell_activation: builds the cell-output nonlinearity (None: tanh).
        grad_clip: bound on the gate pre-activation gradients (None: no clipping).
        init_range: gate weights start uniform in [-init_range, init_range].
        forget_bias: initial bias of the forget gate (the other biases start at 0).
        qbp: quantized back propagation of the recurrent matrices (the input lookup has no product).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        weight_quantizer: Callable[[], nn.Module] | None = None,
        cell_activation: Callable[..., nn.Module] | None = None,
        grad_clip: float | None = 5.0,
        init_range: float = 0.08,
        forget_bias: float = 1.0,
        qbp: QBPSettings | None = None,
    ) -> None:
        super().__init__()
        if qbp is not None and qbp.error == "after_bn":  # the recurrent product would take the exact one
            raise UserError(
                "qbp_settings.dense.error=after_bn takes a layer's error after its batch norm, and "
                "model=lstm has none; use qbp_settings=paper (or qbp_settings.dense.error=exact)."
            )

        def gate(n_in: int, bias: bool, qbp: QBPSettings | None = None) -> QuantLinear:
            quantizer = weight_quantizer() if weight_quantizer else None
            return QuantLinear(n_in, hidden_size, bias=bias, weight_quantizer=quantizer, qbp=qbp)

        self.input_weights = nn.ModuleDict({g: gate(vocab_size, bias=True) for g in GATES})
        self.hidden_weights = nn.ModuleDict({g: gate(hidden_size, bias=False, qbp=qbp) for g in GATES})
        self.cell_activation = cell_activation(channels=hidden_size) if cell_activation else nn.Tanh()
        self.hidden_size, self.grad_clip, self.qbp = hidden_size, grad_clip, qbp
        with torch.no_grad():
            for layer in (*self.input_weights.values(), *self.hidden_weights.values()):
                layer.weight.uniform_(-init_range, init_range)
            for name, layer in self.input_weights.items():
                layer.bias.fill_(forget_bias if name == "forget" else 0.0)

    def _recurrent(self, h: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
        if self.qbp is not None and self.training:
            # the four recurrent matrices multiply as one; the input gate's stream draws for them all
            key = self.hidden_weights["input"].qbp_stream.next_key()
            self.hidden_weights["input"].count_qbp_clipping(h)  # one input h for the four gates
            return QBPLinearFunction.apply(h, w_h, None, self.qbp, key)
        return h @ w_h.t()

    def _fusable(self) -> bool:
        """The fused step knows the two cell activations of the methods (tanh, sign) and needs a bound."""
        return self.grad_clip is not None and type(self.cell_activation) in (nn.Tanh, SignActivation)

    def _step(self, pre: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._fusable():
            return _FusedCell.apply(pre, c, self.grad_clip, isinstance(self.cell_activation, SignActivation))
        n = self.hidden_size
        pre = clip_gradient(pre, self.grad_clip)
        i, f, o, g = pre[:, :n], pre[:, n : 2 * n], pre[:, 2 * n : 3 * n], pre[:, 3 * n :]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * self.cell_activation(c), c

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (batch, time) int64 -> hidden states (batch, time, hidden)."""
        w_x = torch.cat([self.input_weights[g].effective_weight() for g in STACKED])  # (4H, V)
        w_h = torch.cat([self.hidden_weights[g].effective_weight() for g in STACKED])  # (4H, H)
        bias = torch.cat([self.input_weights[g].bias for g in STACKED])
        inputs = F.embedding(tokens, w_x.t().contiguous()) + bias  # W_x x_t + b for every t at once
        h = inputs.new_zeros(len(tokens), self.hidden_size)
        c = torch.zeros_like(h)
        states = []
        # unbind, not inputs[:, t]: the backward of each slice would fill a sequence-sized zero tensor
        for x_t in inputs.unbind(1):
            h, c = self._step(x_t + self._recurrent(h, w_h), c)
            states.append(h)
        return torch.stack(states, dim=1)
