"""The run folder across launches: one live process, the config it follows, continuing or starting over.

A run folder is relaunched when a job is requeued, preempted or killed and started again with the
same command. Before anything is written into it:

* :func:`claim_run_dir` takes the folder's lock (``run.lock``), held while the process lives, so
  two processes never train into one folder; the second is refused with who holds it.
* :func:`prepare_run_dir` compares the config with the one recorded at the last launch
  (``run_config.yaml``). A change that would alter the result is refused with the differing keys;
  changes listed in :data:`MAY_CHANGE` (and a larger ``trainer.max_epochs``) are allowed.
  ``resume=false`` starts over, after moving the earlier run's files to ``previous/<time>/``.

Auto-named folders (``outputs/<date>/<time>``) are made unique by the ``fewmult.new_dir`` resolver,
so two jobs started within the same second (W&B agents, array jobs) get folders of their own.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from fewmult.atomic import atomic_write_text
from fewmult.errors import UserError
from fewmult.locks import FileLock

LOCK = "run.lock"
RECORD = "run_config.yaml"
# what a run writes; all of it moves to previous/<time>/ when the folder starts over (resume=false)
RUN_FILES = ("results.json", "metrics.csv", "checkpoints", "wandb", "wandb_run_id", "csv", RECORD)
# keys whose value cannot change what is computed: where data and logs go, what is printed, metadata
MAY_CHANGE = (
    "logger",
    "resume",
    "dataset.root",
    "dataset.download",
    "dataset.data_device",
    "dataset.how_to_get",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "checkpoint",  # how often last.ckpt is written: a resumed run computes the same (tests/test_resume.py)
    "dataset.folder",  # where ImageNet is, as dataset.root
    "dataset.workers",  # the decoding processes: each image's crop is drawn from its index, not its worker
    "dataset.prefetch_factor",
    "dataset.pin_memory",
)
MAY_GROW = ("trainer.max_epochs",)  # extending a finished or running job
# keys added to the configs after runs were recorded, with the value that computes what those runs
# computed: a run folder whose record lacks one relaunches as before
ADDED_LATER = {
    "method.weight_quantizer.rng": "hash",
    "method.weight_quantizer.per_channel": False,
    "dataset.augment": "none",
    "dataset.augment_pad": 4,
    "optim.weight_decay": 0.0,
    "optim.weight_decay_on": "all",
    "loss.label_smoothing": 0.0,
    "init_from": None,
    "teacher": None,
    "teacher_weight": 1.0,
    "teacher_weights": None,
    "two_stage": None,
    "dataset.shuffle_every": 1,
    "dataset.eval_whole_batches": False,
    # batch_stats visited the sets in file order until this version: a relaunched run's evaluations
    # after that use the shuffled order (its training is unchanged)
    "bn_reestimate_form": "batch_stats",
}


def new_dir(base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, ...: the first that this call creates (atomic ``mkdir``).

    Registered as the ``fewmult.new_dir`` resolver (cached per config by OmegaConf, as Hydra's
    ``now``), it names the default output folders, so concurrent launches never share one.
    """
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        candidate = base if n == 0 else f"{base}_{n}"
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"could not create a new folder next to {base}: 10,000 names are taken.")


def task_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without Hydra's own settings: what a run computes from, as recorded."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def start_over_advice(run_dir: Path) -> str:
    """The way out of a run folder that cannot be continued, for the end of an error message."""
    return (
        f"start over in it with resume=false (the earlier run's files move to {run_dir}/previous/, "
        "nothing is deleted)"
    )


def claim_run_dir(run_dir: Path) -> FileLock:
    """The run folder's lock, taken without waiting; a :class:`UserError` if another process holds it."""
    lock = FileLock(run_dir / LOCK)
    if not lock.acquire(blocking=False):
        raise UserError(
            f"another process is training in {run_dir} ({lock.holder()}). Wait for it to end, stop it, "
            "or give this run its own folder (leave hydra.run.dir out, or set another one). The lock is "
            "released when that process exits, however it ends."
        )
    return lock


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _same(a: Any, b: Any) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or a == b


def as_override(value: Any) -> str:
    """How ``value`` is written on Hydra's command line."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return "[" + ",".join(as_override(v) for v in value) + "]"
    return str(value)


_MISSING = object()


def may_change(key: str) -> bool:
    """Whether ``key`` (dotted) is, or lies under, a key of :data:`MAY_CHANGE`."""
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def _allowed(key: str, old: Any, new: Any) -> bool:
    if may_change(key):
        return True
    if old is _MISSING and key in ADDED_LATER and _same(new, ADDED_LATER[key]):
        return True
    return key in MAY_GROW and isinstance(old, int) and isinstance(new, int) and new >= old


def config_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The keys whose change would alter the result: ``(key, recorded value, current value)``."""
    old, new = flatten(recorded), flatten(current)
    changes = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if (a is _MISSING or b is _MISSING or not _same(a, b)) and not _allowed(key, a, b):
            changes.append((key, None if a is _MISSING else a, None if b is _MISSING else b))
    return changes


def _refuse_changes(run_dir: Path, changes: list[tuple[str, Any, Any]]) -> None:
    shown = changes[:20]
    lines = [f"  {key}: {old!r} when the run was started, {new!r} now" for key, old, new in shown]
    if len(changes) > len(shown):
        lines.append(f"  ... and {len(changes) - len(shown)} more")
    grow = [k for k, old, new in changes if k in MAY_GROW]
    note = f" ({', '.join(grow)} may grow, to extend a run, but not shrink)" if grow else ""
    put_back = " ".join(f"{k}={as_override(old)}" for k, old, _ in shown[:4])
    raise UserError(
        f"{run_dir} holds a run started with another configuration; continuing it would mix the two"
        f"{note}:\n" + "\n".join(lines) + "\nEither relaunch with the recorded values (e.g. "
        f"{put_back}), or train in a new folder (leave hydra.run.dir out, or set another one), or "
        f"{start_over_advice(run_dir)}."
    )


def start_over(run_dir: Path) -> Path | None:
    """Move the earlier run's files to ``previous/<time>/`` (never deleted); return that folder."""
    present = [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    archive = Path(new_dir(str(run_dir / "previous" / stamp)))
    for path in present:
        os.replace(path, archive / path.name)
    return archive


def discard_unused_folder(run_dir: Path, written_by_hydra: Collection[str]) -> None:
    """Take back what Hydra wrote into the folder of a job refused on its config.

    Hydra makes each multirun job's folder, with ``.hydra/`` and the job's log, before it calls the
    job; a folder of Hydra's records alone would look like an unfinished run. A folder holding a run
    (any of :data:`RUN_FILES`) is left as it is; otherwise Hydra's entries go, and the folder too
    when nothing else (a launcher's ``output.log``, which has the refusal in it) is left.
    """
    if not run_dir.is_dir() or any((run_dir / name).exists() for name in RUN_FILES):
        return
    for name in written_by_hydra:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if not any(run_dir.iterdir()):
        run_dir.rmdir()


def has_training_state(run_dir: Path) -> bool:
    """Whether a relaunch would continue something: a checkpoint or epochs in ``metrics.csv``."""
    return (run_dir / "checkpoints" / "last.ckpt").exists() or (run_dir / "metrics.csv").exists()


def recorded_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a relaunch into ``run_dir`` must continue (None: nothing to continue there).

    Raises :class:`UserError` when the folder holds training state without a readable record.
    """
    record = run_dir / RECORD
    if not has_training_state(run_dir):
        return None
    if not record.is_file():
        raise UserError(
            f"{run_dir} holds training state but no {RECORD}, so it cannot be checked that this "
            f"launch continues the same run. Train in a new folder, or {start_over_advice(run_dir)}."
        )
    try:
        return yaml.safe_load(record.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(
            f"cannot read {record} ({exc}). Train in a new folder, or {start_over_advice(run_dir)}."
        ) from exc


def check_relaunch(run_dir: Path, config: dict[str, Any]) -> None:
    """Refuse a relaunch into ``run_dir`` whose ``config`` departs from the recorded one; reads only."""
    recorded = recorded_config(run_dir)
    if recorded is not None and (changes := config_changes(recorded, config)):
        _refuse_changes(run_dir, changes)


def prepare_run_dir(run_dir: Path, config: dict[str, Any], resume: bool) -> None:
    """Check a relaunch against the recorded config (or start over), then record ``config``.

    Raises :class:`UserError` before anything in the folder changes.
    """
    record = run_dir / RECORD
    if not resume:
        if (archive := start_over(run_dir)) is not None:
            print(f"resume=false: the earlier run in this folder was moved to {archive}", flush=True)
    else:
        check_relaunch(run_dir, config)
    atomic_write_text(record, yaml.safe_dump(config, sort_keys=False))
