/* The residual stream of an exported ResNet, in double and in the NumPy reference's order of
 * operations (a product, then a sum: -std=c11 contracts no multiply-add into an FMA), so that every
 * value equals the reference's: a convolution's sums through its scale and batch norm (and, in the
 * same pass, the block's shortcut added and ReActNet's RPReLU after the sum), RPReLU alone, and a
 * block's input compared per channel and packed as the next convolution's bits.
 * Images are NCHW double here (as the reference holds them); sums and bits NHWC. */
#include <string.h>

#include "fewmult_kernels.h"
#include "simd.h"

/* RPReLU of one value: x - g where positive, else slope (x - g); plus z. */
static inline double rprelu_one(double x, double g, double slope, double z) {
    double shifted = x - g;
    return fm_pick(shifted > 0, shifted, slope * shifted) + z;
}

/* fm_sums_affine goes over tiles of BLOCK pixels x BLOCK channels: the tile's sums are read pixel by
 * pixel (BLOCK contiguous channels) into a small array, then each channel's BLOCK values are computed
 * and written contiguously, where the compiler vectorizes them (RPReLU's choice by fm_pick).
 * Channel by channel over whole images, with RPReLU's choice a branch, it took 7 ns a value. */
#define BLOCK 16

/* One channel's values of a tile through scale, bias, batch norm, shortcut and RPReLU, each in the
 * reference's order, one short loop a stage (each vectorized; `bias`, `add` and `rprelu` are the same
 * for every call of a run). */
static inline void affine_row(const double *restrict sums, int64_t count, double scale, const double *bias,
                              double a, double b, const double *restrict add, const double *rprelu,
                              double *restrict to) {
    double v[BLOCK];
    for (int64_t p = 0; p < count; p++)
        v[p] = sums[p] * scale;
    if (bias) {
        double shift = *bias;
        for (int64_t p = 0; p < count; p++)
            v[p] = v[p] + shift;
    }
    for (int64_t p = 0; p < count; p++)
        v[p] = v[p] * a + b; /* rounded after the product and after the sum: no FMA (-std=c11) */
    if (add) /* the block's sum: the body's value plus the shortcut's */
        for (int64_t p = 0; p < count; p++)
            v[p] = v[p] + add[p];
    if (rprelu) {
        double g = rprelu[0], slope = rprelu[1], z = rprelu[2];
        for (int64_t p = 0; p < count; p++)
            v[p] = rprelu_one(v[p], g, slope, z);
    }
    for (int64_t p = 0; p < count; p++)
        to[p] = v[p];
}

void fm_sums_affine(int threads, const void *acc, int acc_is_float, int64_t n, int64_t hw, int64_t c,
                    const double *scale, const double *bias, const double *a, const double *b,
                    const double *addend, const double *shift_in, const double *slope,
                    const double *shift_out, double *out) {
    int64_t blocks = (hw + BLOCK - 1) / BLOCK, work = n * hw * c;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t q = 0; q < n * blocks; q++) {
        int64_t image = q / blocks, p0 = q % blocks * BLOCK, pixels = fm_min64(BLOCK, hw - p0);
        double tile[BLOCK][BLOCK]; /* [channel][pixel] */
        for (int64_t j0 = 0; j0 < c; j0 += BLOCK) {
            int64_t channels = fm_min64(BLOCK, c - j0);
            for (int64_t p = 0; p < pixels; p++) {
                int64_t at = (image * hw + p0 + p) * c + j0;
                for (int64_t jj = 0; jj < channels; jj++)
                    tile[jj][p] = acc_is_float ? (double)((const float *)acc)[at + jj]
                                               : (double)((const int32_t *)acc)[at + jj];
            }
            for (int64_t jj = 0; jj < channels; jj++) {
                int64_t j = j0 + jj, at = (image * c + j) * hw + p0;
                double rprelu[3] = {0, 0, 0};
                if (shift_in)
                    rprelu[0] = shift_in[j], rprelu[1] = slope[j], rprelu[2] = shift_out[j];
                affine_row(tile[jj], pixels, scale[j], bias ? bias + j : NULL, a[j], b[j],
                           addend ? addend + at : NULL, shift_in ? rprelu : NULL, out + at);
            }
        }
    }
}

void fm_rprelu(int threads, const double *x, int64_t n, int64_t c, int64_t hw, const double *shift_in,
               const double *slope, const double *shift_out, double *out) {
    int64_t work = n * c * hw;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t i = 0; i < n * c; i++) {
        int64_t j = i % c;
        const double *from = x + i * hw;
        double *to = out + i * hw;
        for (int64_t p = 0; p < hw; p++)
            to[p] = rprelu_one(from[p], shift_in[j], slope[j], shift_out[j]);
    }
}

void fm_sign_pack(int threads, const double *x, int64_t n, int64_t c, int64_t hw, const double *threshold,
                  const uint8_t *negative, uint64_t *out, int64_t words) {
    int64_t work = n * c * hw;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t image = 0; image < n; image++) {
        uint64_t *pixels = out + image * hw * words;
        memset(pixels, 0, (size_t)(hw * words) * sizeof(uint64_t));
        for (int64_t j = 0; j < c; j++) {
            const double *from = x + (image * c + j) * hw;
            uint64_t bit = (uint64_t)1 << (j % 64);
            int64_t word = j / 64;
            if (negative[j]) /* each pixel's bit or'ed in, set or not: no branch on the comparison */
                for (int64_t p = 0; p < hw; p++)
                    pixels[p * words + word] |= bit & ((uint64_t)0 - (uint64_t)(from[p] <= threshold[j]));
            else
                for (int64_t p = 0; p < hw; p++)
                    pixels[p * words + word] |= bit & ((uint64_t)0 - (uint64_t)(from[p] >= threshold[j]));
        }
    }
}
