"""The gpu_pool launcher: slots, side-by-side jobs, isolated failures, resumable sweeps, and
Hydra's own launcher conformance suites (run on CPU slots)."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from hydra.version import VersionBase

from hydra_plugins.fewmult_gpu_pool.launcher import GPUPoolLauncher
from hydra_plugins.fewmult_gpu_pool.slots import make_slots, slot_env

POOL = ["hydra/launcher=gpu_pool", "hydra.launcher.devices=[cpu,cpu]"]


def test_discovered_by_hydra():
    assert GPUPoolLauncher.__name__ in [p.__name__ for p in Plugins.instance().discover(Launcher)]


def test_slots():
    assert make_slots(["cpu", "cpu"], 1) == [("cpu",), ("cpu",)]
    assert make_slots(["0", "1", "2", "3"], 2) == [("0", "1"), ("2", "3")]
    assert make_slots(["0", "1", "cpu"], 1) == [("cpu",), ("0",), ("1",)]
    with pytest.raises(ValueError, match="gpus_per_job"):
        make_slots(["0", "1", "2"], 2)
    assert slot_env(("2", "3"), 4)["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert slot_env(("cpu",), 1) == {
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "FEWMULT_SLOT": "cpu",
    }


def jobs(sweep):
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}


def test_sweep_side_by_side_failure_isolated_and_resumable(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *POOL,
        f"hydra.sweep.dir={sweep}",
        "dataset=synthetic",
        "trainer.max_epochs=2",
        "logger=none",
    ]
    proc = run_cli(*args, "seed=0,1,2", "optim.lr=0.3,-1")
    assert proc.returncode != 0, proc.stderr[-3000:]  # the lr=-1 jobs failed ...
    results = jobs(sweep)
    assert results, proc.stderr[-3000:]
    assert sorted(r["status"] for r in results.values()) == ["completed"] * 3 + ["failed"] * 3  # ... alone
    assert "3 of 6 jobs failed" in proc.stdout  # Hydra's log goes to stdout
    # each job is a new interpreter that imports torch and Lightning (seconds) before train() starts;
    # one after another, no two jobs could start training within a second of each other
    starts = sorted(r["started_at"] for r in results.values())
    assert any(b - a < 1.0 for a, b in pairwise(starts)), "two jobs ran side by side"

    completed = [name for name, r in results.items() if r["status"] == "completed"]
    keep, interrupted = completed[0], completed[1]
    stamp = (sweep / keep / "results.json").stat().st_mtime_ns
    (sweep / interrupted / "results.json").unlink()  # as if killed after its last checkpoint
    proc = run_cli(*args, "seed=0,1,2", "optim.lr=0.3")
    assert proc.returncode == 0, proc.stderr
    assert (sweep / keep / "results.json").stat().st_mtime_ns == stamp  # skipped, untouched
    assert "already completed" in proc.stdout
    assert "resuming from" in proc.stdout
    rows = (sweep / interrupted / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]  # no epoch trained twice
    assert jobs(sweep)[interrupted]["status"] == "completed"


@pytest.fixture
def default_hydra_version_base():
    """The conformance suites assume Hydra's default version base; other tests here set 1.3."""
    saved = Singleton._instances.pop(VersionBase, None)
    yield
    if saved is not None:
        Singleton._instances[VersionBase] = saved


@pytest.mark.usefixtures("default_hydra_version_base")
@pytest.mark.parametrize("launcher_name, overrides", [("gpu_pool", ["hydra.launcher.devices=[cpu,cpu]"])])
class TestGPUPoolLauncher(LauncherTestSuite):
    """Hydra's launcher conformance suite, as its official launchers run it."""


@pytest.mark.usefixtures("default_hydra_version_base")
@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({}, ["-m", "hydra/launcher=gpu_pool", "hydra.launcher.devices=[cpu,cpu]"])],
)
class TestGPUPoolLauncherIntegration(IntegrationTestSuite):
    """Hydra's integration suite: real apps launched through gpu_pool in subprocesses."""


def test_slurm_preset_requeues_and_submitit_local_runs_jobs(run_cli, tmp_path):
    from tests.conftest import compose_config

    cfg = compose_config("hydra/launcher=slurm")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.max_num_timeout > 0  # requeued on timeout/preemption, resumes from last.ckpt
    sweep = tmp_path / "submitit"
    proc = run_cli(
        "-m",
        "hydra/launcher=submitit_local",
        f"hydra.sweep.dir={sweep}",
        "dataset=synthetic",
        "trainer.max_epochs=1",
        "logger=none",
        "seed=0,1",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["status"] for r in jobs(sweep).values()) == ["completed", "completed"]
