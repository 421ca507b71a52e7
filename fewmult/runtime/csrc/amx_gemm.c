/* Products on AMX tiles (Intel Advanced Matrix Extensions: Xeon Sapphire Rapids and later).
 *
 * One tile instruction multiplies a 16 x 64-byte tile of activations by a 64-byte x 16 tile of
 * weights into 16 x 16 int32 or float32 sums: 16,384 int8 (TDPBUUD) or 8,192 bf16 (TDPBF16PS)
 * multiply-adds, several times what XNOR + popcount reaches on the same core's vector units.
 * The weights stay packed (1 bit each) in the order a weight tile holds them (kernels.amx_layout)
 * and are expanded into a tile, one mask move a tile row, as they are used.
 *
 * Sign products: bits as 0/1 bytes; the dot product of the +-1 vectors they stand for is
 * k - 2 |a| - 2 |w| + 4 a.w (|.|: ones; a XOR w has |a| + |w| - 2 a.w ones), exactly xnor_gemm's
 * integers for every row layout, zero-padded taps and channels included.
 *
 * Float products: each float32 x is split into three bfloat16 parts, x = h1 + h2 + h3 exactly
 * (h1 = bf16(x), h2 = bf16(x - h1), h3 = bf16(x - h1 - h2): 8 significant bits each, and float32
 * has 24), and the +-1 or 0 weights are exact in bf16: every product is exact, the sums are float32
 * in another order than the reference's (equal within rounding; inputs below 1e-33 in magnitude
 * lose their last parts, as the conversion flushes denormals).
 *
 * Tiles of 16 rows: callers give AMX at least 16 rows (below, the AVX-512 kernels are faster). */
#define _GNU_SOURCE /* syscall() */
#include <stdlib.h>
#include <string.h>

#include "fewmult_kernels.h"
#include "simd.h"

#if defined(FM_X86) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define FM_AMX_BUILT 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#define ROW_BLOCKS 4 /* row tiles (16 rows each) sharing each expanded weight tile: tiles 0-3 sum */

#ifdef FM_AMX_BUILT
#define FM_TARGET_AMX \
    __attribute__((target("avx512f,avx512bw,avx512bf16,amx-tile,amx-int8,amx-bf16")))
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* Linux hands a process the tiles' 8 KB of register state only when asked (kernel 5.16+), once for
 * all its threads; asking again is harmless. Without it a tile instruction is an illegal one. */
static int tiles_granted(void) {
    static volatile int granted = 0;
    if (!granted)
        granted = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    return granted;
}

int fm_amx_available(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    int tiles = (d >> 24 & 1) && (d >> 25 & 1) && (d >> 22 & 1); /* AMX-TILE, AMX-INT8, AMX-BF16 */
    if (!tiles || !__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a >> 5 & 1)) /* AVX512-BF16 */
        return 0;
    return tiles_granted();
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
} tile_config;

/* Every thread that runs tile instructions loads the configuration: 8 tiles of 16 x 64 bytes. */
FM_TARGET_AMX static void configure_tiles(void) {
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.bytes_per_row[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
}

/* Tiles 0..blocks-1 += row tile r of A (at a, rows `stride` bytes apart) times weight tile 6,
 * A read through tiles 4 and 5 in turn. TDP is the tile product (int8 or bf16). */
#define ROW_TILES(TDP, a, stride, blocks)                  \
    switch (blocks) {                                      \
    case 4:                                                \
        _tile_loadd(5, (a) + 48 * (stride), (stride));     \
        TDP(3, 5, 6);                                      \
        /* fall through */                                 \
    case 3:                                                \
        _tile_loadd(4, (a) + 32 * (stride), (stride));     \
        TDP(2, 4, 6);                                      \
        /* fall through */                                 \
    case 2:                                                \
        _tile_loadd(5, (a) + 16 * (stride), (stride));     \
        TDP(1, 5, 6);                                      \
        /* fall through */                                 \
    default:                                               \
        _tile_loadd(4, (a), (stride));                     \
        TDP(0, 4, 6);                                      \
    }

/* Tiles 0..3 stored as 4 blocks of 16 x 16 sums (int32 or float32, 4 bytes each). */
FM_TARGET_AMX static void store_sums(void *sums) {
    _tile_stored(0, (char *)sums, 64);
    _tile_stored(1, (char *)sums + 1024, 64);
    _tile_stored(2, (char *)sums + 2048, 64);
    _tile_stored(3, (char *)sums + 3072, 64);
}

FM_TARGET_AMX static void zero_sums(void) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}

/* Rows [16 b, 16 b + 16) of each of `blocks` row tiles times one block of 16 weight rows whose
 * 64-bit masks (16 a 64-input block, bit 4 j + q = input 4 r + q of weight row j) are w. */
FM_TARGET_AMX static void sign_task(const uint8_t *a, int64_t kp, const uint64_t *w, int64_t kblocks,
                                    int blocks, uint8_t *tile, int32_t *sums) {
    const __m512i one = _mm512_set1_epi8(1);
    zero_sums();
    for (int64_t b = 0; b < kblocks; b++)
        for (int r = 0; r < 16; r++)
            _mm512_store_si512(tile + 1024 * b + 64 * r, _mm512_maskz_mov_epi8(w[16 * b + r], one));
    for (int64_t b = 0; b < kblocks; b++) {
        _tile_loadd(6, tile + 1024 * b, 64);
        ROW_TILES(_tile_dpbuud, a + 64 * b, kp, blocks)
    }
    store_sums(sums);
}

/* Rows [16 b, 16 b + 16) of each row tile, three bf16 parts each (parts apart), times one block of
 * 16 weight rows: 32-bit masks (16 a 32-input block, bit 2 j + q = input 2 r + q of row j),
 * +1 where plus, -1 where minus (binary weights: minus == NULL, -1 elsewhere), else 0. */
FM_TARGET_AMX static void float_task(const uint16_t *a, int64_t kp, int64_t parts, const uint32_t *plus,
                                     const uint32_t *minus, int64_t kblocks, int blocks, uint16_t *tile,
                                     float *sums) {
    const __m512i up = _mm512_set1_epi16(0x3F80), down = _mm512_set1_epi16((short)0xBF80);
    const int64_t stride = 2 * kp;
    zero_sums();
    for (int64_t b = 0; b < kblocks; b++) {
        for (int r = 0; r < 16; r++) {
            __m512i rest = minus ? _mm512_maskz_mov_epi16(minus[16 * b + r], down) : down;
            _mm512_store_si512(tile + 32 * r, _mm512_mask_blend_epi16(plus[16 * b + r], rest, up));
        }
        _tile_loadd(6, tile, 64);
        for (int p = 0; p < 3; p++) {
            const char *part = (const char *)(a + p * parts + 32 * b);
            ROW_TILES(_tile_dpbf16ps, part, stride, blocks)
        }
    }
    store_sums(sums);
}

/* Rows and columns of the tasks (a task: up to 4 row tiles x one block of 16 weight rows). */
typedef struct {
    int64_t n, o, cols;
} grid;

static void task_place(grid g, int64_t task, int64_t *i0, int64_t *j0, int *blocks) {
    *i0 = task / g.cols * 16 * ROW_BLOCKS;
    *j0 = task % g.cols * 16;
    int64_t rows = fm_min64(16 * ROW_BLOCKS, g.n - *i0);
    *blocks = (int)((rows + 15) / 16);
}

static int64_t task_count(grid g) { return (g.n + 16 * ROW_BLOCKS - 1) / (16 * ROW_BLOCKS) * g.cols; }

/* 0/1 bytes of packed rows (n padded to whole tiles with zero rows), and each row's ones. */
FM_TARGET_AMX static void expand_bits(int threads, const uint64_t *a, int64_t n, int64_t a_words,
                                      int64_t kblocks, uint8_t *bytes, int32_t *ones) {
    const __m512i one = _mm512_set1_epi8(1);
    int64_t rows = (n + 15) / 16 * 16, work = rows * kblocks;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t i = 0; i < rows; i++) {
        int32_t count = 0;
        for (int64_t b = 0; b < kblocks; b++) {
            uint64_t word = i < n ? a[i * a_words + b] : 0;
            count += (int32_t)FM_POPCOUNT64(word);
            _mm512_store_si512(bytes + (i * kblocks + b) * 64, _mm512_maskz_mov_epi8(word, one));
        }
        if (i < n)
            ones[i] = count;
    }
}

FM_TARGET_AMX static FM_INLINE __m512 bf16_as_float(__m256bh h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
}

/* x = h1 + h2 + h3, bf16 rows of kp values (zero-padded) in three planes of `parts` values. */
FM_TARGET_AMX static void split_bf16(int threads, const float *x, int64_t n, int64_t k, int64_t kp,
                                     int64_t parts, uint16_t *planes) {
    int64_t rows = (n + 15) / 16 * 16, work = rows * kp;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t i = 0; i < rows; i++)
        for (int64_t t = 0; t < kp; t += 16) {
            __mmask16 live = i < n && t < k ? (__mmask16)(k - t >= 16 ? 0xFFFF : (1u << (k - t)) - 1) : 0;
            __m512 rest = _mm512_maskz_loadu_ps(live, i < n ? x + i * k + t : x);
            for (int p = 0; p < 3; p++) {
                __m256bh h = _mm512_cvtneps_pbh(rest);
                _mm256_store_si256((__m256i *)(planes + p * parts + i * kp + t), (__m256i)h);
                rest = _mm512_sub_ps(rest, bf16_as_float(h));
            }
        }
}

FM_TARGET_AMX void fm_amx_sign_gemm(int threads, const uint64_t *a, int64_t n, int64_t a_words,
                                   const uint64_t *w, const int32_t *w_ones, int64_t o, int64_t kblocks,
                                   int32_t k, int32_t *out) {
    if (!tiles_granted())
        abort(); /* callers check fm_best_isa() == FM_AMX first */
    int64_t kp = 64 * kblocks, rows = (n + 15) / 16 * 16;
    uint8_t *bytes = aligned_alloc(64, (size_t)(rows * kp));
    int32_t *ones = malloc(sizeof(int32_t) * (size_t)n);
    expand_bits(threads, a, n, a_words, kblocks, bytes, ones);
    grid g = {n, o, (o + 15) / 16};
    int64_t tasks = task_count(g);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (tasks > 1)
#endif
    {
        uint8_t *tile = aligned_alloc(64, 1024 * (size_t)kblocks);
        int32_t sums[16 * 16 * ROW_BLOCKS];
        configure_tiles();
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t task = 0; task < tasks; task++) {
            int64_t i0, j0;
            int blocks;
            task_place(g, task, &i0, &j0, &blocks);
            sign_task(bytes + i0 * kp, kp, w + j0 / 16 * kblocks * 16, kblocks, blocks, tile, sums);
            for (int64_t i = i0; i < fm_min64(n, i0 + 16 * blocks); i++)
                for (int64_t j = j0; j < fm_min64(o, j0 + 16); j++)
                    out[i * o + j] = k - 2 * ones[i] - 2 * w_ones[j] + 4 * sums[(i - i0) * 16 + j - j0];
        }
        _tile_release();
        free(tile);
    }
    free(bytes);
    free(ones);
}

FM_TARGET_AMX void fm_amx_select_gemm(int threads, const float *x, int64_t n, int64_t k, const uint32_t *plus,
                                     const uint32_t *minus, int64_t o, float *out) {
    if (!tiles_granted())
        abort(); /* callers check fm_best_isa() == FM_AMX first */
    int64_t kblocks = (k + 31) / 32, kp = 32 * kblocks, rows = (n + 15) / 16 * 16, parts = rows * kp;
    uint16_t *planes = aligned_alloc(64, sizeof(uint16_t) * (size_t)(3 * parts));
    split_bf16(threads, x, n, k, kp, parts, planes);
    grid g = {n, o, (o + 15) / 16};
    int64_t tasks = task_count(g);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (tasks > 1)
#endif
    {
        uint16_t tile[512] __attribute__((aligned(64)));
        float sums[16 * 16 * ROW_BLOCKS];
        configure_tiles();
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t task = 0; task < tasks; task++) {
            int64_t i0, j0, block;
            int blocks;
            task_place(g, task, &i0, &j0, &blocks);
            block = j0 / 16 * kblocks * 16;
            float_task(planes + i0 * kp, kp, parts, plus + block, minus ? minus + block : NULL, kblocks, blocks,
                       tile, sums);
            for (int64_t i = i0; i < fm_min64(n, i0 + 16 * blocks); i++)
                for (int64_t j = j0; j < fm_min64(o, j0 + 16); j++)
                    out[i * o + j] = sums[(i - i0) * 16 + j - j0];
        }
        _tile_release();
    }
    free(planes);
}

#else /* no AMX in this build: fm_amx_available() says so and nothing calls the products */

int fm_amx_available(void) { return 0; }

void fm_amx_sign_gemm(int threads, const uint64_t *a, int64_t n, int64_t a_words, const uint64_t *w,
                      const int32_t *w_ones, int64_t o, int64_t kblocks, int32_t k, int32_t *out) {
    (void)threads, (void)a, (void)n, (void)a_words, (void)w, (void)w_ones, (void)o, (void)kblocks, (void)k,
        (void)out;
    abort();
}

void fm_amx_select_gemm(int threads, const float *x, int64_t n, int64_t k, const uint32_t *plus,
                        const uint32_t *minus, int64_t o, float *out) {
    (void)threads, (void)x, (void)n, (void)k, (void)plus, (void)minus, (void)o, (void)out;
    abort();
}
#endif
