"""What the paper grids cost: jobs x epochs x measured time per epoch, spread over N devices.

Times a few full-precision training steps of each paper setup (its network, batch size and
optimizer, on random inputs of the dataset's shape; the character LSTM at each number of time
steps) on this machine's device, scales them to an epoch (training split / batch; evaluation not
included) and to each grid of ``conf/experiment``.
With ``gpu_pool`` or ``submitit_slurm`` the jobs are independent, so N devices finish a grid in about
max(total / N, longest job). An ImageNet job runs on many devices at once (``trainer=ddp``): its
grid's time on N devices is total / N, assuming DDP scales linearly (it does not quite: gradient
exchange and the data pipeline cost; ``train/data_wait`` in a run's metrics says whether the
workers keep up). ImageNet steps are timed at ``--imagenet-batch`` images (on a CPU a step of the
recipes' 512 takes minutes) and scaled to the recipe's batch per image.

Run: ``python -m benchmarks.bench_scale [--device cuda] [--steps 3] [--imagenet-batch 32]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from fewmult.build import build_module
from fewmult.config import compose_config
from fewmult.module import per_position

# training examples (characters for the texts) and the shape of one input
TRAIN_SIZE = {
    "mnist": 50_000,
    "cifar10": 45_000,
    "svhn": 598_388,
    "warpeace": 2_600_000,
    "linux": 5_580_000,
    "imagenet": 1_271_167,  # 1,281,167 less the 10,000 held out for validation
}
SHAPE = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "svhn": (3, 32, 32), "imagenet": (3, 224, 224)}
CLASSES = {"imagenet": 1000}  # else 10
VOCABULARY = {"warpeace": 87, "linux": 101}
Setup = tuple[str, str, int | None]  # paper, dataset, time steps (texts)
IMAGES = ("mnist", "cifar10", "svhn")
SETUPS: list[Setup] = [(p, d, None) for p in ("lin2016", "hou2017") for d in IMAGES]
SETUPS += [("hou2017", "warpeace", 100), ("hou2017", "linux", 100)]
SETUPS += [("hou2017", "warpeace", t) for t in (10, 50, 150)]
# today's rows (model auto: IR-Net's ResNet-20, Bi-Real's and ReActNet's ResNet-18), full precision
SETUPS += [(p, "cifar10", None) for p in ("qin2020", "liu2018", "liu2020")]
# the ImageNet recipes (Bi-Real's and ReActNet's ResNet-18)
IMAGENET_SETUPS: list[Setup] = [(p, "imagenet", None) for p in ("liu2018", "liu2020")]
SETUPS += IMAGENET_SETUPS
GRIDS: dict[str, list[tuple[Setup, int]]] = {  # setups and jobs per setup
    "lin2016_table": [(("lin2016", d, None), 3 * 2 * 3) for d in IMAGES],
    "hou2017_table": [(("hou2017", d, None), 7 * 3) for d in IMAGES],
    "hou2017_lstm_table": [(("hou2017", d, 100), 7 * 3) for d in ("warpeace", "linux")],
    "hou2017_timesteps_table": [(("hou2017", "warpeace", t), 4 * 3) for t in (10, 50, 100, 150)],
    # one row each (three seeds) of the ResNet recipes; a two-stage run (stages=two) counts twice
    "resnet_rows": [
        (("qin2020", "cifar10", None), 3),
        (("liu2018", "cifar10", None), 3),
        (("liu2020", "cifar10", None), 2 * 3),
    ],
    # the ImageNet ResNet-18 rows, one seed each: Bi-Real; ReActNet's two stages; the seeds' methods
    # (bc_det, tc, bwn, lab, bnn, xnor) on Bi-Real's recipe
    "imagenet_rows": [
        (("liu2018", "imagenet", None), 1 + 6),
        (("liu2020", "imagenet", None), 2),
    ],
}
MULTI_DEVICE_GRIDS = {"imagenet_rows"}  # each job may itself spread over the devices (DDP)


def seconds_per_step(
    setup: Setup, device: str, steps: int, imagenet_batch: int | None = None
) -> tuple[float, int, int]:
    """(seconds per step of the recipe's batch, that batch, the recipe's epochs); an ImageNet step
    is timed at ``imagenet_batch`` images and scaled per image."""
    paper, dataset, seq_len = setup
    text = seq_len is not None
    cfg = compose_config(
        f"paper={paper}", f"dataset={dataset}", *([f"dataset.seq_len={seq_len}"] if text else [])
    )
    classes = VOCABULARY[dataset] if text else CLASSES.get(dataset, 10)
    module = build_module(cfg, (seq_len,) if text else SHAPE[dataset], classes).to(device).train()
    optimizer = module.optimizer_factory(module.model)
    recipe_batch = cfg.dataset.batch_size
    batch = imagenet_batch if dataset == "imagenet" and imagenet_batch else recipe_batch
    if text:
        x = torch.randint(0, classes, (batch, seq_len), device=device)
        y = torch.randint(0, classes, (batch, seq_len), device=device)
    else:
        x = torch.randn(batch, *SHAPE[dataset], device=device)
        y = torch.randint(0, classes, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module.loss(*per_position(module.model(x), y)).backward()
        optimizer.step()

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / steps
    return per_step * recipe_batch / batch, recipe_batch, cfg.trainer.max_epochs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--imagenet-batch", type=int, default=None, help="images per timed ImageNet step")
    args = parser.parse_args()
    print_scale_tables(args.device, args.steps, args.imagenet_batch)


def print_scale_tables(device: str, steps: int, imagenet_batch: int | None = None) -> None:
    """The time per epoch of every paper setup on ``device``, and what each grid costs."""
    imagenet_batch = imagenet_batch or (None if device == "cuda" else 16)
    print(f"device {device}, {torch.get_num_threads()} threads")
    print("| setup | step | epoch | epochs | one job | images/s |")
    print("|---|---|---|---|---|---|")
    job_hours: dict[Setup, float] = {}
    for setup in SETUPS:
        paper, dataset, seq_len = setup
        step, batch, epochs = seconds_per_step(setup, device, steps, imagenet_batch)
        epoch = step * (TRAIN_SIZE[dataset] // (batch * (seq_len or 1)))
        job_hours[setup] = epoch * epochs / 3600
        name = f"{paper} {dataset} (batch {batch}" + (f" x {seq_len} steps)" if seq_len else ")")
        cells = [
            name,
            f"{step * 1000:.0f} ms",
            f"{epoch / 60:.1f} min",
            str(epochs),
            f"{job_hours[setup]:.1f} h",
            f"{batch * (seq_len or 1) / step:,.0f}" + (" characters" if seq_len else ""),
        ]
        print("| " + " | ".join(cells) + " |")
    print("\n| grid | jobs | device-hours | on 1 | on 8 | on 64 |")
    print("|---|---|---|---|---|---|")
    for grid, setups in GRIDS.items():
        hours = [job_hours[setup] for setup, jobs in setups for _ in range(jobs)]
        total, longest = sum(hours), max(hours)
        spreads = grid in MULTI_DEVICE_GRIDS  # a job on n devices takes longest / n, else longest
        spread = " | ".join(
            f"{max(total / n, longest / n if spreads else longest):.0f} h" for n in (1, 8, 64)
        )
        print(f"| {grid} | {len(hours)} | {total:.0f} | {spread} |")


if __name__ == "__main__":
    main()
