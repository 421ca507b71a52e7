"""``two_stage=[overrides]``: the ResNet papers' two-step training as one run.

Stage 1 is this run's config with the overrides applied (``stages=two``: binary activations, real
weights, i.e. ``method.weight_quantizer=null``); stage 2 is this run, started from stage 1's best
weights (``init_from``). Each stage is an ordinary run folder, so a killed job relaunched with the
same command continues whichever stage it was in, and a finished stage 1 is never trained again.

Where stage 1 lives: ``<run folder>/stage1`` for a single run; in a multirun, ``<sweep
folder>/stage1_<fingerprint>``, named by a hash of stage 1's own config, so the jobs of a sweep over
stage-2 settings (those the overrides pin for stage 1) share one stage-1 run. A job that finds it in
training waits for it (a lock beside the folder) and then starts from it. (Jobs that are launches of
many processes keep their own, inside their folders: :func:`fewmult.run.job.stage1_folder`.)
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fewmult.errors import UserError
from fewmult.locks import FileLock
from fewmult.rundir import RECORD, flatten, may_change, task_config


def stage1_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with its ``two_stage`` overrides applied: stage 1, a run of a single stage."""
    overrides = cfg.two_stage
    if not OmegaConf.is_list(overrides) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise UserError(
            f"two_stage must be a list of key=value overrides that make stage 1, e.g. "
            f"two_stage='[method.weight_quantizer=null]' (or stages=two), got {overrides!r}."
        )
    first = copy.deepcopy(cfg)
    for override in overrides:
        try:
            first = OmegaConf.merge(first, OmegaConf.from_dotlist([override]))
        except OmegaConfBaseException as exc:
            key = override.partition("=")[0]
            raise UserError(
                f"two_stage: cannot apply {override!r}: {key} is not a key of the config ({exc})."
            ) from exc
    first.two_stage = None
    if task_config(first) == {**task_config(cfg), "two_stage": None}:
        raise UserError(
            f"two_stage={list(overrides)} leaves stage 1 the same as stage 2; give the overrides that "
            "make stage 1 (stages=two: method.weight_quantizer=null)."
        )
    return first


def stage2_config(cfg: DictConfig, stage1_dir: Path) -> DictConfig:
    """This run, started from stage 1's best weights."""
    second = copy.deepcopy(cfg)
    second.init_from = str(stage1_dir.resolve())
    return second


def _computed_from(config: dict) -> dict:
    """A recorded config without the keys that cannot change what the run computes."""
    return {k: v for k, v in flatten(config).items() if not may_change(k)}


def fingerprint(cfg: DictConfig) -> str:
    """A short hash of what a run computes from."""
    computed = _computed_from(task_config(cfg))
    return hashlib.sha256(json.dumps(computed, sort_keys=True, default=str).encode()).hexdigest()[:10]


def stage1_dir(first: DictConfig, run_dir: Path, sweep_dir: Path | None) -> Path:
    """Stage 1's folder: inside a single run's, or shared by a sweep's jobs with the same stage 1."""
    return run_dir / "stage1" if sweep_dir is None else sweep_dir / f"stage1_{fingerprint(first)}"


def stage1_lock(folder: Path) -> FileLock:
    """Held while a job trains or checks stage 1; a second job of the sweep waits, then reuses it."""

    def tell(holder: str) -> None:
        print(f"fewmult: stage 1 in {folder} is being trained by {holder}; waiting for it", flush=True)

    return FileLock(folder.parent / f".{folder.name}.lock", on_wait=tell)


def finished(folder: Path, first: DictConfig) -> bool:
    """Whether ``folder`` holds stage 1 completed with exactly this config."""
    try:
        status = json.loads((folder / "results.json").read_text()).get("status")
        recorded = yaml.safe_load((folder / RECORD).read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return False
    # exactly this config: a stage 1 of fewer epochs than asked for is continued, not reused
    return status == "completed" and _computed_from(recorded) == _computed_from(task_config(first))
