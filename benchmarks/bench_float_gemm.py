"""The runtime's float x float product (``float_gemm``: a binary network's real-valued layers, often
the first and the last) at every instruction set this CPU has, one shape at a time.

Each number is the fastest of ``--calls`` calls on random operands, every kernel timed in the same
process; the ratio is to the portable C loop, which is what a CPU without the level below ran.

Run: ``python -m benchmarks.bench_float_gemm`` (``--threads``, ``--calls``).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.bench_amx_kernels import fastest_us
from fewmult.runtime import kernels

SHAPES = [(1, 2048, 10), (64, 2048, 10), (1, 784, 2048), (64, 784, 2048), (16, 1000, 1000)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    best = kernels.ISAS.index(kernels.best_isa())
    isas = [isa for isa in ("portable", "avx2", "avx512") if kernels.ISAS.index(isa) <= best]
    rng = np.random.default_rng(0)
    print(f"float_gemm, microseconds (fastest of {args.calls}), {args.threads} threads")
    print("| n x k x o | " + " | ".join(isas) + " |")
    print("|---|" + "---|" * len(isas))
    for n, k, o in SHAPES:
        x, w = rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal((o, k)).astype(np.float32)
        times = [
            fastest_us(lambda isa=isa, x=x, w=w: kernels.float_gemm(x, w, isa, args.threads), args.calls)
            for isa in isas
        ]
        cells = [
            f"{t:.0f}" + ("" if isa == "portable" else f" ({times[0] / t:.1f}x)")
            for isa, t in zip(isas, times, strict=True)
        ]
        print(f"| {n}x{k}x{o} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
