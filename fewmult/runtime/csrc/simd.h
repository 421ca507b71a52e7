/* What the kernel files share: x86 detection, target attributes, OpenMP's parallel loop. */
#ifndef FEWMULT_SIMD_H
#define FEWMULT_SIMD_H

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FM_X86 1
#include <immintrin.h>
#define FM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vpopcntdq")))
#define FM_TARGET_AVX2 __attribute__((target("avx2,fma,popcnt")))
#define FM_INLINE inline __attribute__((always_inline))
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FM_POPCOUNT64(x) __builtin_popcountll(x)
#define FM_CTZ64(x) __builtin_ctzll(x)
#else
#error "fewmult's kernels need GCC or Clang builtins"
#endif

/* Put before a loop of independent iterations: OpenMP shares them among `threads` (a variable in
 * scope), serially when `work` (another, in words or multiply-adds) is too small to pay for it. */
#ifdef _OPENMP
#define FM_PARALLEL_FOR _Pragma("omp parallel for num_threads(threads) schedule(static) if (work > 32768)")
#else
#define FM_PARALLEL_FOR
#endif

static inline int64_t fm_min64(int64_t a, int64_t b) { return a < b ? a : b; }

#endif
