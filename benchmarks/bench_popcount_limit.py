"""How close the binary GEMM comes to this machine's limit: XOR + popcount + add per 512 bits.

A probe compiled here (C, with the system's ``cc``) measures the clock with a chain of dependent
3-cycle multiplies, and the throughput of the XNOR-popcount inner step on one core, eight
independent accumulators over 32 KB in the L1 cache: on AVX-512 VPOPCNTDQ load, XOR, VPOPCNTQ, add;
on AVX2 the runtime's nibble lookups (load, XOR, two VPSHUFB, byte adds, one VPSADBW per 31 steps).
That is the most any binary GEMM of that instruction set could do per core. The runtime's products
on the same instruction set (``xnor_gemm``; on AVX2 also ``xnor_gemm_lanes``) are then timed on Hou
et al.'s MLP (batch 64, 2048 x 2048) and the CIFAR-10 CNN's 256-channel 3 x 3 convolution (batch 16,
8 x 8 pixels) and reported as a fraction of probe x threads.

Run: ``python -m benchmarks.bench_popcount_limit`` (x86 with AVX2 or AVX-512 VPOPCNTDQ).
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
#define NIBBLES(a, j) do { \
    __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 4 * (j))), w2); \
    __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)); \
    __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)); \
    a = _mm256_add_epi8(a, _mm256_add_epi8(lo, hi)); } while (0)
__attribute__((target("avx2")))
int64_t popcounts_avx2(const uint64_t *data, int64_t iterations) { /* 256 bits a step, 16 a round */
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f), w2 = _mm256_set1_epi64x(0x5555);
    const __m256i zero = _mm256_setzero_si256();
    __m256i s = zero;
    for (int64_t i = 0; i < iterations; i += 31) {
        __m256i b0 = zero, b1 = zero, b2 = zero, b3 = zero, b4 = zero, b5 = zero, b6 = zero, b7 = zero;
        for (int64_t r = i; r < i + 31 && r < iterations; r++) {
            const uint64_t *p = data + (r & 63) * 64;
            NIBBLES(b0, 0); NIBBLES(b1, 1); NIBBLES(b2, 2); NIBBLES(b3, 3);
            NIBBLES(b4, 4); NIBBLES(b5, 5); NIBBLES(b6, 6); NIBBLES(b7, 7);
        }
        __m256i bytes[8] = {b0, b1, b2, b3, b4, b5, b6, b7};
        for (int j = 0; j < 8; j++)
            s = _mm256_add_epi64(s, _mm256_sad_epu8(bytes[j], zero));
    }
    int64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, s);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
"""
# bits a step of each probe: 8 accumulators x one vector
PROBE_BITS = {"avx512": 8 * 512, "avx2": 8 * 256}


def fastest(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    isa = kernels.best_isa()
    isa = "avx512" if isa == "amx" else isa
    if isa not in PROBE_BITS:
        raise SystemExit(
            f"bench_popcount_limit: this CPU's kernels run {isa!r}; the probe needs AVX2 or AVX-512 VPOPCNTDQ"
        )
    with tempfile.TemporaryDirectory() as tmp:
        source, library = Path(tmp) / "probe.c", Path(tmp) / "probe.so"
        source.write_text(PROBE)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
        probe = ctypes.CDLL(str(library))
        probe.chain.argtypes, probe.chain.restype = [ctypes.c_int64], ctypes.c_int64
        count = probe.popcounts if isa == "avx512" else probe.popcounts_avx2
        count.argtypes, count.restype = [ctypes.c_void_p, ctypes.c_int64], ctypes.c_int64
        multiplies = 100_000_000
        ghz = 3 * multiplies / fastest(lambda: probe.chain(multiplies)) / 1e9
        data = np.random.default_rng(0).integers(0, 2**63, 64 * 64, dtype=np.uint64)
        steps = 10_000_000
        seconds = fastest(lambda: count(data.ctypes.data, steps))
        per_core = steps * PROBE_BITS[isa] / seconds  # bit products per second
    cycles = seconds * ghz * 1e9 / (steps * PROBE_BITS[isa] / 512)
    print(f"{isa}: clock {ghz:.2f} GHz; XOR + popcount + add: {cycles:.2f} cycles per 512 bits")
    print(f"limit: {per_core / 1e9:.0f} G bit products/s per core")
    rng = np.random.default_rng(1)
    for name, (n, k, o) in {
        "MLP 2048x2048, batch 64": (64, 2048, 2048),
        "conv 256->256 3x3 on 8x8, batch 16": (16 * 64, 9 * 256, 256),
    }.items():
        a = kernels.pack_rows(rng.random((n, k)) < 0.5)
        w = kernels.pack_rows(rng.random((o, k)) < 0.5)
        forms = {"xnor_gemm": lambda t, a=a, w=w, k=k: kernels.xnor_gemm(a, w, k, isa, t)}
        if isa == "avx2":
            lanes = kernels.xnor_lanes(w)
            forms["xnor_gemm_lanes"] = lambda t, a=a, lanes=lanes, o=o, k=k: kernels.xnor_gemm_lanes(
                a, lanes, o, k, isa, t
            )
        for form, product in forms.items():
            for threads in (1, 2):
                product(threads)
                seconds = fastest(lambda product=product, t=threads: product(t))
                rate = n * k * o / seconds
                print(
                    f"{form} {name}, {threads} thread(s): {seconds * 1e3:.3f} ms, {rate / 1e9:.0f} G bit "
                    f"products/s = {rate / (per_core * threads):.0%} of the limit"
                )


if __name__ == "__main__":
    main()
