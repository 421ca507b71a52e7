"""Slots: which devices a job may use, handed out through a queue so uneven jobs pack tightly."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def _listed(visible: str) -> list[str]:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value."""
    return [d.strip() for d in visible.split(",") if d.strip()]


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without initializing CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return _listed(visible)
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def physical_gpus(devices: Sequence[str]) -> list[str]:
    """Explicit GPU ids, read as CUDA reads them: indices into this process's ``CUDA_VISIBLE_DEVICES``.

    Under ``CUDA_VISIBLE_DEVICES=4,5,6,7`` (a SLURM allocation, say) ``devices=[0,1]`` are GPUs 4
    and 5: the children get ``CUDA_VISIBLE_DEVICES=4`` and ``=5``, not the parent's own 0 and 1.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(devices)
    table = _listed(visible)
    physical = []
    for device in devices:
        if not device.isdigit() or int(device) >= len(table):
            raise ValueError(
                f"hydra.launcher.devices has GPU {device!r}, but this process sees "
                f"CUDA_VISIBLE_DEVICES={visible!r}: use indices 0..{len(table) - 1} into that list"
            )
        physical.append(table[int(device)])
    return physical


def make_slots(
    devices: Sequence[str] | None, gpus_per_job: int, jobs_per_gpu: int = 1
) -> list[tuple[str, ...]]:
    """Group the devices into slots: ``cpu`` entries are slots of their own, GPUs in consecutive groups.

    With ``jobs_per_gpu=k`` every GPU slot is listed k times, so k jobs share it (small models that
    leave a GPU mostly idle); the copies are interleaved, so the first jobs spread over all GPUs.
    """
    for key, value in (("gpus_per_job", gpus_per_job), ("jobs_per_gpu", jobs_per_gpu)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"hydra.launcher.{key} must be an integer >= 1, got {value!r}")
    if devices is None:
        devices = visible_gpus() or ["cpu"]
        gpus = [d for d in devices if d != "cpu"]
    else:
        devices = [str(d) for d in devices]
        gpus = physical_gpus([d for d in devices if d != "cpu"])
    cpus = [("cpu",) for d in devices if d == "cpu"]
    if len(gpus) % gpus_per_job:
        raise ValueError(
            f"{len(gpus)} GPUs cannot be split into slots of {gpus_per_job} (hydra.launcher.gpus_per_job)"
        )
    gpu_slots = [tuple(gpus[i : i + gpus_per_job]) for i in range(0, len(gpus), gpus_per_job)]
    return cpus + [slot for _ in range(jobs_per_gpu) for slot in gpu_slots]


def _cgroup_cpus(cgroup: Path) -> int | None:
    """The CPU quota of this container (cgroup v2 ``cpu.max`` or v1 CFS quota), in whole CPUs."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else max(1, quota // period)
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity (taskset, cpusets), the container's CPU quota and
    SLURM's ``--cpus-per-task``, whichever is smallest (``os.cpu_count()`` counts the whole machine)."""
    counts = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1]
    if (quota := _cgroup_cpus(cgroup)) is not None:
        counts.append(quota)
    if (slurm := os.environ.get("SLURM_CPUS_PER_TASK", "")).isdigit():
        counts.append(int(slurm))
    return max(1, min(counts))


def slot_env(slot: tuple[str, ...], threads: int) -> dict[str, str]:
    """Environment of a job on ``slot``: its GPUs only (none for CPU slots) and a thread budget."""
    gpus = "" if slot == ("cpu",) else ",".join(slot)
    return {
        "CUDA_VISIBLE_DEVICES": gpus,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "FEWMULT_SLOT": "cpu" if not gpus else f"gpu:{gpus}",
    }
