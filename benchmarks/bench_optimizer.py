"""Adam's step with ``fused=True`` (``conf/optim/adam.yaml``'s default) against ``foreach``, the
default of ``torch.optim.Adam``: the optimizer step alone and the whole training step, side by side
in one process (interleaved rounds, medians).

A binary network trains many small tensors besides its kernels (BN's, and ReActNet's thresholds and
RPReLU's three vectors per block: 126 tensors in the CIFAR ResNet-18 against 62 in full precision),
and ``foreach`` pays a dispatch per tensor group and op; the fused kernel is one pass.

Run: ``python -m benchmarks.bench_optimizer`` (``--rounds``, ``--steps``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.bench_methods import NETWORKS, make_step

CASES = [("mlp", "lab"), ("resnet18", "fp@adam"), ("resnet18", "reactnet")]
KINDS = {"foreach": "optim.optimizer.fused=false", "fused": "optim.optimizer.fused=true"}


def median_seconds(run, rounds: int, steps: int) -> list[float]:
    """Per round, seconds per call of ``run`` (``steps`` calls)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            run()
        times.append((time.perf_counter() - start) / steps)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    made = {
        (network, variant, kind): make_step(network, variant, (override,))
        for network, variant in CASES
        for kind, override in KINDS.items()
    }
    for step, _, _ in made.values():  # warm-up, and the optimizer's state
        step()
        step()
    whole: dict[tuple, list[float]] = {key: [] for key in made}
    alone: dict[tuple, list[float]] = {key: [] for key in made}
    for _ in range(args.rounds):
        for key, (step, _, optimizer) in made.items():
            whole[key] += median_seconds(step, 1, args.steps)
            alone[key] += median_seconds(optimizer.step, 1, 10)
    print(f"threads {torch.get_num_threads()}, rounds {args.rounds}, medians")
    print("| network | method | tensors | optimizer.step foreach | fused | training step foreach | fused |")
    print("|---|---|---|---|---|---|---|")
    for network, variant in CASES:
        tensors = sum(len(g["params"]) for g in made[network, variant, "fused"][2].param_groups)
        cells = []
        for times in (alone, whole):
            slow, fast = (statistics.median(times[network, variant, k]) * 1e3 for k in KINDS)
            cells += [f"{slow:.2f} ms", f"{fast:.2f} ms ({slow / fast:.2f}x)"]
        batch = NETWORKS[network]["batch"]
        print(f"| {network} (batch {batch}) | {variant} | {tensors} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
