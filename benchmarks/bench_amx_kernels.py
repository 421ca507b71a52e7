"""The AMX tile products beside the AVX-512 kernels they replace, one shape at a time.

Sign products (``amx_sign_gemm`` vs ``xnor_gemm``) and float x binary products (``amx_fixed_gemm``,
fixed point on int8 tiles, and ``amx_select_gemm``, three bf16 parts, vs ``lut_gemm``) on random
operands; each number is the fastest of ``--calls`` calls, the kernels timed in the same process.
These shapes set the runtime's choices (``kernels.AMX_MIN_ROWS``, ``AMX_MIN_SUMS``,
``AMX_FLOAT_MIN_ROWS``, ``AMX_FIXED_MIN_INPUTS``). Needs a CPU and OS with AMX
(``fewmult.runtime.best_isa() == "amx"``).

Run: ``python -m benchmarks.bench_amx_kernels`` (``--threads``, ``--calls``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from fewmult.runtime import kernels

# the MLP's layers at batch 1 to 200, its classifier, and small products
SIGN_SHAPES = [
    (1, 2048, 2048),
    (16, 2048, 2048),
    (64, 2048, 2048),
    (200, 2048, 2048),
    (64, 2048, 10),
    (64, 2048, 256),
    (256, 512, 128),
]
# the MLP's first layer, its hidden ones as float products (lab), a VGG first convolution's im2col rows
FLOAT_SHAPES = [(1, 784, 2048), (16, 784, 2048), (64, 784, 2048), (64, 2048, 2048), (16384, 27, 128)]


def fastest_us(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e6


def sign_row(rng: np.random.Generator, n: int, k: int, o: int, threads: int, calls: int) -> str:
    a, w = rng.random((n, k)) < 0.5, rng.random((o, k)) < 0.5
    packed_a, packed_w = kernels.pack_rows(a), kernels.pack_rows(w)
    tiles, ones = kernels.amx_layout(w, 4), w.sum(1, dtype=np.int32)
    vec = fastest_us(lambda: kernels.xnor_gemm(packed_a, packed_w, k, "avx512", threads), calls)
    amx = fastest_us(lambda: kernels.amx_sign_gemm(packed_a, tiles, ones, k, o, threads), calls)
    return f"sign  {n}x{k}x{o}: xnor_gemm {vec:.0f}, amx_sign_gemm {amx:.0f} ({vec / amx:.2f}x)"


def float_row(rng: np.random.Generator, n: int, k: int, o: int, threads: int, calls: int) -> str:
    x, w = rng.standard_normal((n, k)).astype(np.float32), rng.random((o, k)) < 0.5
    tables, tiles = kernels.lut_layout(w, "avx512"), kernels.amx_layout(w, 2)
    int8_tiles, ones = kernels.amx_layout(w, 4), w.sum(1, dtype=np.int32)
    vec = fastest_us(lambda: kernels.lut_gemm(x, tables, None, o, "avx512", threads), calls)
    bf16 = fastest_us(lambda: kernels.amx_select_gemm(x, tiles, None, o, threads), calls)
    fixed = fastest_us(lambda: kernels.amx_fixed_gemm(x, int8_tiles, ones, None, None, o, threads), calls)
    return (
        f"float {n}x{k}x{o}: lut_gemm {vec:.0f}, amx_select_gemm {bf16:.0f} ({vec / bf16:.2f}x), "
        f"amx_fixed_gemm {fixed:.0f} ({vec / fixed:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=kernels.max_threads())
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    if kernels.best_isa() != "amx":
        raise SystemExit(f"no AMX here (best instruction set: {kernels.best_isa()}); nothing to compare")
    rng = np.random.default_rng(0)
    print(f"fastest of {args.calls} calls, {args.threads} thread(s), microseconds")
    for shape in SIGN_SHAPES:
        print(sign_row(rng, *shape, args.threads, args.calls))
    for shape in FLOAT_SHAPES:
        print(float_row(rng, *shape, args.threads, args.calls))


if __name__ == "__main__":
    main()
