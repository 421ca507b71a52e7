"""Where the Hydra configs live, and the checks that run before any data is touched.

Imported before Hydra composes, so it imports no torch or Lightning at the top: a typo in an option
or a bad value is refused within a second of launch (:func:`check_values`), before the checks that
need the library (:func:`check_config`) import it.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fewmult.errors import UserError, require_positive
from fewmult.run.ranks import ddp_devices, ddp_nodes, ddp_strategy, shared_run_dir
from fewmult.rundir import new_dir


def _conf_dir() -> Path:
    """``fewmult/conf/`` in an installed wheel (setup.py puts it there), else ``conf/`` of the source tree."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if installed.is_dir() else package.parent / "conf"


CONF_DIR = _conf_dir()
HALF_LATENT_WEIGHTS = ("16-true", "bf16-true")  # Lightning precisions that cast the model's parameters
# bn_reestimate_form's values (fewmult.nn.bn_statistics computes them): here, so a typo is refused at once
BN_REESTIMATE_FORMS = ("batch_stats", "authors_code")


def data_root() -> str:
    """The data folder of every dataset: ``$FEWMULT_DATA``, else ``~/.cache/fewmult/data``."""
    return os.environ.get("FEWMULT_DATA") or str(Path(os.environ.get("HOME", ".")) / ".cache/fewmult/data")


def compose_config(*overrides: str) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` as ``python -m fewmult.train`` would, made the
    current Hydra config (the run-folder resolvers read it): for notebooks, benchmarks and tests."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _visible_accelerator() -> str:
    from fewmult.device import visible_accelerator  # imports torch, once the value is needed

    return visible_accelerator()


def _deterministic_on(accelerator: str) -> bool:
    from fewmult.device import deterministic_on

    return deterministic_on(accelerator)


def run_folder(base: str) -> str:
    """An auto-named output folder: of its own (:func:`fewmult.rundir.new_dir`), or inside a
    launch of many processes the one they all compute (:func:`fewmult.run.ranks.shared_run_dir`)."""
    return shared_run_dir(base) or new_dir(base)


def register_resolvers() -> None:
    """The ``fewmult.*`` resolvers the configs use; before Hydra composes."""
    resolvers = {
        "fewmult.new_dir": (run_folder, True),  # cached per config, as Hydra's ``now``
        "fewmult.ddp_strategy": (ddp_strategy, False),
        "fewmult.ddp_devices": (ddp_devices, False),
        "fewmult.ddp_nodes": (ddp_nodes, False),
        "fewmult.visible_accelerator": (_visible_accelerator, False),
        "fewmult.deterministic_on": (_deterministic_on, False),
        "fewmult.data_root": (data_root, False),
    }
    for name, (resolver, cached) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=cached)


def check_schedule(cfg: DictConfig) -> None:
    """Build the schedule on a stand-in optimizer: its refusals (warm-up longer than the run, ...)
    come before any data is read."""
    import torch
    from hydra.utils import instantiate

    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optim.lr)
    instantiate(cfg.schedule)(stand_in)


def check_teacher_weight(weight: object) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1:
        raise UserError(
            f"teacher_weight must be a number in (0, 1], got {weight!r}: the loss is (1 - w) * loss + "
            "w * KL(teacher || student), and ReActNet trains with 1."
        )


def check_checkpoint_interval(checkpoint: DictConfig | dict) -> None:
    """``checkpoint.every_steps`` (a positive integer) and ``checkpoint.every_minutes`` (a positive
    number), each or both null."""
    for key, integer in (("every_steps", True), ("every_minutes", False)):
        value = checkpoint.get(key)
        if value is not None:
            require_positive(value, f"checkpoint.{key}", integer=integer)


def check_values(cfg: DictConfig) -> None:
    """Reject values that cannot work, with the key to fix, from the config alone (no torch)."""
    if cfg.recipe.paper != cfg.paper:  # the recorded paper must be the one whose recipe runs
        raise UserError(
            f"paper={cfg.paper} has no setup for dataset={cfg.dataset.name}: the recipe there is "
            f"{cfg.recipe.paper}'s. Add paper={cfg.recipe.paper} to train method={cfg.method.name} on "
            f"that setup (the run is then recorded as paper={cfg.recipe.paper})."
        )
    require_positive(cfg.optim.lr, "optim.lr", integer=False)
    require_positive(cfg.trainer.max_epochs, "trainer.max_epochs")
    for key in ("batch_size", "eval_batch_size", "shuffle_every"):
        if key in cfg.dataset:
            require_positive(cfg.dataset[key], f"dataset.{key}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise UserError(f"seed must be an integer, got {cfg.seed!r}.")
    if str(cfg.trainer.precision) in HALF_LATENT_WEIGHTS:
        raise UserError(
            f"trainer.precision={cfg.trainer.precision} would store the latent weights and the optimizer "
            "state in 16 bits, where the small updates that binarized and ternarized training add up "
            "are rounded away. Use trainer.precision=bf16-mixed (or 16-mixed on a GPU): the products "
            "run in 16 bits while the weights stay float32."
        )
    if cfg.get("two_stage") and cfg.get("init_from"):
        raise UserError(
            "two_stage and init_from both say where this run's weights start: two_stage starts stage 2 "
            "from stage 1. Leave one out."
        )
    if cfg.get("teacher"):
        check_teacher_weight(cfg.teacher_weight)
    check_checkpoint_interval(cfg.get("checkpoint") or {})
    if not isinstance(cfg.bn_reestimate, bool):
        raise UserError(f"bn_reestimate must be true or false, got {cfg.bn_reestimate!r}.")
    if cfg.bn_reestimate_form not in BN_REESTIMATE_FORMS:
        raise UserError(
            f"bn_reestimate_form={cfg.bn_reestimate_form} is not a form of BN re-estimation; use "
            f"{' or '.join(BN_REESTIMATE_FORMS)} (docs/papers.md D.6)."
        )


def check_config(cfg: DictConfig) -> None:
    """Reject values that cannot work, with the key to fix, before anything is loaded:
    :func:`check_values`, then what needs the library (the schedule, the quantizer's registry, the
    files of ``init_from`` and ``teacher``)."""
    from fewmult.optim import check_bop_can_flip
    from fewmult.quant import quantizer_class
    from fewmult.stages.init_from import run_files
    from fewmult.stages.teacher import is_torchvision_teacher, teacher_weights_file

    check_values(cfg)
    check_schedule(cfg)
    for key in ("init_from", "teacher"):
        if key == "teacher" and is_torchvision_teacher(cfg.get(key)):
            teacher_weights_file(cfg)
        elif cfg.get(key):
            try:
                run_files(Path(cfg[key]).expanduser())
            except UserError as exc:
                raise UserError(f"{key}={cfg[key]}: {exc}") from exc
    quantizer = cfg.method.weight_quantizer
    if cfg.optim.name == "bop":
        check_bop_can_flip(
            quantizer_class(quantizer.name) if quantizer else None, f"method={cfg.method.name}"
        )
    if quantizer and quantizer_class(quantizer.name).needs_optimizer_state and cfg.optim.name != "adam":
        raise UserError(
            f"method={cfg.method.name} reads Adam's second moment, but optim={cfg.optim.name}; "
            "use optim=adam (the paper's optimizer)."
        )
