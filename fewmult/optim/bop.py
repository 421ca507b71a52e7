"""Bop, the optimizer that flips binary weights instead of moving latent ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from fewmult.errors import UserError


class Bop(torch.optim.Adam):
    """Bop (Helwegen et al. 2019, "Latent Weights Do Not Exist", arXiv 1906.02107, Algorithm 1).

    For every binary weight ``w`` (a parameter group marked ``binary: True``, see
    :func:`fewmult.optim.parameter_groups`), with its gradient ``g`` (straight through the sign):

        m <- (1 - gamma) m + gamma g                       (exponential moving average, m_0 = 0)
        w <- -w   if |m| > threshold and sign(m) = sign(w), else w

    so a weight flips when its gradient has pushed it towards the other sign consistently enough;
    there is no learning rate for binary weights. Only the sign of ``w`` is read: fewmult's sign
    quantizers compute with ``sign(w)`` (times a scale that a flip leaves unchanged, since a flip
    keeps ``|w|``), so a layer's latent weight simply holds its binary weight with a fixed
    magnitude. sign(0) = +1, as the quantizers; a weight that is exactly 0 cannot flip (the layers'
    uniform initialization gives none).

    Every other parameter group (BN, first and last layer, RPReLU, ...) is trained by Adam with
    ``lr``, ``betas``, ``eps`` and its group's ``weight_decay``, as in the paper (``fused``: Adam's
    one-kernel step, as ``conf/optim/adam.yaml``).

    Args:
        gamma: adaptivity rate, the paper's CIFAR-10 value 1e-4 by default.
        threshold: tau, 1e-8 by default (the paper's CIFAR-10 value).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        gamma: float = 1e-4,
        threshold: float = 1e-8,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        if not 0 < gamma <= 1 or threshold < 0:
            raise UserError(
                f"optim=bop needs 0 < gamma <= 1 and threshold >= 0, got {gamma} and {threshold}."
            )
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, fused=fused)
        for group in self.param_groups:
            group.setdefault("binary", False)
            group.setdefault("gamma", gamma)
            group.setdefault("threshold", threshold)
        if not any(group["binary"] for group in self.param_groups):
            raise UserError(
                "Bop has no parameter group marked binary: build its groups with "
                "fewmult.optim.parameter_groups(model, binary_apart=True)."
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        set_aside = []
        for group in self.param_groups:
            if not group["binary"]:
                continue
            for w in group["params"]:
                if w.grad is None:
                    continue
                state = self.state[w]
                if not state:  # "step" too: Adam's __setstate__ (a resumed checkpoint) reads it
                    state["step"] = torch.tensor(0.0)
                    state["grad_average"] = torch.zeros_like(w, memory_format=torch.preserve_format)
                state["step"] += 1
                m = state["grad_average"]
                m.lerp_(w.grad, group["gamma"])
                flip = (m.abs() > group["threshold"]) & ((m >= 0) == (w >= 0))
                w.copy_(torch.where(flip, -w, w))
                set_aside.append((w, w.grad))
                w.grad = None  # Adam skips a parameter without a gradient
        super().step()
        for w, grad in set_aside:
            w.grad = grad
        return loss
