"""Refusing a bad config before Hydra makes the run's folder.

Hydra creates the output folder (and writes ``.hydra/`` into it) before it calls the job, so a check
inside the job leaves a folder behind, or rewrites the records of an existing run. This callback,
named in ``conf/train.yaml`` (``hydra.callbacks``), runs the same checks as the job when a single
run starts, before any folder exists; multirun jobs are checked inside the job, which then removes
the folder Hydra made for it (:func:`fewmult.rundir.discard_unused_folder`).
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fewmult.config import check_values
from fewmult.errors import report_user_error


class RefuseBeforeFolder(Callback):
    """``on_run_start``: :func:`fewmult.config.check_values` on the composed config (no torch
    imported yet, so a bad value is refused within a second), then
    :func:`fewmult.build.checked_datamodule`; a refusal ends the launch with ``fewmult: error: ...``
    and exit code 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_values(config)
            from fewmult.build import checked_datamodule  # the job's own imports, once the values pass

            checked_datamodule(config)
        except Exception as exc:
            sys.exit(report_user_error("fewmult", exc))
