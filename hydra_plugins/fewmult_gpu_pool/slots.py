"""Slots: which devices a job may use, handed out through a queue so uneven jobs pack tightly."""

from __future__ import annotations

import os
import queue
from collections.abc import Sequence


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without initializing CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def make_slots(devices: Sequence[str] | None, gpus_per_job: int) -> list[tuple[str, ...]]:
    """Group the devices into slots: ``cpu`` entries are slots of their own, GPUs in consecutive groups."""
    if gpus_per_job < 1:
        raise ValueError(f"hydra.launcher.gpus_per_job must be >= 1, got {gpus_per_job}")
    devices = [str(d) for d in (devices if devices is not None else visible_gpus() or ["cpu"])]
    cpus = [("cpu",) for d in devices if d == "cpu"]
    gpus = [d for d in devices if d != "cpu"]
    if len(gpus) % gpus_per_job:
        raise ValueError(
            f"{len(gpus)} GPUs cannot be split into slots of {gpus_per_job} (hydra.launcher.gpus_per_job)"
        )
    return cpus + [tuple(gpus[i : i + gpus_per_job]) for i in range(0, len(gpus), gpus_per_job)]


def slot_queue(slots: list[tuple[str, ...]]) -> queue.Queue:
    q: queue.Queue = queue.Queue()
    for slot in slots:
        q.put(slot)
    return q


def slot_env(slot: tuple[str, ...], threads: int) -> dict[str, str]:
    """Environment of a job on ``slot``: its GPUs only (none for CPU slots) and a thread budget."""
    gpus = "" if slot == ("cpu",) else ",".join(slot)
    return {
        "CUDA_VISIBLE_DEVICES": gpus,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "FEWMULT_SLOT": "cpu" if not gpus else f"gpu:{gpus}",
    }
