"""The explicit link from LAB's quantizer to the optimizer state it needs (no globals)."""

from __future__ import annotations

import torch

from fewmult.errors import UserError


class AdamSecondMoment:
    """Reads ``exp_avg_sq`` of one parameter from an Adam-family optimizer.

    ``torch.optim.Adam``'s ``exp_avg_sq`` is ``v_t = beta2 v_{t-1} + (1 - beta2) g_t^2`` without bias
    correction, exactly the authors' ``acc`` (docs/papers.md D.17). The state lives in the optimizer, so
    it is restored with the optimizer on resume and is identical on every DDP rank (the gradient
    is all-reduced before the step).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, param: torch.nn.Parameter) -> None:
        if "betas" not in optimizer.defaults:
            raise UserError(
                f"LAB reads Adam's second moment, but the optimizer is {type(optimizer).__name__}; "
                "use optim=adam (the paper's optimizer)."
            )
        self.optimizer = optimizer
        self.param = param

    def __call__(self) -> torch.Tensor | None:
        state = self.optimizer.state.get(self.param)
        return None if not state else state.get("exp_avg_sq")
