/* Float32 rows times float32 weight rows, for the real-valued layers of a binary network (often the
 * first and the last). Here rather than through NumPy's BLAS, whose threads keep spinning after a
 * call and then compete with the OpenMP threads of the binary kernels for the same cores (measured:
 * the binary layers after a BLAS call ran 20-30x slower at batch 1).
 *
 * Two forms: dot products of rows (fm_float_gemm: the weights as they come, a tile's sums reduced
 * across lanes at its end), and on AVX2 outer products over panels of PANEL weight columns
 * (fm_float_gemm_panels: each input broadcast against PANEL outputs at once; AVX2's 16 registers
 * cannot hold the dot form's 4 x 4 tile of accumulators and its operands, so that form spilled). */
#include "fewmult_kernels.h"
#include "simd.h"

#define TILE_N 4
#define TILE_O 4

/* The portable C loop of both forms: weight c's input t at w[c * col_step + t * tap_step] (rows:
 * k and 1; panels: 1 and PANEL). */
static void tile_portable(const float *x, const float *w, int64_t k, int64_t rows, int64_t cols, float *out,
                          int64_t o, int64_t col_step, int64_t tap_step) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            float sum = 0.0f;
            for (int64_t t = 0; t < k; t++)
                sum += x[r * k + t] * w[c * col_step + t * tap_step];
            out[r * o + c] = sum;
        }
}

#ifdef FM_X86
/* One tile of dot products, TILE_N rows by TILE_O weight rows at most: `rows` and `cols` are
 * constants where the tile is whole, so the accumulators stay in registers. */
FM_TARGET_AVX512 static FM_INLINE void tile_avx512(const float *x, const float *w, int64_t k, const int rows,
                                                   const int cols, float *out, int64_t o) {
    __m512 acc[TILE_N][TILE_O];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            acc[r][c] = _mm512_setzero_ps();
    for (int64_t t = 0; t < k; t += 16) {
        __mmask16 valid = fm_first16(k - t);
        __m512 b[TILE_O];
        for (int c = 0; c < cols; c++)
            b[c] = _mm512_maskz_loadu_ps(valid, w + c * k + t);
        for (int r = 0; r < rows; r++) {
            __m512 a = _mm512_maskz_loadu_ps(valid, x + r * k + t);
            for (int c = 0; c < cols; c++)
                acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            out[r * o + c] = _mm512_reduce_add_ps(acc[r][c]);
}

FM_TARGET_AVX2 static FM_INLINE float sum_lanes_avx2(__m256 v) {
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(half, _mm_movehdup_ps(half)));
}

/* tile_avx512 in 8 lanes (CPUs with AVX2 and FMA but not AVX-512: most AMD, older Intel); the
 * last partial 8 read through a lane mask, as AVX-512 does with its mask registers. */
FM_TARGET_AVX2 static FM_INLINE void tile_avx2(const float *x, const float *w, int64_t k, const int rows,
                                               const int cols, float *out, int64_t o) {
    __m256 acc[TILE_N][TILE_O];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            acc[r][c] = _mm256_setzero_ps();
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t t = 0; t < k; t += 8) {
        __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)fm_min64(k - t, 8)), lane);
        __m256 b[TILE_O];
        for (int c = 0; c < cols; c++)
            b[c] = _mm256_maskload_ps(w + c * k + t, valid);
        for (int r = 0; r < rows; r++) {
            __m256 a = _mm256_maskload_ps(x + r * k + t, valid);
            for (int c = 0; c < cols; c++)
                acc[r][c] = _mm256_fmadd_ps(a, b[c], acc[r][c]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            out[r * o + c] = sum_lanes_avx2(acc[r][c]);
}

/* A block of at most TILE_N x TILE_O outputs through `tile`: whole tiles at once, a partial block
 * of weight rows one input row at a time, the rest output by output. */
#define FM_TILES(name, tile, target)                                                                          \
    target static void name(const float *x, const float *w, int64_t k, int64_t rows, int64_t cols, float *out, \
                            int64_t o) {                                                                      \
        if (rows == TILE_N && cols == TILE_O)                                                                 \
            tile(x, w, k, TILE_N, TILE_O, out, o);                                                            \
        else if (cols == TILE_O)                                                                              \
            for (int64_t r = 0; r < rows; r++)                                                                \
                tile(x + r * k, w, k, 1, TILE_O, out + r * o, o);                                             \
        else                                                                                                  \
            for (int64_t r = 0; r < rows; r++)                                                                \
                for (int64_t c = 0; c < cols; c++)                                                            \
                    tile(x + r * k, w + c * k, k, 1, 1, out + r * o + c, o);                                  \
    }
FM_TILES(tiles_avx512, tile_avx512, FM_TARGET_AVX512)
FM_TILES(tiles_avx2, tile_avx2, FM_TARGET_AVX2)
#endif

#define PANEL 16
#define PANEL_ROWS 6 /* 6 rows x 2 vectors of 8: 12 accumulators, 2 weight vectors, 1 broadcast */

#ifdef FM_X86
/* One row's PANEL sums to out; the last panel's padding columns are not outputs. */
FM_TARGET_AVX2 static FM_INLINE void store_panel_row(float *out, __m256 low, __m256 high, int64_t cols) {
    if (cols == PANEL) {
        _mm256_storeu_ps(out, low);
        _mm256_storeu_ps(out + 8, high);
        return;
    }
    float sums[PANEL];
    _mm256_storeu_ps(sums, low);
    _mm256_storeu_ps(sums + 8, high);
    for (int64_t j = 0; j < cols; j++)
        out[j] = sums[j];
}

/* Input t of row r broadcast against the panel's two vectors b0, b1 into row r's accumulators
 * (named, not an array: GCC kept an array of them in memory and stored it at every step). */
#define PANEL_FMA(r)                                                                                     \
    a = _mm256_broadcast_ss(x + r * k + t);                                                              \
    c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0);                                                           \
    c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1);

/* PANEL_ROWS rows x PANEL outputs: out[r, j] = sum over t of x[r, t] * panel[t, j], in the order of t. */
FM_TARGET_AVX2 static void panel_tile_avx2(const float *x, int64_t k, const float *panel, int64_t cols,
                                           float *out, int64_t o) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
           c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, a;
    for (int64_t t = 0; t < k; t++) {
        __m256 b0 = _mm256_loadu_ps(panel + t * PANEL), b1 = _mm256_loadu_ps(panel + t * PANEL + 8);
        PANEL_FMA(0) PANEL_FMA(1) PANEL_FMA(2) PANEL_FMA(3) PANEL_FMA(4) PANEL_FMA(5)
    }
    store_panel_row(out, c00, c01, cols);
    store_panel_row(out + o, c10, c11, cols);
    store_panel_row(out + 2 * o, c20, c21, cols);
    store_panel_row(out + 3 * o, c30, c31, cols);
    store_panel_row(out + 4 * o, c40, c41, cols);
    store_panel_row(out + 5 * o, c50, c51, cols);
}

/* One row x PANEL outputs (a block's last rows). */
FM_TARGET_AVX2 static void panel_row_avx2(const float *x, int64_t k, const float *panel, int64_t cols,
                                          float *out) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, a;
    for (int64_t t = 0; t < k; t++) {
        __m256 b0 = _mm256_loadu_ps(panel + t * PANEL), b1 = _mm256_loadu_ps(panel + t * PANEL + 8);
        PANEL_FMA(0)
    }
    store_panel_row(out, c00, c01, cols);
}

FM_TARGET_AVX2 static void panel_rows_avx2(const float *x, int64_t k, const float *panel, int64_t rows,
                                           int64_t cols, float *out, int64_t o) {
    if (rows == PANEL_ROWS)
        panel_tile_avx2(x, k, panel, cols, out, o);
    else
        for (int64_t r = 0; r < rows; r++)
            panel_row_avx2(x + r * k, k, panel, cols, out + r * o);
}
#endif

void fm_float_gemm_panels(int isa, int threads, const float *x, int64_t n, int64_t k, const float *panels,
                          int64_t o, float *out) {
    int64_t blocks = (n + PANEL_ROWS - 1) / PANEL_ROWS, count = (o + PANEL - 1) / PANEL;
    int64_t work = n * o * k / 16;
    (void)threads, (void)work, (void)isa;
    FM_PARALLEL_FOR
    for (int64_t tile = 0; tile < blocks * count; tile++) { /* a block's rows stay in L1 for every panel */
        int64_t i0 = tile / count * PANEL_ROWS, p = tile % count;
        int64_t rows = fm_min64(PANEL_ROWS, n - i0), cols = fm_min64(PANEL, o - p * PANEL);
        const float *xs = x + i0 * k, *panel = panels + p * k * PANEL;
        float *to = out + i0 * o + p * PANEL;
#ifdef FM_X86
        if (isa >= FM_AVX2) {
            panel_rows_avx2(xs, k, panel, rows, cols, to, o);
            continue;
        }
#endif
        tile_portable(xs, panel, k, rows, cols, to, o, 1, PANEL);
    }
}

void fm_float_gemm(int isa, int threads, const float *x, int64_t n, int64_t k, const float *w, int64_t o,
                   float *out) {
    int64_t tiles_n = (n + TILE_N - 1) / TILE_N, tiles_o = (o + TILE_O - 1) / TILE_O;
    int64_t work = n * o * k / 16;
    (void)threads, (void)work, (void)isa;
    FM_PARALLEL_FOR
    for (int64_t tile = 0; tile < tiles_n * tiles_o; tile++) {
        int64_t i0 = tile / tiles_o * TILE_N, j0 = tile % tiles_o * TILE_O;
        int64_t rows = fm_min64(TILE_N, n - i0), cols = fm_min64(TILE_O, o - j0);
#ifdef FM_X86
        if (isa >= FM_AVX512) {
            tiles_avx512(x + i0 * k, w + j0 * k, k, rows, cols, out + i0 * o + j0, o);
            continue;
        }
        if (isa == FM_AVX2) {
            tiles_avx2(x + i0 * k, w + j0 * k, k, rows, cols, out + i0 * o + j0, o);
            continue;
        }
#endif
        tile_portable(x + i0 * k, w + j0 * k, k, rows, cols, out + i0 * o + j0, o, k, 1);
    }
}
