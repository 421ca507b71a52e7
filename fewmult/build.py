"""From a composed config to the objects of a run (shared by train, count, tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch import nn

from fewmult.config import check_config
from fewmult.data import TensorDataModule
from fewmult.errors import UserError
from fewmult.models.base import input_kind_of
from fewmult.module import ClassifierModule
from fewmult.optim import parameter_groups
from fewmult.qbp import QBPSettings
from fewmult.quant import quantizer_class
from fewmult.stages.init_from import matching_weights, trained_weights, weight_differences
from fewmult.stages.teacher import load_teacher
from fewmult.stages.two_stage import stage1_config


def qbp_settings(cfg: DictConfig) -> dict[str, QBPSettings | None]:
    """``qbp_dense`` and ``qbp_conv`` for the model (both None when ``qbp`` is false)."""
    if not isinstance(cfg.qbp, bool):
        raise UserError(f"qbp must be true or false, got {cfg.qbp!r}.")
    if not cfg.qbp:
        return {"qbp_dense": None, "qbp_conv": None}
    s = cfg.qbp_settings
    return {
        f"qbp_{kind}": QBPSettings(
            s[kind].exp_min,
            s[kind].exp_max,
            s.stochastic,
            s.compact,
            s[kind].zero_to_min,
            # a convolution's weight gradient always takes the exact error (docs/papers.md A.5)
            s.dense.error if kind == "dense" else "exact",
        )
        for kind in ("dense", "conv")
    }


def method_bits(cfg: DictConfig) -> dict[str, int]:
    """Bits per weight and per activation of the method's quantized layers (the W/A of the papers'
    tables: 1/1, 1/32, 2/32 for ternary; first and last layers kept real-valued do not change it)."""
    method = cfg.method
    weights = quantizer_class(method.weight_quantizer.name).bits if method.weight_quantizer else 32
    activations = get_class(method.activation._target_).bits if method.activation else 32
    return {"bits_w": weights, "bits_a": activations}


def _check_residual_activation(cfg: DictConfig, model_class: type) -> None:
    if cfg.method.get("residual_activation") and not getattr(model_class, "has_residuals", False):
        raise UserError(
            f"method={cfg.method.name} puts an activation after every residual addition, but "
            f"model={cfg.model.name} has none; use model=resnet20, resnet18 or resnet34 (or, where the "
            "method's paper trains that model without it, as IR-Net its VGG-Small, add "
            "method.residual_activation=null)."
        )


def check_model_fits_data(cfg: DictConfig, datamodule: TensorDataModule) -> None:
    """Refuse an image model on text or the LSTM on images, and a method with an activation after
    residual additions (ReActNet's RPReLU) on a model without them, before any data is loaded."""
    model_class = get_class(cfg.model._target_)
    _check_residual_activation(cfg, model_class)
    reads = input_kind_of(model_class)
    if reads != datamodule.input_kind:
        fitting = "dataset=text, warpeace or linux" if reads == "tokens" else "an image dataset"
        raise UserError(
            f"model={cfg.model.name} reads {reads}, but dataset={cfg.dataset.name} gives "
            f"{datamodule.input_kind}; use {fitting}, or leave model= out to get the paper's model "
            "for the dataset."
        )


def checked_datamodule(cfg: DictConfig) -> TensorDataModule:
    """The run's data module (nothing loaded yet), after every refusal that depends on the config
    alone: its values, the data module's arguments, whether the model reads that data, whether the
    networks of ``init_from``, ``teacher`` and ``two_stage`` fit. Runs before a run folder is
    touched, so a refused run leaves none behind."""
    check_config(cfg)
    datamodule = instantiate(cfg.dataset)
    check_model_fits_data(cfg, datamodule)
    if cfg.bn_reestimate and not isinstance(datamodule, TensorDataModule):
        raise UserError(
            f"bn_reestimate=true re-estimates BN statistics from the whole training set before every "
            f"validation (Lin et al.'s code), which dataset={cfg.dataset.name} streams from disk; use "
            "bn_reestimate=false (procedure=default)."
        )
    images = datamodule.input_kind == "images"  # text: the network's vocabulary needs the file
    if cfg.get("teacher"):
        load_teacher(cfg, datamodule.input_kind, datamodule.num_classes)
    if cfg.get("init_from") and images:
        model = build_model(cfg, datamodule.image_shape, datamodule.num_classes)
        matching_weights(model, Path(cfg.init_from).expanduser())
    if cfg.get("two_stage"):
        first = stage1_config(cfg)
        checked_datamodule(first)
        if images:
            shape, classes = datamodule.image_shape, datamodule.num_classes
            ours, theirs = (trained_weights(build_model(c, shape, classes)) for c in (cfg, first))
            if shown := weight_differences(ours, theirs):
                raise UserError(
                    f"two_stage={list(cfg.two_stage)}: stage 1's network does not fit stage 2's ({shown}); "
                    "stage 1 may change how weights are quantized, not which weights there are."
                )
    return datamodule


def build_model(cfg: DictConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The architecture of ``cfg.model`` with the method's quantizers, activations and QBP."""
    method = cfg.method
    make_model = instantiate(cfg.model, _partial_=True)  # kwargs below stay Python objects, not configs
    residual = method.get("residual_activation")
    _check_residual_activation(cfg, get_class(cfg.model._target_))
    return make_model(
        **({"residual_activation": instantiate(residual)} if residual else {}),
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        weight_quantizer=instantiate(method.weight_quantizer) if method.weight_quantizer else None,
        activation=instantiate(method.activation) if method.activation else None,
        **qbp_settings(cfg),
    )


def _optimizer_for(make: Callable, weight_decay: float, decay_on: str, bop: bool, model: nn.Module):
    return make(parameter_groups(model, weight_decay, decay_on, binary_apart=bop))


def optimizer_factory(cfg: DictConfig) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """Builds ``cfg.optim``'s optimizer for a model: weight decay on the parameters the recipe
    decays (``optim.weight_decay_on``), Bop's binary weights in a group of their own."""
    return partial(
        _optimizer_for,
        instantiate(cfg.optim.optimizer),
        cfg.optim.weight_decay,
        cfg.optim.weight_decay_on,
        cfg.optim.name == "bop",
    )


def build_module(
    cfg: DictConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    input_kind: str = "images",
    top5: bool = False,
) -> ClassifierModule:
    return ClassifierModule(
        model=build_model(cfg, input_shape, num_classes),
        loss=instantiate(cfg.loss),
        optimizer=optimizer_factory(cfg),
        scheduler=instantiate(cfg.schedule),
        num_classes=num_classes,
        teacher=load_teacher(cfg, input_kind, num_classes) if cfg.get("teacher") else None,
        top5=top5,
    )
