"""Experiment loggers: W&B (online with credentials, else offline), CSV, or none."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from fewmult.atomic import atomic_write_text
from fewmult.errors import UserError

WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_has_credentials() -> bool:
    """True when ``wandb login`` was run or ``WANDB_API_KEY`` is set; never contacts the server."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` becomes ``WANDB_MODE`` if set, else online with credentials and offline without."""
    if mode not in WANDB_MODES:
        raise UserError(f"logger.mode={mode!r} is not one of {', '.join(WANDB_MODES)}.")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_has_credentials() else "offline"


def make_logger(
    cfg: dict[str, Any],
    run_dir: Path,
    run_config: dict[str, Any],
    name: str,
    group: str | None,
    tags: list[str],
    job_type: str,
) -> Logger | None:
    """Build the logger chosen by ``logger.name`` (``wandb``, ``csv`` or ``none``)."""
    kind = cfg["name"]
    if kind == "none":
        return None
    if kind == "csv":
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    mode = resolve_wandb_mode(cfg.get("mode", "auto"))
    if mode == "offline":
        hint = f"wandb sync {run_dir}/wandb/offline-run-*"
        print(f"W&B: logging offline; upload later with: {hint}", flush=True)
    # DDP ranks started by ddp_spawn attach to this run and lay out its files from their environment:
    # without WANDB_DIR, the media of rank zero (the diagnostics' charts) went to ./wandb/ of the
    # launch folder instead of the run folder
    os.environ["WANDB_DIR"] = str(run_dir)
    id_file = run_dir / "wandb_run_id"  # a relaunched job continues its own W&B run
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    logger = WandbLogger(
        id=run_id,
        resume="allow",
        project=cfg.get("project", "fewmult"),
        entity=cfg.get("entity"),
        name=name,
        group=group,
        job_type=job_type,
        tags=[*tags, *cfg.get("tags", [])],
        save_dir=str(run_dir),
        mode=mode,
        config=run_config,
    )
    atomic_write_text(id_file, logger.experiment.id)  # created here, so spawned DDP workers attach to it
    return logger


def finish_logger(logger: Logger | None, failed: bool) -> None:
    """Close the W&B run of this job (exit code 1 if it failed), so the next job gets its own."""
    if isinstance(logger, WandbLogger) and logger._experiment is not None:
        logger._experiment.finish(exit_code=1 if failed else 0)
