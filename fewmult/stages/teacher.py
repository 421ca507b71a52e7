"""``teacher=RUN_DIR``: a finished run's network whose softmax the student learns to match
(ReActNet's distribution loss, :func:`fewmult.nn.losses.distribution_loss`); on ImageNet also
``teacher=torchvision:ARCH`` with ``teacher_weights=FILE``, torchvision's architecture with weights
the user gives (ReActNet's teacher is a real-valued ResNet-34; fewmult downloads nothing)."""

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


TORCHVISION = "torchvision:"
TORCHVISION_INPUTS = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}  # its weights' inputs


def is_torchvision_teacher(teacher: str | None) -> bool:
    return bool(teacher) and str(teacher).startswith(TORCHVISION)


def teacher_weights_file(cfg: DictConfig) -> Path:
    """``teacher_weights`` of a ``teacher=torchvision:ARCH``, refused in one line when not given or absent."""
    arch = str(cfg.teacher).removeprefix(TORCHVISION)
    weights = cfg.get("teacher_weights")
    if not weights or not Path(weights).expanduser().is_file():
        where = f"{weights} does not exist" if weights else "none was given"
        raise UserError(
            f"teacher={cfg.teacher} needs teacher_weights=FILE, the state dict of torchvision's {arch} "
            f"trained on ImageNet ({where}). fewmult downloads nothing: fetch the file (e.g. "
            f"torchvision.models.{arch.upper()}_Weights.IMAGENET1K_V1's URL) on a machine with network "
            "access and give its path."
        )
    return Path(weights).expanduser()


def torchvision_teacher(cfg: DictConfig, num_classes: int) -> nn.Module:
    """torchvision's ``ARCH`` with ``num_classes`` outputs (the dataset's: 1000 on ImageNet) and the
    weights of ``teacher_weights``, for ImageNet inputs normalized as its weights expect."""
    import torchvision

    arch = str(cfg.teacher).removeprefix(TORCHVISION)
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(
            f"teacher={cfg.teacher}: torchvision has no classification model {arch!r} "
            "(e.g. resnet34, resnet50)."
        )
    if cfg.dataset.name != "imagenet" or any(
        tuple(cfg.dataset.get(key, ())) != value for key, value in TORCHVISION_INPUTS.items()
    ):
        raise UserError(
            f"teacher={cfg.teacher} is an ImageNet network that reads images normalized with ImageNet's "
            f"mean and std; this run is dataset={cfg.dataset.name} with other inputs. Give teacher=RUN_DIR, "
            "a fewmult run on this dataset."
        )
    path = teacher_weights_file(cfg)
    network = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    try:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise UserError(
            f"teacher_weights={path} are not the weights of torchvision's {arch} with {num_classes} classes "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}). Give that model's state dict file."
        ) from None
    return network


def load_teacher(cfg: DictConfig, input_kind: str, num_classes: int = 1000) -> Teacher:
    """``cfg.teacher``'s best network, refused in one line unless it was trained on this dataset (the
    same classes, the same preprocessing of the same batch); or torchvision's
    (:func:`torchvision_teacher`)."""
    if is_torchvision_teacher(cfg.teacher):
        check_teacher_weight(cfg.teacher_weight)
        return Teacher(torchvision_teacher(cfg, num_classes), float(cfg.teacher_weight))
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
