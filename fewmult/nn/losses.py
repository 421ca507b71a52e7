"""The losses of the papers: squared hinge (L2-SVM output), and cross-entropy as an option."""

from __future__ import annotations

import torch
from torch import nn


class SquaredHingeLoss(nn.Module):
    """One-vs-all squared hinge: ``sum_k max(0, 1 - t_k y_k)^2`` with ``t = +-1`` targets.

    ``class_reduction="sum"`` sums over classes and averages over the batch, as Lin et al.'s code
    (this sets the scale SGD's learning rate acts on). ``"mean"`` averages over batch and classes,
    as Hou et al.'s code; under Adam the two differ only through Adam's epsilon.
    """

    def __init__(self, class_reduction: str = "sum") -> None:
        super().__init__()
        if class_reduction not in ("sum", "mean"):
            raise ValueError(f"class_reduction must be 'sum' or 'mean', got {class_reduction!r}")
        self.class_reduction = class_reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # scatter, not F.one_hot: one_hot reads the labels' min and max back to the host (a sync)
        signs = torch.full_like(logits, -1).scatter_(1, target.unsqueeze(1), 1)
        per_unit = (1 - signs * logits).clamp_min(0).square()
        if self.class_reduction == "sum":
            return per_unit.sum(dim=1).mean()
        return per_unit.mean()


def distribution_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """ReActNet's distribution loss (Liu et al. 2020, arXiv 2003.03488, Sec. 4.2):
    ``KL(p_T || p_S) = mean_n sum_c p_T(c) (log p_T(c) - log p_S(c))`` between the teacher's and the
    student's softmax, per example, averaged over the batch.

    It differs from the authors' cross-entropy with soft targets by the teacher's entropy, a constant
    of the student, so the gradients are the same and a perfect student scores 0. Computed in float32:
    under autocast the logits may be bfloat16, whose log-probabilities lose the small differences.
    """
    student = torch.log_softmax(student_logits.float(), dim=-1)
    teacher = torch.log_softmax(teacher_logits.float(), dim=-1)
    return nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")
