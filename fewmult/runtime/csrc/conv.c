/* Convolutions around the products: im2col of packed bits and of floats, the zero-padding
 * correction of binary convolutions. */
#include <string.h>

#include "fewmult_kernels.h"
#include "simd.h"

/* The input pixel of tap (ty, tx) for output pixel (y, x), or -1 outside the image. */
static int64_t source_pixel(int64_t y, int64_t x, int64_t ty, int64_t tx, int64_t h, int64_t w, int64_t sh,
                            int64_t sw, int64_t ph, int64_t pw) {
    int64_t iy = y * sh - ph + ty, ix = x * sw - pw + tx;
    return iy < 0 || iy >= h || ix < 0 || ix >= w ? -1 : iy * w + ix;
}

/* Output pixels' windows as rows; elements of `size` bytes, `per_pixel` of them a pixel. */
static void im2col(int threads, const char *x, size_t size, int64_t per_pixel, int64_t n, int64_t h, int64_t w,
                   int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t ho, int64_t wo,
                   char *rows, int64_t row_len) {
    int64_t work = n * ho * wo * row_len;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t p = 0; p < n * ho * wo; p++) {
        int64_t i = p / (ho * wo), y = p / wo % ho, xo = p % wo;
        char *row = rows + (size_t)(p * row_len) * size;
        memset(row, 0, (size_t)row_len * size);
        for (int64_t ty = 0; ty < kh; ty++) {
            /* a tap row's pixels inside the image are adjacent in the input: one copy for them all
             * (a 7x7 RGB stem copied 3 floats a call, tap by tap) */
            int64_t iy = y * sh - ph + ty, ix = xo * sw - pw;
            if (iy < 0 || iy >= h)
                continue;
            int64_t first = ix < 0 ? -ix : 0, last = fm_min64(kw, w - ix);
            if (first < last)
                memcpy(row + (size_t)((ty * kw + first) * per_pixel) * size,
                       x + (size_t)(((i * h + iy) * w + ix + first) * per_pixel) * size,
                       (size_t)((last - first) * per_pixel) * size);
        }
    }
}

void fm_im2col_bits(int threads, const uint64_t *x, int64_t n, int64_t h, int64_t w, int64_t cw, int64_t kh,
                    int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t ho, int64_t wo,
                    uint64_t *rows, int64_t row_len) {
    im2col(threads, (const char *)x, sizeof(uint64_t), cw, n, h, w, kh, kw, sh, sw, ph, pw, ho, wo, (char *)rows,
           row_len);
}

void fm_im2col_f32(int threads, const float *x, int64_t n, int64_t h, int64_t w, int64_t c, int64_t kh,
                   int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t ho, int64_t wo,
                   float *rows, int64_t row_len) {
    im2col(threads, (const char *)x, sizeof(float), c, n, h, w, kh, kw, sh, sw, ph, pw, ho, wo, (char *)rows,
           row_len);
}

void fm_conv_border(int threads, int32_t *acc, int64_t n, int64_t ho, int64_t wo, int64_t o,
                    const int32_t *tap_sums, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                    int64_t sw, int64_t ph, int64_t pw) {
    int64_t work = n * ho * wo * o;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t p = 0; p < n * ho * wo; p++) {
        int64_t y = p / wo % ho, xo = p % wo;
        for (int64_t ty = 0; ty < kh; ty++)
            for (int64_t tx = 0; tx < kw; tx++)
                if (source_pixel(y, xo, ty, tx, h, w, sh, sw, ph, pw) < 0)
                    for (int64_t j = 0; j < o; j++)
                        acc[p * o + j] += tap_sums[(ty * kw + tx) * o + j];
    }
}
