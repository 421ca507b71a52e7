/* What the kernel files share: x86 detection, target attributes, OpenMP's parallel loop. */
#ifndef FEWMULT_SIMD_H
#define FEWMULT_SIMD_H

#include <stdint.h>
#include <string.h>

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

/* The mask of the first `count` of 16 lanes (all 16 from 16 on). */
static inline uint16_t fm_first16(int64_t count) {
    return count >= 16 ? (uint16_t)0xFFFF : (uint16_t)((1u << count) - 1);
}

/* The bits of a BN + sign moved onto its sums (fm_compare_pack): each unit's `ge` (sum >= tau) where
 * it rises with its sums, `le` (sum <= tau) where it falls; masks of as many units as a vector holds. */
static inline unsigned fm_signs(unsigned ge, unsigned le, unsigned rising) { return (ge & rising) | (le & ~rising); }

/* x where `take_x`, else y, chosen by a mask rather than a branch. GCC compiles a plain `?:` of
 * doubles to a branch, and where the condition is a coin flip (the sign of a sum, which of two
 * values is larger) half the branches are mispredicted: RPReLU cost 4x its value's other work. */
static inline double fm_pick(int take_x, double x, double y) {
    uint64_t xb, yb, mask = (uint64_t)0 - (uint64_t)(take_x != 0);
    memcpy(&xb, &x, sizeof xb);
    memcpy(&yb, &y, sizeof yb);
    uint64_t chosen = (xb & mask) | (yb & ~mask);
    double out;
    memcpy(&out, &chosen, sizeof out);
    return out;
}

#endif
