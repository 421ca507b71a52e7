/* Float activations times binary or ternary weights by table lookups, L outputs at a time.
 *
 * For one example and one group of G consecutive inputs, the 2^G sums that a G-bit selection can
 * make of those inputs fit one vector register of L = 2^G lanes (the table). L weight rows' G-bit
 * selections of that group, as lane indices, pick each row's sum with one permute (VPERMPS):
 * L outputs x G inputs = 64 (AVX-512: L = 16, G = 4) or 24 (AVX2: L = 8, G = 3) multiply-adds become
 * one permute and one addition. The selections are laid out at load time (kernels.lut_layout): for
 * output block b (rows L b .. L b + L - 1), group g and lane l, byte [(b * groups + g) * L + l] is
 * the selection of row L b + l, bit i for input G g + i. Tables are built per example from its
 * inputs, each read by every output block; eight examples share each loaded selection. Float32
 * sums, in another order than the reference's: equal within rounding. */
#include <stdlib.h>

#include "fewmult_kernels.h"
#include "simd.h"

#ifdef FM_X86

#define EXAMPLES 8       /* examples a task: each loaded selection serves all of them */
#define CHUNK_BLOCKS 16  /* output blocks (of 16 rows) a task */
#define GROUP_BLOCK 64   /* groups whose tables (8 examples: 32 KB) stay in L1 while a chunk reads them */

/* table[g][m] = sum of the inputs 4 g + i of one example whose bit i is set in m. */
FM_TARGET_AVX512 static void build_tables(const float *x, int64_t k, int64_t groups, __m512 *table) {
    const __mmask16 has[4] = {0xAAAA, 0xCCCC, 0xF0F0, 0xFF00}; /* the m with bit i set */
    for (int64_t g = 0; g < groups; g++) {
        __m512 t = _mm512_setzero_ps();
        for (int i = 0; i < 4 && 4 * g + i < k; i++)
            t = _mm512_mask_add_ps(t, has[i], t, _mm512_set1_ps(x[4 * g + i]));
        table[g] = t;
    }
}

/* acc[r] += (or -=) the table entries of example r that the selections of groups [g0, g1) pick. */
FM_TARGET_AVX512 static FM_INLINE void lookup(__m512 *acc, const __m512 *table, const uint8_t *selections,
                                              int64_t g0, int64_t g1, int64_t groups, const int rows,
                                              const int negate) {
    __m512 sums[EXAMPLES];
    for (int r = 0; r < rows; r++)
        sums[r] = acc[r];
    for (int64_t g = g0; g < g1; g++) {
        __m512i index = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(selections + g * 16)));
        for (int r = 0; r < rows; r++) {
            __m512 entry = _mm512_permutexvar_ps(index, table[r * groups + g]);
            sums[r] = negate ? _mm512_sub_ps(sums[r], entry) : _mm512_add_ps(sums[r], entry);
        }
    }
    for (int r = 0; r < rows; r++)
        acc[r] = sums[r];
}

/* Examples [0, rows) of a block (tables and totals from fm_lut_gemm) times output blocks [b0, b1). */
FM_TARGET_AVX512 static void lut_task(const __m512 *table, const float *total, int64_t rows, int64_t groups,
                                      const uint8_t *plus, const uint8_t *minus, int64_t b0, int64_t b1,
                                      int64_t o, float *out) {
    __m512 acc[CHUNK_BLOCKS][EXAMPLES];
    for (int64_t b = 0; b < b1 - b0; b++)
        for (int r = 0; r < EXAMPLES; r++)
            acc[b][r] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < groups; g0 += GROUP_BLOCK) {
        int64_t g1 = fm_min64(g0 + GROUP_BLOCK, groups);
        for (int64_t b = b0; b < b1; b++) {
            const uint8_t *p = plus + b * groups * 16, *m = minus ? minus + b * groups * 16 : 0;
            if (rows == EXAMPLES) {
                lookup(acc[b - b0], table, p, g0, g1, groups, EXAMPLES, 0);
                if (m)
                    lookup(acc[b - b0], table, m, g0, g1, groups, EXAMPLES, 1);
            } else {
                for (int64_t r = 0; r < rows; r++) {
                    lookup(acc[b - b0] + r, table + r * groups, p, g0, g1, groups, 1, 0);
                    if (m)
                        lookup(acc[b - b0] + r, table + r * groups, m, g0, g1, groups, 1, 1);
                }
            }
        }
    }
    for (int64_t b = b0; b < b1; b++) {
        int64_t left = o - b * 16;
        __mmask16 valid = fm_first16(left);
        for (int64_t r = 0; r < rows; r++) {
            __m512 a = acc[b - b0][r];
            /* binary weights: the selected minus the rest = 2 (selected) - (all) */
            __m512 v = minus ? a : _mm512_sub_ps(_mm512_add_ps(a, a), _mm512_set1_ps(total[r]));
            _mm512_mask_storeu_ps(out + r * o + b * 16, valid, v);
        }
    }
}

void fm_lut_gemm_avx512(int threads, const float *x, int64_t n, int64_t k, const uint8_t *plus,
                 const uint8_t *minus, int64_t o, float *out) {
    int64_t groups = (k + 3) / 4, blocks = (o + 15) / 16, tasks_n = (n + EXAMPLES - 1) / EXAMPLES;
    int64_t chunks = (blocks + CHUNK_BLOCKS - 1) / CHUNK_BLOCKS;
    __m512 *table = aligned_alloc(64, (size_t)(n * groups) * sizeof(__m512));
    float *total = malloc((size_t)n * sizeof(float));
    int64_t work = n * k * 4;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t i = 0; i < n; i++) {
        build_tables(x + i * k, k, groups, table + i * groups);
        total[i] = 0.0f;
        for (int64_t t = 0; t < k; t++)
            total[i] += x[i * k + t];
    }
    work = n * o * k / 16;
    (void)work;
    FM_PARALLEL_FOR
    for (int64_t task = 0; task < tasks_n * chunks; task++) {
        int64_t i0 = task / chunks * EXAMPLES, b0 = task % chunks * CHUNK_BLOCKS;
        lut_task(table + i0 * groups, total + i0, fm_min64(EXAMPLES, n - i0), groups, plus, minus, b0,
                 fm_min64(b0 + CHUNK_BLOCKS, blocks), o, out + i0 * o);
    }
    free(total);
    free(table);
}

/* AVX2: 8 lanes, groups of 3 inputs; a task's tables (8 examples) are read from L2. */
FM_TARGET_AVX2 static void lut_task_avx2(const float *x, int64_t rows, int64_t k, const uint8_t *plus,
                                         const uint8_t *minus, int64_t b0, int64_t b1, int64_t o, float *out) {
    int64_t groups = (k + 2) / 3;
    __m256 *table = aligned_alloc(32, (size_t)(EXAMPLES * groups) * sizeof(__m256));
    const __m256 has[3] = {/* the lanes m with bit i set */
                           _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1)),
                           _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, -1, -1, 0, 0, -1, -1)),
                           _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, 0, 0, -1, -1, -1, -1))};
    float total[EXAMPLES] = {0};
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < groups; g++) {
            __m256 t = _mm256_setzero_ps();
            for (int i = 0; i < 3 && 3 * g + i < k; i++) {
                float v = x[r * k + 3 * g + i];
                t = _mm256_add_ps(t, _mm256_and_ps(_mm256_set1_ps(v), has[i]));
                total[r] += v;
            }
            table[r * groups + g] = t;
        }
    for (int64_t b = b0; b < b1; b++) {
        __m256 acc[EXAMPLES];
        for (int r = 0; r < EXAMPLES; r++)
            acc[r] = _mm256_setzero_ps();
        for (int side = 0; side < (minus ? 2 : 1); side++) {
            const uint8_t *sel = (side ? minus : plus) + b * groups * 8;
            for (int64_t g = 0; g < groups; g++) {
                __m256i index = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(sel + g * 8)));
                for (int64_t r = 0; r < rows; r++) {
                    __m256 entry = _mm256_permutevar8x32_ps(table[r * groups + g], index);
                    acc[r] = side ? _mm256_sub_ps(acc[r], entry) : _mm256_add_ps(acc[r], entry);
                }
            }
        }
        float lanes[8];
        for (int64_t r = 0; r < rows; r++) {
            /* binary weights: the selected minus the rest = 2 (selected) - (all) */
            __m256 v = minus ? acc[r] : _mm256_sub_ps(_mm256_add_ps(acc[r], acc[r]), _mm256_set1_ps(total[r]));
            _mm256_storeu_ps(lanes, v);
            for (int64_t l = 0; l < 8 && b * 8 + l < o; l++)
                out[r * o + b * 8 + l] = lanes[l];
        }
    }
    free(table);
}

void fm_lut_gemm_avx2(int threads, const float *x, int64_t n, int64_t k, const uint8_t *plus,
                      const uint8_t *minus, int64_t o, float *out) {
    int64_t blocks = (o + 7) / 8, tasks_n = (n + EXAMPLES - 1) / EXAMPLES, chunk = 2 * CHUNK_BLOCKS;
    int64_t chunks = (blocks + chunk - 1) / chunk;
    int64_t work = n * o * k / 16;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t task = 0; task < tasks_n * chunks; task++) {
        int64_t i0 = task / chunks * EXAMPLES, b0 = task % chunks * chunk;
        lut_task_avx2(x + i0 * k, fm_min64(EXAMPLES, n - i0), k, plus, minus, b0, fm_min64(b0 + chunk, blocks),
                      o, out + i0 * o);
    }
}
#else /* never called off x86 (kernels.py uses them only for AVX2 and AVX-512); the ABI stays one */
void fm_lut_gemm_avx512(int threads, const float *x, int64_t n, int64_t k, const uint8_t *plus,
                        const uint8_t *minus, int64_t o, float *out) {
    (void)threads, (void)x, (void)n, (void)k, (void)plus, (void)minus, (void)o, (void)out;
}
void fm_lut_gemm_avx2(int threads, const float *x, int64_t n, int64_t k, const uint8_t *plus,
                      const uint8_t *minus, int64_t o, float *out) {
    (void)threads, (void)x, (void)n, (void)k, (void)plus, (void)minus, (void)o, (void)out;
}
#endif
