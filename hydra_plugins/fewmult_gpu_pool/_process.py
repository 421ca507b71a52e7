"""One slot's job process: started on the slot's first job, kept for the next ones.

Jobs run one after another in it (``_worker``), so a sweep pays the imports and the compiled
kernels once per slot, not once per job. ``jobs_per_process`` bounds how many jobs one process runs
before it is replaced (1: a fresh process for every job). A job that ends the process (a crash, the
kernel's OOM killer) fails alone: the slot's next job starts a new process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from hydra_plugins.fewmult_gpu_pool._slots import slot_env

log = logging.getLogger(__name__)

DONE = "done"  # the worker's answer on its control channel after each job
EXIT_WAIT_S = 60  # a finished process's exit (atexit handlers, e.g. a logger's upload) before it is killed


class SlotProcess:
    """The job process of one slot (a slot that takes k jobs at a time has k of these)."""

    def __init__(self, slot: tuple[str, ...], threads: int, jobs_per_process: int | None) -> None:
        self.slot = slot
        self.env = {**os.environ, **slot_env(slot, threads)}
        self.jobs_per_process = jobs_per_process
        self._proc: subprocess.Popen | None = None
        self._jobs = 0  # jobs run by the current process

    @property
    def name(self) -> str:
        return self.env["FEWMULT_SLOT"]

    def describe_next(self) -> str:
        """Where the next job runs: ``process PID, job N in it`` (or ``a new process``)."""
        if self._proc is None:
            return "a new process"
        return f"process {self._proc.pid}, job {self._jobs + 1} in it"

    def run(self, payload: Path, result: Path, output: Path) -> int | None:
        """Run one job; None when it ran to its end (its ``JobReturn`` is in ``result``), else the
        exit code of the process that ended under it."""
        if self._proc is None:
            with output.open("ab") as first_output:  # until the worker routes its output itself
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "hydra_plugins.fewmult_gpu_pool._worker"],
                    env=self.env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=first_output,
                    text=True,
                )
            self._jobs = 0
        proc = self._proc
        try:
            proc.stdin.write(f"{payload}\t{result}\t{output}\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
        except BrokenPipeError:
            answer = ""
        self._jobs += 1
        if answer.strip() != DONE:
            self._proc = None
            proc.stdin.close()
            proc.stdout.close()
            return proc.wait()
        if self.jobs_per_process is not None and self._jobs >= self.jobs_per_process:
            self.close()
        return None

    def close(self) -> None:
        """End the process after its job (end of its input; killed if it does not exit in time)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.stdin.close()
        try:
            proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning(f"gpu_pool: the process {proc.pid} of {self.name} did not exit; killed")
            proc.kill()
            proc.wait()
        proc.stdout.close()
