"""The runtime's two forms of the XNOR + popcount product on one instruction set: ``xnor_gemm`` (dot
products of packed rows, each output's lanes summed at its end) and ``xnor_gemm_lanes`` (each output
a 64-bit lane of a group of 4), on the products of the goal networks at their benchmark batches, the
outputs checked identical.

Each number is the fastest of ``--calls`` calls (two interleaved passes), both forms in one process.

Run: ``python -m benchmarks.bench_xnor_forms`` (``--isa``, ``--threads``, ``--calls``).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.bench_amx_kernels import fastest_us
from fewmult.runtime import kernels

# (rows, words a row, outputs): im2col rows x packed window x output channels, or dense rows
SHAPES = {
    "CIFAR ResNet-18, 64 -> 64 3x3 at batch 16": (16384, 9, 64),
    "CIFAR ResNet-18, 128 -> 128 3x3 at batch 16": (4096, 18, 128),
    "CIFAR ResNet-18, 512 -> 512 3x3 at batch 16": (256, 72, 512),
    "Hou et al.'s CNN, 128 -> 128 3x3 at batch 16": (16384, 18, 128),
    "Hou et al.'s CNN, 256 -> 256 3x3 at batch 16": (4096, 36, 256),
    "Hou et al.'s CNN, 512 -> 512 3x3 at batch 16": (1024, 72, 512),
    "Hou et al.'s MLP, 2048 -> 2048 at batch 64": (64, 32, 2048),
    "Hou et al.'s MLP, 2048 -> 2048 at batch 1": (1, 32, 2048),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--isa", default="avx2", choices=[i for i in kernels.ISAS if i != "amx"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    if kernels.load() is None:
        raise SystemExit(kernels.unavailable_reason())
    rng = np.random.default_rng(0)
    print(f"microseconds, fastest of {args.calls} x 2, {args.threads} threads, {args.isa}")
    print("| product | rows x bits x outputs | xnor_gemm | xnor_gemm_lanes | ratio |")
    print("|---|---|---|---|---|")
    for name, (n, words, o) in SHAPES.items():
        a = rng.integers(0, 2**63, (n, words), dtype=np.uint64)
        w = rng.integers(0, 2**63, (o, words), dtype=np.uint64)
        k, lanes = words * 64, kernels.xnor_lanes(w)

        def rows(a=a, w=w, k=k) -> np.ndarray:
            return kernels.xnor_gemm(a, w, k, args.isa, args.threads)

        def by_lane(a=a, lanes=lanes, o=o, k=k) -> np.ndarray:
            return kernels.xnor_gemm_lanes(a, lanes, o, k, args.isa, args.threads)

        if not np.array_equal(rows(), by_lane()):
            raise SystemExit(f"{name}: the two forms differ")
        times = [min(fastest_us(f, args.calls) for _ in range(2)) for f in (rows, by_lane)]
        print(f"| {name} | {n}x{k}x{o} | {times[0]:,.0f} | {times[1]:,.0f} | {times[0] / times[1]:.2f}x |")


if __name__ == "__main__":
    main()
