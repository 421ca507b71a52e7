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
 * Tiles of 16 rows: with fewer rows (float products: fewer than 64) the AVX-512 kernels are faster,
 * and the callers (fewmult/runtime/network.py) run those. */
#define _GNU_SOURCE /* syscall() */
#include <math.h>
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

#define ROW_BLOCKS 4 /* row tiles (16 rows each, a row group) sharing each expanded weight tile */

/* The activations a tile product reads are laid out tile by tile: each tile (16 rows x 64 bytes) 1 KB of
 * consecutive cache lines, a row tile's input blocks one after another. A tile load reads whole lines in
 * order, as L2 streams them, and no two rows of a tile share an L1 set. (Rows 2,048 bytes apart put a
 * tile's rows into 2 of L1's 64 sets: the sign product at 64 x 2048 x 2048 ran 1.17x slower; rows one
 * line longer than that were the layout before this one, and the fixed-point tile loop at 64 x 784 x
 * 2048, whose activations stream from L2, took 84 us a thread with them, 74 tile by tile.) Row r's first
 * block, in a plane of `kblocks` blocks a row: */
static inline char *tile_row(char *plane, int64_t kblocks, int64_t r) {
    return plane + r / 16 * kblocks * 1024 + r % 16 * 64;
}

#ifdef FM_AMX_BUILT
#define FM_TARGET_AMX \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16,avx512vbmi,amx-tile,amx-int8,amx-bf16")))
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
    int tiles = (d >> 24 & 1) && (d >> 25 & 1) && (d >> 22 & 1) && (c >> 1 & 1); /* AMX-TILE, -INT8, -BF16, VBMI */
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

/* Tiles 0..blocks-1 += row tile r of A (at a + r step: tile_row's layout) times weight tile 6, A read
 * through tiles 4 and 5 in turn. TDP is the tile product (int8 or bf16). */
#define ROW_TILES(TDP, a, step, blocks)            \
    switch (blocks) {                              \
    case 4:                                        \
        _tile_loadd(5, (a) + 3 * (step), 64);      \
        TDP(3, 5, 6);                              \
        /* fall through */                         \
    case 3:                                        \
        _tile_loadd(4, (a) + 2 * (step), 64);      \
        TDP(2, 4, 6);                              \
        /* fall through */                         \
    case 2:                                        \
        _tile_loadd(5, (a) + (step), 64);          \
        TDP(1, 5, 6);                              \
        /* fall through */                         \
    default:                                       \
        _tile_loadd(4, (a), 64);                   \
        TDP(0, 4, 6);                              \
    }

/* Tiles 0..3 to and from 4 blocks of 16 x 16 sums (int32 or float32, 4 bytes each). */
FM_TARGET_AMX static void store_sums(void *sums) {
    _tile_stored(0, (char *)sums, 64);
    _tile_stored(1, (char *)sums + 1024, 64);
    _tile_stored(2, (char *)sums + 2048, 64);
    _tile_stored(3, (char *)sums + 3072, 64);
}

FM_TARGET_AMX static void load_sums(const void *sums) {
    _tile_loadd(0, (const char *)sums, 64);
    _tile_loadd(1, (const char *)sums + 1024, 64);
    _tile_loadd(2, (const char *)sums + 2048, 64);
    _tile_loadd(3, (const char *)sums + 3072, 64);
}

FM_TARGET_AMX static void zero_sums(void) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}

/* Rows [i0, i1) of a product's activations as its tiles read them, into a thread's own buffer: tile_row's
 * layout of `kblocks` blocks a row, zero rows up to whole tiles, `parts` planes `plane` bytes apart. */
typedef void (*rows_fn)(const void *source, int64_t i0, int64_t i1, int64_t kblocks, int64_t plane, char *rows);

/* What a product's tasks share: how to lay out a row group's activations (ROW_BLOCKS row tiles, at most;
 * each thread lays out the groups of its tasks itself: where one thread laid out all rows for both,
 * rewriting them at the next call waited for the other core to give up its copies, and laying out 64
 * rows of 2,048 bits took 20 us instead of 3.5), and the weight masks. */
typedef struct {
    rows_fn rows;
    const void *source;
    int64_t kblocks, plane;
    int parts;
    const void *plus, *minus; /* masks: sign products use plus only */
} product;

/* Weight block jb's input blocks [b0, b1) expanded into 0/1 tiles (1 KB each). */
FM_TARGET_AMX static void expand_tiles(const uint64_t *w, int64_t kblocks, int64_t jb, int64_t b0, int64_t b1,
                                       char *tile) {
    const __m512i one = _mm512_set1_epi8(1);
    const uint64_t *masks = w + jb * kblocks * 16;
    for (int64_t b = b0; b < b1; b++)
        for (int r = 0; r < 16; r++)
            _mm512_store_si512(tile + 1024 * (b - b0) + 64 * r, _mm512_maskz_mov_epi8(masks[16 * b + r], one));
}

/* Tiles 0..blocks-1 += input blocks [b0, b1) of the row tiles at a (of product p) times those of the
 * 16 weight rows of block jb. The chunk's weight tiles are expanded from their masks first (into
 * `tile`, 1 KB each), then read: a tile load right after the stores that wrote it waited for them,
 * and expanding ahead made the sign product at 64 x 2048 x 2048 1.16x faster. */
FM_TARGET_AMX static void sign_blocks(const product *p, const char *a, int64_t jb, int64_t b0, int64_t b1,
                                      int blocks, char *tile) {
    expand_tiles(p->plus, p->kblocks, jb, b0, b1, tile);
    for (int64_t b = b0; b < b1; b++) {
        _tile_loadd(6, tile + 1024 * (b - b0), 64);
        ROW_TILES(_tile_dpbuud, a + 1024 * b, p->kblocks * 1024, blocks)
    }
}

/* As sign_blocks, bf16: +1 where plus, -1 where minus (binary weights: minus == NULL, -1 elsewhere),
 * else 0, times each of the three parts of the activations. */
FM_TARGET_AMX static void float_blocks(const product *p, const char *a, int64_t jb, int64_t b0, int64_t b1,
                                       int blocks, char *tile) {
    const __m512i up = _mm512_set1_epi16(0x3F80), down = _mm512_set1_epi16((short)0xBF80);
    const uint32_t *plus = (const uint32_t *)p->plus + jb * p->kblocks * 16;
    const uint32_t *minus = p->minus ? (const uint32_t *)p->minus + jb * p->kblocks * 16 : NULL;
    for (int64_t b = b0; b < b1; b++)
        for (int r = 0; r < 16; r++) {
            __m512i rest = minus ? _mm512_maskz_mov_epi16(minus[16 * b + r], down) : down;
            _mm512_store_si512(tile + 1024 * (b - b0) + 64 * r, _mm512_mask_blend_epi16(plus[16 * b + r], rest, up));
        }
    for (int64_t b = b0; b < b1; b++) {
        _tile_loadd(6, tile + 1024 * (b - b0), 64);
        for (int q = 0; q < 3; q++) {
            const char *part = a + q * p->plane + 1024 * b;
            ROW_TILES(_tile_dpbf16ps, part, p->kblocks * 1024, blocks)
        }
    }
}

typedef void (*blocks_fn)(const product *, const char *, int64_t, int64_t, int64_t, int, char *);

#define L1_CHUNK_BYTES 32768 /* activations of one input chunk of a row group: L1 holds them */
#define MAX_CHUNK 8          /* input blocks a chunk: their expanded weight tiles, 1 KB each */

/* Input blocks a chunk: as many as L1_CHUNK_BYTES of a row group's activations hold (8 for the sign
 * product's one byte plane, 2 for the float product's three bf16 planes). */
static int64_t chunk_blocks(const product *p) {
    int64_t chunk = L1_CHUNK_BYTES / (16 * ROW_BLOCKS * 64 * p->parts);
    return chunk < 1 ? 1 : chunk > MAX_CHUNK ? MAX_CHUNK : chunk;
}

/* One task: a row group (`blocks` row tiles, laid out at a) times the weight blocks [jb0, jb1), input chunk
 * by input chunk so that the chunk's activations stay in L1 while every weight block reads them; each
 * block's sums wait in `sums` (4 KB a block) between chunks. */
FM_TARGET_AMX static void task(const product *p, blocks_fn run, const char *a, int blocks, int64_t jb0,
                               int64_t jb1, char *tile, char *sums) {
    const int64_t chunk = chunk_blocks(p);
    for (int64_t b0 = 0; b0 < p->kblocks; b0 += chunk) {
        for (int64_t jb = jb0; jb < jb1; jb++) {
            char *own = sums + (jb - jb0) * 4096;
            if (b0 == 0)
                zero_sums();
            else
                load_sums(own);
            run(p, a, jb, b0, fm_min64(b0 + chunk, p->kblocks), blocks, tile);
            store_sums(own);
        }
    }
}

typedef void (*finish_fn)(const void *ctx, int64_t i0, int64_t i1, int64_t jb0, int64_t jb1,
                          const int32_t *sums);

/* Every task of a product: row groups (4 row tiles) x slices of weight blocks (one a thread), each
 * task's sums handed to `finish` (4 KB a weight block: row r, column c at r * 16 + c). */
FM_TARGET_AMX static void run_tasks(int threads, const product *p, blocks_fn run, int64_t n, int64_t o,
                                    finish_fn finish, const void *ctx) {
    int64_t cols = (o + 15) / 16, groups = (n + 16 * ROW_BLOCKS - 1) / (16 * ROW_BLOCKS);
    int64_t slicing = threads > 0 ? threads : 1, per = (cols + slicing - 1) / slicing;
    int64_t slices = (cols + per - 1) / per;
    int64_t tasks = groups * slices;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (tasks > 1)
#endif
    {
        char tile[1024 * MAX_CHUNK] __attribute__((aligned(64)));
        char *sums = aligned_alloc(64, 4096 * (size_t)per), *rows = aligned_alloc(64, (size_t)(p->parts * p->plane));
        int64_t laid = -1; /* the row group in `rows` */
        configure_tiles();
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t t = 0; t < tasks; t++) {
            int64_t i0 = t / slices * 16 * ROW_BLOCKS, i1 = fm_min64(n, i0 + 16 * ROW_BLOCKS);
            int64_t jb0 = t % slices * per, jb1 = fm_min64(cols, jb0 + per);
            if (laid != i0)
                p->rows(p->source, i0, i1, p->kblocks, p->plane, rows), laid = i0;
            task(p, run, rows, (int)((i1 - i0 + 15) / 16), jb0, jb1, tile, sums);
            finish(ctx, i0, i1, jb0, jb1, (const int32_t *)sums);
        }
        _tile_release();
        free(sums);
        free(rows);
    }
}

typedef struct {
    const uint64_t *a;
    int64_t words;
} packed_rows;

/* rows_fn of sign products: packed rows (packed_rows) as 0/1 bytes. */
FM_TARGET_AMX static void sign_rows(const void *source, int64_t i0, int64_t i1, int64_t kblocks, int64_t plane,
                                    char *rows) {
    const packed_rows *r = source;
    const __m512i one = _mm512_set1_epi8(1);
    (void)plane;
    for (int64_t i = i0; i < i0 + (i1 - i0 + 15) / 16 * 16; i++) {
        char *to = tile_row(rows, kblocks, i - i0);
        for (int64_t b = 0; b < kblocks; b++)
            _mm512_store_si512(to + 1024 * b, _mm512_maskz_mov_epi8(i < i1 ? r->a[i * r->words + b] : 0, one));
    }
}

FM_TARGET_AMX static FM_INLINE __m512 bf16_as_float(__m256bh h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
}

typedef struct {
    const float *x;
    int64_t k;
} float_rows;

/* rows_fn of bf16 products: float rows (float_rows) as x = h1 + h2 + h3, three planes of bf16 rows. */
FM_TARGET_AMX static void split_bf16(const void *source, int64_t i0, int64_t i1, int64_t kblocks, int64_t plane,
                                     char *rows) {
    const float_rows *r = source;
    const int64_t k = r->k;
    for (int64_t i = i0; i < i0 + (i1 - i0 + 15) / 16 * 16; i++) {
        char *to = tile_row(rows, kblocks, i - i0);
        for (int64_t t = 0; t < 32 * kblocks; t += 16) { /* 32 values a block */
            __mmask16 live = i < i1 && t < k ? fm_first16(k - t) : 0;
            __m512 rest = _mm512_maskz_loadu_ps(live, i < i1 ? r->x + i * k + t : r->x);
            for (int p = 0; p < 3; p++) {
                __m256bh h = _mm512_cvtneps_pbh(rest);
                _mm256_store_si256((__m256i *)(to + p * plane + t / 32 * 1024 + 2 * (t % 32)), (__m256i)h);
                rest = _mm512_sub_ps(rest, bf16_as_float(h));
            }
        }
    }
}

/* Where a product's sums go: rows (n, o) of int32 or float32 sums, or, given thresholds (`tau` of the sums'
 * type and `up` masks: fm_compare_pack's), each unit's bit packed into rows of `words` words. */
typedef struct {
    void *sums;
    const void *tau;
    const uint16_t *up;
    uint64_t *bits;
    int64_t o, words;
} destination;

/* The outputs of weight block jb that exist (o need not be a multiple of 16). */
static __mmask16 live_columns(int64_t jb, int64_t o) { return fm_first16(o - 16 * jb); }

/* Row i's 16 sums of weight block jb: stored, or compared and packed (fm_compare_pack's bits). */
FM_TARGET_AMX static FM_INLINE void put_ints(const destination *d, int64_t i, int64_t jb, __mmask16 live, __m512i v) {
    if (!d->bits) {
        _mm512_mask_storeu_epi32((int32_t *)d->sums + i * d->o + 16 * jb, live, v);
        return;
    }
    __m512i t = _mm512_maskz_loadu_epi32(live, (const int32_t *)d->tau + 16 * jb);
    __mmask16 ge = _mm512_cmpge_epi32_mask(v, t), le = _mm512_cmple_epi32_mask(v, t);
    ((uint16_t *)(d->bits + i * d->words))[jb] = (uint16_t)(fm_signs(ge, le, d->up[jb]) & live);
}

FM_TARGET_AMX static FM_INLINE void put_floats(const destination *d, int64_t i, int64_t jb, __mmask16 live, __m512 v) {
    if (!d->bits) {
        _mm512_mask_storeu_ps((float *)d->sums + i * d->o + 16 * jb, live, v);
        return;
    }
    __m512 t = _mm512_maskz_loadu_ps(live, (const float *)d->tau + 16 * jb);
    __mmask16 ge = _mm512_cmp_ps_mask(v, t, _CMP_GE_OQ), le = _mm512_cmp_ps_mask(v, t, _CMP_LE_OQ);
    ((uint16_t *)(d->bits + i * d->words))[jb] = (uint16_t)(fm_signs(ge, le, d->up[jb]) & live);
}

typedef struct {
    destination to;
    const int32_t *ones, *w_ones;
    int32_t k;
} sign_out;

/* xnor_gemm's integers from the 0/1 sums: k - 2 |a| - 2 |w| + 4 a.w, 16 outputs a vector */
FM_TARGET_AMX static void finish_sign(const void *ctx, int64_t i0, int64_t i1, int64_t jb0, int64_t jb1,
                                      const int32_t *sums) {
    const sign_out *c = ctx;
    for (int64_t jb = jb0; jb < jb1; jb++) {
        __mmask16 live = live_columns(jb, c->to.o);
        __m512i base = _mm512_sub_epi32(_mm512_set1_epi32(c->k),
                                        _mm512_slli_epi32(_mm512_maskz_loadu_epi32(live, c->w_ones + 16 * jb), 1));
        for (int64_t i = i0; i < i1; i++) {
            __m512i dot = _mm512_load_si512(sums + (jb - jb0) * 1024 + (i - i0) * 16);
            __m512i v = _mm512_add_epi32(_mm512_sub_epi32(base, _mm512_set1_epi32(2 * c->ones[i])),
                                         _mm512_slli_epi32(dot, 2));
            put_ints(&c->to, i, jb, live, v);
        }
    }
}

typedef struct {
    float *out;
    int64_t o;
} float_out;

FM_TARGET_AMX static void finish_float(const void *ctx, int64_t i0, int64_t i1, int64_t jb0, int64_t jb1,
                                       const int32_t *sums) {
    const float_out *c = ctx;
    for (int64_t jb = jb0; jb < jb1; jb++) {
        __mmask16 live = live_columns(jb, c->o);
        for (int64_t i = i0; i < i1; i++)
            _mm512_mask_storeu_ps(c->out + i * c->o + 16 * jb, live,
                                  _mm512_load_ps((const float *)sums + (jb - jb0) * 1024 + (i - i0) * 16));
    }
}

FM_TARGET_AMX void fm_amx_sign_gemm(int threads, const uint64_t *a, int64_t n, int64_t a_words,
                                   const uint64_t *w, const int32_t *w_ones, int64_t o, int64_t kblocks,
                                   int32_t k, int32_t *out, const int32_t *tau, const uint16_t *up,
                                   uint64_t *bits, int64_t words) {
    if (!tiles_granted())
        abort(); /* callers check fm_best_isa() == FM_AMX first */
    int32_t *ones = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        int32_t count = 0;
        for (int64_t b = 0; b < kblocks; b++)
            count += (int32_t)FM_POPCOUNT64(a[i * a_words + b]);
        ones[i] = count;
    }
    packed_rows rows = {a, a_words};
    product p = {sign_rows, &rows, kblocks, ROW_BLOCKS * kblocks * 1024, 1, w, NULL};
    if (bits)
        memset(bits, 0, sizeof(uint64_t) * (size_t)(n * words));
    sign_out c = {{out, tau, up, bits, o, words}, ones, w_ones, k};
    run_tasks(threads, &p, sign_blocks, n, o, finish_sign, &c);
    free(ones);
}

FM_TARGET_AMX void fm_amx_select_gemm(int threads, const float *x, int64_t n, int64_t k, const uint32_t *plus,
                                     const uint32_t *minus, int64_t o, float *out) {
    if (!tiles_granted())
        abort(); /* callers check fm_best_isa() == FM_AMX first */
    int64_t kblocks = (k + 31) / 32;
    float_rows rows = {x, k};
    product p = {split_bf16, &rows, kblocks, ROW_BLOCKS * kblocks * 1024, 3, plus, minus};
    float_out c = {out, o};
    run_tasks(threads, &p, float_blocks, n, o, finish_float, &c);
}

/* Float products on int8 tiles: fixed point in three byte planes.
 *
 * Row i of x is scaled by a power of two, 2^(22 - e_i) with max |x_i| < 2^e_i, and rounded: X = round(x 2^(22
 * - e_i)), |X| <= 2^22, an error of at most 2^(e_i - 23) a value (float32 rounds the largest ones by about
 * as much). Y = X + 2^23 is a 24-bit unsigned integer, three bytes: each byte plane times the 0/1 weights is
 * one int8 tile product (TDPBUUD, 16,384 multiply-adds, twice bf16's 8,192: the three planes cost what 1.5
 * bf16 parts cost). With the weights' ones U_j and the row's sum of Y, sum_t w_jt X_t is exact in double:
 * binary (w = 2u - 1): 2 (sum u Y - 2^23 U_j) - (sum Y - 2^23 k); ternary: plus minus minus, each
 * sum u Y - 2^23 U. Times 2^(e_i - 22), rounded once to float32. A row with an infinite or NaN value is
 * summed in float32 by a plain loop afterwards (IEEE's infinities and NaN).
 *
 * Before a BN + sign only each sum's side of its threshold is kept, and the tiles run the two high planes
 * (two thirds of the tile products). With each low byte L of Y taken as 128, each X is off by L - 128, so a
 * sum of w_t X_t (|w_t| <= 1) lies within sum_t |L_t - 128| (the row's spread) of what the high planes
 * give. Rounding to float32 is monotone: where both ends of that interval round to the same side of the
 * threshold, so does the sum. Elsewhere (units whose sums are that close to their threshold) the low
 * plane's sum_t u_t L_t is added for that unit alone, so every bit is the one the three-plane sum gives:
 * the bits of comparing amx_fixed_gemm's own float32 sums. */
#define FIXED_SHIFT 22
#define FIXED_OFFSET (1 << 23)
#define FIXED_PLANES 3
#define FIXED_CHUNK 16 /* weight tiles of a block expanded at once (16 KB): k up to 1,024 in one pass */
#define FIXED_BLOCK (FIXED_PLANES * 4096) /* bytes of a weight block's sums: 3 planes of 4 row tiles */
#define FIXED_SET (2 * FIXED_BLOCK) /* of a pair of weight blocks (plus; then minus for ternary) */
#define LOW_MIDDLE 128 /* what a low byte is taken to be where the tiles skip the low plane */

/* A row's terms of the bounded comparisons (bounded_bits), in float32: 2^(22 - e) (0 where e is outside
 * [-38, 82]: the scaled threshold could leave float32's normal range, and the row takes the exact path), its
 * spread plus 32 k, and (binary) its low - rest. */
typedef struct {
    float scale, margin, shift;
} row_terms;

typedef struct {
    const uint8_t *a; /* a row group's three planes, `plane` bytes apart (a thread's own), tile by tile (see below) */
    int64_t plane, kblocks, k;
    int first;            /* the tiles' first plane: 0, or 1 before a BN + sign (see above) */
    const uint64_t *w[2]; /* plus, minus (NULL: binary) masks, amx_layout group 4 */
    const int32_t *w_ones[2];
    /* of each row of the group (a thread's own) */
    double *unit; /* 2^(e_i - 22): a row's fixed-point unit */
    double *rest; /* sum_t Y_it - 2^23 k = sum_t X_it */
    row_terms *terms;
    destination to;
} fixed_product;

/* Row r's first input block in plane q of p's row group (tile_row's layout). */
static FM_INLINE const uint8_t *row_bytes(const fixed_product *p, int q, int64_t r) {
    return (const uint8_t *)tile_row((char *)p->a + q * p->plane, p->kblocks, r);
}

/* The e with m < 2^e (frexp's), m >= 0 finite; 0 for 0. From the float's bits: frexp and ldexp, calls into
 * libm, took a third of the layout's time. */
static inline int exponent_above(float m) {
    uint32_t bits;
    memcpy(&bits, &m, sizeof bits);
    int biased = (int)(bits >> 23 & 255);
    if (biased == 0) { /* zero or subnormal */
        int e = 0;
        frexp((double)m, &e);
        return e;
    }
    return biased - 126;
}

/* 2^e for e within double's normal exponents. */
static inline double power_of_two(int e) {
    uint64_t bits = (uint64_t)(e + 1023) << 52;
    double out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* Rows [i0, n) of x, up to a row group, into p's planes and per-row values (at i - i0): bytes of Y (zero past k
 * and past n), each row's unit, sum of X, row_terms (from the sum and spread of its low bytes about 128), and
 * whether it is finite. */
FM_TARGET_AMX static void split_fixed(const fixed_product *p, const float *x, int64_t i0, int64_t n, uint8_t *finite) {
    const int64_t k = p->k, kp = 64 * p->kblocks, plane = p->plane;
    /* byte b of int32 j of two vectors (32 values): bytes 0 and 1 in the halves of gather_low, byte 2 in the
     * low half of gather_high */
    uint8_t low_index[64], high_index[64];
    for (int j = 0; j < 32; j++)
        low_index[j] = (uint8_t)(4 * j), low_index[32 + j] = (uint8_t)(4 * j + 1),
        high_index[j] = high_index[32 + j] = (uint8_t)(4 * j + 2);
    const __m512i gather_low = _mm512_loadu_si512(low_index), gather_high = _mm512_loadu_si512(high_index);
    for (int64_t i = i0; i < i0 + (n - i0 + 15) / 16 * 16; i++) {
        const float *row = x + (i < n ? i : 0) * k;
        /* the largest magnitude as the largest of the magnitudes' bits: their order as unsigned integers is
         * the floats', infinity and NaN above every finite value */
        const __m512i magnitudes = _mm512_set1_epi32(0x7FFFFFFF);
        __m512i most = _mm512_setzero_si512();
        for (int64_t t = 0; i < n && t < k; t += 16) {
            __m512i v = _mm512_maskz_loadu_epi32(fm_first16(k - t), row + t); /* no read past the row */
            most = _mm512_max_epu32(most, _mm512_and_si512(v, magnitudes));
        }
        uint32_t largest = (uint32_t)_mm512_reduce_max_epu32(most);
        int bad = largest >= 0x7F800000u; /* an infinity or NaN */
        float magnitude;
        memcpy(&magnitude, &largest, sizeof magnitude);
        int e = bad ? 0 : exponent_above(magnitude); /* max < 2^e; 0 for a row of zeros */
        /* x 2^(22 - e) is exact in float32 (or below 2^-126, rounding to 0 either way), and rounds to the
         * nearest integer as the double product did; 64 values at a time, their bytes gathered into planes */
        const __m512 scale = _mm512_set1_ps((float)(FIXED_SHIFT - e));
        const __m512i offset = _mm512_set1_epi32(FIXED_OFFSET), middle = _mm512_set1_epi8((char)LOW_MIDDLE);
        __m512i sums[FIXED_PLANES] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
        __m512i spread = _mm512_setzero_si512();
        for (int64_t t = 0; t < kp; t += 64) {
            __m512i y[4];
            for (int q = 0; q < 4; q++) {
                int64_t at = t + 16 * q;
                __mmask16 live = i < n && !bad && at < k ? fm_first16(k - at) : 0;
                __m512 v = _mm512_scalef_ps(_mm512_maskz_loadu_ps(live, row + (at < k ? at : 0)), scale);
                y[q] = _mm512_maskz_add_epi32(live, _mm512_cvtps_epi32(v), offset);
            }
            const __m512i first = _mm512_permutex2var_epi8(y[0], gather_low, y[1]);
            const __m512i second = _mm512_permutex2var_epi8(y[2], gather_low, y[3]);
            const __m512i top = _mm512_shuffle_i64x2(_mm512_permutex2var_epi8(y[0], gather_high, y[1]),
                                                     _mm512_permutex2var_epi8(y[2], gather_high, y[3]), 0x44);
            const __m512i planes[FIXED_PLANES] = {_mm512_shuffle_i64x2(first, second, 0x44),
                                                  _mm512_shuffle_i64x2(first, second, 0xEE), top};
            uint8_t *to = (uint8_t *)row_bytes(p, 0, i - i0) + 16 * t;
            for (int q = 0; q < FIXED_PLANES; q++) {
                _mm512_store_si512(to + q * plane, planes[q]);
                sums[q] = _mm512_add_epi64(sums[q], _mm512_sad_epu8(planes[q], _mm512_setzero_si512()));
            }
            spread = _mm512_add_epi64(spread, _mm512_sad_epu8(planes[0], middle)); /* past k: 128 each */
        }
        int64_t lows = _mm512_reduce_add_epi64(sums[0]);
        int64_t total = 65536 * _mm512_reduce_add_epi64(sums[2]) + 256 * _mm512_reduce_add_epi64(sums[1]) + lows;
        int64_t spread_k = _mm512_reduce_add_epi64(spread) - LOW_MIDDLE * (kp - k);
        if (i < n) {
            int64_t r = i - i0;
            p->unit[r] = power_of_two(e - FIXED_SHIFT), p->rest[r] = (double)(total - (int64_t)FIXED_OFFSET * k);
            finite[r] = !bad;
            p->terms[r] = (row_terms){e >= -38 && e <= 82 ? (float)power_of_two(FIXED_SHIFT - e) : 0.0f,
                                      (float)((double)spread_k + 32.0 * (double)k),
                                      (float)((double)(lows - LOW_MIDDLE * k) - p->rest[r])};
        }
    }
}

/* Sums of the thread's row group (up to 4 row tiles, each in 3 planes: 12 A tiles, at p->a) times weight blocks jb and
 * jb + 1 (`pair` of them), 2 x 2 tiles at a time: A tiles m, m + 1 (tiles 4, 5) times the two weight
 * tiles (6, 7) into tiles 0-3, each A tile load feeding two products and each weight tile load two.
 * Sums of weight block h, plane q, row tile r at sums + FIXED_BLOCK h + 4096 q + 1024 r (16 x 16 int32). */
FM_TARGET_AMX static void fixed_blocks(const fixed_product *p, const uint64_t *w, int64_t jb, int pair, int row_tiles,
                                       char *tile, char *sums) {
    const int64_t a_tiles = FIXED_PLANES * row_tiles;
    for (int64_t b0 = 0; b0 < p->kblocks; b0 += FIXED_CHUNK) {
        int64_t b1 = fm_min64(b0 + FIXED_CHUNK, p->kblocks), span = 1024 * FIXED_CHUNK;
        for (int h = 0; h < pair; h++)
            expand_tiles(w, p->kblocks, jb + h, b0, b1, tile + h * span);
        for (int64_t m = p->first * row_tiles; m < a_tiles; m += 2) {
            int two = m + 1 < a_tiles;
            const uint8_t *a0 = row_bytes(p, (int)(m / row_tiles), 16 * (m % row_tiles));
            const uint8_t *a1 = row_bytes(p, (int)((m + 1) / row_tiles), 16 * ((m + 1) % row_tiles));
            char *c0 = sums + 4096 * (m / row_tiles) + 1024 * (m % row_tiles);
            char *c1 = sums + 4096 * ((m + 1) / row_tiles) + 1024 * ((m + 1) % row_tiles);
            if (b0 == 0) {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
            } else { /* c1 is past the sums where there is no second A tile (`two`: a last odd one) */
                _tile_loadd(0, c0, 64);
                _tile_loadd(1, c0 + FIXED_BLOCK, 64);
                if (two) {
                    _tile_loadd(2, c1, 64);
                    _tile_loadd(3, c1 + FIXED_BLOCK, 64);
                }
            }
            for (int64_t b = b0; b < b1; b++) {
                _tile_loadd(4, a0 + 1024 * b, 64);
                _tile_loadd(6, tile + 1024 * (b - b0), 64);
                _tile_dpbuud(0, 4, 6);
                if (pair == 2) {
                    _tile_loadd(7, tile + span + 1024 * (b - b0), 64);
                    _tile_dpbuud(1, 4, 7);
                }
                if (two) {
                    _tile_loadd(5, a1 + 1024 * b, 64);
                    _tile_dpbuud(2, 5, 6);
                    if (pair == 2)
                        _tile_dpbuud(3, 5, 7);
                }
            }
            _tile_stored(0, c0, 64);
            _tile_stored(1, c0 + FIXED_BLOCK, 64);
            if (two) {
                _tile_stored(2, c1, 64);
                _tile_stored(3, c1 + FIXED_BLOCK, 64);
            }
        }
    }
}

/* sum_t u_jt Y_it - 2^23 U_j for the 16 outputs of a row (its tiles' sums at s, planes 4 KB apart; the low
 * plane's in `low_plane`), as two halves of 8 doubles, with `base` = -2^23 U_j. The two low planes sum
 * exactly in int32 (k 255 257 < 2^31 for k < 32,768, the callers' limit), then the high one in double: each
 * term and sum below 2^53, exact. */
FM_TARGET_AMX static FM_INLINE void selected_sums(__m512i low_plane, const int32_t *s, const __m512d base[2],
                                                  __m512d out[2]) {
    __m512i low = _mm512_add_epi32(low_plane, _mm512_slli_epi32(_mm512_loadu_si512(s + 1024), 8));
    __m512i high = _mm512_loadu_si512(s + 2048);
    const __m512d top = _mm512_set1_pd(65536.0);
    for (int h = 0; h < 2; h++) {
        __m512d d = _mm512_add_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(low, h)), base[h]);
        out[h] = _mm512_add_pd(d, _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(high, h)), top));
    }
}

/* -2^23 U_j for the 16 outputs of weight block jb, two halves of 8 doubles. */
FM_TARGET_AMX static void offset_ones(const int32_t *ones, int64_t jb, __mmask16 live, __m512d base[2]) {
    __m512i counts = _mm512_maskz_loadu_epi32(live, ones + 16 * jb);
    for (int h = 0; h < 2; h++)
        base[h] = _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(counts, h)),
                                _mm512_set1_pd(-(double)FIXED_OFFSET));
}

/* Row r (of the group) of 16 float32 sums from plus and minus (sum_t u Y - 2^23 U of each weight set;
 * binary: none, minus is the row's sum less plus): (plus - minus) times the row's unit, rounded once. */
FM_TARGET_AMX static FM_INLINE __m512 fixed_value(const fixed_product *p, int64_t r, const __m512d plus[2],
                                                 const __m512d minus[2]) {
    __m512d unit = _mm512_set1_pd(p->unit[r]), all = _mm512_set1_pd(p->rest[r]), v[2];
    for (int h = 0; h < 2; h++)
        v[h] = _mm512_mul_pd(_mm512_sub_pd(plus[h], p->w[1] ? minus[h] : _mm512_sub_pd(all, plus[h])), unit);
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(v[0])), _mm512_cvtpd_ps(v[1]), 1);
}

/* fm_compare_pack's bits of 16 float32 sums. */
FM_TARGET_AMX static FM_INLINE __mmask16 compared(__m512 v, __m512 tau, uint16_t up) {
    __mmask16 ge = _mm512_cmp_ps_mask(v, tau, _CMP_GE_OQ), le = _mm512_cmp_ps_mask(v, tau, _CMP_LE_OQ);
    return (__mmask16)fm_signs(ge, le, up);
}

/* sum_t u_jt L_it: output j of weight set w times the low plane of a row (its first block at `row`). */
FM_TARGET_AMX static int32_t low_selected(const uint64_t *w, int64_t kblocks, int64_t j, const uint8_t *row) {
    const uint64_t *masks = w + (j / 16) * kblocks * 16;
    const __m128i lane = _mm_set1_epi64x(4 * (j % 16));
    const __m512i nibble = _mm512_set1_epi64(15), first = _mm512_set_epi64(28, 24, 20, 16, 12, 8, 4, 0);
    const __m512i second = _mm512_add_epi64(first, _mm512_set1_epi64(32));
    __m512i total = _mm512_setzero_si512();
    for (int64_t b = 0; b < kblocks; b++, masks += 16) { /* input 4 r + q of the block: bit 4 (j % 16) + q of mask r */
        __m512i low = _mm512_and_si512(_mm512_srl_epi64(_mm512_loadu_si512(masks), lane), nibble);
        __m512i high = _mm512_and_si512(_mm512_srl_epi64(_mm512_loadu_si512(masks + 8), lane), nibble);
        low = _mm512_sllv_epi64(low, first), high = _mm512_sllv_epi64(high, second);
        uint64_t mine = (uint64_t)_mm512_reduce_or_epi64(_mm512_or_si512(low, high));
        __m512i bytes = _mm512_maskz_mov_epi8(mine, _mm512_loadu_si512(row + 1024 * b));
        total = _mm512_add_epi64(total, _mm512_sad_epu8(bytes, _mm512_setzero_si512()));
    }
    return (int32_t)_mm512_reduce_add_epi64(total);
}

/* plus and minus of a row's 16 outputs (minus only for ternary weights), the low planes' sums given. */
FM_TARGET_AMX static FM_INLINE void set_sums(const fixed_product *p, const __m512i low[2], const int32_t *s,
                                             __m512d base[2][2], __m512d plus[2], __m512d minus[2]) {
    selected_sums(low[0], s, base[0], plus);
    if (p->w[1])
        selected_sums(low[1], s + FIXED_SET / 4, base[1], minus);
}

/* What the bounded bits of weight block jb's 16 units compare with, in float32: each threshold, the float32
 * spacing above it (at least the one below; infinite for an infinite threshold), the constant part of the
 * units' values from the raw high-plane sums (binary 2 plus - rest = 2 (2^16 s2 + 2^8 s1) + (256 - 2^24) U +
 * 2 (s0 - 128 U) - rest; ternary plus - minus with (128 - 2^23) (U+ - U-)), and the units whose threshold is
 * too close to zero for the scaled comparison (below 2^-60; they take the exact path). */
typedef struct {
    __m512 tau, gap, constant;
    __mmask16 tiny;
} unit_terms;

FM_TARGET_AMX static void terms_of(const fixed_product *p, int64_t jb, __mmask16 live, unit_terms *u) {
    u->tau = _mm512_maskz_loadu_ps(live, (const float *)p->to.tau + 16 * jb);
    __m512 exponent = _mm512_sub_ps(_mm512_getexp_ps(u->tau), _mm512_set1_ps(23));
    u->gap = _mm512_max_ps(_mm512_scalef_ps(_mm512_set1_ps(1.0f), exponent), _mm512_set1_ps(0x1p-149f));
    __m512 size = _mm512_abs_ps(u->tau);
    u->tiny = _mm512_cmp_ps_mask(size, _mm512_set1_ps(0x1p-60f), _CMP_LT_OQ) &
              _mm512_cmp_ps_mask(size, _mm512_setzero_ps(), _CMP_NEQ_OQ);
    __m512i ones = _mm512_maskz_loadu_epi32(live, p->w_ones[0] + 16 * jb);
    if (p->w[1])
        ones = _mm512_sub_epi32(ones, _mm512_maskz_loadu_epi32(live, p->w_ones[1] + 16 * jb));
    const float per_one = p->w[1] ? LOW_MIDDLE - (float)FIXED_OFFSET : 256.0f - 2.0f * FIXED_OFFSET;
    u->constant = _mm512_mul_ps(_mm512_cvtepi32_ps(ones), _mm512_set1_ps(per_one));
}

/* 2^16 s2 + 2^8 s1 of the tiles' two high planes (at s) of a row's 16 outputs, in float32. */
FM_TARGET_AMX static FM_INLINE __m512 high_planes(const int32_t *s) {
    __m512 middle = _mm512_cvtepi32_ps(_mm512_loadu_si512(s + 1024));
    __m512 top = _mm512_cvtepi32_ps(_mm512_loadu_si512(s + 2048));
    return _mm512_fmadd_ps(top, _mm512_set1_ps(65536.0f), _mm512_mul_ps(middle, _mm512_set1_ps(256.0f)));
}

/* The bits of row r (of the group) of 16 outputs (weight block jb) with the low plane skipped (see above).
 * Each value lies within the row's spread of its center V, in fixed-point units; T is the threshold in those
 * units (tau 2^(22 - e): exact for the rows of `row_terms.scale`). Where V - T >= spread + gap + E every
 * value in reach rounds above tau, where V - T <= -(spread + gap + E) below; E = 32 k + 2^-22 |T| bounds
 * twice over the float32 roundings of V and V - T (each below 2^-24 of magnitudes under 2^26 k, and |T|).
 * The units in between get their low planes' sums and the exact three-plane value. */
FM_TARGET_AMX static __mmask16 bounded_bits(const fixed_product *p, int64_t r, int64_t jb, __mmask16 live,
                                            const unit_terms *u, const __m512i assumed[2], const int32_t *s,
                                            __m512d base[2][2]) {
    const row_terms *t = p->terms + r;
    __mmask16 bits = 0, unsure = live;
    const uint16_t up = p->to.up[jb];
    if (t->scale != 0.0f) {
        __m512 v = high_planes(s), scale = _mm512_set1_ps(t->scale);
        if (p->w[1])
            v = _mm512_add_ps(_mm512_sub_ps(v, high_planes(s + FIXED_SET / 4)), u->constant);
        else
            v = _mm512_fmadd_ps(v, _mm512_set1_ps(2.0f), _mm512_add_ps(u->constant, _mm512_set1_ps(t->shift)));
        __m512 threshold = _mm512_mul_ps(u->tau, scale), d = _mm512_sub_ps(v, threshold);
        __m512 margin = _mm512_fmadd_ps(u->gap, scale, _mm512_set1_ps(t->margin));
        margin = _mm512_fmadd_ps(_mm512_abs_ps(threshold), _mm512_set1_ps(0x1p-22f), margin);
        __mmask16 above = _mm512_cmp_ps_mask(d, margin, _CMP_GE_OQ);
        __mmask16 below = _mm512_cmp_ps_mask(d, _mm512_sub_ps(_mm512_setzero_ps(), margin), _CMP_LE_OQ);
        bits = (__mmask16)fm_signs(above, below, up);
        unsure = (__mmask16)((~(above | below) | u->tiny) & live);
    }
    if (!unsure)
        return bits;
    __m512i exact[2];
    for (int set = 0; set < 1 + (p->w[1] != NULL); set++) {
        int32_t sums[16];
        _mm512_storeu_si512(sums, assumed[set]);
        for (unsigned left = unsure; left; left &= left - 1)
            sums[FM_CTZ64(left)] = low_selected(p->w[set], p->kblocks, 16 * jb + FM_CTZ64(left), row_bytes(p, 0, r));
        exact[set] = _mm512_loadu_si512(sums);
    }
    __m512d plus[2], minus[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()}; /* binary: no minus */
    set_sums(p, exact, s, base, plus, minus);
    return (__mmask16)((bits & ~unsure) | (compared(fixed_value(p, r, plus, minus), u->tau, up) & unsure));
}

/* Rows [i0, i1) (the thread's row group) of weight block jb from its tiles' sums: float32 sums, or their bits
 * (the low plane skipped where p->first is 1). */
FM_TARGET_AMX static void finish_fixed(const fixed_product *p, int64_t i0, int64_t i1, int64_t jb,
                                       const char *sums) {
    __mmask16 live = live_columns(jb, p->to.o);
    __m512d base[2][2];
    __m512i assumed[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int set = 0; set < 1 + (p->w[1] != NULL); set++) {
        offset_ones(p->w_ones[set], jb, live, base[set]);
        assumed[set] = _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(live, p->w_ones[set] + 16 * jb),
                                          _mm512_set1_epi32(LOW_MIDDLE));
    }
    if (p->first) {
        unit_terms u;
        terms_of(p, jb, live, &u);
        for (int64_t i = i0; i < i1; i++) {
            const int32_t *s = (const int32_t *)sums + 16 * (i - i0);
            __mmask16 bits = bounded_bits(p, i - i0, jb, live, &u, assumed, s, base);
            ((uint16_t *)(p->to.bits + i * p->to.words))[jb] = (uint16_t)(bits & live);
        }
        return;
    }
    for (int64_t i = i0; i < i1; i++) {
        const int32_t *s = (const int32_t *)sums + 16 * (i - i0);
        const __m512i tiles_low[2] = {_mm512_loadu_si512(s),
                                      p->w[1] ? _mm512_loadu_si512(s + FIXED_SET / 4) : _mm512_setzero_si512()};
        __m512d plus[2], minus[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
        set_sums(p, tiles_low, s, base, plus, minus);
        put_floats(&p->to, i, jb, live, fixed_value(p, i - i0, plus, minus));
    }
}

/* The weight (plus or minus) of input t for output j, from its amx_layout masks. */
static int weight_bit(const uint64_t *w, int64_t kblocks, int64_t j, int64_t t) {
    uint64_t mask = w[((j / 16) * kblocks + t / 64) * 16 + (t % 64) / 4];
    return (int)(mask >> (4 * (j % 16) + t % 4) & 1);
}

FM_TARGET_AMX void fm_amx_fixed_gemm(int threads, const float *x, int64_t n, int64_t k, const uint64_t *plus,
                                    const int32_t *plus_ones, const uint64_t *minus, const int32_t *minus_ones,
                                    int64_t o, float *out, const float *tau, const uint16_t *up, uint64_t *bits,
                                    int64_t words) {
    if (!tiles_granted())
        abort(); /* callers check fm_best_isa() == FM_AMX first */
    int64_t kblocks = (k + 63) / 64, group = 16 * ROW_BLOCKS;
    uint8_t *finite = malloc((size_t)n);
    if (bits)
        memset(bits, 0, sizeof(uint64_t) * (size_t)(n * words));
    const fixed_product shared = {.plane = group * 64 * kblocks, .kblocks = kblocks, .k = k, .first = bits != NULL,
                                  .w = {plus, minus}, .w_ones = {plus_ones, minus_ones},
                                  .to = {out, tau, up, bits, o, words}};
    int64_t cols = (o + 15) / 16, pairs = (cols + 1) / 2;
    int64_t groups = (n + 16 * ROW_BLOCKS - 1) / (16 * ROW_BLOCKS), tasks = groups * pairs;
    int sets = minus ? 2 : 1;
    (void)threads; /* without OpenMP */
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (tasks > 1)
#endif
    { /* each thread lays out the row groups of its tasks itself (see `product`) */
        char *tile = aligned_alloc(64, 2 * 1024 * FIXED_CHUNK);
        char *sums = aligned_alloc(64, 2 * FIXED_SET);
        fixed_product p = shared;
        p.a = aligned_alloc(64, (size_t)(FIXED_PLANES * p.plane));
        p.unit = malloc(sizeof(double) * (size_t)(2 * group));
        p.rest = p.unit + group;
        p.terms = malloc(sizeof(row_terms) * (size_t)group);
        uint8_t finite_rows[16 * ROW_BLOCKS];
        int64_t laid = -1;
        configure_tiles();
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t t = 0; t < tasks; t++) { /* a thread's tasks: consecutive weight blocks of a row group */
            int64_t i0 = t / pairs * group, i1 = fm_min64(n, i0 + group), jb = 2 * (t % pairs);
            int pair = jb + 1 < cols ? 2 : 1, row_tiles = (int)((i1 - i0 + 15) / 16);
            if (laid != i0)
                split_fixed(&p, x, i0, i1, finite_rows), laid = i0;
            if (jb == 0) /* the group's one task with the first weight blocks says which rows are finite */
                memcpy(finite + i0, finite_rows, (size_t)(i1 - i0));
            for (int set = 0; set < sets; set++)
                fixed_blocks(&p, p.w[set], jb, pair, row_tiles, tile, sums + set * FIXED_SET);
            for (int h = 0; h < pair; h++)
                finish_fixed(&p, i0, i1, jb + h, sums + FIXED_BLOCK * h);
        }
        _tile_release();
        free(tile);
        free(sums);
        free((void *)p.a);
        free(p.unit);
        free(p.terms);
    }
    float *row = bits ? malloc(sizeof(float) * (size_t)o) : NULL;
    for (int64_t i = 0; i < n; i++) { /* rows with an infinity or NaN: float32 sums, IEEE's rules */
        if (finite[i])
            continue;
        float *sums = bits ? row : out + i * o;
        for (int64_t j = 0; j < o; j++) {
            float sum = 0;
            for (int64_t t = 0; t < k; t++) {
                int plus_t = weight_bit(plus, kblocks, j, t);
                int minus_t = minus ? weight_bit(minus, kblocks, j, t) : !plus_t;
                sum += plus_t ? x[i * k + t] : minus_t ? -x[i * k + t] : 0.0f;
            }
            sums[j] = sum;
        }
        if (bits)
            fm_compare_pack(FM_PORTABLE, 1, row, 1, 1, o, tau, up, bits + i * words, words);
    }
    free(row), free(finite);
}

#else /* no AMX in this build: fm_amx_available() says so and nothing calls the products */

int fm_amx_available(void) { return 0; }

void fm_amx_sign_gemm(int threads, const uint64_t *a, int64_t n, int64_t a_words, const uint64_t *w,
                      const int32_t *w_ones, int64_t o, int64_t kblocks, int32_t k, int32_t *out, const int32_t *tau,
                      const uint16_t *up, uint64_t *bits, int64_t words) {
    (void)threads, (void)a, (void)n, (void)a_words, (void)w, (void)w_ones, (void)o, (void)kblocks, (void)k,
        (void)out, (void)tau, (void)up, (void)bits, (void)words;
    abort();
}

void fm_amx_select_gemm(int threads, const float *x, int64_t n, int64_t k, const uint32_t *plus,
                        const uint32_t *minus, int64_t o, float *out) {
    (void)threads, (void)x, (void)n, (void)k, (void)plus, (void)minus, (void)o, (void)out;
    abort();
}

void fm_amx_fixed_gemm(int threads, const float *x, int64_t n, int64_t k, const uint64_t *plus,
                       const int32_t *plus_ones, const uint64_t *minus, const int32_t *minus_ones, int64_t o,
                       float *out, const float *tau, const uint16_t *up, uint64_t *bits, int64_t words) {
    (void)threads, (void)x, (void)n, (void)k, (void)plus, (void)plus_ones, (void)minus, (void)minus_ones,
        (void)o, (void)out, (void)tau, (void)up, (void)bits, (void)words;
    abort();
}
#endif
