"""The gpu_pool launcher: slots, side-by-side jobs, isolated failures, resumable sweeps, and
Hydra's own launcher conformance suites (run on CPU slots)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from itertools import combinations
from pathlib import Path

import pytest
import yaml
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from hydra.version import VersionBase

from fewmult.config import compose_config
from fewmult.rundir import RECORD, task_config
from hydra_plugins.fewmult_gpu_pool._slots import make_slots, physical_gpus, slot_env, usable_cpus
from hydra_plugins.fewmult_gpu_pool.launcher import OUTPUT_LOG, GPUPoolLauncher, _completed

POOL = ["hydra/launcher=gpu_pool", "hydra.launcher.devices=[cpu,cpu]"]


def test_discovered_by_hydra():
    assert GPUPoolLauncher.__name__ in [p.__name__ for p in Plugins.instance().discover(Launcher)]


def test_slots(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # ids are then the machine's own
    assert make_slots(["cpu", "cpu"], 1) == [("cpu",), ("cpu",)]
    assert make_slots(["0", "1", "2", "3"], 2) == [("0", "1"), ("2", "3")]
    assert make_slots(["0", "1", "cpu"], 1) == [("cpu",), ("0",), ("1",)]
    # k jobs per GPU: each GPU slot k times, interleaved so that the first jobs spread over the GPUs
    assert make_slots(["0", "1"], 1, jobs_per_gpu=2) == [("0",), ("1",), ("0",), ("1",)]
    assert make_slots(["0", "1", "cpu"], 2, jobs_per_gpu=3) == [("cpu",)] + [("0", "1")] * 3
    with pytest.raises(ValueError, match="jobs_per_gpu"):
        make_slots(["0"], 1, jobs_per_gpu=0)
    with pytest.raises(ValueError, match="gpus_per_job"):
        make_slots(["0", "1", "2"], 2)
    assert slot_env(("2", "3"), 4)["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert slot_env(("cpu",), 1) == {
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "FEWMULT_SLOT": "cpu",
    }


def test_explicit_gpu_ids_are_indices_into_the_parents_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert make_slots(["0", "1"], 1) == [("4",), ("5",)]
    assert make_slots(["2", "3"], 2) == [("6", "7")]
    assert make_slots(None, 2) == [("4", "5"), ("6", "7")]  # every visible GPU
    with pytest.raises(ValueError, match=r"indices 0\.\.3"):
        make_slots(["4"], 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert physical_gpus(["4"]) == ["4"]


def test_hydra_plugin_discovery_leaves_the_job_worker_alone():
    # Hydra's scan imports (and re-executes) every module of hydra_plugins not named _*
    code = (
        "import json, sys; from hydra.core.plugins import Plugins; Plugins.instance(); "
        "print(json.dumps([m for m in sys.modules if m.startswith('hydra_plugins.fewmult_gpu_pool')]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "hydra_plugins.fewmult_gpu_pool.launcher" in loaded  # the plugin itself is found
    assert "hydra_plugins.fewmult_gpu_pool._worker" not in loaded


def test_threads_come_from_the_cpus_this_process_may_use(monkeypatch, tmp_path):
    # a real affinity mask: taskset gives the child one CPU of the machine's
    code = "from hydra_plugins.fewmult_gpu_pool._slots import usable_cpus; print(usable_cpus())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert usable_cpus(tmp_path) == affinity  # no quota in an empty cgroup folder
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # a container quota of one CPU
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert usable_cpus(tmp_path) == 1


def launch_times(log: Path) -> list[float]:
    """When gpu_pool launched the job, from each header of its ``output.log``."""
    found = re.findall(r"^=== gpu_pool: launched on \S+ at ([\d-]+ [\d:.]+),", log.read_text(), re.MULTILINE)
    return [datetime.fromisoformat(t).timestamp() for t in found]


def jobs(sweep):
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}


def test_sweep_side_by_side_failure_isolated_and_resumable(run_cli, tmp_path):
    # two jobs share GPU slot 0: on this CPU machine CUDA_VISIBLE_DEVICES=0 shows no GPU, so
    # trainer=auto trains them on the CPU, side by side
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=gpu_pool",
        "hydra.launcher.devices=[0]",
        "hydra.launcher.jobs_per_gpu=2",
        f"hydra.sweep.dir={sweep}",
        "dataset=synthetic",
        "trainer.max_epochs=2",
        "logger=none",
        "optim.lr=0.3,0.1,-1",
    ]
    proc = run_cli(*args)
    assert proc.returncode != 0, proc.stderr[-3000:]  # the lr=-1 job failed ...
    results = jobs(sweep)
    assert results, proc.stderr[-3000:]
    assert sorted(r["status"] for r in results.values()) == ["completed"] * 2  # ... alone
    assert "1 of 3 jobs failed" in proc.stdout  # Hydra's log goes to stdout
    # refused on its config before it became a run: its folder holds the launcher's log, with the reason
    (failed,) = {p.name for p in sweep.iterdir() if p.is_dir()} - set(results)
    assert sorted(p.name for p in (sweep / failed).iterdir()) == [OUTPUT_LOG]
    assert "optim.lr must be a positive number" in (sweep / failed / OUTPUT_LOG).read_text()
    assert f"the end of {sweep / failed / OUTPUT_LOG}" in proc.stdout  # with the job's last lines
    # side by side: some job was launched before another one had finished (one after another, every
    # launch would come after the previous job's finished_at)
    names = [*results, failed]
    launches = {name: launch_times(sweep / name / OUTPUT_LOG)[0] for name in names}
    assert all("launched on gpu:0 at" in (sweep / name / OUTPUT_LOG).read_text() for name in names), (
        "every job on the one GPU slot"
    )
    # a job's end: its results.json's finished_at; the refused one's, its log's last write
    ends = {n: r["finished_at"] for n, r in results.items()}
    ends[failed] = (sweep / failed / OUTPUT_LOG).stat().st_mtime
    overlap = [launches[a] < ends[b] and launches[b] < ends[a] for a, b in combinations(names, 2)]
    assert any(overlap), "two jobs ran side by side"
    # ... but never three: intervals that overlap pairwise share a moment (three jobs at once)
    assert not all(overlap), "at most jobs_per_gpu=2 jobs on the GPU at a time"

    completed = [name for name, r in results.items() if r["status"] == "completed"]
    keep, interrupted = completed[0], completed[1]
    stamp = (sweep / keep / "results.json").stat().st_mtime_ns
    (sweep / interrupted / "results.json").unlink()  # as if killed after its last checkpoint
    proc = run_cli(*args)  # the same sweep again, into its folder
    assert proc.returncode != 0  # the lr=-1 job fails again
    assert (sweep / keep / "results.json").stat().st_mtime_ns == stamp  # skipped, untouched
    assert "already completed" in proc.stdout
    log = (sweep / interrupted / OUTPUT_LOG).read_text()
    assert len(launch_times(sweep / interrupted / OUTPUT_LOG)) == 2  # both launches, appended
    assert "resuming from" in log
    rows = (sweep / interrupted / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]  # no epoch trained twice
    assert jobs(sweep)[interrupted]["status"] == "completed"


@pytest.mark.slow
def test_a_different_sweep_into_the_same_folder_does_not_reuse_finished_jobs(run_cli, tmp_path):
    """Job folders are numbered; job 0 of another sweep is another run: neither skipped nor continued."""
    sweep = tmp_path / "sweep"
    common = [
        "-m",
        *POOL,
        f"hydra.sweep.dir={sweep}",
        "dataset=synthetic",
        "trainer.max_epochs=1",
        "logger=none",
    ]
    assert run_cli(*common, "optim.lr=0.3").returncode == 0
    proc = run_cli(*common, "optim.lr=0.1")
    assert proc.returncode != 0 and "already completed" not in proc.stdout
    log = (sweep / "0" / OUTPUT_LOG).read_text()
    assert "optim.lr: 0.3 when the run was started, 0.1 now" in log and "Traceback" not in log
    assert json.loads((sweep / "0" / "results.json").read_text())["lr"] == 0.3  # the finished run is kept


def test_skipped_jobs_return_their_own_selection_metric(tmp_path):
    job = tmp_path / "0"
    job.mkdir()
    (job / "results.json").write_text(
        json.dumps({"status": "completed", "selected_by": "val_loss", "val_loss": 1.5})
    )
    config = compose_config("dataset=text", "logger=none")
    (job / RECORD).write_text(yaml.safe_dump(task_config(config)))
    assert _completed(job, config)["val_loss"] == 1.5
    other = compose_config("dataset=text", "logger=none", "optim.lr=0.5")
    assert _completed(job, other) is None
    # the device is resolved in the job, on its slot: a job done on a CPU slot is done for a parent
    # that sees a GPU
    on_gpu = compose_config(
        "dataset=text", "logger=none", "trainer.accelerator=cuda", "trainer.deterministic=false"
    )
    assert _completed(job, on_gpu)["val_loss"] == 1.5


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


@pytest.mark.slow
def test_slurm_preset_requeues_and_submitit_local_runs_jobs(run_cli, tmp_path):
    from fewmult.config import compose_config

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


def test_a_slots_jobs_share_its_process_and_end_as_in_a_fresh_one(run_cli, tmp_path):
    """Four jobs of one config on one CPU slot, two per process (``jobs_per_process=2``); the third
    ends its process (``os._exit`` from a callback): it fails alone and the fourth gets a new process.
    A job run second in a process trains exactly as the first did in a fresh one."""
    sweep = tmp_path / "sweep"
    crash = "[{_target_:os._exit,status:3}]"
    proc = run_cli(
        "-m",
        "hydra/launcher=gpu_pool",
        "hydra.launcher.devices=[cpu]",
        "hydra.launcher.jobs_per_process=2",
        f"hydra.sweep.dir={sweep}",
        "dataset=synthetic",
        "method=tc",
        "trainer.max_epochs=2",
        "logger=none",
        f"callbacks=[],[],{crash},[]",
    )
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "1 of 4 jobs failed" in proc.stdout and f"{sweep / '2'} died (exit 3)" in proc.stdout
    headers = [(sweep / str(i) / OUTPUT_LOG).read_text().splitlines()[0] for i in range(4)]
    assert [h.endswith("a new process") for h in headers] == [True, False, True, True], headers
    first_pid = re.search(r"a new process|process (\d+), job 2 in it$", headers[1]).group(1)
    assert first_pid and "job 2 in it" not in headers[2]
    results = jobs(sweep)
    assert sorted(results) == ["0", "1", "3"] and {r["status"] for r in results.values()} == {"completed"}

    def trained(job: str, name: str) -> list[list[str]]:  # every column but the wall-clock ones
        rows = [line.split(",") for line in (sweep / job / name).read_text().splitlines()]
        keep = [i for i, column in enumerate(rows[0]) if "seconds" not in column and "wait" not in column]
        return [[row[i] for i in keep] for row in rows]

    for name in ("metrics.csv", "layers.csv"):
        assert trained("1", name) == trained("0", name) == trained("3", name), name
