"""Count the host-device synchronisations of training steps, through the trainer users run.

A call that turns a device tensor into a Python number (``.item()``, ``float()``, ``bool()``,
``if tensor:``) makes the CPU wait for the GPU, and one such call per step leaves a GPU idle
between steps. Every one of them goes through the op ``aten::_local_scalar_dense``, which the
profiler records on any device, so counting it on the CPU finds the syncs a GPU run would make.

:class:`HostSyncCount` is an ordinary Lightning callback (``callbacks=[{_target_:
fewmult.syncs.HostSyncCount, ...}]``); on CUDA it also turns on
``torch.cuda.set_sync_debug_mode("error")`` over the same steps, so that any synchronising call
(including copies the profiler does not name) raises where it happens.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile

SCALAR_READ = "aten::_local_scalar_dense"


def count_scalar_reads(prof: profile) -> int:
    return sum(e.count for e in prof.key_averages() if e.key == SCALAR_READ)


def plain_step_scalar_reads(optimizer: torch.optim.Optimizer, steps: int) -> int:
    """Scalar reads of ``steps`` plain PyTorch steps: a fresh optimizer of the same class and settings
    over copies of the same parameters, a sum-of-squares loss. What the optimizer itself reads
    (``torch.optim.Adam`` reads its step counter, a CPU tensor, once per parameter)."""
    params = [p.detach().clone().requires_grad_() for g in optimizer.param_groups for p in g["params"]]
    plain = type(optimizer)(params, **optimizer.defaults)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            plain.zero_grad()
            sum(p.square().sum() for p in params).backward()
            plain.step()
    return count_scalar_reads(prof)


class HostSyncCount(L.Callback):
    """Profiles training batches ``first`` to ``first + steps - 1`` of the first epoch.

    A window runs from the start of batch ``first`` to the start of batch ``first + steps``, so each
    step is whole: data, forward, backward, optimizer step, the module's clipping after the step.
    The window must end before the epoch's last batch (the epoch's logging is not a step). Writes
    ``{"steps": n, "scalar_reads": k, "plain_scalar_reads": k0}`` to ``out``, ``k0`` counted over as
    many steps of a plain PyTorch loop with the same optimizer (:func:`plain_step_scalar_reads`).
    """

    def __init__(self, out: str, first: int = 2, steps: int = 3) -> None:
        if first < 1 or steps < 1:  # batch 0 creates the optimizer state: a one-off, not a step
            raise ValueError(
                f"HostSyncCount needs first >= 1 and steps >= 1, got first={first}, steps={steps}"
            )
        self.out, self.first, self.steps = Path(out), first, steps
        self._prof: profile | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int):
        if trainer.current_epoch != 0:
            return
        if batch_idx == self.first:
            self._prof = profile(activities=[ProfilerActivity.CPU])
            self._prof.__enter__()
            if pl_module.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("error")
        elif batch_idx == self.first + self.steps and self._prof is not None:
            if pl_module.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
            self._prof.__exit__(None, None, None)
            result = {
                "steps": self.steps,
                "scalar_reads": count_scalar_reads(self._prof),
                "plain_scalar_reads": plain_step_scalar_reads(trainer.optimizers[0], self.steps),
            }
            self.out.write_text(json.dumps(result))
            self._prof = None
