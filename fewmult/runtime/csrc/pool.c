/* Pooling: max-pooling of a product's NHWC sums before what follows them (their scale, a batch norm:
 * per channel the maximum, or the minimum where that falls), and max- and average-pooling of the
 * float64 NCHW stream between a ResNet's blocks, each value equal to the NumPy reference's. */
#include <string.h>

#include "fewmult_kernels.h"
#include "simd.h"

/* The larger of two values, a NaN winning (as in NumPy's maximum and torch's max-pool; only a NaN
 * differs from itself). */
static inline double max_nan(double a, double b) { return fm_pick((a > b) | (a != a), a, b); }

/* The first and one-past-last input index of window `o` along a side of `size`: padding never wins. */
static inline void window(int64_t o, int64_t k, int64_t stride, int64_t pad, int64_t size, int64_t *from,
                          int64_t *to) {
    int64_t start = o * stride - pad;
    *from = start < 0 ? 0 : start;
    *to = fm_min64(start + k, size);
}

void fm_maxpool_planes(int threads, const double *x, int64_t planes, int64_t h, int64_t w, int64_t k,
                       int64_t stride, int64_t pad, int64_t ho, int64_t wo, double *out) {
    int64_t work = planes * h * w;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t p = 0; p < planes; p++) {
        /* per output row: the window's rows reduced column by column (contiguous, vectorized), then
         * each output's k columns of that */
        double columns[w];
        const double *plane = x + p * h * w;
        for (int64_t yo = 0; yo < ho; yo++) {
            int64_t y0, y1;
            window(yo, k, stride, pad, h, &y0, &y1);
            memcpy(columns, plane + y0 * w, (size_t)w * sizeof(double));
            for (int64_t y = y0 + 1; y < y1; y++)
                for (int64_t i = 0; i < w; i++)
                    columns[i] = max_nan(plane[y * w + i], columns[i]);
            double *row = out + (p * ho + yo) * wo;
            for (int64_t xo = 0; xo < wo; xo++) {
                int64_t x0, x1;
                window(xo, k, stride, pad, w, &x0, &x1);
                double m = columns[x0];
                for (int64_t i = x0 + 1; i < x1; i++)
                    m = max_nan(columns[i], m);
                row[xo] = m;
            }
        }
    }
}

void fm_avgpool_planes(int threads, const double *x, int64_t planes, int64_t h, int64_t w, int64_t k,
                       double *out) {
    int64_t ho = (h + k - 1) / k, wo = (w + k - 1) / k, work = planes * h * w;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t p = 0; p < planes; p++) {
        const double *plane = x + p * h * w;
        for (int64_t yo = 0; yo < ho; yo++)
            for (int64_t xo = 0; xo < wo; xo++) {
                /* the window's offsets summed in row-major order from +0.0, as the reference (which
                 * adds zeros where the window leaves the image: they change no sum that starts at +0.0) */
                double sum = 0.0;
                int64_t inside = 0;
                for (int64_t dy = 0; dy < k; dy++)
                    for (int64_t dx = 0; dx < k; dx++) {
                        int64_t y = yo * k + dy, i = xo * k + dx;
                        if (y < h && i < w) {
                            sum += plane[y * w + i];
                            inside++;
                        }
                    }
                out[(p * ho + yo) * wo + xo] = sum / (double)inside;
            }
    }
}

/* Each output's window of NHWC sums reduced per channel: the maximum, or the minimum where `take_min`
 * (a NaN winning either), one vectorized pass over the channels per window pixel. */
#define POOL_SUMS(T)                                                                                     \
    const T *in = (const T *)x;                                                                          \
    T *res = (T *)out;                                                                                   \
    FM_PARALLEL_FOR                                                                                      \
    for (int64_t q = 0; q < n * ho * wo; q++) {                                                          \
        int64_t i = q / (ho * wo), yo = q / wo % ho, xo = q % wo, y0, y1, x0, x1;                        \
        window(yo, k, stride, pad, h, &y0, &y1);                                                         \
        window(xo, k, stride, pad, w, &x0, &x1);                                                         \
        T *dst = res + q * c, lows[c]; /* the maxima in place, the minima beside them */                 \
        memcpy(dst, in + ((i * h + y0) * w + x0) * c, (size_t)c * sizeof(T));                            \
        memcpy(lows, dst, (size_t)c * sizeof(T));                                                        \
        for (int64_t y = y0; y < y1; y++)                                                                \
            for (int64_t xi = x0; xi < x1; xi++) {                                                       \
                const T *src = in + ((i * h + y) * w + xi) * c;                                          \
                for (int64_t j = 0; j < c; j++) {                                                        \
                    T v = src[j];                                                                        \
                    dst[j] = (v > dst[j]) | (v != v) ? v : dst[j];                                       \
                    lows[j] = (v < lows[j]) | (v != v) ? v : lows[j];                                    \
                }                                                                                        \
            }                                                                                            \
        for (int64_t j = 0; j < c; j++)                                                                  \
            dst[j] = take_min[j] ? lows[j] : dst[j];                                                     \
    }

void fm_pool_sums(int threads, const void *x, int is_float, int64_t n, int64_t h, int64_t w, int64_t c,
                  int64_t k, int64_t stride, int64_t pad, int64_t ho, int64_t wo, const uint8_t *take_min,
                  void *out) {
    int64_t work = n * ho * wo * c * k * k;
    (void)threads, (void)work;
    if (is_float) {
        POOL_SUMS(float)
    } else {
        POOL_SUMS(int32_t)
    }
}
