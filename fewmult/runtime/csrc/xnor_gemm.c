/* Binary GEMM: dot products of +-1 vectors as k - 2 popcount(a XOR w), on packed rows.
 *
 * Work is cut into tiles of TILE_N activation rows x TILE_O weight rows; a full tile keeps its
 * TILE_N x TILE_O counters in registers and loads each 512-bit block of a row once. */
#include "fewmult_kernels.h"
#include "simd.h"

#define TILE_N 4
#define TILE_O 4

/* The reference: one 64-bit popcount at a time. */
static void tile_portable(const uint64_t *a, const uint64_t *w, int64_t rw, int64_t rows, int64_t cols,
                          int32_t k, int32_t *out, int64_t o) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            int64_t count = 0;
            for (int64_t t = 0; t < rw; t++)
                count += FM_POPCOUNT64(a[r * rw + t] ^ w[c * rw + t]);
            out[r * o + c] = k - 2 * (int32_t)count;
        }
}

#ifdef FM_X86
FM_TARGET_AVX512 static FM_INLINE void tile_avx512(const uint64_t *a, const uint64_t *w, int64_t rw,
                                                   const int rows, const int cols, int32_t k,
                                                   int32_t *out, int64_t o) {
    __m512i acc[TILE_N][TILE_O];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            acc[r][c] = _mm512_setzero_si512();
    for (int64_t t = 0; t < rw; t += 8) {
        /* a row's last block may be partial: masked loads read only its words */
        __mmask8 words = rw - t >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (rw - t)) - 1);
        __m512i b[TILE_O];
        for (int c = 0; c < cols; c++)
            b[c] = _mm512_maskz_loadu_epi64(words, w + c * rw + t);
        for (int r = 0; r < rows; r++) {
            __m512i x = _mm512_maskz_loadu_epi64(words, a + r * rw + t);
            for (int c = 0; c < cols; c++)
                acc[r][c] = _mm512_add_epi64(acc[r][c], _mm512_popcnt_epi64(_mm512_xor_si512(x, b[c])));
        }
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            out[r * o + c] = k - 2 * (int32_t)_mm512_reduce_add_epi64(acc[r][c]);
}

FM_TARGET_AVX512 static void tiles_avx512(const uint64_t *a, const uint64_t *w, int64_t rw, int64_t rows,
                                          int64_t cols, int32_t k, int32_t *out, int64_t o) {
    if (rows == TILE_N && cols == TILE_O)
        tile_avx512(a, w, rw, TILE_N, TILE_O, k, out, o);
    else if (rows == 1 && cols == TILE_O)
        tile_avx512(a, w, rw, 1, TILE_O, k, out, o);
    else
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++)
                tile_avx512(a + r * rw, w + c * rw, rw, 1, 1, k, out + r * o + c, o);
}

/* Each byte's bits counted by nibble lookups (Mula's method): 0..8 per byte. */
FM_TARGET_AVX2 static FM_INLINE __m256i byte_counts_avx2(__m256i v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2,
                                         2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
    __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_add_epi8(lo, hi);
}

/* Blocks of 4 words whose byte counts (at most 8 a block) add up in a byte without overflow before
 * they are summed into 64-bit lanes (vpsadbw once per 31 blocks instead of once per block). */
#define BYTE_BLOCKS 31

FM_TARGET_AVX2 static FM_INLINE void tile_avx2(const uint64_t *a, const uint64_t *w, int64_t rw,
                                               const int rows, const int cols, int32_t k, int32_t *out,
                                               int64_t o) {
    __m256i acc[2][TILE_O];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            acc[r][c] = _mm256_setzero_si256();
    int64_t whole = rw / 4 * 4;
    for (int64_t t0 = 0; t0 < whole; t0 += 4 * BYTE_BLOCKS) {
        int64_t end = fm_min64(whole, t0 + 4 * BYTE_BLOCKS);
        __m256i bytes[2][TILE_O];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                bytes[r][c] = _mm256_setzero_si256();
        for (int64_t t = t0; t < end; t += 4) {
            for (int r = 0; r < rows; r++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(a + r * rw + t));
                for (int c = 0; c < cols; c++) {
                    __m256i y = _mm256_loadu_si256((const __m256i *)(w + c * rw + t));
                    bytes[r][c] = _mm256_add_epi8(bytes[r][c], byte_counts_avx2(_mm256_xor_si256(x, y)));
                }
            }
        }
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                acc[r][c] = _mm256_add_epi64(acc[r][c], _mm256_sad_epu8(bytes[r][c], _mm256_setzero_si256()));
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            int64_t lanes[4];
            _mm256_storeu_si256((__m256i *)lanes, acc[r][c]);
            int64_t count = lanes[0] + lanes[1] + lanes[2] + lanes[3];
            for (int64_t t = whole; t < rw; t++) /* the row's last words, one at a time */
                count += FM_POPCOUNT64(a[r * rw + t] ^ w[c * rw + t]);
            out[r * o + c] = k - 2 * (int32_t)count;
        }
}

FM_TARGET_AVX2 static void tiles_avx2(const uint64_t *a, const uint64_t *w, int64_t rw, int64_t rows,
                                      int64_t cols, int32_t k, int32_t *out, int64_t o) {
    for (int64_t r = 0; r < rows; r += 2) {
        int64_t pair = fm_min64(2, rows - r);
        if (pair == 2 && cols == TILE_O)
            tile_avx2(a + r * rw, w, rw, 2, TILE_O, k, out + r * o, o);
        else if (cols == TILE_O)
            tile_avx2(a + r * rw, w, rw, 1, TILE_O, k, out + r * o, o);
        else
            for (int64_t rr = r; rr < r + pair; rr++)
                for (int64_t c = 0; c < cols; c++)
                    tile_avx2(a + rr * rw, w + c * rw, rw, 1, 1, k, out + rr * o + c, o);
    }
}
#endif

void fm_xnor_gemm(int isa, int threads, const uint64_t *a, int64_t n, const uint64_t *w, int64_t o,
                  int64_t row_words, int32_t k, int32_t *out) {
    int64_t tiles_n = (n + TILE_N - 1) / TILE_N, tiles_o = (o + TILE_O - 1) / TILE_O;
    int64_t work = n * o * row_words;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t tile = 0; tile < tiles_n * tiles_o; tile++) {
        int64_t i0 = tile / tiles_o * TILE_N, j0 = tile % tiles_o * TILE_O;
        int64_t rows = fm_min64(TILE_N, n - i0), cols = fm_min64(TILE_O, o - j0);
        const uint64_t *at = a + i0 * row_words, *wt = w + j0 * row_words;
        int32_t *ot = out + i0 * o + j0;
#ifdef FM_X86
        if (isa >= FM_AVX512) {
            tiles_avx512(at, wt, row_words, rows, cols, k, ot, o);
            continue;
        }
        if (isa >= FM_AVX2) {
            tiles_avx2(at, wt, row_words, rows, cols, k, ot, o);
            continue;
        }
#endif
        tile_portable(at, wt, row_words, rows, cols, k, ot, o);
    }
}

/* Short rows (a 64-channel 3x3 convolution: 9 words) spend as long in each output's end (lane sums,
 * the last words one at a time) as in its blocks. fm_xnor_gemm_lanes gives each output a 64-bit lane
 * instead: the weights as groups of LANES outputs, word t of the group's outputs side by side; an
 * activation word broadcast against a group counts LANES outputs at once, and the counts leave the
 * lanes by one vpsadbw per BYTE_BLOCKS words, with no sum across lanes. */
#define LANES 4

#ifdef FM_X86
/* Row r's broadcast word against group g's: each byte's bits counted into that pair's byte counters. */
#define LANE_COUNT(r, g)                                                                                 \
    bytes##r##g = _mm256_add_epi8(bytes##r##g, byte_counts_avx2(_mm256_xor_si256(x##r, y##g)));

/* Two rows x two groups (fewer at the edges: a missing row or group repeats the first, unstored),
 * the byte counters summed into 64-bit lanes every BYTE_BLOCKS words. */
FM_TARGET_AVX2 static void lanes_tile_avx2(const uint64_t *a, int64_t rw, const uint64_t *groups, int rows,
                                           int count, int32_t k, int32_t *out, int64_t o, int64_t j0) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i sum00 = zero, sum01 = zero, sum10 = zero, sum11 = zero;
    const uint64_t *a1 = rows == 2 ? a + rw : a, *g1 = count == 2 ? groups + rw * LANES : groups;
    for (int64_t t0 = 0; t0 < rw; t0 += BYTE_BLOCKS) {
        int64_t t1 = fm_min64(rw, t0 + BYTE_BLOCKS);
        __m256i bytes00 = zero, bytes01 = zero, bytes10 = zero, bytes11 = zero;
        for (int64_t t = t0; t < t1; t++) {
            __m256i x0 = _mm256_set1_epi64x((long long)a[t]), x1 = _mm256_set1_epi64x((long long)a1[t]);
            __m256i y0 = _mm256_loadu_si256((const __m256i *)(groups + t * LANES));
            __m256i y1 = _mm256_loadu_si256((const __m256i *)(g1 + t * LANES));
            LANE_COUNT(0, 0) LANE_COUNT(0, 1) LANE_COUNT(1, 0) LANE_COUNT(1, 1)
        }
        sum00 = _mm256_add_epi64(sum00, _mm256_sad_epu8(bytes00, zero));
        sum01 = _mm256_add_epi64(sum01, _mm256_sad_epu8(bytes01, zero));
        sum10 = _mm256_add_epi64(sum10, _mm256_sad_epu8(bytes10, zero));
        sum11 = _mm256_add_epi64(sum11, _mm256_sad_epu8(bytes11, zero));
    }
    int64_t counts[2][2][LANES];
    _mm256_storeu_si256((__m256i *)counts[0][0], sum00);
    _mm256_storeu_si256((__m256i *)counts[0][1], sum01);
    _mm256_storeu_si256((__m256i *)counts[1][0], sum10);
    _mm256_storeu_si256((__m256i *)counts[1][1], sum11);
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < count; g++)
            for (int64_t l = 0; l < LANES && j0 + g * LANES + l < o; l++)
                out[r * o + g * LANES + l] = k - 2 * (int32_t)counts[r][g][l];
}
#endif

void fm_xnor_gemm_lanes(int isa, int threads, const uint64_t *a, int64_t n, const uint64_t *w_lanes, int64_t o,
                        int64_t row_words, int32_t k, int32_t *out) {
    int64_t groups = (o + LANES - 1) / LANES, pairs_n = (n + 1) / 2, pairs_g = (groups + 1) / 2;
    int64_t work = n * o * row_words;
    (void)threads, (void)work, (void)isa;
    FM_PARALLEL_FOR
    for (int64_t tile = 0; tile < pairs_n * pairs_g; tile++) {
        int64_t i0 = tile / pairs_g * 2, g0 = tile % pairs_g * 2;
        int rows = (int)fm_min64(2, n - i0), count = (int)fm_min64(2, groups - g0);
        const uint64_t *at = a + i0 * row_words, *wt = w_lanes + g0 * row_words * LANES;
#ifdef FM_X86
        if (isa >= FM_AVX2) {
            lanes_tile_avx2(at, row_words, wt, rows, count, k, out + i0 * o + g0 * LANES, o, g0 * LANES);
            continue;
        }
#endif
        for (int r = 0; r < rows; r++) /* portable: one 64-bit popcount at a time */
            for (int64_t j = g0 * LANES; j < fm_min64(o, (g0 + count) * LANES); j++) {
                const uint64_t *group = wt + (j / LANES - g0) * row_words * LANES;
                int64_t ones = 0;
                for (int64_t t = 0; t < row_words; t++)
                    ones += FM_POPCOUNT64(at[r * row_words + t] ^ group[t * LANES + j % LANES]);
                out[(i0 + r) * o + j] = k - 2 * (int32_t)ones;
            }
    }
}
