/* The compiled kernels of fewmult.runtime: C ABI, called through ctypes (fewmult/runtime/kernels.py).
 *
 * Layout shared by every kernel: a row of binary values (activations or weights) is packed into
 * 64-bit words, bit t of word w holding element 64 w + t (1 = +1 or "selected", 0 = -1 or "not"),
 * padded with zero bits to whole words (dense rows: to FM_ROW_WORDS words, whole 512-bit blocks).
 * Padding bits are zero on both sides of a product and count nothing. Images are NHWC: a pixel's
 * channels are consecutive (packed: ceil(C / 64) words a pixel).
 *
 * Every kernel takes `isa` (FM_PORTABLE, FM_AVX2, FM_AVX512: the caller passes at most
 * fm_best_isa()) and `threads`; the portable loop beside each fast path is its reference.
 */
#ifndef FEWMULT_KERNELS_H
#define FEWMULT_KERNELS_H

#include <stdint.h>

#define FM_ROW_WORDS 8 /* 512 bits: dense rows are padded to whole AVX-512 registers */

enum { FM_PORTABLE = 0, FM_AVX2 = 1, FM_AVX512 = 2, FM_AMX = 3 };

/* The widest instruction set this CPU runs: FM_AVX512 needs AVX-512 F, BW and VPOPCNTDQ; FM_AMX
 * these and fm_amx_available(). Kernels without an AMX path take FM_AMX as FM_AVX512. */
int fm_best_isa(void);
/* 1 where this build, the CPU (AMX-TILE, -INT8, -BF16, AVX512-BF16) and the OS (Linux 5.16+, which
 * is asked here for the tile state) let this process run tile instructions. */
int fm_amx_available(void);
/* Threads a kernel may use (OpenMP's default), 1 when built without OpenMP. */
int fm_max_threads(void);

/* out[i * o + j] = k - 2 popcount(a_i XOR w_j): the dot product of two +-1 vectors of length k.
 * a: n rows, w: o rows, both `row_words` words a row. */
void fm_xnor_gemm(int isa, int threads, const uint64_t *a, int64_t n, const uint64_t *w, int64_t o,
                  int64_t row_words, int32_t k, int32_t *out);
/* The same product with the weights as groups of 4 outputs, word t of each group's outputs side by
 * side ((ceil(o / 4), row_words, 4), zero-padded): each output a 64-bit lane (short rows, on AVX2). */
void fm_xnor_gemm_lanes(int isa, int threads, const uint64_t *a, int64_t n, const uint64_t *w_lanes, int64_t o,
                        int64_t row_words, int32_t k, int32_t *out);

/* Float rows times selections: with minus == NULL (binary weights: bit 1 = +1, bit 0 = -1)
 *   out[i * o + j] = 2 sum_{t in plus_j} x[i, t] - sum_t x[i, t],
 * else (ternary weights: +1 where plus, -1 where minus, 0 elsewhere)
 *   out[i * o + j] = sum_{t in plus_j} x[i, t] - sum_{t in minus_j} x[i, t].
 * x: n rows of k floats (contiguous); plus, minus: o rows of `row_words` words. Float32 sums. */
void fm_select_gemm(int isa, int threads, const float *x, int64_t n, int64_t k, const uint64_t *plus,
                    const uint64_t *minus, int64_t o, int64_t row_words, float *out);

/* fm_select_gemm's products by table lookups (select_lut.c), the weights as G-bit selections of
 * L rows: (ceil(o / L), ceil(k / G), L) bytes each for plus and (ternary) minus. AVX-512 (L = 16,
 * G = 4; callers check fm_best_isa() == FM_AVX512) and AVX2 (L = 8, G = 3; fm_best_isa() >= FM_AVX2);
 * x86 only. */
void fm_lut_gemm_avx512(int threads, const float *x, int64_t n, int64_t k, const uint8_t *plus,
                        const uint8_t *minus, int64_t o, float *out);
void fm_lut_gemm_avx2(int threads, const float *x, int64_t n, int64_t k, const uint8_t *plus,
                      const uint8_t *minus, int64_t o, float *out);

/* out[i * o + j] = sum_t x[i, t] w[j, t]: float32 rows (n, k) times float32 weight rows (o, k). */
void fm_float_gemm(int isa, int threads, const float *x, int64_t n, int64_t k, const float *w, int64_t o,
                   float *out);
/* The same product with the weights as panels of 16 columns (ceil(o / 16), k, 16), zero-padded:
 * outer products, each input broadcast against a panel (float_gemm.c: AVX2's form). */
void fm_float_gemm_panels(int isa, int threads, const float *x, int64_t n, int64_t k, const float *panels,
                          int64_t o, float *out);

/* AMX tile products (amx_gemm.c; callers check fm_best_isa() == FM_AMX), the weights' bits in the
 * order of a weight tile (kernels.amx_layout): for each block of 16 weight rows and each block of
 * 16 G inputs, 16 masks of 16 G bits, bit G j + q of mask r = input G r + q of row j.
 * Sign products (G = 4, uint64 masks, kblocks blocks a row): xnor_gemm's out from a's packed rows
 * (first kblocks words of rows of a_words) and w_ones (each weight row's ones), exactly.
 * Float products (G = 2, uint32 masks): select_gemm's out, +1 where plus, -1 where minus (binary:
 * minus == NULL, -1 wherever not plus), float32 sums of exact products.
 * Given thresholds (tau, up: fm_compare_pack's, non-NULL bits), the sign and fixed-point products
 * write fm_compare_pack's bits of their sums (rows of `words` words) instead of the sums (out unused). */
void fm_amx_sign_gemm(int threads, const uint64_t *a, int64_t n, int64_t a_words, const uint64_t *w,
                      const int32_t *w_ones, int64_t o, int64_t kblocks, int32_t k, int32_t *out, const int32_t *tau,
                      const uint16_t *up, uint64_t *bits, int64_t words);
void fm_amx_select_gemm(int threads, const float *x, int64_t n, int64_t k, const uint32_t *plus,
                        const uint32_t *minus, int64_t o, float *out);
/* The same product on int8 tiles: each float row as 24-bit fixed point (scaled by a power of two,
 * rounded: at most 2^-23 of the row's largest magnitude off a value) in three byte planes, the weights
 * as 0/1 tiles (plus, and minus for ternary weights: NULL for binary) with each row's ones; the sums
 * exact, then rounded once to float32. amx_layout group 4 (uint64 masks). */
void fm_amx_fixed_gemm(int threads, const float *x, int64_t n, int64_t k, const uint64_t *plus,
                       const int32_t *plus_ones, const uint64_t *minus, const int32_t *minus_ones, int64_t o,
                       float *out, const float *tau, const uint16_t *up, uint64_t *bits, int64_t words);

/* Batch norm + sign as one comparison per sum, written as packed bits for the next product: with each
 * unit's comparison moved onto its sums (fewmult/runtime/thresholds.py: the reference's
 * acc * scale + bias in double, compared with the unit's threshold, gives the same bits),
 * bit (i, j) = up_j ? acc[i, j] >= tau[j] : acc[i, j] <= tau[j], acc and tau both int32
 * (acc_is_float = 0) or both float32 (a NaN compares false); up_j is bit j % 16 of up[j / 16];
 * acc: n rows of o; out: n rows of out_row_words words. */
void fm_compare_pack(int isa, int threads, const void *acc, int acc_is_float, int64_t n, int64_t o,
                     const void *tau, const uint16_t *up, uint64_t *out, int64_t out_row_words);

/* Convolutions as products of rows: im2col gathers each output pixel's window (taps in (ky, kx)
 * order, each tap a pixel's channels) into one row, zeros where the window leaves the image.
 * Packed bits (words a pixel: cw) or floats (c a pixel); rows of row_len words or floats. */
void fm_im2col_bits(int threads, const uint64_t *x, int64_t n, int64_t h, int64_t w, int64_t cw, int64_t kh,
                    int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t ho, int64_t wo,
                    uint64_t *rows, int64_t row_len);
void fm_im2col_f32(int threads, const float *x, int64_t n, int64_t h, int64_t w, int64_t c, int64_t kh,
                   int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t ho, int64_t wo,
                   float *rows, int64_t row_len);

/* A zero-padded tap read by XNOR + popcount counts as -1 times the weight: add back, at every output
 * pixel whose window leaves the image, tap_sums[t * o + j] (the sum of output j's weights over the
 * channels of tap t) for each tap t outside. acc: (n, ho, wo, o) int32. */
void fm_conv_border(int threads, int32_t *acc, int64_t n, int64_t ho, int64_t wo, int64_t o,
                    const int32_t *tap_sums, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                    int64_t sw, int64_t ph, int64_t pw);

/* Pooling (pool.c). Max-pooling of float64 planes (planes, h, w) -> (planes, ho, wo) as torch's MaxPool2d(k, stride, pad)
 * (floor mode; padding never wins, NaN does), and average-pooling over k x k windows with stride k as
 * AvgPool2d(k, ceil_mode=True, count_include_pad=False): the NCHW stream of a ResNet (pool.c). */
void fm_maxpool_planes(int threads, const double *x, int64_t planes, int64_t h, int64_t w, int64_t k,
                       int64_t stride, int64_t pad, int64_t ho, int64_t wo, double *out);
void fm_avgpool_planes(int threads, const double *x, int64_t planes, int64_t h, int64_t w, int64_t k,
                       double *out);
/* Pooling of NHWC int32 or float32 sums (n, h, w, c) over windows of torch's MaxPool2d(k, stride, pad)
 * to (n, ho, wo, c): per channel the maximum, or the minimum where take_min[j] (a NaN winning either):
 * a max-pool of what follows the sums (their scale, a batch norm), run before it, as that is monotone
 * per channel (falling where take_min). */
void fm_pool_sums(int threads, const void *x, int is_float, int64_t n, int64_t h, int64_t w, int64_t c,
                  int64_t k, int64_t stride, int64_t pad, int64_t ho, int64_t wo, const uint8_t *take_min,
                  void *out);

/* The residual stream of an exported ResNet (residual.c), in double as the NumPy reference:
 * out[i, j, p] = ((acc[i, p, j] * scale[j] + bias[j]) * a[j]) + b[j], NHWC int32 or float32 sums
 * (bias may be NULL) to NCHW; RPReLU per channel of NCHW x; and bit j of pixel p's words of image i
 * set where x[i, j, p] >= threshold[j] (<= where negative[j]). */
void fm_sums_affine(int threads, const void *acc, int acc_is_float, int64_t n, int64_t hw, int64_t c,
                    const double *scale, const double *bias, const double *a, const double *b,
                    const double *addend, const double *shift_in, const double *slope,
                    const double *shift_out, double *out);
void fm_rprelu(int threads, const double *x, int64_t n, int64_t c, int64_t hw, const double *shift_in,
               const double *slope, const double *shift_out, double *out);
void fm_sign_pack(int threads, const double *x, int64_t n, int64_t c, int64_t hw, const double *threshold,
                  const uint8_t *negative, uint64_t *out, int64_t words);

/* A plan's dense layers run one after another in one call (chain.c): float32 rows x (n, layers[0].k) to
 * float64 scores out (n, layers[count - 1].o). Each layer: binary weights as amx_layout group-4 tiles with
 * their ones (and, for packed-bit rows, as packed rows for xnor_gemm, which runs below min_rows rows or
 * min_sums sums); the first layer's float rows on fm_amx_fixed_gemm (n >= min_rows: the caller's check),
 * the others' packed bits on fm_amx_sign_gemm or fm_xnor_gemm. Every layer but the last compares its sums
 * with its BN + sign's thresholds (tau: float32 after float rows, int32 after bits; fm_compare_pack's) into
 * rows of `words` words; the last layer's sums go through fm_sums_affine (scale, bias, a, b). */
typedef struct {
    int64_t k, o, kblocks, words, min_rows, min_sums;
    int32_t isa;
    const uint64_t *tiles, *minus_tiles, *packed;
    const int32_t *ones, *minus_ones;
    const void *tau;
    const uint16_t *up;
    const double *scale, *bias, *a, *b;
} fm_dense_layer;
void fm_dense_chain(int threads, const float *x, int64_t n, const fm_dense_layer *layers, int64_t count,
                    double *out);

#endif
