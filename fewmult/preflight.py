"""Refusing a bad config before Hydra makes the run's folder.

Hydra creates the output folder (and writes ``.hydra/`` into it) before it calls the job, so a check
inside the job leaves a folder behind, or rewrites the records of an existing run. This callback,
named in ``conf/train.yaml`` (``hydra.callbacks``), runs the same checks as the job when a single
run starts, before any folder exists; multirun jobs are checked inside the job, which then removes
the folder Hydra made for it (:func:`fewmult.rundir.discard_unused_folder`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fewmult.config import check_values
from fewmult.errors import report_user_error
from fewmult.rundir import check_relaunch, recorded_config

DEVICE_KEYS = ("accelerator", "deterministic")  # trainer keys whose default asks torch for the device


def check_relaunch_early(config: DictConfig) -> None:
    """A launch into a folder named by ``hydra.run.dir`` that holds a run: refuse a config that
    departs from the recorded one, without importing torch. The default device (``trainer=auto``)
    is taken as recorded here; the job compares it once torch is loaded
    (:func:`fewmult.rundir.prepare_run_dir`)."""
    raw_dir = OmegaConf.to_container(config.hydra.run, resolve=False)["dir"]
    if not config.resume or "${" in str(raw_dir):  # a new folder of its own: nothing to continue
        return
    if config.get("two_stage"):  # the folder records stage 2's config (init_from: stage 1): the job checks
        return
    run_dir = Path(raw_dir).expanduser()
    recorded = recorded_config(run_dir)
    if recorded is None:
        return
    job = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    raw_trainer = OmegaConf.to_container(config.trainer, resolve=False)
    for key in DEVICE_KEYS:
        if "${fewmult." in str(raw_trainer.get(key)) and key in recorded.get("trainer", {}):
            job.trainer[key] = recorded["trainer"][key]
    check_relaunch(run_dir, OmegaConf.to_container(job, resolve=True))


class RefuseBeforeFolder(Callback):
    """``on_run_start``: :func:`fewmult.config.check_values` on the composed config and
    :func:`check_relaunch_early` (no torch imported yet, so a bad value or a refused relaunch is
    reported within a second), then :func:`fewmult.build.checked_datamodule`; a refusal ends the
    launch with ``fewmult: error: ...`` and exit code 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_values(config)
            check_relaunch_early(config)
            from fewmult.build import checked_datamodule  # the job's own imports, once the values pass

            checked_datamodule(config)
        except Exception as exc:
            sys.exit(report_user_error("fewmult", exc))
