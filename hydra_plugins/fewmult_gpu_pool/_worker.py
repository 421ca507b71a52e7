"""Runs one Hydra job in a fresh process: ``python -m hydra_plugins.fewmult_gpu_pool._worker IN OUT``.

``IN`` holds the pickled Hydra context, task function, job config and Hydra's global state; ``OUT``
receives the pickled ``JobReturn``. The slot's environment (``CUDA_VISIBLE_DEVICES``, thread
counts) is set by the launcher before this process starts, so torch sees only its devices.
"""

from __future__ import annotations

import sys

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import run_job, setup_globals


def main(payload_path: str, result_path: str) -> None:
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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
