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
    double y = shifted > 0 ? shifted : slope * shifted;
    return y + z;
}

void fm_sums_affine(int threads, const void *acc, int acc_is_float, int64_t n, int64_t hw, int64_t c,
                    const double *scale, const double *bias, const double *a, const double *b,
                    const double *addend, const double *shift_in, const double *slope,
                    const double *shift_out, double *out) {
    int64_t work = n * hw * c;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t i = 0; i < n * c; i++) {
        int64_t image = i / c, j = i % c;
        double *to = out + i * hw;
        const double *add = addend ? addend + i * hw : NULL;
        for (int64_t p = 0; p < hw; p++) {
            int64_t at = (image * hw + p) * c + j;
            double v = acc_is_float ? (double)((const float *)acc)[at] : (double)((const int32_t *)acc)[at];
            v = v * scale[j];
            if (bias)
                v = v + bias[j];
            v = v * a[j];
            v = v + b[j];
            if (add) /* the block's sum: the body's value plus the shortcut's */
                v = v + add[p];
            if (shift_in)
                v = rprelu_one(v, shift_in[j], slope[j], shift_out[j]);
            to[p] = v;
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
            for (int64_t p = 0; p < hw; p++) {
                int on = negative[j] ? from[p] <= threshold[j] : from[p] >= threshold[j];
                if (on)
                    pixels[p * words + word] |= bit;
            }
        }
    }
}
