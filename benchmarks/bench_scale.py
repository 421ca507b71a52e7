"""What the paper grids cost: jobs x epochs x measured time per epoch, spread over N devices.

Times a few full-precision training steps of each paper setup (its network, batch size and
optimizer, on random inputs of the dataset's shape) on this machine's device, scales them to an
epoch (training split / batch; evaluation not included) and to each grid of ``conf/experiment``.
With ``gpu_pool`` or ``submitit_slurm`` the jobs are independent, so N devices finish a grid in about
max(total / N, longest job).

Run: ``python -m benchmarks.bench_scale [--device cuda] [--steps 3]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra.utils import instantiate

from fewmult.build import build_module
from tests.conftest import compose_config

TRAIN_SIZE = {"mnist": 50_000, "cifar10": 45_000, "svhn": 598_388}
SHAPE = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "svhn": (3, 32, 32)}
GRIDS = {"lin2016_table": ("lin2016", 3 * 2 * 3), "hou2017_table": ("hou2017", 7 * 3)}  # jobs per dataset


def seconds_per_step(paper: str, dataset: str, device: str, steps: int) -> tuple[float, int, int]:
    cfg = compose_config(f"paper={paper}", f"dataset={dataset}")
    module = build_module(cfg, SHAPE[dataset], 10).to(device).train()
    optimizer = instantiate(cfg.optim.optimizer)(module.parameters())
    batch = cfg.dataset.batch_size
    x = torch.randn(batch, *SHAPE[dataset], device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module.loss(module.model(x), y).backward()
        optimizer.step()

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, batch, cfg.trainer.max_epochs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(f"device {args.device}, {torch.get_num_threads()} threads")
    print("| setup | step | epoch | epochs | one job |")
    print("|---|---|---|---|---|")
    job_hours: dict[tuple[str, str], float] = {}
    for paper in ("lin2016", "hou2017"):
        for dataset in TRAIN_SIZE:
            step, batch, epochs = seconds_per_step(paper, dataset, args.device, args.steps)
            epoch = step * (TRAIN_SIZE[dataset] // batch)
            job_hours[paper, dataset] = epoch * epochs / 3600
            cells = [f"{paper} {dataset} (batch {batch})", f"{step * 1000:.0f} ms", f"{epoch / 60:.1f} min"]
            cells += [str(epochs), f"{job_hours[paper, dataset]:.1f} h"]
            print("| " + " | ".join(cells) + " |")
    print("\n| grid | jobs | device-hours | on 1 | on 8 | on 64 |")
    print("|---|---|---|---|---|---|")
    for grid, (paper, per_dataset) in GRIDS.items():
        hours = [job_hours[paper, d] for d in TRAIN_SIZE for _ in range(per_dataset)]
        total, longest = sum(hours), max(hours)
        spread = " | ".join(f"{max(total / n, longest):.0f} h" for n in (1, 8, 64))
        print(f"| {grid} | {len(hours)} | {total:.0f} | {spread} |")


if __name__ == "__main__":
    main()
