"""The device a run trains on when the config does not choose one: the GPU if CUDA sees one.

``trainer=auto`` (the default) resolves ``trainer.accelerator`` with :func:`visible_accelerator`
in the job's own process, so a job started by a launcher trains on the GPUs its slot exposes
(``CUDA_VISIBLE_DEVICES``), and ``run_config.yaml`` records the device that was actually used.
"""

from __future__ import annotations

import torch


def visible_accelerator() -> str:
    """``"cuda"`` when this process sees a CUDA device, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def deterministic_on(accelerator: str) -> bool:
    """Deterministic algorithms on the CPU (runs repeat exactly for a seed, at no cost there); on a
    GPU, the fastest kernels (cuDNN's autotuned convolutions, atomic-add reductions)."""
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def describe_device(accelerator: str, devices: int | str) -> str:
    """E.g. ``"cuda:0 (NVIDIA H100 80GB HBM3)"``, ``"2 x cpu"``."""
    on_cuda = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    name = "cuda" if on_cuda else "cpu"
    if on_cuda:
        name = f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    return name if devices in (1, "1") else f"{devices} x {name}"
