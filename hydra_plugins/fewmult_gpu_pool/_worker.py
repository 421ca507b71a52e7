"""Runs Hydra jobs one after another in one process: ``python -m hydra_plugins.fewmult_gpu_pool._worker``.

The launcher keeps one such process per slot, so the jobs of a sweep that land on a slot share its
imports (torch, Lightning: seconds per launch) and its compiled kernels (``torch.compile``: seconds
per process even with inductor's cache warm). Each line on stdin names one job:
``PAYLOAD<TAB>RESULT<TAB>LOG``. ``PAYLOAD`` holds the pickled Hydra context, task function, job
config and Hydra's global state; ``RESULT`` receives the pickled ``JobReturn``; the job's output,
down to the file descriptors (so C libraries and child processes too), is appended to ``LOG``.
After each job the worker writes ``done`` on the stdout it was started with (the launcher's control
channel). It ends at the end of stdin; a job that ends the process (a crash, ``os._exit``) shows
the launcher the end of that channel instead of ``done``. The slot's environment
(``CUDA_VISIBLE_DEVICES``, thread counts) is set by the launcher before this process starts, so
torch sees only the slot's devices.
"""

from __future__ import annotations

import os
import sys

from hydra_plugins.fewmult_gpu_pool._process import DONE


def _output_to(log_path: str) -> None:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to the end of ``log_path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_one(payload_path: str, result_path: str) -> None:
    """Run the job pickled in ``payload_path``; write its ``JobReturn`` to ``result_path``."""
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    with open(payload_path, "rb") as f:
        hydra_context, task_function, config, state = cloudpickle.load(f)
    setup_globals()
    Singleton.set_state(state)
    result = run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    with open(result_path, "wb") as f:
        cloudpickle.dump(result, f)


def main() -> None:
    control = os.fdopen(os.dup(1), "w", buffering=1)  # fd 1 itself follows each job's log
    for line in sys.stdin:
        payload_path, result_path, log_path = line.rstrip("\n").split("\t")
        _output_to(log_path)
        try:
            run_one(payload_path, result_path)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        control.write(f"{DONE}\n")


if __name__ == "__main__":
    main()
