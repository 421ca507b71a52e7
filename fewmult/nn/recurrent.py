"""An LSTM layer whose eight gate matrices pass through their own weight quantizers.

Hou et al. 2017 binarize the input-to-hidden and hidden-to-hidden matrices of each of the four
gates with its own scale (papers.md A.11): eight :class:`QuantLinear` layers, so LAB keeps eight
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

from fewmult.nn.layers import QuantLinear
from fewmult.qbp import QBPLinearFunction, QBPSettings

GATES = ("input", "forget", "cell", "output")


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


class QuantLSTM(nn.Module):
    """One LSTM layer over one-hot inputs (token codes), quantized gate by gate.

    ``i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (W_x[gate] x_t + b[gate] + W_h[gate] h_{t-1})``,
    ``c_t = f c_{t-1} + i g``, ``h_t = o * act(c_t)`` with ``act = tanh``, or ``sign`` for the
    weight-and-activation methods (LAB2: ``h = o * sign(c)``, papers.md A.11).

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
        cell_activation: Callable[[], nn.Module] | None = None,
        grad_clip: float | None = 5.0,
        init_range: float = 0.08,
        forget_bias: float = 1.0,
        qbp: QBPSettings | None = None,
    ) -> None:
        super().__init__()

        def gate(n_in: int, bias: bool, qbp: QBPSettings | None = None) -> QuantLinear:
            quantizer = weight_quantizer() if weight_quantizer else None
            return QuantLinear(n_in, hidden_size, bias=bias, weight_quantizer=quantizer, qbp=qbp)

        self.input_weights = nn.ModuleDict({g: gate(vocab_size, bias=True) for g in GATES})
        self.hidden_weights = nn.ModuleDict({g: gate(hidden_size, bias=False, qbp=qbp) for g in GATES})
        self.cell_activation = cell_activation() if cell_activation else nn.Tanh()
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
            return QBPLinearFunction.apply(h, w_h, None, self.qbp, key)
        return h @ w_h.t()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (batch, time) int64 -> hidden states (batch, time, hidden)."""
        w_x = torch.cat([m.effective_weight() for m in self.input_weights.values()])  # (4H, V)
        w_h = torch.cat([m.effective_weight() for m in self.hidden_weights.values()])  # (4H, H)
        bias = torch.cat([m.bias for m in self.input_weights.values()])
        inputs = F.embedding(tokens, w_x.t().contiguous()) + bias  # W_x x_t + b for every t at once
        h = inputs.new_zeros(len(tokens), self.hidden_size)
        c = torch.zeros_like(h)
        states = []
        # unbind, not inputs[:, t]: the backward of each slice would fill a sequence-sized zero tensor
        for x_t in inputs.unbind(1):
            gates = clip_gradient(x_t + self._recurrent(h, w_h), self.grad_clip)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * self.cell_activation(c)
            states.append(h)
        return torch.stack(states, dim=1)
