"""The fused LSTM time step against the step written out, side by side in one process.

Both are :class:`fewmult.nn.recurrent.QuantLSTM` with the same weights; the written-out step is
the one the layer takes when it cannot fuse (an unknown cell activation, no gradient clipping).
Per time step it reports the top-level aten ops the profiler sees in forward plus backward (each is
at least one kernel launch on a GPU) and the torch.compile regions; per batch the forward+backward
CPU time, rounds alternating between the two, the ratio of medians.

Run: ``python -m benchmarks.bench_lstm_step`` (``--hidden``, ``--batch``, ``--steps``, ``--rounds``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fewmult.nn.recurrent import QuantLSTM


def _pass(layer: QuantLSTM, tokens: torch.Tensor) -> None:
    layer.zero_grad()
    layer(tokens).square().mean().backward()


def ops_per_step(layer: QuantLSTM, tokens: torch.Tensor) -> tuple[float, float]:
    """(top-level aten ops, compiled regions) per time step of one forward and backward pass."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _pass(layer, tokens)
    events = prof.events()
    top = [
        e
        for e in events
        if e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))
    ]
    compiled = [e for e in events if e.name.startswith("Torch-Compiled Region")]
    steps = tokens.shape[1]
    return len(top) / steps, len(compiled) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)  # Hou et al.'s cells
    parser.add_argument("--batch", type=int, default=100)  # Hou et al.'s batch
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--vocab", type=int, default=83)  # War and Peace
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    layer = QuantLSTM(args.vocab, args.hidden)
    tokens = torch.randint(0, args.vocab, (args.batch, args.steps))
    fusable = QuantLSTM._fusable
    variants = {"written out": lambda self: False, "fused": fusable}
    times: dict[str, list[float]] = {name: [] for name in variants}
    ops = {}
    for name, choice in variants.items():  # warm up (compiles) and count
        QuantLSTM._fusable = choice
        _pass(layer, tokens)
        ops[name] = ops_per_step(layer, tokens)
    for _ in range(args.rounds):
        for name, choice in variants.items():
            QuantLSTM._fusable = choice
            start = time.perf_counter()
            _pass(layer, tokens)
            times[name].append(time.perf_counter() - start)
    QuantLSTM._fusable = fusable
    print(f"hidden {args.hidden}, batch {args.batch}, {args.steps} steps, {torch.get_num_threads()} threads")
    print("| step | aten ops per time step | compiled regions per time step | ms per batch |")
    print("|---|---|---|---|")
    for name in variants:
        top, compiled = ops[name]
        print(f"| {name} | {top:.1f} | {compiled:.1f} | {statistics.median(times[name]) * 1e3:.0f} |")
    ratio = statistics.median(times["written out"]) / statistics.median(times["fused"])
    print(f"fused is {ratio:.2f}x as fast")


if __name__ == "__main__":
    main()
