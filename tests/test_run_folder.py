"""The run folder across launches: one process at a time, relaunches checked against the recorded
config, unreadable checkpoints named, starting over without losing anything, unique auto-named folders."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fewmult.config import compose_config
from fewmult.locks import FileLock
from fewmult.rundir import ADDED_LATER, RECORD, config_changes, flatten, task_config
from tests import prewarmed
from tests.conftest import REPO, cli_env, imported_modules, trained_run
from tests.wandb_reader import run_info

SMALL = ["dataset=synthetic", "model.arch=64FC", "logger=none"]


def train_cli(tmp_path: Path, *args: str, **extra_env: str) -> prewarmed.Forked | subprocess.Popen:
    return prewarmed.popen("fewmult.train", args, tmp_path, cli_env(PYTHONPATH=str(REPO), **extra_env))


def finish(proc: prewarmed.Forked | subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` and its modification time (to show that nothing was touched)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_relaunch_that_would_change_the_result_is_refused_and_changes_nothing(tmp_path):
    run = trained_run(tmp_path / "run", *SMALL, "trainer.max_epochs=2")  # as the CLI's, less .hydra/
    # Hydra's own record of the latest launch (.hydra/, train.log) and the lock's holder line change
    before = {
        k: v
        for k, v in snapshot(run).items()
        if not k.startswith(".hydra") and k not in ("train.log", "run.lock")
    }

    code, _, err = finish(
        train_cli(
            tmp_path,
            *(f"hydra.run.dir={run}", *SMALL, "trainer.max_epochs=2", "optim.lr=0.1"),
            PYTHONPROFILEIMPORTTIME="1",
        )
    )
    assert code == 2 and "Traceback" not in err
    assert "optim.lr: 0.3 when the run was started, 0.1 now" in err
    assert "optim.lr=0.3" in err and "resume=false" in err  # the fixes
    assert not {"torch", "lightning"} & imported_modules(err)  # refused before the library loads
    after = {k: v for k, v in snapshot(run).items() if k in before}
    assert after == before  # results, metrics, checkpoints and the record untouched

    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated by a full disk")
    code, _, err = finish(train_cli(tmp_path, f"hydra.run.dir={run}", *SMALL, "trainer.max_epochs=2"))
    assert code == 2 and "Traceback" not in err
    assert f"cannot resume from {run / 'checkpoints' / 'last.ckpt'}" in err and "resume=false" in err
    assert json.loads((run / "results.json").read_text())["status"] == "completed"  # not overwritten

    code, out, err = finish(
        train_cli(tmp_path, f"hydra.run.dir={run}", *SMALL, "trainer.max_epochs=2", "resume=false")
    )
    assert code == 0, err
    (archive,) = (run / "previous").iterdir()
    assert "moved to" in out and str(archive) in out
    assert (archive / "checkpoints" / "last.ckpt").read_bytes().startswith(b"PK\x03\x04 truncated")
    assert json.loads((archive / "results.json").read_text())["status"] == "completed"
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]] == ["0", "1"]


@pytest.mark.slow
def test_a_run_is_extended_by_more_epochs_when_its_schedule_allows(tmp_path):
    run = tmp_path / "run"
    hou = [f"hydra.run.dir={run}", *SMALL, "method=lab"]  # Hou's step schedule does not use max_epochs
    code, _, err = finish(train_cli(tmp_path, *hou, "trainer.max_epochs=2"))
    assert code == 0, err
    code, out, err = finish(train_cli(tmp_path, *hou, "trainer.max_epochs=3", "logger=csv"))
    assert code == 0, err
    assert "(2 epochs done)" in out
    assert json.loads((run / "results.json").read_text())["epochs"] == 3
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]] == [
        "0",
        "1",
        "2",
    ]


def test_allowed_and_refused_changes():
    base = task_config(compose_config("dataset=synthetic"))
    assert config_changes(base, base) == []
    allowed = task_config(
        compose_config(
            "dataset=synthetic", "logger=csv", "trainer.enable_progress_bar=true", "dataset.data_device=cpu"
        )
    )
    assert config_changes(base, allowed) == []
    # Lin et al.'s schedule decays over max_epochs: more epochs would change every learning rate
    longer = task_config(compose_config("dataset=synthetic", "trainer.max_epochs=9"))
    assert [k for k, _, _ in config_changes(base, longer)] == ["schedule.epochs"]
    shorter = task_config(compose_config("dataset=synthetic", "method=lab", "trainer.max_epochs=1"))
    hou = task_config(compose_config("dataset=synthetic", "method=lab"))
    assert [k for k, _, _ in config_changes(hou, shorter)] == ["trainer.max_epochs"]  # may only grow
    assert config_changes(shorter, hou) == []
    method = task_config(compose_config("dataset=synthetic", "method=tc"))
    assert "method.name" in [k for k, _, _ in config_changes(base, method)]
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}


@pytest.mark.parametrize("method, key", [("tc", "rng"), ("lab", "per_channel")])
def test_a_key_added_later_at_its_old_behaviour_lets_older_runs_relaunch(method, key):
    """A run recorded before ``method.weight_quantizer.<key>`` existed computed with its default."""
    now = task_config(compose_config("dataset=synthetic", f"method={method}"))
    recorded = copy.deepcopy(now)
    del recorded["method"]["weight_quantizer"][key]
    assert config_changes(recorded, now) == []
    other = {"rng": "torch", "per_channel": True}[key]
    changed = task_config(
        compose_config("dataset=synthetic", f"method={method}", f"method.weight_quantizer.{key}={other}")
    )
    assert [k for k, _, _ in config_changes(recorded, changed)] == [f"method.weight_quantizer.{key}"]


def test_every_key_added_later_is_in_a_fresh_config_at_its_old_behaviour():
    """A run folder recorded before any of ADDED_LATER's keys existed relaunches: deleting every one
    that today's config has (a method's quantizer has only some) from the record changes nothing."""
    now = task_config(compose_config("dataset=synthetic", "method=lab"))
    recorded, deleted = copy.deepcopy(now), set()
    for key in ADDED_LATER:
        *parents, leaf = key.split(".")
        node = recorded
        for parent in parents:
            node = node.get(parent, {})
        if leaf in node:
            del node[leaf]
            deleted.add(key)
    assert {"bn_reestimate_form", "dataset.shuffle_every", "dataset.eval_whole_batches", "teacher"} <= deleted
    assert config_changes(recorded, now) == []
    lin = task_config(compose_config("dataset=synthetic", "method=lab", "procedure=lin2016_code"))
    assert {k for k, _, _ in config_changes(recorded, lin)} == {
        "bn_reestimate",
        "bn_reestimate_form",
        "dataset.shuffle_every",
        "dataset.eval_whole_batches",
    }


@pytest.mark.slow  # two training processes; the lock itself is tested fast (released by SIGKILL)
def test_two_processes_never_train_in_one_folder(tmp_path):
    run = tmp_path / "run"
    first = train_cli(tmp_path, f"hydra.run.dir={run}", *SMALL, "trainer.max_epochs=100000")
    deadline = time.monotonic() + 120
    while not (run / "metrics.csv").exists():  # the first one is training
        assert first.poll() is None and time.monotonic() < deadline, (
            first.stderr.read() if first.stderr else ""
        )
        time.sleep(0.2)
    code, _, err = finish(train_cli(tmp_path, f"hydra.run.dir={run}", *SMALL, "trainer.max_epochs=100000"))
    assert code == 2 and "Traceback" not in err
    assert f"another process is training in {run} (process {first.pid} on" in err
    assert first.poll() is None  # undisturbed, still training
    first.terminate()  # as SLURM's preemption does
    code, _, err = finish(first)
    assert code == 143 and "stopped by SIGTERM" in err, err
    assert json.loads((run / "results.json").read_text())["status"] == "interrupted"


def test_jobs_started_together_get_folders_and_wandb_runs_of_their_own(tmp_path):
    """As two W&B agents started in the same second: the default folder names go through
    fewmult.new_dir; here both ask for the very same name, so they collide for certain."""
    same = "hydra.run.dir=${fewmult.new_dir:outputs/same}"
    procs = [
        train_cli(tmp_path, same, "dataset=synthetic", "model.arch=64FC", "trainer.max_epochs=1")
        for _ in "ab"
    ]
    for proc in procs:
        code, _, err = finish(proc)
        assert code == 0, err
    folders = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert folders == ["same", "same_1"]
    runs = [
        run_info(next((tmp_path / "outputs" / f).glob("wandb/offline-run-*/run-*.wandb"))) for f in folders
    ]
    assert runs[0].run_id != runs[1].run_id
    hydra = OmegaConf.to_container(compose_config().hydra, resolve=False)
    for key in ("run", "sweep"):  # the default folder names use it
        assert hydra[key]["dir"].startswith("${fewmult.new_dir:")


def test_a_lock_dies_with_its_holder(tmp_path):
    path = tmp_path / "x.lock"
    code = f"from fewmult.locks import FileLock; FileLock({str(path)!r}).acquire(); print('held', flush=True)"
    code += "; input()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    lock = FileLock(path)
    assert not lock.acquire(blocking=False)
    assert f"process {holder.pid} on" in lock.holder()
    holder.kill()
    holder.wait()
    assert lock.acquire(blocking=False)  # released by the kernel, no stale lock file to clean
    lock.release()


@pytest.mark.parametrize("content", ["", "not: [yaml"])
def test_an_unreadable_record_is_refused(tmp_path, content):
    from fewmult.errors import UserError
    from fewmult.rundir import prepare_run_dir

    (tmp_path / "metrics.csv").write_text("epoch\n0\n")
    if content:
        (tmp_path / RECORD).write_text(content)
    with pytest.raises(UserError, match="resume=false"):
        prepare_run_dir(tmp_path, {"seed": 0}, resume=True)


def test_a_refused_config_leaves_no_folder_and_an_existing_one_as_it_was(tmp_path):
    """Refusals that depend on the config alone come before Hydra makes the run folder. (A multirun
    job, whose folder Hydra makes before the job runs, takes it back: tests/test_gpu_pool.py.)"""
    code, _, err = finish(train_cli(tmp_path, *SMALL, "optim.lr=-1"))  # refused before torch loads
    assert code == 2 and "optim.lr must be a positive number" in err
    fresh = tmp_path / "fresh"  # refused once torch is loaded (the quantizer's registry)
    code, _, err = finish(train_cli(tmp_path, *SMALL, "method=lab", "optim=sgd", f"hydra.run.dir={fresh}"))
    assert code == 2 and "method=lab reads Adam's second moment, but optim=sgd" in err
    assert not (tmp_path / "outputs").exists() and not fresh.exists()  # a single run: no folder at all

    run_dir = trained_run(tmp_path / "finished", *SMALL, "trainer.max_epochs=1")
    before = snapshot(run_dir)
    code, _, err = finish(train_cli(tmp_path, *SMALL, "method=lab", "optim=sgd", f"hydra.run.dir={run_dir}"))
    # into a folder that holds a run, the relaunch's difference is named first (before torch loads)
    assert code == 2 and "method.name: 'fp' when the run was started, 'lab' now" in err
    assert snapshot(run_dir) == before  # Hydra's .hydra/ records of the finished run included
