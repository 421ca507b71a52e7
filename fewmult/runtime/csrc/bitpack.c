/* The output transform: batch norm + sign as one comparison per sum, written as packed bits.
 *
 * The reference computes v = acc * scale + bias in double and compares it with the unit's threshold;
 * fewmult/runtime/thresholds.py moves that comparison onto the sums once per unit (the bit is a
 * monotone function of the sum), so a sum's comparison with its unit's tau gives the same bit. */
#include <string.h>

#include "fewmult_kernels.h"
#include "simd.h"

static int compared_bit(const void *acc, int acc_is_float, int64_t at, int64_t j, const void *tau,
                        const uint16_t *up) {
    int rising = up[j >> 4] >> (j & 15) & 1;
    if (acc_is_float) {
        float a = ((const float *)acc)[at], t = ((const float *)tau)[j];
        return rising ? a >= t : a <= t;
    }
    int32_t a = ((const int32_t *)acc)[at], t = ((const int32_t *)tau)[j];
    return rising ? a >= t : a <= t;
}

#ifdef FM_X86
/* Sixteen units at a time, the last few under a mask: one comparison each way, one 16-bit store. */
FM_TARGET_AVX512 static void compare_row_avx512(const void *acc, int acc_is_float, int64_t row, int64_t o,
                                                const void *tau, const uint16_t *up, uint16_t *halves) {
    for (int64_t j = 0; j < o; j += 16) {
        __mmask16 live = fm_first16(o - j);
        __mmask16 rising = up[j / 16], ge, le;
        if (acc_is_float) {
            __m512 a = _mm512_maskz_loadu_ps(live, (const float *)acc + row * o + j);
            __m512 t = _mm512_maskz_loadu_ps(live, (const float *)tau + j);
            ge = _mm512_cmp_ps_mask(a, t, _CMP_GE_OQ), le = _mm512_cmp_ps_mask(a, t, _CMP_LE_OQ);
        } else {
            __m512i a = _mm512_maskz_loadu_epi32(live, (const int32_t *)acc + row * o + j);
            __m512i t = _mm512_maskz_loadu_epi32(live, (const int32_t *)tau + j);
            ge = _mm512_cmpge_epi32_mask(a, t), le = _mm512_cmple_epi32_mask(a, t);
        }
        halves[j / 16] = (uint16_t)(fm_signs(ge, le, rising) & live);
    }
}
/* Eight units at a time on AVX2 (the last few by compared_bit): a byte of bits a step. */
FM_TARGET_AVX2 static int64_t compare_row_avx2(const void *acc, int acc_is_float, int64_t row, int64_t o,
                                               const void *tau, const uint16_t *up, uint8_t *bytes) {
    int64_t j = 0;
    for (; j + 8 <= o; j += 8) {
        int rising = up[j / 16] >> (j % 16) & 0xFF, ge, le;
        if (acc_is_float) {
            __m256 a = _mm256_loadu_ps((const float *)acc + row * o + j), t = _mm256_loadu_ps((const float *)tau + j);
            ge = _mm256_movemask_ps(_mm256_cmp_ps(a, t, _CMP_GE_OQ));
            le = _mm256_movemask_ps(_mm256_cmp_ps(a, t, _CMP_LE_OQ));
        } else {
            __m256i a = _mm256_loadu_si256((const __m256i *)((const int32_t *)acc + row * o + j));
            __m256i t = _mm256_loadu_si256((const __m256i *)((const int32_t *)tau + j));
            int below = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t, a)));
            int above = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(a, t)));
            ge = ~below & 0xFF, le = ~above & 0xFF;
        }
        bytes[j / 8] = (uint8_t)fm_signs((unsigned)ge, (unsigned)le, (unsigned)rising);
    }
    return j;
}
#endif

void fm_compare_pack(int isa, int threads, const void *acc, int acc_is_float, int64_t n, int64_t o,
                     const void *tau, const uint16_t *up, uint64_t *out, int64_t out_row_words) {
    int64_t work = n * o;
    (void)isa, (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t i = 0; i < n; i++) {
        uint64_t *row = out + i * out_row_words;
        memset(row, 0, (size_t)out_row_words * sizeof(uint64_t));
        int64_t j = 0;
#ifdef FM_X86
        if (isa >= FM_AVX512) { /* 16-bit halves in increasing address order = bits in increasing order */
            compare_row_avx512(acc, acc_is_float, i, o, tau, up, (uint16_t *)row);
            continue;
        }
        if (isa == FM_AVX2)
            j = compare_row_avx2(acc, acc_is_float, i, o, tau, up, (uint8_t *)row);
#endif
        for (; j < o; j++)
            row[j >> 6] |= (uint64_t)compared_bit(acc, acc_is_float, i * o + j, j, tau, up) << (j & 63);
    }
}
