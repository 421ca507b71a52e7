"""A finished run's network, read back from its folder: for ``init_from=RUN_DIR`` (start a run from
another run's best weights, not its optimizer state: the second stage of the ResNet papers' two-stage
recipes, or one method fine-tuned from another) and for ``fewmult.export``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fewmult.errors import UserError

if TYPE_CHECKING:
    from fewmult.data import TensorDataModule

_BatchNorm = nn.modules.batchnorm._BatchNorm


def run_files(run_dir: Path) -> tuple[Path, Path]:
    """The run's recorded config and best checkpoint, or one message naming the missing file."""
    record, best = run_dir / "run_config.yaml", run_dir / "checkpoints" / "best.ckpt"
    for path in (record, best):
        if not path.is_file():
            raise UserError(f"{path} is missing: give the folder of a run that validated at least once.")
    return record, best


def recorded_network(run_dir: Path) -> tuple[DictConfig, nn.Module, TensorDataModule]:
    """The run's config, its network with the weights of ``best.ckpt`` (in eval mode), and its data
    module (nothing loaded)."""
    from hydra.utils import instantiate

    from fewmult.build import build_model
    from fewmult.config import register_resolvers

    record, best = run_files(run_dir)
    register_resolvers()
    cfg = OmegaConf.create(yaml.safe_load(record.read_text()))
    datamodule = instantiate(cfg.dataset)
    model = build_model(cfg, datamodule.image_shape, datamodule.num_classes)
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return cfg, model.eval(), datamodule


def trained_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training learned: every parameter and the BN statistics. Not a quantizer's own state
    (LAB's last scale, the random streams' counters), which belongs to the method that runs."""
    weights = dict(model.named_parameters())
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            weights.update({f"{name}.{b}": t for b, t in module.named_buffers() if t is not None})
    return weights


def weight_differences(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> str | None:
    """The first few weights that keep two networks' :func:`trained_weights` from corresponding one
    to one (missing on either side, or of another shape), or None when they do."""
    differences = [f"{k} is missing there" for k in ours if k not in theirs]
    differences += [f"{k} is only there" for k in theirs if k not in ours]
    differences += [
        f"{k} is {tuple(theirs[k].shape)} there, {tuple(t.shape)} here"
        for k, t in ours.items()
        if k in theirs and theirs[k].shape != t.shape
    ]
    if not differences:
        return None
    more = len(differences) - 3
    return "; ".join(differences[:3]) + (f"; and {more} more" if more > 0 else "")


def matching_weights(model: nn.Module, run_dir: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs (``model``'s, ``run_dir``'s best) of every trained weight; refused, naming the first
    weights that differ, when the two networks' weights do not correspond one to one."""
    try:
        _, source, _ = recorded_network(run_dir)
    except UserError as exc:
        raise UserError(f"init_from={run_dir}: {exc}") from exc
    theirs, ours = trained_weights(source), trained_weights(model)
    if shown := weight_differences(ours, theirs):
        raise UserError(
            f"init_from={run_dir}: its network does not fit this one ({shown}); give a run of the same "
            "model with the same dataset and activations (model=, dataset=, method=), or leave init_from out."
        )
    return [(t, theirs[k]) for k, t in ours.items()]


def load_weights_from(model: nn.Module, run_dir: Path) -> None:
    """Copy the trained weights of ``run_dir``'s ``best.ckpt`` into ``model`` (:func:`matching_weights`)."""
    with torch.no_grad():
        for ours, theirs in matching_weights(model, run_dir):
            ours.copy_(theirs)
