"""The runtime's float x float product (``float_gemm``: a binary network's real-valued layers, often
the first and the last) at every instruction set this CPU has, one shape at a time: dot products of
weight rows at each level, and on AVX2 also outer products over panels of 16 weight columns
(``float_gemm_panels``, what the runtime runs there).

Each number is the fastest of ``--calls`` calls on random operands, every kernel timed in the same
process; the ratio is to the portable C loop, which is what a CPU without the level below ran.

Run: ``python -m benchmarks.bench_float_gemm`` (``--threads``, ``--calls``).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.bench_amx_kernels import fastest_us
from fewmult.runtime import kernels

SHAPES = [
    (1, 2048, 10),
    (64, 2048, 10),
    (1, 784, 2048),
    (64, 784, 2048),
    (16, 1000, 1000),
    (12544, 147, 64),  # the ImageNet ResNet-18's 7x7 stem, one image (im2col rows of 3 x 7 x 7)
    (784, 256, 512),  # its last 1x1 shortcut convolution, one image
]


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
    columns = [*isas, *(["avx2 panels"] if "avx2" in isas else [])]
    print("| n x k x o | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for n, k, o in SHAPES:
        x, w = rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal((o, k)).astype(np.float32)
        panels = kernels.float_panels(w)
        calls = {isa: lambda isa=isa, x=x, w=w: kernels.float_gemm(x, w, isa, args.threads) for isa in isas}
        if "avx2" in isas:
            calls["avx2 panels"] = lambda x=x, p=panels, o=o: kernels.float_gemm_panels(
                x, p, o, "avx2", args.threads
            )
        times = [fastest_us(call, args.calls) for call in calls.values()]
        cells = [
            f"{t:.0f}" + ("" if column == "portable" else f" ({times[0] / t:.1f}x)")
            for column, t in zip(columns, times, strict=True)
        ]
        print(f"| {n}x{k}x{o} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
