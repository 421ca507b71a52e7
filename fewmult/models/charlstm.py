"""Hou et al. 2017's character-level language model: one quantized LSTM layer, a full-precision softmax."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fewmult.errors import UserError, require_positive
from fewmult.models.base import LayerUse
from fewmult.nn.layers import QuantLinear
from fewmult.nn.recurrent import GATES, QuantLSTM
from fewmult.qbp import QBPSettings


class CharLSTM(nn.Module):
    """Token codes (batch, time) -> next-character scores (batch, time, vocabulary).

    The LSTM's eight gate matrices are quantized by the method (docs/papers.md A.11); the output layer
    (hidden -> vocabulary, initialized Normal(0, 0.01)) stays in full precision, as in the authors'
    code. ``num_classes`` is the vocabulary size: the input is one-hot over the same symbols.

    Args:
        input_shape: ``(seq_len,)``, the window length (only used to check the data).
        num_classes: the vocabulary size.
        hidden_size: LSTM cells (512 in the paper).
        grad_clip, init_range, forget_bias: see :class:`~fewmult.nn.recurrent.QuantLSTM`.
        output_init_std: standard deviation of the output layer's initial weights.
        weight_quantizer: builds one quantizer per gate matrix (None: full precision).
        activation: builds the cell-output nonlinearity (None: tanh; ``sign`` for LAB2, BNN, XNOR).
        qbp_dense: QBP settings of the recurrent matrices and the output layer (None: off).
        qbp_conv: accepted for the models' common interface; there are no convolutions.
        name: the architecture's name in configs and results.
    """

    input_kind = "tokens"

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden_size: int = 512,
        grad_clip: float | None = 5.0,
        init_range: float = 0.08,
        forget_bias: float = 1.0,
        output_init_std: float = 0.01,
        weight_quantizer: Callable[[], nn.Module] | None = None,
        activation: Callable[..., nn.Module] | None = None,
        qbp_dense: QBPSettings | None = None,
        qbp_conv: QBPSettings | None = None,
        name: str = "lstm",
    ) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise UserError(
                f"model=lstm reads windows of character codes, but the data gives inputs of shape "
                f"{tuple(input_shape)}; use dataset=text, warpeace or linux."
            )
        require_positive(hidden_size, "model.hidden_size")
        self.lstm = QuantLSTM(
            num_classes,
            hidden_size,
            weight_quantizer=weight_quantizer,
            cell_activation=activation,
            grad_clip=grad_clip,
            init_range=init_range,
            forget_bias=forget_bias,
            qbp=qbp_dense,
        )
        self.out = QuantLinear(hidden_size, num_classes, bias=True, qbp=qbp_dense)
        with torch.no_grad():
            self.out.weight.normal_(0.0, output_init_std)
        self.name = name

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(tokens))

    def layer_uses(self, input_shape: tuple[int, ...]) -> list[LayerUse]:
        """Per example of ``seq_len`` characters: input lookups (no products), the recurrent
        products at every step and the softmax layer at every step. A gate's units are counted
        once, with its recurrent matrix (the lookup adds into the same units)."""
        (steps,) = input_shape
        hidden, vocab = self.lstm.hidden_size, self.out.out_features
        uses = [LayerUse(f"x_{g}", self.lstm.input_weights[g], 0, 0) for g in GATES]
        uses += [
            LayerUse(f"h_{g}", self.lstm.hidden_weights[g], steps * hidden * hidden, steps * hidden)
            for g in GATES
        ]
        return [*uses, LayerUse("out", self.out, steps * hidden * vocab, steps * vocab)]
