"""Shared fixtures: composing the real configs, and running the real CLI in a subprocess."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fewmult.config import CONF_DIR
from tests import prewarmed

REPO = CONF_DIR.parent


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test may log online or read the user's data folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("FEWMULT_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


# modules whose tests are about processes: kills, locks, concurrent writers, launchers
PROCESS_MODULES = {
    "test_resume",
    "test_run_folder",
    "test_shared_data",
    "test_gpu_pool",
    "test_gpu_check",
    "test_readme",
    "test_launch",
    "test_prewarmed",
}


# The fused functions go to torch.compile here, whose kernels CI's fresh cache compiles in 1-4 s each,
# not to packages compiled ahead of time (6-10 s each, about 25 in the suite's jobs): a test that is
# about those packages turns them on for itself (tests/test_ahead.py)
os.environ.setdefault("FEWMULT_AOT", "0")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2: one thread per worker and per process it starts. Two workers of two threads each
    # on two cores make OpenMP's waiting threads fight: a 1.3 s test took 47 s that way.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that starts a process (the CLI, DDP ranks, killed jobs) as ``process``, so
    ``pytest -m "not slow and not process"`` is the inner loop of in-process tests. Slow and process
    tests go first, so that ``-n 2`` does not end on one long test while the other worker idles."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if "run_cli" in getattr(item, "fixturenames", ()) or module in PROCESS_MODULES:
            item.add_marker(pytest.mark.process)
    items.sort(
        key=lambda item: (item.get_closest_marker("slow") is None, item.get_closest_marker("process") is None)
    )


def cli(
    cwd: Path, *args: str, module: str = "fewmult.train", timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """``python -m fewmult.train`` (or another module) in ``cwd``, W&B offline; forked from the
    worker's prewarmed interpreter where it can be (:mod:`tests.prewarmed`)."""
    return prewarmed.run(module, args, cwd, cli_env(**env), timeout)


def cli_env(**env: str) -> dict[str, str]:
    """The test's environment for a launch: W&B offline and silent, then ``env``."""
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env}


@pytest.fixture
def run_cli(tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m fewmult.train`` (or another module) with a fresh output folder."""
    return functools.partial(cli, tmp_path)


def trained_run(run_dir: Path, *overrides: str) -> Path:
    """A run trained in this process into ``run_dir`` (``logger=none``): for tests whose promise is
    what another entry point does with a finished run, so they skip a launch's imports."""
    from fewmult.config import compose_config
    from fewmult.run.job import train

    run_dir.mkdir(parents=True)
    results = train(compose_config(*overrides, "logger=none"), run_dir)
    assert results["status"] == "completed", results
    return run_dir


def imported_modules(stderr: str) -> set[str]:
    """The modules a process imported, from its ``-X importtime`` (PYTHONPROFILEIMPORTTIME) lines."""
    return {
        line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")
    }


def only_run_dir(root: Path) -> Path:
    """The one folder under ``root`` that holds a results.json."""
    found = sorted(p.parent for p in root.rglob("results.json"))
    assert len(found) == 1, found
    return found[0]
