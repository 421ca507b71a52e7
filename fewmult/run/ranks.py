"""One job on many processes started by a launcher: torchrun, or SLURM's tasks (``srun``, submitit).

``trainer=ddp`` alone starts its ranks itself (``ddp_spawn``, one machine). When a launcher has
already started one process per device, possibly on many nodes, each process runs
``python -m fewmult.train`` whole: Lightning's ``ddp`` joins them (it reads the same environment),
the trainer's devices and nodes follow the launch, and only rank zero owns the run folder: it takes
its lock, checks or starts over the recorded run, writes ``results.json`` and logs. The other ranks
only read: the ``last.ckpt`` rank zero continues from (nothing writes it before the processes have
joined). Everything here reads environment variables only, so the config resolvers that call it
import nothing heavy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fewmult.errors import UserError


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a launch of many."""

    launcher: str  # "torchrun" or "slurm"
    launch_id: str | None  # shared by every process of the launch (None: the launcher gave none)
    rank: int
    world_size: int
    local_world_size: int

    @property
    def num_nodes(self) -> int:
        return self.world_size // self.local_world_size


def _slurm_tasks_per_node() -> int:
    # "4" or "4(x2)" (the tasks of the first nodes); SLURM_NTASKS / SLURM_NNODES when absent
    raw = os.environ.get("SLURM_NTASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE", "")
    if raw:
        return int(raw.split("(")[0].split(",")[0])
    return int(os.environ["SLURM_NTASKS"]) // int(os.environ.get("SLURM_NNODES", "1"))


def current_launch() -> Launch | None:
    """The launch this process is part of, or None (a process of its own: ranks, if any, are spawned)."""
    env = os.environ
    if "LOCAL_WORLD_SIZE" in env and "RANK" in env and "WORLD_SIZE" in env:
        run_id = env.get("TORCHELASTIC_RUN_ID")
        return Launch(
            "torchrun",
            run_id if run_id and run_id != "none" else None,
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env["LOCAL_WORLD_SIZE"]),
        )
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        job = env.get("SLURM_JOB_ID")
        step = env.get("SLURM_ARRAY_TASK_ID")
        return Launch(
            "slurm",
            f"{job}_{step}" if job and step else job,
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            _slurm_tasks_per_node(),
        )
    return None


def owns_run_dir() -> bool:
    """Whether this process prepares the run folder, writes results.json and logs: rank zero of a
    launch, or a process of its own."""
    launch = current_launch()
    return launch is None or launch.rank == 0


def ddp_strategy() -> str:
    """``ddp`` inside a launch (the processes exist), ``ddp_spawn`` otherwise (Lightning's ``ddp``
    re-executes the command line, which breaks Hydra multirun and pytest)."""
    return "ddp" if current_launch() is not None else "ddp_spawn"


def ddp_devices(default: int) -> int:
    """Devices per node: the launch's processes per node, or ``default``."""
    launch = current_launch()
    return launch.local_world_size if launch else default


def ddp_nodes() -> int:
    launch = current_launch()
    return launch.num_nodes if launch else 1


def shared_run_dir(base: str) -> str | None:
    """Inside a launch, the auto-named run folder every rank computes alike: ``base``'s parent (the
    date) and the launcher's id in place of the time, which differs between processes by a second
    now and then. None outside a launch. Refused when the launcher gives no id."""
    launch = current_launch()
    if launch is None:
        return None
    if launch.launch_id is None:
        raise UserError(
            f"{launch.launcher} started {launch.world_size} processes without an id they share, so they "
            "cannot agree on an auto-named run folder. Name it: hydra.run.dir=runs/NAME (the same on "
            "every process), or start torchrun with --standalone or --rdzv-id ID."
        )
    return str(Path(base).parent / f"{launch.launcher}-{launch.launch_id}")
