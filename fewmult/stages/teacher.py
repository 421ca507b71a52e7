"""``teacher=RUN_DIR``: a finished run's network whose softmax the student learns to match
(ReActNet's distribution loss, :func:`fewmult.nn.losses.distribution_loss`)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from fewmult.config import check_teacher_weight
from fewmult.errors import UserError
from fewmult.nn.losses import distribution_loss
from fewmult.stages.init_from import recorded_network


class Teacher:
    """A frozen network (eval mode, no gradients) and the weight ``w`` of its loss: the student
    minimizes ``(1 - w) * loss + w * KL(p_teacher || p_student)``; ReActNet trains with ``w = 1``.

    Deliberately not an ``nn.Module`` attribute of the LightningModule: its weights stay out of the
    student's checkpoints and optimizer, and Lightning's ``train()`` calls never reach its BN layers.
    """

    def __init__(self, network: nn.Module, weight: float) -> None:
        self.network = network.eval().requires_grad_(False)
        self.weight = weight

    def to(self, device: torch.device) -> Teacher:
        self.network.to(device)
        return self

    def divergence(self, x: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """The distribution loss of ``student_logits`` (N, C) against the teacher's on the same
        (augmented) batch ``x``."""
        with torch.no_grad():
            teacher_logits = self.network(x)
        return distribution_loss(student_logits, teacher_logits.reshape(student_logits.shape))


def load_teacher(cfg: DictConfig, input_kind: str) -> Teacher:
    """``cfg.teacher``'s best network, refused in one line unless it was trained on this dataset (the
    same classes, the same preprocessing of the same batch)."""
    run_dir = Path(cfg.teacher).expanduser()
    if input_kind != "images":
        raise UserError(
            f"teacher= is for image classifiers; dataset={cfg.dataset.name} is text (a character model "
            "teacher is not supported yet). Leave teacher out."
        )
    try:
        taught, network, _ = recorded_network(run_dir)
    except UserError as exc:
        raise UserError(f"teacher={cfg.teacher}: {exc}") from exc
    theirs, ours = ((c.dataset.name, c.dataset.get("preprocess")) for c in (taught, cfg))
    if theirs != ours:
        raise UserError(
            f"teacher={cfg.teacher} was trained on dataset={theirs[0]} (preprocess {theirs[1]}), this run "
            f"on dataset={ours[0]} (preprocess {ours[1]}): its scores would mean other classes or read "
            "other inputs. Give a teacher trained on this dataset with this preprocessing."
        )
    check_teacher_weight(cfg.teacher_weight)
    return Teacher(network, float(cfg.teacher_weight))
