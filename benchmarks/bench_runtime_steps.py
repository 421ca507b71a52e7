"""Where an exported network's time goes on the compiled runtime: each step of its plan timed alone.

The goal networks of :mod:`benchmarks.bench_runtime` (same setups, same drawn statistics); each
step runs on the value the step before produced, and each number is the fastest of ``--calls`` calls
(a lower bound: the whole forward's median runs about a fifth above the sum on this project's
machine, whose times move from call to call). The last lines: the sum of the steps, and the fastest
whole ``forward``.

Run: ``python -m benchmarks.bench_runtime_steps mlp-bnn`` (``--batch``, ``--threads``, ``--calls``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_runtime import SETUPS, export
from fewmult.runtime import CompiledNetwork, max_threads
from fewmult.runtime.network import Value


def step_times(net: CompiledNetwork, x: np.ndarray, calls: int) -> tuple[list[float], float]:
    """Fastest seconds of each step of the plan for ``x``, and of the whole forward."""
    steps = net.plan(tuple(x.shape[1:]))
    fastest, whole = [float("inf")] * len(steps), float("inf")
    for _ in range(calls):
        v = Value("float", x)
        for i, step in enumerate(steps):
            start = time.perf_counter()
            v = step.run(v)
            fastest[i] = min(fastest[i], time.perf_counter() - start)
        start = time.perf_counter()
        net.forward(x)
        whole = min(whole, time.perf_counter() - start)
    return fastest, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("setup", choices=list(SETUPS))
    parser.add_argument("--batch", type=int, default=None, help="default: the setup's largest")
    parser.add_argument("--threads", type=int, default=max_threads())
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path, shape, batches = export(args.setup, Path(tmp))
        net = CompiledNetwork(str(path), threads=args.threads)
        batch = args.batch or max(batches)
        x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
        fastest, whole = step_times(net, x, args.calls)
        print(
            f"{args.setup}, batch {batch}, {args.threads} thread(s), kernels: {net.isa}; fastest of",
            args.calls,
        )
        for step, seconds in zip(net.plan(shape), fastest, strict=True):
            print(f"{seconds * 1e6:9.1f} us  {step.op}: {step.how}")
        print(f"{sum(fastest) * 1e6:9.1f} us  the steps' sum\n{whole * 1e6:9.1f} us  forward")


if __name__ == "__main__":
    main()
