/* The output transform: batch norm + sign as one comparison per unit, written as packed bits. */
#include <string.h>

#include "fewmult_kernels.h"
#include "simd.h"

void fm_threshold_pack(int threads, const void *acc, int acc_is_float, int64_t n, int64_t o,
                       const double *scale, const double *bias, const double *threshold,
                       const uint8_t *negative, uint64_t *out, int64_t out_row_words) {
    const int32_t *acc_i = (const int32_t *)acc;
    const float *acc_f = (const float *)acc;
    int64_t work = n * o;
    (void)threads, (void)work;
    FM_PARALLEL_FOR
    for (int64_t i = 0; i < n; i++) {
        uint64_t *row = out + i * out_row_words;
        memset(row, 0, (size_t)out_row_words * sizeof(uint64_t));
        for (int64_t j = 0; j < o; j++) {
            double a = acc_is_float ? (double)acc_f[i * o + j] : (double)acc_i[i * o + j];
            double v = a * scale[j];
            if (bias)
                v += bias[j];
            int bit = negative[j] ? v <= threshold[j] : v >= threshold[j];
            row[j >> 6] |= (uint64_t)bit << (j & 63);
        }
    }
}
