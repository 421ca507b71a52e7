"""How close the binary GEMM comes to this machine's limit: XOR + popcount + add per 512 bits.

A probe compiled here (C, with the system's ``cc``) measures the clock with a chain of dependent
3-cycle multiplies, and the throughput of the XNOR-popcount inner step (load, XOR, VPOPCNTQ, add;
eight independent accumulators over 32 KB in the L1 cache) on one core: the most that any binary
GEMM could do per core. ``fm_xnor_gemm`` (fewmult.runtime) is then timed on the products of Hou et
al.'s MLP (batch 64, 2048 x 2048) and of the CIFAR-10 CNN's 256-channel 3 x 3 convolution (batch
16, 8 x 8 pixels) and reported as a fraction of probe x cores.

Run: ``python -m benchmarks.bench_popcount_limit`` (AVX-512 VPOPCNTDQ machines).
"""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from fewmult.runtime import kernels

PROBE = r"""
#include <immintrin.h>
#include <stdint.h>
int64_t chain(int64_t iterations) {
    int64_t x = 3;
    for (int64_t i = 0; i < iterations; i++)
        __asm__ volatile("imul %0, %0" : "+r"(x));
    return x;
}
#define STEP(a, j) \
    a = _mm512_add_epi64(a, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 8 * j), w)))
__attribute__((target("avx512f,avx512vpopcntdq")))
int64_t popcounts(const uint64_t *data, int64_t iterations) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512i w = _mm512_set1_epi64(0x5555);
    for (int64_t i = 0; i < iterations; i++) {
        const uint64_t *p = data + (i & 63) * 64;
        STEP(a0, 0); STEP(a1, 1); STEP(a2, 2); STEP(a3, 3);
        STEP(a4, 4); STEP(a5, 5); STEP(a6, 6); STEP(a7, 7);
    }
    a0 = _mm512_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)),
                          _mm512_add_epi64(_mm512_add_epi64(a4, a5), _mm512_add_epi64(a6, a7)));
    return _mm512_reduce_add_epi64(a0);
}
"""


def fastest(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source, library = Path(tmp) / "probe.c", Path(tmp) / "probe.so"
        source.write_text(PROBE)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
        probe = ctypes.CDLL(str(library))
        probe.chain.argtypes, probe.chain.restype = [ctypes.c_int64], ctypes.c_int64
        probe.popcounts.argtypes, probe.popcounts.restype = [ctypes.c_void_p, ctypes.c_int64], ctypes.c_int64
        multiplies = 100_000_000
        ghz = 3 * multiplies / fastest(lambda: probe.chain(multiplies)) / 1e9
        data = np.random.default_rng(0).integers(0, 2**63, 64 * 64, dtype=np.uint64)
        steps = 10_000_000
        seconds = fastest(lambda: probe.popcounts(data.ctypes.data, steps))
        per_core = steps * 8 * 512 / seconds  # bit products per second
    cycles = seconds * ghz * 1e9 / (steps * 8)
    print(f"clock {ghz:.2f} GHz; XOR + popcount + add: {cycles:.2f} cycles per 512 bits")
    print(f"limit: {per_core / 1e9:.0f} G bit products/s per core")
    rng = np.random.default_rng(1)
    for name, (n, k, o) in {
        "MLP 2048x2048, batch 64": (64, 2048, 2048),
        "conv 256->256 3x3 on 8x8, batch 16": (16 * 64, 9 * 256, 256),
    }.items():
        a = kernels.pack_rows(rng.random((n, k)) < 0.5)
        w = kernels.pack_rows(rng.random((o, k)) < 0.5)
        for threads in (1, 2):
            kernels.xnor_gemm(a, w, k, "avx512", threads)
            seconds = fastest(lambda a=a, w=w, k=k, t=threads: kernels.xnor_gemm(a, w, k, "avx512", t))
            rate = n * k * o / seconds
            print(
                f"xnor_gemm {name}, {threads} thread(s): {seconds * 1e3:.3f} ms, {rate / 1e9:.0f} G bit "
                f"products/s = {rate / (per_core * threads):.0%} of the limit"
            )


if __name__ == "__main__":
    main()
