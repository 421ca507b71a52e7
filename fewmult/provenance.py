"""Where a run's setup came from: the first line a run prints.

A run is composed from a dozen config files, and the values that matter most (learning rate,
batch size, epochs) are set two hops away from where their groups define them: the paper's recipe
overwrites them, a method may lower the learning rate, a preset or the command line may override
anything. :func:`setup_line` names, for each, the file (``group/option``) or the command line that
set it, by reading the chosen options' files in Hydra's order of precedence.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fewmult.config import CONF_DIR
from fewmult.device import describe_device

# groups whose files write into the global package, the one that wins first (Hydra's defaults order:
# a +experiment comes after train.yaml's list, the method after the recipe, the paper before both)
GLOBAL_GROUPS = ("experiment", "method", "recipe@_global_", "paper")
# groups whose defaults lists choose other groups' options, the one that wins first (a text dataset
# brings Hou et al.'s optimizer and schedule; the method's paper and the preset's choices win over it)
CHOOSING_GROUPS = ("experiment", "method", "dataset", "paper")
COMMAND_LINE = "command line"


@cache
def _option_file(group: str, option: str) -> dict[str, Any]:
    path = CONF_DIR / group.split("@")[0] / f"{option}.yaml"
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _label(group: str, option: str) -> str:
    return f"{group.split('@')[0]}/{option}"


def _lookup(tree: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False, None
        tree = tree[part]
    return tree != "???", tree  # a placeholder that another group always fills is not a source


def _find(group: str, option: str, dotted: str) -> tuple[str, Any] | None:
    """``(label, value)`` of ``dotted`` in an option's file, or in the options of its own group that
    it includes (``recipe/hou2017_text`` builds on ``recipe/hou2017_warpeace``); its own value wins."""
    tree = _option_file(group, option)
    found, value = _lookup(tree, dotted)
    if found:
        return _label(group, option), value
    included = [d for d in tree.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    for parent in reversed(included):  # the later include wins
        hit = _find(group, parent, dotted)
        if hit:
            return hit
    return None


def _overridden(key: str, overrides: list[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides)


def value_source(key: str, choices: dict[str, Any], overrides: list[str]) -> str:
    """Who set ``key`` (e.g. ``optim.lr``): the command line, or the file of a chosen option."""
    if _overridden(key, overrides):
        return COMMAND_LINE
    group, _, rest = key.partition(".")
    candidates = [(g, key) for g in GLOBAL_GROUPS] + [(group, rest)]
    for g, path in candidates:
        option = choices.get(g)
        if not option:
            continue
        hit = _find(g, option, path)
        if hit:
            label, value = hit
            if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
                inner = value[2:-1]
                return f"{label} = {inner} of {value_source(inner, choices, overrides)}"
            return label
    return "train.yaml"


def choice_source(group: str, choices: dict[str, Any], overrides: list[str]) -> str:
    """Who chose the option of ``group`` (e.g. ``paper``): the command line, a file's defaults list."""
    if _overridden(group, overrides):
        return COMMAND_LINE
    for g in CHOOSING_GROUPS:
        option = choices.get(g)
        defaults = _option_file(g, option).get("defaults", []) if option else []
        if any(isinstance(d, dict) and f"override /{group}" in d for d in defaults):
            return _label(g, option)
    return "train.yaml"


def setup_line(cfg: DictConfig) -> str:
    """E.g. ``fewmult: lab on svhn | cpu, precision 32-true | paper hou2017 (method/lab), ...``."""
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    choices = dict(hydra.runtime.choices) if hydra else {}
    overrides = list(hydra.overrides.task) if hydra else []

    def value(key: str, shown: Any) -> str:
        return f"{shown} ({value_source(key, choices, overrides)})"

    def chosen(group: str, shown: Any) -> str:
        return f"{shown} ({choice_source(group, choices, overrides)})"

    model = cfg.model.name
    model_option = choices.get("model")
    if model_option and model_option != model:
        model = f"{model} = model/{model_option}"
    method = cfg.method.name + ("+qbp" if cfg.qbp else "")
    device = describe_device(cfg.trainer.accelerator, cfg.trainer.devices)
    return (
        f"fewmult: {method} on {cfg.dataset.name} | {device}, "
        f"precision {cfg.trainer.precision} | paper {chosen('paper', cfg.paper)}, "
        f"recipe {choices.get('recipe@_global_', '-')}, model {chosen('model', model)}, "
        f"optimizer {chosen('optim', cfg.optim.name)}, "
        f"schedule {chosen('schedule', choices.get('schedule', '-'))}, lr {value('optim.lr', cfg.optim.lr)}, "
        f"batch {value('dataset.batch_size', cfg.dataset.batch_size)}, "
        f"epochs {value('trainer.max_epochs', cfg.trainer.max_epochs)}"
        + (f", weights from {cfg.init_from} (init_from)" if cfg.get("init_from") else "")
        + (f", taught by {cfg.teacher} (teacher, weight {cfg.teacher_weight})" if cfg.get("teacher") else "")
    )
