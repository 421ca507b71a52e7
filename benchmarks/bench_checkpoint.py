"""What a checkpoint inside an epoch costs: the time to write ``last.ckpt`` of an ImageNet run.

Builds the network and optimizer of a composed setup (default: ``dataset=imagenet paper=liu2018
method=bireal``, Bi-Real's ResNet-18 with 1000 classes and Adam), takes one step on random 224-pixel
images so that the optimizer holds its moments, and writes the checkpoint (weights, optimizer
state) the way runs do (:class:`fewmult.checkpointing.AtomicCheckpointIO`: a temporary file in the
target folder, fsync, rename) into ``--folder``, ``--saves`` times. Prints the median seconds, the
size, and the share of run time spent saving at ``checkpoint.every_minutes`` of 5, 20 and 60.

Run: ``python -m benchmarks.bench_checkpoint [--folder DIR] [overrides ...]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fewmult.build import build_module
from fewmult.checkpointing import AtomicCheckpointIO
from fewmult.config import compose_config


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument(
        "overrides", nargs="*", default=["dataset=imagenet", "paper=liu2018", "method=bireal"]
    )
    args = parser.parse_args()
    cfg = compose_config(*args.overrides)
    module = build_module(cfg, (3, 224, 224), 1000)
    optimizer = module.optimizer_factory(module.model)
    x, y = torch.randn(2, 3, 224, 224), torch.randint(0, 1000, (2,))
    module.loss(module.model(x), y).backward()
    optimizer.step()
    state = {"state_dict": module.state_dict(), "optimizer_states": [optimizer.state_dict()]}
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        path = Path(folder) / "last.ckpt"
        seconds = []
        for _ in range(args.saves):
            start = time.perf_counter()
            AtomicCheckpointIO().save_checkpoint(state, path)
            seconds.append(time.perf_counter() - start)
        size = path.stat().st_size
    median = statistics.median(seconds)
    setup = " ".join(args.overrides)
    print(f"{setup}: last.ckpt {size / 2**20:.0f} MiB, {median:.2f} s per save (median of {args.saves})")
    for minutes in (5, 20, 60):
        print(f"  checkpoint.every_minutes={minutes}: {100 * median / (60 * minutes):.3f} % of the run")


if __name__ == "__main__":
    main()
