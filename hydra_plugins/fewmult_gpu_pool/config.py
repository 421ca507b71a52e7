"""The launcher's Hydra config, stored as ``hydra/launcher=gpu_pool``."""

from dataclasses import dataclass
from typing import List, Optional  # noqa: UP035 - OmegaConf reads these annotations at run time

from hydra.core.config_store import ConfigStore


@dataclass
class GPUPoolLauncherConf:
    _target_: str = "hydra_plugins.fewmult_gpu_pool.launcher.GPUPoolLauncher"
    # slots: GPU ids ("0", "1", ...; indices into CUDA_VISIBLE_DEVICES when it is set) or "cpu";
    # null = every visible GPU, or one CPU slot without GPUs
    devices: Optional[List[str]] = None  # noqa: UP006, UP045
    # GPUs per job (consecutive ids form one slot)
    gpus_per_job: int = 1
    # jobs sharing one GPU slot at a time (MNIST MLPs and LSTMs leave an H100 mostly idle)
    jobs_per_gpu: int = 1
    # torch threads per job; null = the CPUs this process may use (affinity, cgroup quota,
    # SLURM_CPUS_PER_TASK) divided by the number of slots
    threads_per_job: Optional[int] = None  # noqa: UP045
    # skip jobs whose folder holds a completed results.json (relaunching resumes a sweep)
    skip_completed: bool = True
    # jobs one slot's process runs before it is replaced; null = all of them (the imports and the
    # compiled kernels are paid once per slot), 1 = a fresh process for every job
    jobs_per_process: Optional[int] = None  # noqa: UP045


ConfigStore.instance().store(
    group="hydra/launcher", name="gpu_pool", node=GPUPoolLauncherConf, provider="fewmult"
)
