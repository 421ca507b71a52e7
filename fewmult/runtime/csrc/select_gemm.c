/* Float activations times packed binary or ternary weights: each weight bit selects whether an
 * activation is added, so the product needs no multiplication and reads 1-2 bits per weight.
 *
 * Tiles of TILE_N activation rows x TILE_O weight rows keep their sums in registers; each 16-float
 * block of a row is loaded once per tile and added under the 16 bits of each weight row. */
#include "fewmult_kernels.h"
#include "simd.h"

#define TILE_N 4
#define TILE_O 4

/* The reference: one selected activation at a time. */
static float select_sum(const float *x, const uint64_t *bits, int64_t rw) {
    float sum = 0.0f;
    for (int64_t t = 0; t < rw; t++)
        for (uint64_t m = bits[t]; m; m &= m - 1)
            sum += x[t * 64 + FM_CTZ64(m)];
    return sum;
}

static void tile_portable(const float *x, int64_t k, const uint64_t *plus, const uint64_t *minus,
                          int64_t rw, int64_t rows, int64_t cols, float *out, int64_t o) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            float s = select_sum(x + r * k, plus + c * rw, rw);
            out[r * o + c] = minus ? s - select_sum(x + r * k, minus + c * rw, rw) : s;
        }
}

#ifdef FM_X86
FM_TARGET_AVX512 static FM_INLINE void tile_avx512(const float *x, int64_t k, const uint64_t *plus,
                                                   const uint64_t *minus, int64_t rw, const int rows,
                                                   const int cols, const int ternary, float *out,
                                                   int64_t o) {
    const uint16_t *p16 = (const uint16_t *)plus, *m16 = (const uint16_t *)minus;
    __m512 acc[TILE_N][TILE_O];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            acc[r][c] = _mm512_setzero_ps();
    for (int64_t ch = 0; ch * 16 < k; ch++) {
        int64_t left = k - ch * 16;
        __mmask16 valid = fm_first16(left);
        __m512 xv[TILE_N];
        for (int r = 0; r < rows; r++)
            xv[r] = _mm512_maskz_loadu_ps(valid, x + r * k + ch * 16);
        for (int c = 0; c < cols; c++) {
            __mmask16 add = p16[c * rw * 4 + ch];
            for (int r = 0; r < rows; r++)
                acc[r][c] = _mm512_mask_add_ps(acc[r][c], add, acc[r][c], xv[r]);
            if (ternary) {
                __mmask16 sub = m16[c * rw * 4 + ch];
                for (int r = 0; r < rows; r++)
                    acc[r][c] = _mm512_mask_sub_ps(acc[r][c], sub, acc[r][c], xv[r]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            out[r * o + c] = _mm512_reduce_add_ps(acc[r][c]);
}

FM_TARGET_AVX512 static FM_INLINE void tiles_avx512_of(const float *x, int64_t k, const uint64_t *plus,
                                                       const uint64_t *minus, int64_t rw, int64_t rows,
                                                       int64_t cols, const int ternary, float *out,
                                                       int64_t o) {
    if (rows == TILE_N && cols == TILE_O)
        tile_avx512(x, k, plus, minus, rw, TILE_N, TILE_O, ternary, out, o);
    else if (cols == TILE_O)
        for (int64_t r = 0; r < rows; r++)
            tile_avx512(x + r * k, k, plus, minus, rw, 1, TILE_O, ternary, out + r * o, o);
    else
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++)
                tile_avx512(x + r * k, k, plus + c * rw, ternary ? minus + c * rw : minus, rw, 1, 1, ternary,
                            out + r * o + c, o);
}

FM_TARGET_AVX512 static void tiles_avx512(const float *x, int64_t k, const uint64_t *plus,
                                          const uint64_t *minus, int64_t rw, int64_t rows, int64_t cols,
                                          float *out, int64_t o) {
    if (minus)
        tiles_avx512_of(x, k, plus, minus, rw, rows, cols, 1, out, o);
    else
        tiles_avx512_of(x, k, plus, minus, rw, rows, cols, 0, out, o);
}

/* Eight lanes, all ones where bit i of `byte` is set. */
FM_TARGET_AVX2 static FM_INLINE __m256 lanes_of_byte(uint8_t byte) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256i b = _mm256_and_si256(_mm256_set1_epi32(byte), bit);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, bit));
}

FM_TARGET_AVX2 static void row_avx2(const float *x, int64_t k, const uint64_t *plus, const uint64_t *minus,
                                    int64_t rw, int64_t cols, float *out) {
    const uint8_t *p8 = (const uint8_t *)plus, *m8 = (const uint8_t *)minus;
    const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t c = 0; c < cols; c++) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t ch = 0; ch * 8 < k; ch++) {
            __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)fm_min64(k - ch * 8, 8)), index);
            __m256 xv = _mm256_maskload_ps(x + ch * 8, valid);
            acc = _mm256_add_ps(acc, _mm256_and_ps(xv, lanes_of_byte(p8[c * rw * 8 + ch])));
            if (minus)
                acc = _mm256_sub_ps(acc, _mm256_and_ps(xv, lanes_of_byte(m8[c * rw * 8 + ch])));
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, acc);
        out[c] = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    }
}
#endif

void fm_select_gemm(int isa, int threads, const float *x, int64_t n, int64_t k, const uint64_t *plus,
                    const uint64_t *minus, int64_t o, int64_t row_words, float *out) {
    int64_t tiles_n = (n + TILE_N - 1) / TILE_N, tiles_o = (o + TILE_O - 1) / TILE_O;
    int64_t work = n * o * k / 16;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t tile = 0; tile < tiles_n * tiles_o; tile++) {
        int64_t i0 = tile / tiles_o * TILE_N, j0 = tile % tiles_o * TILE_O;
        int64_t rows = fm_min64(TILE_N, n - i0), cols = fm_min64(TILE_O, o - j0);
        const float *xt = x + i0 * k;
        const uint64_t *pt = plus + j0 * row_words, *mt = minus ? minus + j0 * row_words : 0;
        float *ot = out + i0 * o + j0;
#ifdef FM_X86
        if (isa >= FM_AVX512)
            tiles_avx512(xt, k, pt, mt, row_words, rows, cols, ot, o);
        else if (isa >= FM_AVX2)
            for (int64_t r = 0; r < rows; r++)
                row_avx2(xt + r * k, k, pt, mt, row_words, cols, ot + r * o);
        else
#endif
            tile_portable(xt, k, pt, mt, row_words, rows, cols, ot, o);
    }
    if (minus)
        return;
    /* binary weights: sum over the selected minus the rest = 2 (selected) - (all) */
    for (int64_t i = 0; i < n; i++) {
        float total = 0.0f;
        for (int64_t t = 0; t < k; t++)
            total += x[i * k + t];
        for (int64_t j = 0; j < o; j++)
            out[i * o + j] = 2.0f * out[i * o + j] - total;
    }
}
