"""One job of ``python -m fewmult.train``: load the data, build the model and train it with
Lightning, writing the run contract into the Hydra output folder: ``results.json``,
``metrics.csv``, ``layers.csv``, ``checkpoints/`` and ``wandb/``."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from fewmult.atomic import remove_stale_temporaries
from fewmult.build import build_module, checked_datamodule, method_bits
from fewmult.callbacks import BestCheckpoint, EpochMetricsCSV, RecomputeBatchNorm
from fewmult.checkpointing import AtomicCheckpointIO, LastCheckpoint, RandomStates, resume_point
from fewmult.count import count_for_config
from fewmult.data import TensorDataModule
from fewmult.diagnostics import LayerDiagnostics, stop_counting
from fewmult.errors import UserError, report_user_error
from fewmult.loggers import finish_logger, make_logger
from fewmult.provenance import setup_line
from fewmult.published import published_fields, settings_differing, setup_fields
from fewmult.results import best_epoch, read_metrics, write_json
from fewmult.run.ranks import current_launch, owns_run_dir
from fewmult.rundir import claim_run_dir, discard_unused_folder, prepare_run_dir, task_config
from fewmult.stages.init_from import load_weights_from
from fewmult.stages.teacher import is_torchvision_teacher
from fewmult.stages.two_stage import finished, stage1_config, stage1_dir, stage1_lock, stage2_config


def quiet_lightning() -> None:
    """Keep the console to fewmult's own lines: Lightning's info banners and tips add nothing here."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" on CPU
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # fewmult logs once per epoch, so Lightning's per-step logging interval does not matter
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")


def _sweep_dir() -> Path | None:
    hc = HydraConfig.get()
    return Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


def _run_identity(cfg: DictConfig, stage: int | None = None) -> dict[str, Any]:
    """Name, group and tags of this job for the experiment logger (a two-stage run's stages apart)."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "name": (hc.job.override_dirname or "defaults") + (f" (stage {stage})" if stage else ""),
        "group": str(Path(hc.sweep.dir)) if multirun else None,
        "tags": [
            f"dataset:{cfg.dataset.name}",
            f"model:{cfg.model.name}",
            f"method:{cfg.method.name}",
            f"qbp:{str(bool(cfg.qbp)).lower()}",
            *([f"stage:{stage}"] if stage else []),
        ],
        "job_type": cfg.method.name,
    }


def _absolute(run_dir: str | None) -> str | None:
    """A run folder as an absolute path (``torchvision:ARCH`` as given)."""
    if not run_dir or is_torchvision_teacher(run_dir):
        return run_dir
    return str(Path(run_dir).expanduser().resolve())


def _base_results(cfg: DictConfig) -> dict[str, Any]:
    setup = setup_fields(cfg)  # paper, dataset, model, method, qbp, seq_len, width
    return {
        **setup,
        **method_bits(cfg),  # W/A: bits_w, bits_a
        "seed": cfg.seed,
        **{key: _absolute(cfg.get(key)) for key in ("init_from", "teacher", "teacher_weights")},
        "teacher_weight": cfg.teacher_weight if cfg.get("teacher") else None,
        "lr": cfg.optim.lr,
        "epochs": cfg.trainer.max_epochs,
        **published_fields(setup),  # the paper's number for this setup, if it has one
        "published_settings_differ": settings_differing(cfg),  # where this run departs from its settings
        "wandb_group": _run_identity(cfg)["group"],  # the sweep's W&B group: fewmult.report logs there
    }


def _best_results(best: dict[str, float], per_character_nats: bool) -> dict[str, Any]:
    """The ``results.json`` fields of the selected epoch (top-5 errors where they were logged)."""
    fields = {
        "best_epoch": int(best["epoch"]),
        **{f"{split}_{m}": best[f"{split}/{m}"] for split in ("val", "test") for m in ("error", "loss")},
        **{
            f"{split}_top5_error": best[f"{split}/top5_error"]
            for split in ("val", "test")
            if f"{split}/top5_error" in best
        },
    }
    if per_character_nats:  # cross-entropy of a language model: also in bits per character
        fields.update({f"{split}_bpc": fields[f"{split}_loss"] / math.log(2) for split in ("val", "test")})
    return fields


def train(
    cfg: DictConfig, run_dir: Path, datamodule: TensorDataModule | None = None, stage: int | None = None
) -> dict[str, Any]:
    """Train one model into ``run_dir``; return the ``results.json`` payload (also written there).

    ``datamodule``: from :func:`~fewmult.build.checked_datamodule` (called here when not given), so a
    config refused on its own merits never touches the folder. A relaunch into the same folder
    continues the run from ``checkpoints/last.ckpt`` (see :mod:`fewmult.rundir` for what it checks
    first; nothing in the folder changes if it refuses).
    """
    if not owns_run_dir():  # rank zero of the launch owns the folder: this rank only reads it
        return _fit(
            cfg,
            run_dir,
            task_config(cfg),
            datamodule or checked_datamodule(cfg),
            _follower_resume(cfg, run_dir),
            stage,
        )
    print(setup_line(cfg), flush=True)
    if differing := settings_differing(cfg):
        print(
            f"fewmult: note: the published number of this setup came from other settings: "
            f"{', '.join(differing)}; its preset (README, 'Reproducing the papers') uses them.",
            flush=True,
        )
    if datamodule is None:
        datamodule = checked_datamodule(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = claim_run_dir(run_dir)
    try:
        config = task_config(cfg)
        prepare_run_dir(run_dir, config, resume=bool(cfg.resume))
        checkpoints, metrics = run_dir / "checkpoints", run_dir / "metrics.csv"
        for folder in (run_dir, checkpoints):  # temporary files of writers killed in an earlier launch
            remove_stale_temporaries(folder)
        ckpt_path = resume_point(checkpoints / "last.ckpt", metrics, run_dir / "layers.csv")
        return _fit(cfg, run_dir, config, datamodule, ckpt_path, stage)
    finally:
        lock.release()


def _follower_resume(cfg: DictConfig, run_dir: Path) -> str | None:
    """A rank > 0 of a launch: the checkpoint rank zero continues from, read and changed by nothing
    before the ranks join (rank zero refuses what it cannot continue, which ends the launch)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    return str(last) if cfg.resume and last.is_file() else None


def stage1_folder(first: DictConfig, run_dir: Path) -> Path:
    """Where this job's stage 1 lives (:func:`fewmult.stages.two_stage.stage1_dir`). The jobs of a
    sweep share one behind a lock that one process takes; the ranks of a launch of many processes
    could not agree on who trains it, so there each job trains its own, inside its folder (the jobs
    of a sweep over seeds differ in stage 1 anyway), and rank zero says so."""
    sweep, launch = _sweep_dir(), current_launch()
    folder = stage1_dir(first, run_dir, sweep if launch is None else None)
    if sweep is not None and launch is not None and launch.rank == 0:
        print(
            f"fewmult: note: in launches of {launch.world_size} processes by {launch.launcher} each job of "
            f"a sweep trains its own stage 1, here in {folder} (to share one, train it as a launch of "
            "its own, then the sweep with init_from=STAGE1_DIR)",
            flush=True,
        )
    return folder


def train_stages(cfg: DictConfig, run_dir: Path, datamodule: TensorDataModule) -> dict[str, Any]:
    """:func:`train`, or with ``two_stage`` stage 1 (unless it is already done) and then this run
    from its best weights (:mod:`fewmult.stages.two_stage`); returns this run's results.

    In a launch of many processes every rank trains both stages. Rank zero takes stage 1's lock; the
    others decide from the folder alone, which only this launch changes (:func:`stage1_folder`)."""
    if not cfg.get("two_stage"):
        return train(cfg, run_dir, datamodule)
    first = stage1_config(cfg)
    first_dir = stage1_folder(first, run_dir)
    leader = owns_run_dir()

    def say(line: str) -> None:  # rank zero speaks for the launch
        if leader:
            print(f"fewmult: {line}", flush=True)

    with stage1_lock(first_dir) if leader else contextlib.nullcontext():
        if finished(first_dir, first):
            say(f"stage 1 of 2 is done in {first_dir}; starting stage 2 from it")
        else:
            say(f"stage 1 of 2 ({', '.join(cfg.two_stage)}), in {first_dir}")
            train(first, first_dir, checked_datamodule(first), stage=1)
    say(f"stage 2 of 2, in {run_dir}")
    return train(stage2_config(cfg, first_dir), run_dir, datamodule, stage=2)


def _fit(
    cfg: DictConfig,
    run_dir: Path,
    config: dict[str, Any],
    datamodule: TensorDataModule,
    ckpt_path: str | None,
    stage: int | None,
) -> dict[str, Any]:
    leader = owns_run_dir()  # writes results.json and logs
    results = {**_base_results(cfg), "started_at": time.time()}
    results_path = run_dir / "results.json"
    checkpoints, metrics = run_dir / "checkpoints", run_dir / "metrics.csv"
    logger = None
    start = time.perf_counter()
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        metric = datamodule.selection_metric
        results["selected_by"] = f"val_{metric}"  # also in a failed run's results, for the report
        splits = datamodule.load()
        results["train_samples"] = splits.sizes()["train"]
        module = build_module(
            cfg, splits.input_shape, splits.num_classes, datamodule.input_kind, datamodule.top5
        )
        if cfg.get("init_from") and ckpt_path is None:  # a relaunch continues from its own last.ckpt
            load_weights_from(module.model, Path(cfg.init_from).expanduser())
        if not cfg.diagnostics:
            stop_counting(module.model)
        results["multiplications"] = count_for_config(cfg, module.model, datamodule)[1]
        if leader:
            logger = make_logger(config["logger"], run_dir, run_config=config, **_run_identity(cfg, stage))
        trainer = instantiate(
            cfg.trainer,
            default_root_dir=str(run_dir),
            logger=logger if logger is not None else False,
            plugins=[AtomicCheckpointIO()],
            callbacks=[
                EpochMetricsCSV(metrics, shown=("train/loss", f"val/{metric}", f"test/{metric}")),
                BestCheckpoint(checkpoints / "best.ckpt", monitor=f"val/{metric}"),
                LastCheckpoint(checkpoints / "last.ckpt", **(cfg.get("checkpoint") or {})),
                RandomStates(),
                *([LayerDiagnostics(run_dir / "layers.csv")] if cfg.diagnostics else []),
                *([RecomputeBatchNorm(cfg.bn_reestimate_form)] if cfg.bn_reestimate else []),
                *(instantiate(c) for c in cfg.callbacks),
            ],
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        best = best_epoch(read_metrics(metrics), key=f"val/{metric}")
        if best is None:
            raise UserError(
                "training ended without a validation result; check trainer.check_val_every_n_epoch."
            )
        nats = datamodule.input_kind == "tokens" and isinstance(module.loss, torch.nn.CrossEntropyLoss)
        results.update(_best_results(best, nats), status="completed")
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(
                {
                    **{f"best/{k}": results[k] for k in ("val_error", "test_error", "val_loss", "test_loss")},
                    "best/epoch": int(best["epoch"]),
                    **{f"multiplications/{k}": v for k, v in results["multiplications"].items()},
                }
            )
    except BaseException as exc:
        # Lightning ends fit with SystemExit on SIGTERM (preemption, scancel, time limit) and Ctrl-C:
        # the run is not failed, it waits for its relaunch
        status = "interrupted" if isinstance(exc, SystemExit) else "failed"
        results.update(status=status, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        results["train_seconds"] = round(time.perf_counter() - start, 3)
        results["finished_at"] = time.time()
        if leader:
            write_json(results_path, results)
        finish_logger(logger, failed=results.get("status") != "completed")
    return results


def run_job(cfg: DictConfig) -> float | None:
    """The job Hydra started (``fewmult.train.main``): train, print the selected epoch's result, and
    return what a sweeper minimizes; a refusal exits with ``fewmult: error: ...``."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    quiet_lightning()
    try:  # a single run was checked before Hydra made its folder (fewmult.preflight); a multirun job here
        datamodule = checked_datamodule(cfg)
    except Exception as exc:
        discard_unused_folder(run_dir, written_by_hydra={".hydra", f"{HydraConfig.get().job.name}.log"})
        sys.exit(report_user_error("fewmult", exc))
    try:
        results = train_stages(cfg, run_dir, datamodule)
    except SIGTERMException:  # a SystemExit with code 0: the job would look successful to its scheduler
        print(
            f"fewmult: stopped by SIGTERM (preempted, cancelled or at its time limit). Relaunch the same "
            f"command to continue from {run_dir / 'checkpoints' / 'last.ckpt'}.",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(128 + signal.SIGTERM)
    except Exception as exc:
        sys.exit(report_user_error("fewmult", exc))
    metric = results["selected_by"].removeprefix("val_")
    if not owns_run_dir():  # rank zero prints the result
        return results[results["selected_by"]]
    print(
        f"val {metric} {results[f'val_{metric}']:.4f}  test {metric} {results[f'test_{metric}']:.4f}  "
        f"(epoch {results['best_epoch']} of {results['epochs']})\nrun saved to {run_dir}",
        flush=True,
    )
    return results[results["selected_by"]]  # what a sweeper minimizes
