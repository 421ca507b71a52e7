"""The ``gpu_pool`` launcher: jobs side by side on free slots, each slot's jobs in its own process.

* Slots come from ``hydra.launcher.devices`` (default: every visible GPU; ``[cpu,cpu]`` runs two CPU
  jobs side by side) grouped by ``gpus_per_job``, each GPU slot taken by up to ``jobs_per_gpu``
  jobs at once; a queue hands them out, so a short job frees its place for the next one at once.
* Every slot runs its jobs in a process of its own (``_process.SlotProcess``) whose environment pins
  its devices (``CUDA_VISIBLE_DEVICES``) and its threads before torch loads. The process stays for
  the slot's next job, so a sweep pays the imports and ``torch.compile`` once per slot
  (``jobs_per_process=1``: a fresh process for every job). A job that ends its process fails alone.
* A failing job is recorded (its ``JobReturn`` is FAILED; fewmult writes ``results.json`` with
  ``status: failed``) while the others go on; the failures are listed at the end, and Hydra's
  sweeper then exits non-zero.
* Each job's output (stdout and stderr) goes to ``output.log`` in its job folder, appended by
  every launch under a header with the slot, the launch time and the process; a failure is listed
  with that file and its last lines.
* Threads per job: the CPUs this process may use (affinity, container quota, SLURM's
  ``--cpus-per-task``) divided by the number of slots, unless ``threads_per_job`` is set.
* Relaunching into the same ``hydra.sweep.dir`` skips jobs whose ``results.json`` says completed
  and whose recorded config is the job's config; fewmult resumes interrupted ones from their
  ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import queue
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import cloudpickle
import yaml
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from fewmult.rundir import RECORD, config_changes, task_config
from hydra_plugins.fewmult_gpu_pool._process import SlotProcess
from hydra_plugins.fewmult_gpu_pool._slots import make_slots, usable_cpus

log = logging.getLogger(__name__)

OUTPUT_LOG = "output.log"  # the job's stdout and stderr, in its folder
# resolved in the job's own process from the devices of its slot (trainer=auto): a completed job
# is completed whichever slot it had
SLOT_DEPENDENT = ("trainer.accelerator", "trainer.deterministic")


class GPUPoolLauncher(Launcher):
    def __init__(
        self,
        devices: Sequence[str] | None = None,
        gpus_per_job: int = 1,
        jobs_per_gpu: int = 1,
        threads_per_job: int | None = None,
        skip_completed: bool = True,
        jobs_per_process: int | None = None,
    ) -> None:
        if jobs_per_process is not None and (not isinstance(jobs_per_process, int) or jobs_per_process < 1):
            raise ValueError(
                f"hydra.launcher.jobs_per_process must be an integer >= 1 or null, got {jobs_per_process!r}"
            )
        self.devices = None if devices is None else [str(d) for d in devices]
        self.gpus_per_job = gpus_per_job
        self.jobs_per_gpu = jobs_per_gpu
        self.threads_per_job = threads_per_job
        self.skip_completed = skip_completed
        self.jobs_per_process = jobs_per_process
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        slots = make_slots(self.devices, self.gpus_per_job, self.jobs_per_gpu)
        threads = self.threads_per_job or max(1, usable_cpus() // len(slots))
        processes = [SlotProcess(slot, threads, self.jobs_per_process) for slot in slots]
        free: queue.Queue[SlotProcess] = queue.Queue()
        for process in processes:
            free.put(process)
        log.info(f"gpu_pool: {len(job_overrides)} jobs on {len(slots)} slots {slots}, {threads} threads each")
        try:
            with ThreadPoolExecutor(max_workers=len(slots)) as pool:
                futures = [
                    pool.submit(self._run, initial_job_idx + i, list(overrides), free)
                    for i, overrides in enumerate(job_overrides)
                ]
                returns = [f.result() for f in futures]
        finally:
            for process in processes:
                process.close()
        failed = [r for r in returns if r.status == JobStatus.FAILED]
        if failed:
            log.error(f"gpu_pool: {len(failed)} of {len(returns)} jobs failed:")
            for r in failed:
                overrides = " ".join(filter_overrides(r.overrides or []))
                log.error(f"  {r.working_dir}: {overrides}: {r._return_value}")
        return returns

    def _job_config(self, idx: int, overrides: list[str]) -> DictConfig:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
            sweep_config.hydra.job.num = idx
        return sweep_config

    def _run(self, idx: int, overrides: list[str], free: queue.Queue[SlotProcess]) -> JobReturn:
        config = self._job_config(idx, overrides)
        job_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        if self.skip_completed and (done := _completed(job_dir, config)) is not None:
            log.info(f"gpu_pool: #{idx} already completed in {job_dir}, skipped")
            metric = done.get(done.get("selected_by", "val_error"))  # what the job itself returned
            return _job_return(config, overrides, job_dir, JobStatus.COMPLETED, metric)
        process = free.get()
        try:
            log.info(f"gpu_pool: #{idx} on {process.name}: {' '.join(filter_overrides(overrides))}")
            return self._run_in(process, config, overrides, job_dir)
        finally:
            free.put(process)

    def _run_in(self, process: SlotProcess, config, overrides, job_dir: Path) -> JobReturn:
        job_dir.mkdir(parents=True, exist_ok=True)
        output = job_dir / OUTPUT_LOG
        with tempfile.TemporaryDirectory(prefix="gpu_pool_") as tmp:
            payload, result = Path(tmp) / "in.pkl", Path(tmp) / "out.pkl"
            state = Singleton.get_state()
            payload.write_bytes(cloudpickle.dumps((self.hydra_context, self.task_function, config, state)))
            started = datetime.now().isoformat(sep=" ", timespec="milliseconds")
            threads = process.env["OMP_NUM_THREADS"]
            with output.open("a") as log_file:
                log_file.write(
                    f"=== gpu_pool: launched on {process.name} at {started}, {threads} threads, "
                    f"{process.describe_next()}\n"
                )
            exit_code = process.run(payload, result, output)
            if exit_code is None and result.is_file():
                returned = cloudpickle.loads(result.read_bytes())
                if returned.status == JobStatus.FAILED:
                    log.error(f"gpu_pool: job in {job_dir} failed; the end of {output}:\n{_tail(output)}")
                return returned
        error = RuntimeError(f"job process exited with code {exit_code}; see {output}")
        log.error(
            f"gpu_pool: job in {job_dir} died (exit {exit_code}); the end of {output}:\n{_tail(output)}"
        )
        return _job_return(config, overrides, job_dir, JobStatus.FAILED, error)


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _completed(job_dir: Path, config: DictConfig) -> dict[str, Any] | None:
    """The job's ``results.json`` if it completed with this job's config (else it runs, and fewmult
    refuses a folder that holds a run of another config, naming the differences)."""
    try:
        results = json.loads((job_dir / "results.json").read_text())
        recorded = yaml.safe_load((job_dir / RECORD).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    changes = [key for key, *_ in config_changes(recorded or {}, task_config(config))]
    if results.get("status") != "completed" or set(changes) - set(SLOT_DEPENDENT):
        return None
    return results


def _job_return(config: DictConfig, overrides, job_dir: Path, status: JobStatus, value: Any) -> JobReturn:
    return JobReturn(
        overrides=overrides,
        cfg=OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]),
        hydra_cfg=config,
        working_dir=str(job_dir),
        task_name=str(config.hydra.job.name),
        status=status,
        _return_value=value,
    )
